//! Usage metering for quotas and invoices (SPEC §5, §6): per (organization, metric, period)
//! counters. An organization's period is its subscription's billing cycle (`period` =
//! the cycle's start, `2026-01-15T10:00:00Z`), rolled forward whole cycles from the stored one;
//! one that never had a subscription counts per calendar month (`period` = `YYYY-MM`, UTC). So the
//! invoice of a closed cycle reads exactly that cycle's counter, and `GET …/usage` the same one.
//! The meter keeps each organization's cycle in memory ([`UsageMeter::period`] reads it,
//! `org:<id>` on the bus drops it); a count recorded for an organization whose cycle is not in
//! memory keeps its time and is put in its period by the next flush.
//!
//! Recording is a map update in memory (no I/O on the request path). A flusher adds the pending
//! deltas to `usage_counters` every `usage_flush_ms` (1 s by default) and at shutdown, in one
//! transaction, with an
//! upsert that *adds* (`value = usage_counters.value + excluded.value`): every node flushes its
//! own deltas, so the stored value is the sum over all nodes and survives restarts. A failed
//! flush keeps its deltas for the next one; a node killed outright (SIGKILL, power loss) loses
//! at most the counts of its last flush interval. [`UsageMeter::current`] is the stored value plus
//! this node's unflushed delta; [`UsageMeter::used`], for the request path, the same with the
//! stored part re-read every 5 s. That re-read happens in the background: a request that finds
//! its stored value older than 5 s (but younger than 15 s) is answered from it at once and
//! starts one re-read; only a value older than that, or none, makes the request wait for the
//! database.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Months, Utc};

use crate::storage::{self, Db};

/// How long an organization's billing cycle is trusted without a re-read (a new subscription
/// also drops it at once on every node, through `org:<id>`).
pub const CYCLE_AGE: Duration = Duration::from_secs(30);

/// `t` plus whole calendar months (clamped to the month's last day: Jan 31 + 1 = Feb 28).
pub fn add_months(t: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    t.checked_add_months(Months::new(months)).unwrap_or(t)
}

/// The span one usage counter covers: `start..end` (end excluded) and its `period` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub key: String,
    /// A calendar month (an organization without a subscription), not a billing cycle.
    pub calendar: bool,
}

impl UsagePeriod {
    /// The calendar month (UTC) that `at` falls in.
    pub fn month_of(at: DateTime<Utc>) -> UsagePeriod {
        use chrono::{Datelike, TimeZone};
        let start = Utc
            .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(at);
        UsagePeriod {
            start,
            end: add_months(start, 1),
            key: period_of(at),
            calendar: true,
        }
    }

    /// A billing cycle `start..end`.
    pub fn cycle(start: DateTime<Utc>, end: DateTime<Utc>) -> UsagePeriod {
        UsagePeriod {
            start,
            end,
            key: cycle_key(start),
            calendar: false,
        }
    }

    /// Whole seconds until the period ends (at least 1): when a quota is available again.
    pub fn secs_to_end(&self, now: DateTime<Utc>) -> u64 {
        (self.end - now).num_seconds().max(1) as u64
    }
}

/// The `period` key of the billing cycle starting at `start`.
pub fn cycle_key(start: DateTime<Utc>) -> String {
    start.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A subscription's billing cycle as stored (`start..end`), and how many months one lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub months: u32,
}

impl Cycle {
    /// The period of a count made at `at`: the cycle containing it, rolled forward whole cycles
    /// from the stored one (as the cycle job renews it); before the stored cycle, the calendar
    /// month (a late count of a cycle already invoiced is never put in another cycle).
    pub fn period_at(&self, at: DateTime<Utc>) -> UsagePeriod {
        if at < self.start {
            return UsagePeriod::month_of(at);
        }
        let (mut start, mut end) = (self.start, self.end);
        // Bounded: 10,000 cycles is over 800 years of monthly cycles.
        for _ in 0..10_000 {
            if at < end {
                break;
            }
            start = end;
            end = add_months(start, self.months.max(1));
        }
        UsagePeriod::cycle(start, end)
    }
}

/// An organization's billing cycle as the meter holds it (`None`: it never had a
/// subscription), when it was read, and the last period found with it, reused while it holds
/// (the request path asks for the period of every request).
#[derive(Debug, Clone)]
struct HeldCycle {
    cycle: Option<Cycle>,
    read: Instant,
    last: Option<UsagePeriod>,
}

