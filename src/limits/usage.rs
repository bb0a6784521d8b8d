//! Usage metering for monthly quotas (SPEC §5): per (organization, metric, `YYYY-MM`) counters.
//!
//! Recording is a map update in memory (no I/O on the request path). A flusher adds the pending
//! deltas to `usage_counters` every few seconds and at shutdown, in one transaction, with an
//! upsert that *adds* (`value = usage_counters.value + excluded.value`): every node flushes its
//! own deltas, so the stored value is the sum over all nodes and survives restarts. A failed
//! flush keeps its deltas for the next one. [`UsageMeter::current`] is the stored value plus
//! this node's unflushed delta.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::storage::{self, Db};

/// How often [`UsageMeter::spawn_flusher`] flushes by default.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// One counter: an organization's usage of one metric in one calendar month (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Counter {
    pub organization_id: String,
    pub metric: String,
    /// `YYYY-MM`.
    pub period: String,
}

impl Counter {
    pub fn new(
        organization_id: impl Into<String>,
        metric: impl Into<String>,
        period: impl Into<String>,
    ) -> Self {
        Counter {
            organization_id: organization_id.into(),
            metric: metric.into(),
            period: period.into(),
        }
    }
}

/// The period (`YYYY-MM`, UTC) that `at` falls in.
pub fn period_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

#[derive(Clone)]
pub struct UsageMeter {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    pending: Mutex<HashMap<Counter, u64>>,
    /// Held by a flush from taking the deltas to committing them, and by readers, so that a
    /// reader never sees a delta twice (or not at all).
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for UsageMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeter")
            .field("pending", &self.pending_len())
            .finish()
    }
}

impl UsageMeter {
    pub fn new(db: Db) -> Self {
        UsageMeter {
            inner: Arc::new(Inner {
                db,
                pending: Mutex::new(HashMap::new()),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<Counter, u64>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `amount` of `metric` for the organization in the current month.
    pub fn record(&self, organization_id: &str, metric: &str, amount: u64) {
        self.record_in(
            Counter::new(organization_id, metric, period_of(Utc::now())),
            amount,
        );
    }

    /// Counts `amount` on one counter (the period given explicitly).
    pub fn record_in(&self, counter: Counter, amount: u64) {
        if amount == 0 {
            return;
        }
        let mut pending = self.pending_map();
        let v = pending.entry(counter).or_insert(0);
        *v = v.saturating_add(amount);
    }

    /// This node's delta not yet flushed for one counter.
    pub fn unflushed(&self, counter: &Counter) -> u64 {
        self.pending_map().get(counter).copied().unwrap_or(0)
    }

    fn pending_len(&self) -> usize {
        self.pending_map().len()
    }

    /// The counter's value: what the database holds (all nodes' flushed deltas) plus this
    /// node's unflushed delta.
    pub async fn current(&self, counter: &Counter) -> Result<u64, sqlx::Error> {
        let _flush = self.inner.flushing.lock().await;
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT value FROM usage_counters \
             WHERE organization_id = $1 AND metric = $2 AND period = $3",
        )
        .bind(counter.organization_id.as_str())
        .bind(counter.metric.as_str())
        .bind(counter.period.as_str())
        .fetch_optional(self.inner.db.pool())
        .await?;
        let stored = u64::try_from(stored.unwrap_or(0)).unwrap_or(0);
        Ok(stored.saturating_add(self.unflushed(counter)))
    }

    /// The current value of `metric` for the organization this month.
    pub async fn current_month(
        &self,
        organization_id: &str,
        metric: &str,
    ) -> Result<u64, sqlx::Error> {
        self.current(&Counter::new(
            organization_id,
            metric,
            period_of(Utc::now()),
        ))
        .await
    }

    /// Adds every pending delta to the database in one transaction; returns how many counters
    /// were written. On failure nothing is lost: the deltas wait for the next flush.
    pub async fn flush(&self) -> Result<usize, sqlx::Error> {
        let _flush = self.inner.flushing.lock().await;
        let batch: Vec<(Counter, u64)> = std::mem::take(&mut *self.pending_map())
            .into_iter()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        match self.write(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for (counter, delta) in batch {
                    self.record_in(counter, delta);
                }
                Err(e)
            }
        }
    }

    async fn write(&self, batch: &[(Counter, u64)]) -> Result<(), sqlx::Error> {
        let now = storage::now();
        let mut tx = self.inner.db.pool().begin().await?;
        for (c, delta) in batch {
            sqlx::query(
                "INSERT INTO usage_counters (organization_id, metric, period, value, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (organization_id, metric, period) DO UPDATE \
                 SET value = usage_counters.value + excluded.value, updated_at = excluded.updated_at",
            )
            .bind(c.organization_id.as_str())
            .bind(c.metric.as_str())
            .bind(c.period.as_str())
            .bind(i64::try_from(*delta).unwrap_or(i64::MAX))
            .bind(now.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Flushes every `every` until the runtime stops; call [`UsageMeter::flush`] once more at
    /// shutdown.
    pub fn spawn_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let meter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = meter.flush().await {
                    tracing::warn!(error = %e, "usage flush failed; will retry");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_calendar_months_in_utc() {
        let t = DateTime::parse_from_rfc3339("2026-02-28T23:59:59-05:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(period_of(t), "2026-03");
    }
}
