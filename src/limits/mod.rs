//! Rate limits and usage metering (SPEC §5).
//!
//! One trait, [`RateLimiter`], with one sibling file per backend:
//! - [`memory`]: exact GCRA in process memory, sharded, bounded, idle keys evicted;
//! - [`redis`]: the same GCRA in one Lua script per request (one round trip whatever the number
//!   of limits), on the Redis server's clock, so every node shares one limit;
//! - [`failover`]: Redis, falling back to memory (and reporting itself degraded) while Redis
//!   errors or is slow, and returning to Redis when it answers again.
//!
//! [`usage`] holds the monthly quota counters (metering), flushed durably to the database.
//!
//! All backends decide with one pure function, [`evaluate`], from each limit's current *level*:
//! GCRA's "theoretical arrival time minus now", multiplied by the limit so that it stays an
//! integer. A request of `cost` adds `cost × period` to a level; a level drains by `limit` per
//! unit of time; a limit is full at `limit × period`. A burst of `limit` requests is allowed from
//! idle, then one request every `period / limit` — exactly, with no rounding.

pub mod failover;
pub mod memory;
pub mod middleware;
pub mod redis;
pub mod store;
pub mod usage;

use std::{
    fmt::Debug,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::future::BoxFuture;

pub use failover::FailoverLimiter;
pub use memory::MemoryLimiter;
pub use redis::RedisLimiter;
pub use usage::UsageMeter;

/// One limit that applies to a request: at most `limit` units per `period` for `key`, this
/// request costing `cost` units (1 for a request; tokens for a tokens-per-minute limit).
///
/// Keys name the limited thing and its window, e.g. `key:key_01H…:min`, `org:org_01H…:hour`,
/// `ip:203.0.113.9:login`. Two specs of one request must not share a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    /// Shared, so that the request path can keep a caller's keys made once (`Arc<str>`).
    pub key: std::sync::Arc<str>,
    pub limit: u64,
    pub period: Duration,
    pub cost: u64,
}

impl LimitSpec {
    /// A limit of `limit` requests per `period`, this request costing 1.
    pub fn new(key: impl Into<std::sync::Arc<str>>, limit: u64, period: Duration) -> Self {
        LimitSpec {
            key: key.into(),
            limit,
            period,
            cost: 1,
        }
    }

    /// The same limit with another cost (0 checks without consuming: "not already over").
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    pub fn per_second(key: impl Into<std::sync::Arc<str>>, limit: u64) -> Self {
        Self::new(key, limit, Duration::from_secs(1))
    }

    pub fn per_minute(key: impl Into<std::sync::Arc<str>>, limit: u64) -> Self {
        Self::new(key, limit, Duration::from_secs(60))
    }

    pub fn per_hour(key: impl Into<std::sync::Arc<str>>, limit: u64) -> Self {
        Self::new(key, limit, Duration::from_secs(3600))
    }
}

