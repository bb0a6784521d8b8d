//! The delivery worker: a task beside the HTTP server that claims due delivery attempts, sends
//! them per Standard Webhooks and records the outcome, scheduling the next attempt on failure.
//!
//! **Claiming.** One statement moves due rows (`pending` and due, or `delivering` with a lease
//! that ran out) to `delivering` under this worker's id with `locked_until = now + lease`. On
//! PostgreSQL the rows are picked with `FOR UPDATE SKIP LOCKED`, so several nodes never claim the
//! same attempt; on SQLite (one node, one writer) the statement is atomic by itself. A worker that
//! dies mid-delivery leaves its rows `delivering`; they are claimed again once the lease has run
//! out (at-least-once: the receiver de-duplicates by `webhook-id`, which is the event id and the
//! same on every attempt). An outcome is recorded only while the worker still holds the row.
//!
//! **Retries.** The attempt after a failure is due per [`RetrySchedule`]; the endpoint is
//! disabled (and `webhook.disabled` emitted) once it has been failing continuously for
//! `disable_after` (5 days).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::json;
use sqlx::Row;
use tokio::{
    sync::{watch, Notify},
    task::{JoinHandle, JoinSet},
};

use super::{
    deliveries::status, emit, outbox, signing, ssrf::OutboundClient, webhooks, ActorContext,
    NewEvent,
};
use crate::{
    app::AppState,
    config::Config,
    crypto,
    error::Result,
    ids::OrgId,
    metrics::WebhookOutcomeLabels,
    storage::{self, Db, RowExt},
};

/// When each attempt is made: `delays[0]` after the event (0: at once), then `delays[n]` after
/// attempt `n` failed. After the last attempt fails, delivery of that event is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// SPEC §7: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts).
    pub fn standard() -> Self {
        let m = 60;
        let h = 60 * m;
        RetrySchedule::new(
            [0, 5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }

    pub fn new(delays: Vec<Duration>) -> Self {
        RetrySchedule { delays }
    }

    /// The standard schedule with every delay divided by `divisor` (for tests).
    pub fn standard_scaled(divisor: u32) -> Self {
        let standard = Self::standard();
        RetrySchedule::new(
            standard
                .delays
                .iter()
                .map(|d| *d / divisor.max(1))
                .collect(),
        )
    }

    pub fn attempts(&self) -> usize {
        self.delays.len()
    }

    /// The wait before the next attempt after attempt `attempt` (1-based) failed, or `None`.
    pub fn after_failure(&self, attempt: i64) -> Option<Duration> {
        usize::try_from(attempt)
            .ok()
            .and_then(|a| self.delays.get(a))
            .copied()
    }
}

/// How the worker runs. [`WorkerConfig::from_config`] gives the production values.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How often to look for due attempts when idle (a [`WorkerHandle::wake`] looks at once).
    pub poll_interval: Duration,
    /// Attempts claimed (and sent concurrently) per round.
    pub batch_size: i64,
    /// Time limit of one attempt: connect, send, read the capped answer.
    pub attempt_timeout: Duration,
    /// How long a claim holds; must exceed `attempt_timeout`. A dead worker's claims are taken
    /// over after it.
    pub lease: Duration,
    pub schedule: RetrySchedule,
    /// An endpoint failing continuously for this long is disabled.
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    /// Bytes of a response body read and kept.
    pub response_body_limit: usize,
}

impl WorkerConfig {
    pub fn from_config(config: &Config) -> Self {
        let attempt_timeout = Duration::from_secs(config.webhook_timeout_secs);
        WorkerConfig {
            poll_interval: Duration::from_secs(1),
            batch_size: 32,
            attempt_timeout,
            lease: attempt_timeout + Duration::from_secs(30),
            schedule: RetrySchedule::standard(),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            allow_private_targets: config.allow_private_webhook_targets,
            response_body_limit: 4096,
        }
    }
}