impl HeldCycle {
    fn period_at(&mut self, at: DateTime<Utc>) -> UsagePeriod {
        // A calendar month of an organization with a cycle stands for times before the cycle
        // only: found again each time.
        if let Some(p) = self
            .last
            .as_ref()
            .filter(|p| p.start <= at && at < p.end && !(p.calendar && self.cycle.is_some()))
        {
            return p.clone();
        }
        let p = period_with(self.cycle, at);
        self.last = Some(p.clone());
        p
    }
}

/// The period of an organization with this cycle (or none) at `at`.
fn period_with(cycle: Option<Cycle>, at: DateTime<Utc>) -> UsagePeriod {
    match cycle {
        Some(c) => c.period_at(at),
        None => UsagePeriod::month_of(at),
    }
}

/// How long [`UsageMeter::used`] trusts a stored value read from the database by default.
/// At most this many organizations wait for a threshold check (beyond, the next flush of each
/// brings it back).
const MAX_TOUCHED: usize = 100_000;

pub const STORED_VALUE_AGE: Duration = Duration::from_secs(5);
/// A stored value up to this many times `refresh_after` old is still served, while it is
/// re-read in the background; an older one is re-read before the request goes on.
const STALE_FACTOR: u32 = 3;

/// What the meter holds for a counter, for the request path.
enum Held {
    Fresh(u64),
    /// Served, and due for a re-read (which the caller starts).
    Stale(u64),
    Missing,
}

/// One counter: an organization's usage of one metric in one period ([`UsagePeriod::key`]).
#[derive(Debug, Clone)]
pub struct Counter {
    pub organization_id: String,
    pub metric: String,
    /// `YYYY-MM` (a calendar month) or a billing cycle's start (`2026-01-15T10:00:00Z`).
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
    Period::of(at).as_str().to_string()
}

/// A period written on the stack (the request path meters without allocating).
struct Period([u8; 7]);

impl Period {
    fn of(at: DateTime<Utc>) -> Period {
        use chrono::Datelike;
        let (y, m) = (at.year().clamp(0, 9999) as u32, at.month());
        let d = |n: u32| b'0' + (n % 10) as u8;
        Period([
            d(y / 1000),
            d(y / 100),
            d(y / 10),
            d(y),
            b'-',
            d(m / 10),
            d(m),
        ])
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A counter's identity, borrowed or owned: the maps below are keyed by [`Counter`] and looked
/// up by `(&str, &str, &str)` without building one.
trait CounterKey {
    fn parts(&self) -> (&str, &str, &str);
}

impl CounterKey for Counter {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.organization_id, &self.metric, &self.period)
    }
}

