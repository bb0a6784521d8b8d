//! The in-memory backend: exact GCRA (one "theoretical arrival time" per key, O(1) per
//! decision), sharded to keep lock contention low. A request with several limits locks the
//! shards involved in ascending order (so two requests can never deadlock), checks them all,
//! then charges them all: all or nothing.
//!
//! Memory is bounded: at most `capacity` keys. A key whose arrival time has passed is at full
//! allowance, exactly as if absent, so such idle keys are dropped first; only if a shard is still
//! full are the keys closest to draining evicted (counted in [`MemoryLimiter::evicted_live`]).

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use futures_util::future::BoxFuture;

use super::{
    evaluate, periods_in, Clock, LimitSpec, LimiterError, RateLimiter, Source, SystemClock, Verdict,
};

const SHARDS: usize = 16;
/// Keys held at most, over all shards, by default.
pub const DEFAULT_CAPACITY: usize = 1_000_000;
const NS: Duration = Duration::from_nanos(1);

/// One key's state: its theoretical arrival time in nanoseconds since the unix epoch,
/// multiplied by `limit` (so that `period / limit` steps stay exact integers).
#[derive(Debug, Clone, Copy)]
struct Entry {
    tat: u128,
    limit: u64,
}

impl Entry {
    /// The key's level at `now_ns` under `limit` (0 when idle).
    fn level(&self, now_ns: u128, limit: u64) -> u128 {
        let tat = if self.limit == limit || self.limit == 0 {
            self.tat
        } else {
            // The limit was reconfigured: keep the same arrival time, rescaled.
            self.tat / u128::from(self.limit) * u128::from(limit)
        };
        tat.saturating_sub(now_ns * u128::from(limit))
    }

    fn idle(&self, now_ns: u128) -> bool {
        self.tat <= now_ns * u128::from(self.limit)
    }
}

type Shard = HashMap<Arc<str>, Entry>;