/// Claims up to `limit` due attempts for `worker_id`, holding them for `lease`. Returns their
/// ids. Attempts of disabled endpoints wait until the endpoint is enabled again.
pub async fn claim(db: &Db, worker_id: &str, lease: Duration, limit: i64) -> Result<Vec<String>> {
    let now = Utc::now();
    let locked_until = storage::format_time(now + lease);
    let lock = db.backend().skip_locked("d");
    let sql = format!(
        "UPDATE webhook_deliveries SET status = 'delivering', locked_by = $1, locked_until = $2 \
         WHERE id IN (SELECT d.id FROM webhook_deliveries d \
           JOIN webhook_endpoints e ON e.id = d.endpoint_id \
           WHERE e.enabled = $3 \
             AND ((d.status = 'pending' AND d.next_attempt_at <= $4) \
               OR (d.status = 'delivering' AND d.locked_until <= $4)) \
           ORDER BY d.next_attempt_at LIMIT $5{lock}) \
         RETURNING id"
    );
    let ids = sqlx::query_scalar(&sql)
        .bind(worker_id)
        .bind(&locked_until)
        .bind(true)
        .bind(storage::format_time(now))
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    Ok(ids)
}

/// Attempts queued or in flight.
pub async fn pending_count(db: &Db) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'delivering')",
    )
    .fetch_one(db.pool())
    .await?)
}

/// The worker. Cheap to clone; [`DeliveryWorker::spawn`] runs it as a task.
#[derive(Debug, Clone)]
pub struct DeliveryWorker(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    state: AppState,
    config: WorkerConfig,
    client: OutboundClient,
    id: String,
}

/// One claimed attempt with what sending it needs.
struct Job {
    delivery_id: String,
    attempt: i64,
    manual: bool,
    event_id: String,
    event_type: String,
    endpoint_id: String,
    organization_id: Option<String>,
    url: String,
    payload: String,
    secrets: anyhow::Result<Vec<signing::WebhookSecret>>,
}

/// What one attempt got.
struct Outcome {
    success: bool,
    response_status: Option<i64>,
    response_body: Option<String>,
    error: Option<String>,
    latency_ms: i64,
}

impl DeliveryWorker {
    pub fn new(state: AppState, config: WorkerConfig) -> anyhow::Result<Self> {
        if config.lease <= config.attempt_timeout {
            tracing::warn!(
                "the webhook lease is not longer than the attempt timeout: a slow attempt may be \
                 sent again by another worker"
            );
        }
        let client = OutboundClient::new(
            config.allow_private_targets,
            config.attempt_timeout,
            config.response_body_limit,
        )?;
        Ok(DeliveryWorker(Arc::new(Inner {
            state,
            config,
            client,
            id: format!("wkr_{}", crypto::random_base62(16)),
        })))
    }