impl CounterKey for (&str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn CounterKey + 'a> for Counter {
    fn borrow(&self) -> &(dyn CounterKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn CounterKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn CounterKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn CounterKey + '_ {}

impl std::hash::Hash for Counter {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for Counter {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Counter {}

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

/// The maps the request path touches on every counted request (an organization's cycle, its
/// pending counts): keyed by ids this server made, so hashed with the fast, non-keyed FxHash
/// instead of SipHash (BENCHMARKS.md, run 14).
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

#[derive(Default)]
struct State {
    /// Recorded, not yet flushed.
    pending: FastMap<Counter, u64>,
    /// Being written by the flush in progress.
    in_flight: FastMap<Counter, u64>,
    /// Stored values as last read, plus what this node flushed since; when read; and whether
    /// a background re-read is under way.
    stored: HashMap<Counter, (u64, Instant, bool)>,
    /// Each organization's billing cycle (`None`: it never had a subscription), and when read.
    cycles: FastMap<String, HeldCycle>,
    /// Counts of organizations whose cycle was not in memory: (organization, metric, unix
    /// second) → amount, put in their period by the next flush.
    unresolved: HashMap<(String, String, i64), u64>,
    /// Bumped by every [`UsageMeter::forget_cycle`]: a cycle read before one is not kept.
    cycle_generation: u64,
    /// Organizations whose counts this node flushed (or [`UsageMeter::touch`]ed) since the
    /// last [`UsageMeter::take_touched`]: the threshold warnings check these.
    touched: HashSet<String>,
}

impl State {
    fn local(&self, c: &dyn CounterKey) -> u64 {
        let p = self.pending.get(c).copied().unwrap_or(0);
        p.saturating_add(self.in_flight.get(c).copied().unwrap_or(0))
            .saturating_add(self.unresolved_in(c))
    }

    /// The counts not yet put in a period (normally none) that fall in this counter's period,
    /// as far as this node knows the organization's cycle (none known: the calendar month).
    fn unresolved_in(&self, c: &dyn CounterKey) -> u64 {
        if self.unresolved.is_empty() {
            return 0;
        }
        let (org, metric, period) = c.parts();
        let cycle = self.cycles.get(org).and_then(|h| h.cycle);
        self.unresolved
            .iter()
            .filter(|((o, m, _), _)| o == org && m == metric)
            .filter(|((_, _, second), _)| {
                DateTime::from_timestamp(*second, 0)
                    .is_some_and(|at| period_with(cycle, at).key == period)
            })
            .fold(0u64, |sum, (_, v)| sum.saturating_add(*v))
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

    /// Counts `amount` of `metric` for the organization now, in its current period.
    pub fn record(&self, organization_id: &str, metric: &str, amount: u64) {
        if amount == 0 {
            return;
        }
        let now = Utc::now();
        let mut state = self.state();
        let Some(held) = state.cycles.get_mut(organization_id) else {
            let v = state
                .unresolved
                .entry((
                    organization_id.to_string(),
                    metric.to_string(),
                    now.timestamp(),
                ))
                .or_insert(0);
            *v = v.saturating_add(amount);
            return;
        };
        let period = held.period_at(now);
        Self::add_pending(&mut state, organization_id, metric, &period.key, amount);
    }

    /// Counts `amount` of `metric` for the organization in `period` (the request path, which
    /// read the period first with [`UsageMeter::period`]).
    pub fn record_at(&self, organization_id: &str, metric: &str, period: &str, amount: u64) {
        if amount == 0 {
            return;
        }
        Self::add_pending(&mut self.state(), organization_id, metric, period, amount);
    }

    fn add_pending(
        state: &mut State,
        organization_id: &str,
        metric: &str,
        period: &str,
        amount: u64,
    ) {
        let key = (organization_id, metric, period);
        match state.pending.get_mut(&key as &dyn CounterKey) {
            Some(v) => *v = v.saturating_add(amount),
            None => {
                state
                    .pending
                    .insert(Counter::new(organization_id, metric, period), amount);
            }
        }
    }

    /// The organization's current period: its subscription's billing cycle containing now, or
    /// the calendar month if it never had a subscription. The cycle is read from the database
    /// when not in memory or older than [`CYCLE_AGE`].
    pub async fn period(&self, organization_id: &str) -> Result<UsagePeriod, sqlx::Error> {
        self.period_at(organization_id, Utc::now()).await
    }

    /// The organization's period at `at` (see [`UsageMeter::period`]).
    pub async fn period_at(
        &self,
        organization_id: &str,
        at: DateTime<Utc>,
    ) -> Result<UsagePeriod, sqlx::Error> {
        if let Some(held) = self.state().cycles.get_mut(organization_id) {
            if held.read.elapsed() < CYCLE_AGE {
                return Ok(held.period_at(at));
            }
        }
        let cycle = self.read_cycle(organization_id).await?;
        Ok(period_with(cycle, at))
    }

    /// Reads the organization's billing cycle and keeps it in memory.
    async fn read_cycle(&self, organization_id: &str) -> Result<Option<Cycle>, sqlx::Error> {
        let generation = self.state().cycle_generation;
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT s.billing_cycle_start, s.billing_cycle_end, p.billing_interval \
             FROM subscriptions s LEFT JOIN plans p ON p.id = s.plan \
             WHERE s.organization_id = $1",
        )
        .bind(organization_id)
        .fetch_optional(self.inner.db.pool())
        .await?;
        let cycle = row.and_then(|(start, end, interval)| {
            Some(Cycle {
                start: storage::parse_time(&start)?,
                end: storage::parse_time(&end)?,
                months: interval
                    .as_deref()
                    .and_then(crate::billing::BillingInterval::parse)
                    .map_or(1, |i| i.months()),
            })
        });
        let mut state = self.state();
        if state.cycle_generation != generation {
            return Ok(cycle);
        }
        if state.cycles.len() >= 100_000 {
            state.cycles.clear();
        }
        state.cycles.insert(
            organization_id.to_string(),
            HeldCycle {
                cycle,
                read: Instant::now(),
                last: None,
            },
        );
        Ok(cycle)
    }

    /// Forgets the organization's billing cycle (its subscription started or changed), or every
    /// organization's (`None`).
    pub fn forget_cycle(&self, organization_id: Option<&str>) {
        let mut state = self.state();
        state.cycle_generation = state.cycle_generation.wrapping_add(1);
        match organization_id {
            Some(id) => {
                state.cycles.remove(id);
            }
            None => state.cycles.clear(),
        }
    }

    /// The current value of `metric` for the organization in `period` (see
    /// [`UsageMeter::used`]).
    pub async fn used_in(
        &self,
        organization_id: &str,
        metric: &str,
        period: &str,
    ) -> Result<u64, sqlx::Error> {
        self.used_by(&(organization_id, metric, period), || {
            Counter::new(organization_id, metric, period)
        })
        .await
    }

    /// Puts the counts recorded without a cycle in memory into their periods (reading the
    /// cycles); what cannot be read stays for the next flush.
    async fn resolve(&self) {
        let unresolved = std::mem::take(&mut self.state().unresolved);
        let mut failed = HashMap::new();
        for ((org, metric, second), amount) in unresolved {
            let at = DateTime::from_timestamp(second, 0).unwrap_or_else(Utc::now);
            let cached = self.state().cycles.get(&org).map(|h| h.cycle);
            let cycle = match cached {
                Some(c) => Ok(c),
                None => self.read_cycle(&org).await,
            };
            match cycle {
                Ok(c) => {
                    let period = period_with(c, at);
                    Self::add_pending(&mut self.state(), &org, &metric, &period.key, amount);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a billing cycle failed; will retry");
                    failed.insert((org, metric, second), amount);
                }
            }
        }
        if !failed.is_empty() {
            let mut state = self.state();
            for (k, v) in failed {
                let e = state.unresolved.entry(k).or_insert(0);
                *e = e.saturating_add(v);
            }
        }
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
            .insert(counter.clone(), (stored, Instant::now(), false));
        Ok(stored.saturating_add(state.local(counter)))
    }

    /// The same as [`UsageMeter::current`] for the request path: the stored part is re-read
    /// from the database every `refresh_after` (5 s by default), in the background while the
    /// value is under three times that old, so most calls do no I/O and few wait for any.
    /// This node's own counts are always exact; other nodes' may be that much late (at most
    /// three times `refresh_after`).
    pub async fn used(&self, counter: &Counter) -> Result<u64, sqlx::Error> {
        self.used_by(counter, || counter.clone()).await
    }

    /// [`UsageMeter::used`] for a borrowed key; `owned` makes the counter when it is read.
    async fn used_by(
        &self,
        key: &(dyn CounterKey + Sync),
        owned: impl FnOnce() -> Counter,
    ) -> Result<u64, sqlx::Error> {
        match self.held(key) {
            Held::Fresh(v) => Ok(v),
            Held::Stale(v) => {
                self.refresh(owned());
                Ok(v)
            }
            Held::Missing => self.current(&owned()).await,
        }
    }

    /// The value for the request path, without I/O, when the stored part is young enough. A
    /// stale value is `Stale` for one request only, the one that starts its re-read; the read
    /// time is left alone, so a value whose re-read does not land in time still reaches the
    /// age at which requests wait for the database.
    fn held(&self, counter: &dyn CounterKey) -> Held {
        let refresh_after = self.inner.refresh_after;
        let mut state = self.state();
        let local = state.local(counter);
        let Some((stored, at, refreshing)) = state.stored.get_mut(counter) else {
            return Held::Missing;
        };
        let age = at.elapsed();
        if age < refresh_after {
            Held::Fresh(stored.saturating_add(local))
        } else if age < refresh_after * STALE_FACTOR {
            let value = stored.saturating_add(local);
            if std::mem::replace(refreshing, true) {
                Held::Fresh(value)
            } else {
                Held::Stale(value)
            }
        } else {
            Held::Missing
        }
    }

    /// Re-reads a counter in the background. If that fails, the stored value is forgotten,
    /// so that the next request reads the database itself (and reports its error).
    fn refresh(&self, counter: Counter) {
        let meter = self.clone();
        tokio::spawn(async move {
            if let Err(e) = meter.current(&counter).await {
                tracing::warn!(error = %e, "re-reading a usage counter failed");
                meter.state().stored.remove(&counter);
            }
        });
    }

    /// Makes every stored value look `by` older (tests of the re-read, without waiting).
    #[doc(hidden)]
    pub fn age_stored_values(&self, by: Duration) {
        for (_, at, _) in self.state().stored.values_mut() {
            *at = at.checked_sub(by).unwrap_or(*at);
        }
    }

    /// The current value of `metric` for the organization this month (see [`UsageMeter::used`]).
    pub async fn used_this_month(
        &self,
        organization_id: &str,
        metric: &str,
    ) -> Result<u64, sqlx::Error> {
        let period = Period::of(Utc::now());
        self.used_by(&(organization_id, metric, period.as_str()), || {
            Counter::new(organization_id, metric, period.as_str())
        })
        .await
    }

    /// Adds every pending delta to the database in one transaction; returns how many counters
    /// were written. On failure nothing is lost: the deltas wait for the next flush.
    pub async fn flush(&self) -> Result<usize, sqlx::Error> {
        let _flush = self.inner.flushing.lock().await;
        // Under the flush lock: a reader never sees a count in neither place.
        self.resolve().await;
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
                if state.touched.len() < MAX_TOUCHED {
                    for c in in_flight.keys() {
                        state.touched.insert(c.organization_id.clone());
                    }
                }
                for (c, d) in in_flight {
                    if let Some((stored, _, _)) = state.stored.get_mut(&c) {
                        *stored = stored.saturating_add(d);
                    }
                }
                // Forget what has not been read for a long time (past months, gone orgs).
                let horizon = self.inner.refresh_after.max(Duration::from_secs(3600));
                state.stored.retain(|_, (_, at, _)| at.elapsed() < horizon);
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

    /// Marks the organization's usage as changed (members, projects) for the next
    /// [`UsageMeter::take_touched`].
    pub fn touch(&self, organization_id: &str) {
        let mut state = self.state();
        if state.touched.len() < MAX_TOUCHED {
            state.touched.insert(organization_id.to_string());
        }
    }

    /// The organizations whose usage changed since the last call (flushed by this node, or
    /// touched), emptied.
    pub fn take_touched(&self) -> Vec<String> {
        std::mem::take(&mut self.state().touched)
            .into_iter()
            .collect()
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
        let t = DateTime::parse_from_rfc3339("0987-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(period_of(t), "0987-11");
        assert_eq!(period_of(t), t.format("%Y-%m").to_string());
    }

    #[test]
    fn a_cycle_rolls_forward_as_the_cycle_job_renews_it() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let c = Cycle {
            start: t("2026-01-31T10:00:00Z"),
            end: t("2026-02-28T10:00:00Z"),
            months: 1,
        };
        let p = c.period_at(t("2026-02-01T00:00:00Z"));
        assert_eq!(p.key, "2026-01-31T10:00:00Z");
        assert!(!p.calendar);
        // From the stored end, month by month (Feb 28 → Mar 28), not from the first start.
        let p = c.period_at(t("2026-03-28T10:00:00Z"));
        assert_eq!(
            (p.start, p.end),
            (t("2026-03-28T10:00:00Z"), t("2026-04-28T10:00:00Z"))
        );
        assert_eq!(c.period_at(t("2026-02-28T09:59:59Z")).end, c.end);
        // Before the stored cycle (a late count of an invoiced one): the calendar month.
        let p = c.period_at(t("2026-01-20T00:00:00Z"));
        assert_eq!((p.key.as_str(), p.calendar), ("2026-01", true));
        let yearly = Cycle { months: 12, ..c };
        assert_eq!(
            yearly.period_at(t("2026-05-01T00:00:00Z")).end,
            t("2027-02-28T10:00:00Z")
        );
        let m = UsagePeriod::month_of(t("2026-12-31T23:59:59Z"));
        assert_eq!(
            (m.start, m.end),
            (t("2026-12-01T00:00:00Z"), t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(m.secs_to_end(t("2026-12-31T23:59:00Z")), 60);
    }
}