pub struct MemoryLimiter {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
    clock: Arc<dyn Clock>,
    evicted_live: AtomicU64,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("keys", &self.len())
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::with(DEFAULT_CAPACITY, Arc::new(SystemClock::default()))
    }

    /// At most `capacity` keys (rounded up to a multiple of the shard count), on `clock`.
    pub fn with(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        MemoryLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            clock,
            evicted_live: AtomicU64::new(0),
        }
    }

    /// The decision at the limiter's clock's time.
    pub fn check_now(&self, limits: &[LimitSpec]) -> Result<Verdict, LimiterError> {
        self.check_at(limits, self.clock.now())
    }

    /// The decision at `now` (unix time). Synchronous: the trait's `check` is this, ready.
    pub fn check_at(&self, limits: &[LimitSpec], now: Duration) -> Result<Verdict, LimiterError> {
        let periods = periods_in(limits, NS)?;
        let now_ns = now.as_nanos();
        let shard_of: super::PerLimit<usize> =
            limits.iter().map(|l| self.shard_index(&l.key)).collect();
        let mut guards = self.lock(&shard_of);
        let levels: super::PerLimit<u128> = limits
            .iter()
            .zip(&shard_of)
            .map(|(l, &s)| {
                guards
                    .iter()
                    .find(|(i, _)| *i == s)
                    .and_then(|(_, g)| g.get(&*l.key))
                    .map_or(0, |e| e.level(now_ns, l.limit))
            })
            .collect();
        let e = evaluate(limits, &periods, &levels, now, NS, Source::Memory);
        if e.verdict.allowed {
            for ((l, s), level) in limits.iter().zip(&shard_of).zip(&e.new_levels) {
                if l.cost == 0 {
                    continue;
                }
                if let Some((_, shard)) = guards.iter_mut().find(|(i, _)| i == s) {
                    self.store(shard, l, *level, now_ns);
                }
            }
        }
        Ok(e.verdict)
    }

    /// Adds `limit.cost` to the key whatever its level (see [`RateLimiter::charge`]).
    pub fn charge_at(&self, limit: &LimitSpec, now: Duration) -> Result<(), LimiterError> {
        periods_in(std::slice::from_ref(limit), NS)?;
        let now_ns = now.as_nanos();
        let s = self.shard_index(&limit.key);
        let mut shard = self.shards[s].lock().unwrap_or_else(|e| e.into_inner());
        let level = shard
            .get(&*limit.key)
            .map_or(0, |e| e.level(now_ns, limit.limit));
        let level = level + u128::from(limit.cost) * limit.period.as_nanos();
        // A limit of 0 refuses everything anyway: nothing to remember.
        if limit.cost > 0 && limit.limit > 0 {
            self.store(&mut shard, limit, level, now_ns);
        }
        Ok(())
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Locks each distinct shard once, in ascending order (so no two requests deadlock).
    fn lock(&self, shard_of: &[usize]) -> super::PerLimit<(usize, MutexGuard<'_, Shard>)> {
        let mut wanted: super::PerLimit<usize> = shard_of.iter().copied().collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
            .into_iter()
            .map(|s| (s, self.shards[s].lock().unwrap_or_else(|e| e.into_inner())))
            .collect()
    }

    fn store(&self, shard: &mut Shard, l: &LimitSpec, level: u128, now_ns: u128) {
        let entry = Entry {
            tat: now_ns * u128::from(l.limit) + level,
            limit: l.limit,
        };
        if let Some(e) = shard.get_mut(&*l.key) {
            *e = entry;
            return;
        }
        if shard.len() >= self.per_shard {
            self.make_room(shard, now_ns);
        }
        shard.insert(l.key.clone(), entry);
    }

    /// Drops idle keys; if that frees less than an eighth of the shard, also evicts the live
    /// keys closest to draining, so that the cost is amortized over many inserts.
    fn make_room(&self, shard: &mut Shard, now_ns: u128) {
        shard.retain(|_, e| !e.idle(now_ns));
        let target = self.per_shard - (self.per_shard / 8).max(1);
        if shard.len() <= target {
            return;
        }
        let mut by_time: Vec<(u128, Arc<str>)> = shard
            .iter()
            .map(|(k, e)| (e.tat / u128::from(e.limit.max(1)), k.clone()))
            .collect();
        let excess = shard.len() - target;
        by_time.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        for (_, key) in by_time.into_iter().take(excess) {
            shard.remove(&*key);
        }
        self.evicted_live
            .fetch_add(excess as u64, Ordering::Relaxed);
        tracing::warn!(
            evicted = excess,
            "rate limiter memory full: evicted keys that were not idle"
        );
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Keys evicted before they were idle (each one forgets some recent requests).
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

impl RateLimiter for MemoryLimiter {
    fn check<'a>(
        &'a self,
        limits: &'a [LimitSpec],
    ) -> BoxFuture<'a, Result<Verdict, LimiterError>> {
        Box::pin(std::future::ready(self.check_now(limits)))
    }

    fn charge<'a>(&'a self, limit: &'a LimitSpec) -> BoxFuture<'a, Result<(), LimiterError>> {
        Box::pin(std::future::ready(self.charge_at(limit, self.clock.now())))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ManualClock;

    const MIN: Duration = Duration::from_secs(60);
    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn limiter() -> (MemoryLimiter, Arc<ManualClock>) {
        let clock = ManualClock::new(T0);
        (MemoryLimiter::with(1_000, clock.clone()), clock)
    }

    #[test]
    fn a_burst_of_the_limit_then_refusal_then_refill() {
        let (l, clock) = limiter();
        let spec = [LimitSpec::new("k", 10, MIN)];
        for i in 0..10 {
            let v = l.check_now(&spec).unwrap();
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
            assert_eq!(v.reset_after, Duration::from_secs(6 * (i + 1)));
            assert_eq!(v.reset, T0.as_secs() + 6 * (i + 1));
        }
        let v = l.check_now(&spec).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(v.reset, T0.as_secs() + 60);
        // A refused request charged nothing: one interval later exactly one more is allowed.
        clock.advance(Duration::from_secs(6) - Duration::from_nanos(1));
        assert!(!l.check_now(&spec).unwrap().allowed);
        clock.advance(Duration::from_nanos(1));
        assert!(l.check_now(&spec).unwrap().allowed);
        assert!(!l.check_now(&spec).unwrap().allowed);
        // Other keys are independent.
        assert!(
            l.check_now(&[LimitSpec::new("other", 10, MIN)])
                .unwrap()
                .allowed
        );
        // After a whole period idle, the full burst is back.
        clock.advance(MIN);
        assert_eq!(l.check_now(&spec).unwrap().remaining, 9);
    }

    #[test]
    fn partial_refill_counts_whole_requests_only() {
        let (l, clock) = limiter();
        let spec = [LimitSpec::new("k", 10, MIN)];
        for _ in 0..10 {
            l.check_now(&spec).unwrap();
        }
        clock.advance(Duration::from_secs(9)); // 1.5 intervals
        let v = l.check_now(&spec).unwrap();
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // Half an interval left before the next one.
        assert_eq!(
            l.check_now(&spec).unwrap().retry_after,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn several_limits_are_all_or_nothing() {
        let (l, _) = limiter();
        let small = LimitSpec::new("small", 2, MIN);
        let big = LimitSpec::new("big", 5, MIN);
        let both = [big.clone(), small.clone()];
        assert!(l.check_now(&both).unwrap().allowed);
        let v = l.check_now(&both).unwrap();
        assert!(v.allowed);
        assert_eq!((v.limiting, v.remaining), (Some(1), 0));
        // "small" refuses: "big" must not be charged by the refused requests.
        for _ in 0..5 {
            let v = l.check_now(&both).unwrap();
            assert!(!v.allowed);
            assert_eq!(v.limiting, Some(1));
        }
        let v = l.check_now(std::slice::from_ref(&big)).unwrap();
        assert!(v.allowed);
        assert_eq!(v.remaining, 2, "big was charged twice, then once alone");
    }

    #[test]
    fn cost_and_after_the_fact_charges() {
        let (l, clock) = limiter();
        let tpm = LimitSpec::new("tpm", 1_000, MIN);
        let v = l.check_now(&[tpm.clone().with_cost(600)]).unwrap();
        assert!(v.allowed);
        assert_eq!(v.remaining, 400);
        assert!(!l.check_now(&[tpm.clone().with_cost(500)]).unwrap().allowed);
        // A response used 900 more tokens than announced: the key goes over its limit...
        l.charge_at(&tpm.clone().with_cost(900), clock.now())
            .unwrap();
        let v = l.check_now(&[tpm.clone().with_cost(0)]).unwrap();
        assert!(
            !v.allowed,
            "over the limit: even a zero-cost check is refused"
        );
        // ... until 500 tokens have drained: 30 s at 1,000 per minute.
        assert_eq!(v.retry_after, Some(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(30));
        assert!(l.check_now(&[tpm.with_cost(0)]).unwrap().allowed);
    }

    #[test]
    fn a_limit_of_zero_refuses_and_stores_nothing() {
        let (l, clock) = limiter();
        let zero = LimitSpec::new("blocked", 0, MIN);
        let v = l.check_now(std::slice::from_ref(&zero)).unwrap();
        assert!(!v.allowed);
        assert_eq!((v.limit, v.remaining), (0, 0));
        assert_eq!(v.retry_after, Some(MIN));
        l.charge_at(&zero, clock.now()).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_go_first() {
        let clock = ManualClock::new(T0);
        let l = MemoryLimiter::with(160, clock.clone());
        assert_eq!(l.capacity(), 160);
        for i in 0..1_000 {
            l.check_now(&[LimitSpec::new(format!("k{i}"), 10, MIN)])
                .unwrap();
        }
        assert!(l.len() <= 160, "{} keys held", l.len());
        assert!(l.evicted_live() > 0, "live keys had to go");
        // Once every key is idle, new keys replace them without evicting live ones.
        clock.advance(MIN);
        let before = l.evicted_live();
        for i in 0..1_000 {
            l.check_now(&[LimitSpec::new(format!("new{i}"), 10, MIN)])
                .unwrap();
            clock.advance(Duration::from_secs(6)); // each key idle before the shard fills
        }
        assert!(l.len() <= 160);
        assert_eq!(l.evicted_live(), before);
    }

    #[test]
    fn parallel_threads_get_exactly_the_limit() {
        let l = Arc::new(MemoryLimiter::new());
        let specs = [
            LimitSpec::new("shared", 50, Duration::from_secs(3600)),
            LimitSpec::new("wide", 1_000, Duration::from_secs(3600)),
        ];
        let allowed: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..25)
                            .filter(|_| l.check_now(&specs).unwrap().allowed)
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 50);
    }
}