    /// This worker's id (what `locked_by` holds while it delivers).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Claims one batch of due attempts and delivers them concurrently. Returns how many.
    pub async fn run_once(&self) -> Result<usize> {
        let inner = &self.0;
        let ids = claim(
            &inner.state.db,
            &inner.id,
            inner.config.lease,
            inner.config.batch_size,
        )
        .await?;
        let claimed = ids.len();
        let mut tasks = JoinSet::new();
        for id in ids {
            let worker = self.clone();
            tasks.spawn(async move {
                if let Err(e) = worker.deliver(&id).await {
                    tracing::warn!(delivery_id = %id, error = %e, "webhook delivery could not be recorded; it will be retried after its lease");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(claimed)
    }

    /// Runs until [`WorkerHandle::stop`] (or the handle is dropped).
    pub fn spawn(self) -> WorkerHandle {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let task = tokio::spawn(async move {
            tracing::info!(worker = %self.id(), "webhook delivery worker started");
            loop {
                let busy = match self.run_once().await {
                    Ok(n) => n as i64 >= self.0.config.batch_size,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed");
                        false
                    }
                };
                if let Ok(n) = pending_count(&self.0.state.db).await {
                    self.0.state.metrics.webhook_pending.set(n);
                }
                if *stop_rx.borrow() {
                    break;
                }
                if busy {
                    continue;
                }
                tokio::select! {
                    changed = stop_rx.changed() => if changed.is_err() || *stop_rx.borrow() { break },
                    _ = woken.notified() => {}
                    _ = tokio::time::sleep(self.0.config.poll_interval) => {}
                }
            }
            tracing::info!(worker = %self.id(), "webhook delivery worker stopped");
        });
        WorkerHandle {
            stop: stop_tx,
            wake,
            task,
        }
    }

    async fn load(&self, delivery_id: &str) -> Result<Option<Job>> {
        let row = sqlx::query(
            "SELECT d.id, d.attempt, d.manual, d.event_id, d.event_type, d.endpoint_id, \
               e.organization_id, e.url, e.secret_ciphertext, e.previous_secret_ciphertext, \
               e.previous_secret_expires_at, ev.payload \
             FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             JOIN webhook_events ev ON ev.id = d.event_id \
             WHERE d.id = $1 AND d.locked_by = $2 AND d.status = 'delivering'",
        )
        .bind(delivery_id)
        .bind(&self.0.id)
        .fetch_optional(self.0.state.db.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let endpoint_id: String = row.try_get("endpoint_id")?;
        let key = &self.0.state.master_key;
        let current: String = row.try_get("secret_ciphertext")?;
        let previous: Option<String> = row.try_get("previous_secret_ciphertext")?;
        let previous_until: Option<String> = row.try_get("previous_secret_expires_at")?;
        let secrets = (|| {
            let mut secrets = vec![webhooks::decrypt_secret(key, &endpoint_id, &current)?];
            if let (Some(previous), Some(until)) = (previous, previous_until) {
                if until > storage::now() {
                    secrets.push(webhooks::decrypt_secret(key, &endpoint_id, &previous)?);
                }
            }
            Ok(secrets)
        })();
        Ok(Some(Job {
            delivery_id: row.try_get("id")?,
            attempt: row.try_get("attempt")?,
            manual: row.get_bool("manual")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            endpoint_id,
            organization_id: row.try_get("organization_id")?,
            url: row.try_get("url")?,
            payload: row.try_get("payload")?,
            secrets,
        }))
    }

    async fn deliver(&self, delivery_id: &str) -> Result<()> {
        let Some(job) = self.load(delivery_id).await? else {
            return Ok(()); // deleted with its endpoint, or taken over
        };
        let outcome = self.send(&job).await;
        tracing::debug!(
            delivery_id = %job.delivery_id,
            event_id = %job.event_id,
            endpoint_id = %job.endpoint_id,
            attempt = job.attempt,
            success = outcome.success,
            response_status = outcome.response_status,
            error = outcome.error.as_deref(),
            "webhook delivery attempt"
        );
        self.record(&job, &outcome).await
    }

    async fn send(&self, job: &Job) -> Outcome {
        let failed = |error: String| Outcome {
            success: false,
            response_status: None,
            response_body: None,
            error: Some(error),
            latency_ms: 0,
        };
        let secrets = match &job.secrets {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(endpoint_id = %job.endpoint_id, error = %e, "webhook secret unreadable");
                return failed("the endpoint's signing secret cannot be read".into());
            }
        };
        let timestamp = Utc::now().timestamp();
        let signature =
            signing::signature_header(secrets, &job.event_id, timestamp, job.payload.as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        match (
            HeaderValue::from_str(&job.event_id),
            HeaderValue::from_str(&signature),
        ) {
            (Ok(id), Ok(sig)) => {
                headers.insert("webhook-id", id);
                headers.insert("webhook-signature", sig);
            }
            _ => return failed("the event id cannot be sent as a header".into()),
        }
        let started = std::time::Instant::now();
        let result = self
            .0
            .client
            .post(&job.url, headers, Bytes::from(job.payload.clone()))
            .await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match result {
            Ok(res) => Outcome {
                success: (200..300).contains(&res.status),
                response_status: Some(i64::from(res.status)),
                response_body: Some(res.body_excerpt),
                error: None,
                latency_ms,
            },
            Err(e) => Outcome {
                latency_ms,
                ..failed(e.to_string())
            },
        }
    }

    async fn record(&self, job: &Job, outcome: &Outcome) -> Result<()> {
        let inner = &self.0;
        let now = Utc::now();
        let next_due = if outcome.success || job.manual {
            None
        } else {
            inner
                .config
                .schedule
                .after_failure(job.attempt)
                .map(|d| storage::format_time(now + d))
        };
        let mut tx = super::begin_write(&inner.state.db).await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, response_status = $2, response_body = $3, \
             error = $4, latency_ms = $5, next_attempt_at = $6, locked_by = NULL, \
             locked_until = NULL, completed_at = $7 \
             WHERE id = $8 AND locked_by = $9 AND status = 'delivering'",
        )
        .bind(if outcome.success {
            status::SUCCEEDED
        } else {
            status::FAILED
        })
        .bind(outcome.response_status)
        .bind(outcome.response_body.as_deref())
        .bind(outcome.error.as_deref())
        .bind(outcome.latency_ms)
        .bind(next_due.as_deref())
        .bind(storage::format_time(now))
        .bind(&job.delivery_id)
        .bind(&inner.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            // The lease ran out and another worker took the attempt over: its outcome counts.
            return Ok(());
        }
        if let Some(due) = &next_due {
            outbox::insert_attempt(
                &mut tx,
                &job.endpoint_id,
                &job.event_id,
                &job.event_type,
                job.attempt + 1,
                false,
                due,
            )
            .await?;
        }
        let disabled = if outcome.success {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = NULL \
                 WHERE id = $1 AND failing_since IS NOT NULL",
            )
            .bind(&job.endpoint_id)
            .execute(&mut *tx)
            .await?;
            false
        } else {
            self.note_failure(&mut tx, job, now).await?
        };
        tx.commit().await?;

        let outcome_label = match (outcome.success, &next_due) {
            (true, _) => "succeeded",
            (false, Some(_)) => "retrying",
            (false, None) => "failed",
        };
        inner
            .state
            .metrics
            .webhook_deliveries
            .get_or_create(&WebhookOutcomeLabels {
                outcome: outcome_label,
            })
            .inc();
        if disabled {
            inner.state.metrics.webhook_endpoints_disabled.inc();
        }
        Ok(())
    }

    /// Records a failure on the endpoint; disables it (emitting `webhook.disabled`) when it has
    /// been failing for `disable_after`. Returns whether it was disabled now.
    async fn note_failure(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        job: &Job,
        now: chrono::DateTime<Utc>,
    ) -> Result<bool> {
        let now_text = storage::format_time(now);
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2",
        )
        .bind(&now_text)
        .bind(&job.endpoint_id)
        .execute(&mut **tx)
        .await?;
        let row =
            sqlx::query("SELECT enabled, failing_since, url FROM webhook_endpoints WHERE id = $1")
                .bind(&job.endpoint_id)
                .fetch_one(&mut **tx)
                .await?;
        let failing_since: Option<String> = row.try_get("failing_since")?;
        let cutoff = storage::format_time(now - self.0.config.disable_after);
        let Some(since) = failing_since.filter(|s| *s <= cutoff) else {
            return Ok(false);
        };
        if !row.get_bool("enabled")? {
            return Ok(false);
        }
        let reason = "failing continuously since ".to_string() + &storage::api_time(&since);
        sqlx::query(
            "UPDATE webhook_endpoints SET enabled = $1, disabled_reason = $2, updated_at = $3 \
             WHERE id = $4",
        )
        .bind(false)
        .bind(&reason)
        .bind(&now_text)
        .bind(&job.endpoint_id)
        .execute(&mut **tx)
        .await?;
        let url: String = row.try_get("url")?;
        let details = json!({
            "id": job.endpoint_id,
            "url": url,
            "failing_since": storage::api_time(&since),
            "reason": reason,
        });
        let mut event = NewEvent::new("webhook.disabled", "webhook", Some(job.endpoint_id.clone()))
            .data(details.clone())
            .metadata(details);
        if let Some(org) = &job.organization_id {
            event = event.organization(OrgId::from(org.clone()));
        }
        emit(tx, &ActorContext::system(), event).await?;
        tracing::warn!(endpoint_id = %job.endpoint_id, "webhook endpoint disabled after failing continuously");
        Ok(true)
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Looks for due attempts now (call after committing an emit, to skip the poll interval).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops taking new work, lets the attempts in flight finish (each is bounded by the
    /// attempt timeout) and returns when the task has ended.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Ends the task at once, as a crash would: attempts in flight stay claimed until their
    /// lease runs out, then another worker takes them over.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Starts the delivery worker with the configuration's settings, beside the HTTP server.
pub fn spawn(state: AppState) -> anyhow::Result<WorkerHandle> {
    let config = WorkerConfig::from_config(&state.config);
    Ok(DeliveryWorker::new(state, config)?.spawn())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_schedule_has_eight_attempts() {
        let s = RetrySchedule::standard();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.after_failure(1), Some(Duration::from_secs(5)));
        assert_eq!(s.after_failure(2), Some(Duration::from_secs(300)));
        assert_eq!(s.after_failure(7), Some(Duration::from_secs(36_000)));
        assert_eq!(s.after_failure(8), None);
        let fast = RetrySchedule::standard_scaled(1000);
        assert_eq!(fast.after_failure(1), Some(Duration::from_millis(5)));
    }
}
