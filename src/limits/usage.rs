//! Usage metering for monthly quotas (SPEC §5): per (organization, metric, `YYYY-MM`) counters.
//!
//! Recording is a map update in memory (no I/O on the request path). A flusher adds the pending
//! deltas to `usage_counters` every `usage_flush_ms` (1 s by default) and at shutdown, in one
//! transaction, with an
//! upsert that *adds* (`value = usage_counters.value + excluded.value`): every node flushes its
//! own deltas, so the stored value is the sum over all nodes and survives restarts. A failed
//! flush keeps its deltas for the next one; a node killed outright (SIGKILL, power loss) loses
//! at most the counts of its last flush interval. [`UsageMeter::current`] is the stored value plus
//! this node's unflushed delta; [`UsageMeter::used`], for the request path, the same with the
//! stored part re-read at most every 5 s.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::storage::{self, Db};

/// How long [`UsageMeter::used`] trusts a stored value read from the database by default.
pub const STORED_VALUE_AGE: Duration = Duration::from_secs(5);

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
    state: Mutex<State>,
    /// Held by a flush from taking the deltas to recording the outcome, and by reads of the
    /// database, so that a delta is never counted twice (or not at all) by a reader.
    flushing: tokio::sync::Mutex<()>,
    /// How long a stored value read from the database is trusted by [`UsageMeter::used`].
    refresh_after: Duration,
}

#[derive(Default)]
struct State {
    /// Recorded, not yet flushed.
    pending: HashMap<Counter, u64>,
    /// Being written by the flush in progress.
    in_flight: HashMap<Counter, u64>,
    /// Stored values as last read, plus what this node flushed since; and when read.
    stored: HashMap<Counter, (u64, Instant)>,
}

impl State {
    fn local(&self, c: &Counter) -> u64 {
        let p = self.pending.get(c).copied().unwrap_or(0);
        p.saturating_add(self.in_flight.get(c).copied().unwrap_or(0))
    }
}

impl std::fmt::Debug for UsageMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeter")
            .field("pending", &self.state().pending.len())
            .finish()
    }
}

impl UsageMeter {
    pub fn new(db: Db) -> Self {
        Self::with_refresh(db, STORED_VALUE_AGE)
    }

    /// A meter whose [`UsageMeter::used`] re-reads a counter from the database at most every
    /// `refresh_after` (other nodes' counts are that much late there).
    pub fn with_refresh(db: Db, refresh_after: Duration) -> Self {
        UsageMeter {
            inner: Arc::new(Inner {
                db,
                state: Mutex::new(State::default()),
                flushing: tokio::sync::Mutex::new(()),
                refresh_after,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut state = self.state();
        let v = state.pending.entry(counter).or_insert(0);
        *v = v.saturating_add(amount);
    }

    /// This node's delta not yet in the database for one counter.
    pub fn unflushed(&self, counter: &Counter) -> u64 {
        self.state().local(counter)
    }

    /// The counter's value, read from the database now: every node's flushed deltas plus this
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
        let mut state = self.state();
        state
            .stored
            .insert(counter.clone(), (stored, Instant::now()));
        Ok(stored.saturating_add(state.local(counter)))
    }

    /// The same as [`UsageMeter::current`] for the request path: the stored part is read from
    /// the database at most every `refresh_after` (5 s by default), so most calls do no I/O.
    /// This node's own counts are always exact; other nodes' may be that much late.
    pub async fn used(&self, counter: &Counter) -> Result<u64, sqlx::Error> {
        {
            let state = self.state();
            if let Some((stored, at)) = state.stored.get(counter) {
                if at.elapsed() < self.inner.refresh_after {
                    return Ok(stored.saturating_add(state.local(counter)));
                }
            }
        }
        self.current(counter).await
    }

    /// The current value of `metric` for the organization this month (see [`UsageMeter::used`]).
    pub async fn used_this_month(
        &self,
        organization_id: &str,
        metric: &str,
    ) -> Result<u64, sqlx::Error> {
        self.used(&Counter::new(
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
        let batch: Vec<(Counter, u64)> = {
            let mut state = self.state();
            state.in_flight = std::mem::take(&mut state.pending);
            state
                .in_flight
                .iter()
                .map(|(c, d)| (c.clone(), *d))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let result = self.write(&batch).await;
        let mut state = self.state();
        let in_flight = std::mem::take(&mut state.in_flight);
        match result {
            Ok(()) => {
                for (c, d) in in_flight {
                    if let Some((stored, _)) = state.stored.get_mut(&c) {
                        *stored = stored.saturating_add(d);
                    }
                }
                // Forget what has not been read for a long time (past months, gone orgs).
                let horizon = self.inner.refresh_after.max(Duration::from_secs(3600));
                state.stored.retain(|_, (_, at)| at.elapsed() < horizon);
                Ok(batch.len())
            }
            Err(e) => {
                for (c, d) in in_flight {
                    let v = state.pending.entry(c).or_insert(0);
                    *v = v.saturating_add(d);
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