/// The decision for a whole request, and what its `X-RateLimit-*` headers say: the values of the
/// **most restrictive** limit (when allowed, the one with the fewest requests remaining; when
/// refused, the one that keeps the request waiting longest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// True when every limit allowed the request (and each was charged); false when any refused
    /// it (and none was charged).
    pub allowed: bool,
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Remaining`: units still available right now under that limit.
    pub remaining: u64,
    /// `X-RateLimit-Reset`: unix time (seconds, rounded up) when that limit is back to full.
    pub reset: u64,
    /// The same as a duration from the decision.
    pub reset_after: Duration,
    /// When refused: how long until the same request would be allowed (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Index, in the slice given to `check`, of the limit reported; `None` when no limit applied.
    pub limiting: Option<usize>,
    /// Which store decided.
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
}

impl Verdict {
    /// The verdict for a request that no limit applies to (no headers to send).
    pub fn unlimited(source: Source) -> Verdict {
        Verdict {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset: 0,
            reset_after: Duration::ZERO,
            retry_after: None,
            limiting: None,
            source,
        }
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1) when refused.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }

    /// The response headers, in order: `X-RateLimit-Limit`, `-Remaining`, `-Reset`, and
    /// `Retry-After` when refused. Empty when no limit applied.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let applies = self.limiting.is_some();
        [
            ("x-ratelimit-limit", Some(self.limit)),
            ("x-ratelimit-remaining", Some(self.remaining)),
            ("x-ratelimit-reset", Some(self.reset)),
            ("retry-after", self.retry_after_secs()),
        ]
        .into_iter()
        .filter_map(move |(name, v)| v.filter(|_| applies).map(|v| (name, v)))
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("invalid limit '{key}': {reason}")]
    InvalidSpec { key: String, reason: &'static str },
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    #[error("rate-limit store timed out")]
    Timeout,
}

/// A limiter failure is an internal error for the HTTP API (logged, never shown): with the
/// failover limiter it happens only for an invalid spec, since Redis failures fall back to memory.
impl From<LimiterError> for crate::error::Error {
    fn from(e: LimiterError) -> Self {
        crate::error::Error::Internal(anyhow::Error::new(e).context("rate limiter"))
    }
}

/// A rate limiter: decides a request against all the limits that apply to it, atomically.
pub trait RateLimiter: Send + Sync + Debug {
    /// Allowed only if **every** limit allows it; then each is charged its cost. When refused,
    /// **none** is charged. An empty slice is always allowed ([`Verdict::unlimited`]).
    fn check<'a>(&'a self, limits: &'a [LimitSpec])
        -> BoxFuture<'a, Result<Verdict, LimiterError>>;

    /// Adds `limit.cost` to `limit.key` unconditionally, for a cost known only afterwards (the
    /// tokens of a response). It may take the key over its limit: later checks are then refused
    /// until it drains.
    fn charge<'a>(&'a self, limit: &'a LimitSpec) -> BoxFuture<'a, Result<(), LimiterError>>;

    /// True while limits are not shared between nodes although they should be (Redis down).
    fn is_degraded(&self) -> bool {
        false
    }

    /// `memory`, `redis` or `redis+memory` (failover), for `/health`.
    fn backend(&self) -> &'static str;
}

/// Implements [`RateLimiter`] for a limiter whose inherent `async fn check_limits` and
/// `async fn charge_limit` do the work (Redis, Redis with failover), plus any further trait items.
macro_rules! async_limiter {
    ($ty:ty, $backend:literal $(, $extra:item)*) => {
        impl $crate::limits::RateLimiter for $ty {
            fn check<'a>(
                &'a self,
                limits: &'a [$crate::limits::LimitSpec],
            ) -> futures_util::future::BoxFuture<'a, Result<$crate::limits::Verdict, $crate::limits::LimiterError>> {
                Box::pin(self.check_limits(limits))
            }

            fn charge<'a>(
                &'a self,
                limit: &'a $crate::limits::LimitSpec,
            ) -> futures_util::future::BoxFuture<'a, Result<(), $crate::limits::LimiterError>> {
                Box::pin(self.charge_limit(limit))
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            $($extra)*
        }
    };
}
pub(crate) use async_limiter;

/// The limiter from the configuration: Redis with in-memory failover when `redis_url` is set,
/// else memory only.
pub fn from_config(redis: Option<&crate::redis::Redis>) -> Arc<dyn RateLimiter> {
    match redis {
        Some(r) => Arc::new(FailoverLimiter::new(
            RedisLimiter::new(r.clone()),
            MemoryLimiter::new(),
        )),
        None => Arc::new(MemoryLimiter::new()),
    }
}

/// Time as the limiters see it: a duration since the unix epoch that never goes backwards.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Duration;
}

/// The system clock read once, then advanced by the monotonic clock (so wall-clock steps do
/// not disturb the limits).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    base_unix: Duration,
    base: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            base_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            base: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.base_unix + self.base.elapsed()
    }
}

/// A clock that moves only when told to (tests, benchmarks).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Duration) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(start.as_nanos() as u64)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Duration) {
        self.0.store(to.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Validates specs and gives each period in `unit`s (nanoseconds in memory, milliseconds in
/// Redis).
/// Per-limit values of one request (a request has a handful of limits: kept on the stack).
pub(crate) type PerLimit<T> = smallvec::SmallVec<[T; 4]>;

pub(crate) fn periods_in(
    limits: &[LimitSpec],
    unit: Duration,
) -> Result<PerLimit<u128>, LimiterError> {
    for (i, l) in limits.iter().enumerate() {
        if limits[..i].iter().any(|o| o.key == l.key) {
            return Err(LimiterError::InvalidSpec {
                key: l.key.to_string(),
                reason: "the same key twice in one request",
            });
        }
    }
    limits
        .iter()
        .map(|l| {
            let p = l.period.as_nanos() / unit.as_nanos();
            if p == 0 {
                Err(LimiterError::InvalidSpec {
                    key: l.key.to_string(),
                    reason: "period shorter than the store's time unit",
                })
            } else if l.key.is_empty() {
                Err(LimiterError::InvalidSpec {
                    key: String::new(),
                    reason: "empty key",
                })
            } else {
                Ok(p)
            }
        })
        .collect()
}

/// The outcome of [`evaluate`]: the verdict, and each limit's level if the request is committed.
#[derive(Debug)]
pub(crate) struct Evaluation {
    pub verdict: Verdict,
    pub new_levels: PerLimit<u128>,
}

/// The one decision rule, shared by every backend. `levels[i]` is limit `i`'s current level
/// (already drained to `now`), `periods[i]` its period, both in `unit`s; `now` is unix time.
pub(crate) fn evaluate(
    limits: &[LimitSpec],
    periods: &[u128],
    levels: &[u128],
    now: Duration,
    unit: Duration,
    source: Source,
) -> Evaluation {
    if limits.is_empty() {
        return Evaluation {
            verdict: Verdict::unlimited(source),
            new_levels: PerLimit::new(),
        };
    }
    let unit_ns = unit.as_nanos();
    let to_duration = |units: u128| {
        Duration::from_nanos(u64::try_from(units.saturating_mul(unit_ns)).unwrap_or(u64::MAX))
    };
    let div_ceil = |a: u128, b: u128| a.div_ceil(b.max(1));

    #[derive(Clone, Copy)]
    struct One {
        remaining: u64,
        reset_after: u128,
        retry_after: Option<u128>,
    }
    // First every limit's level after this request, and whether all fit.
    let new_levels: PerLimit<u128> = limits
        .iter()
        .zip(periods)
        .zip(levels)
        .map(|((spec, &period), &level)| level + u128::from(spec.cost) * period)
        .collect();
    let allowed = limits
        .iter()
        .zip(periods)
        .zip(&new_levels)
        .all(|((spec, &period), &need)| need <= u128::from(spec.limit) * period);
    // Then the most restrictive: when allowed, the fewest remaining (then the latest reset);
    // when refused, the longest wait (then the fewest remaining, then the first).
    let mut best: Option<(usize, One)> = None;
    for (i, (((spec, &period), &level), &need)) in limits
        .iter()
        .zip(periods)
        .zip(levels)
        .zip(&new_levels)
        .enumerate()
    {
        let limit = u128::from(spec.limit);
        let full = limit * period;
        let retry_after = if need <= full {
            None
        } else if spec.cost > spec.limit {
            // Never fits: the request is too big for this limit; suggest a whole period.
            Some(period)
        } else {
            Some(div_ceil(need - full, limit))
        };
        // After the request when allowed; as things stand when refused (nothing charged).
        let after = if allowed { need } else { level };
        let one = One {
            remaining: u64::try_from(full.saturating_sub(after) / period).unwrap_or(u64::MAX),
            reset_after: if limit == 0 {
                0
            } else {
                div_ceil(after, limit)
            },
            retry_after,
        };
        let better = match &best {
            None => true,
            Some((_, b)) if allowed => {
                (one.remaining, std::cmp::Reverse(one.reset_after))
                    < (b.remaining, std::cmp::Reverse(b.reset_after))
            }
            Some((_, b)) => {
                (one.retry_after, std::cmp::Reverse(one.remaining))
                    > (b.retry_after, std::cmp::Reverse(b.remaining))
            }
        };
        if better {
            best = Some((i, one));
        }
    }
    let Some((pick, chosen)) = best else {
        return Evaluation {
            verdict: Verdict::unlimited(source),
            new_levels,
        };
    };
    let reset_after = to_duration(chosen.reset_after);
    Evaluation {
        verdict: Verdict {
            allowed,
            limit: limits[pick].limit,
            remaining: chosen.remaining,
            reset: ceil_secs(now + reset_after),
            reset_after,
            retry_after: if allowed {
                None
            } else {
                chosen.retry_after.map(to_duration)
            },
            limiting: Some(pick),
            source,
        },
        new_levels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_most_restrictive_limit_is_reported() {
        let limits = [
            LimitSpec::new("a", 100, Duration::from_secs(60)),
            LimitSpec::new("b", 10, Duration::from_secs(60)),
        ];
        let periods = periods_in(&limits, MS).unwrap();
        let now = Duration::from_secs(1_000);
        let e = evaluate(&limits, &periods, &[0, 0], now, MS, Source::Memory);
        assert!(e.verdict.allowed);
        assert_eq!(e.verdict.limiting, Some(1));
        assert_eq!((e.verdict.limit, e.verdict.remaining), (10, 9));
        // One request under 10/min fills 6 s of the window.
        assert_eq!(e.verdict.reset_after, Duration::from_secs(6));
        assert_eq!(e.verdict.reset, 1_006);
        assert_eq!(e.new_levels.as_slice(), &[60_000, 60_000]);
    }

    #[test]
    fn refused_reports_the_longest_wait_and_retry_after_rounds_up() {
        let limits = [
            LimitSpec::new("a", 3, Duration::from_secs(1)),
            LimitSpec::new("b", 10, Duration::from_secs(60)),
        ];
        let periods = periods_in(&limits, MS).unwrap();
        // "a" full (3 × 1000), "b" full (10 × 60000).
        let e = evaluate(
            &limits,
            &periods,
            &[3_000, 600_000],
            Duration::from_millis(5_500),
            MS,
            Source::Redis,
        );
        let v = e.verdict;
        assert!(!v.allowed);
        assert_eq!(v.limiting, Some(1));
        assert_eq!(v.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(v.retry_after_secs(), Some(6));
        assert_eq!(v.remaining, 0);
        assert_eq!(v.reset_after, Duration::from_secs(60));
        assert_eq!(v.reset, 66); // 5.5 s + 60 s, rounded up
        assert_eq!(
            v.headers().collect::<Vec<_>>(),
            vec![
                ("x-ratelimit-limit", 10),
                ("x-ratelimit-remaining", 0),
                ("x-ratelimit-reset", 66),
                ("retry-after", 6),
            ]
        );
    }

    #[test]
    fn a_cost_larger_than_the_limit_never_fits() {
        let limits = [LimitSpec::per_minute("tpm", 1_000).with_cost(5_000)];
        let periods = periods_in(&limits, MS).unwrap();
        let e = evaluate(&limits, &periods, &[0], Duration::ZERO, MS, Source::Memory);
        assert!(!e.verdict.allowed);
        assert_eq!(e.verdict.retry_after, Some(Duration::from_secs(60)));
        assert_eq!(e.verdict.remaining, 1_000);
    }

    #[test]
    fn no_limits_means_allowed_without_headers() {
        let e = evaluate(&[], &[], &[], Duration::ZERO, MS, Source::Memory);
        assert!(e.verdict.allowed);
        assert_eq!(e.verdict.headers().count(), 0);
    }

    #[test]
    fn specs_are_validated() {
        assert!(periods_in(&[LimitSpec::new("k", 1, Duration::from_micros(10))], MS).is_err());
        assert!(periods_in(&[LimitSpec::new("", 1, Duration::from_secs(1))], MS).is_err());
        let twice = [LimitSpec::per_minute("k", 1), LimitSpec::per_hour("k", 10)];
        assert!(periods_in(&twice, MS).is_err());
    }
}
