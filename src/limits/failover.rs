//! Redis first, memory while Redis is unreachable.
//!
//! Each request goes to Redis with a short time limit. When Redis errors or is slow, that
//! request is decided by this node's in-memory limiter instead, the limiter reports itself
//! degraded (`/health` says limits are node-local) and a warning is logged — once when it
//! happens, then at most once a minute with the number of requests decided locally. While
//! degraded, at most one request per second tries Redis again (the others go straight to
//! memory, costing nothing); the first that succeeds ends the degraded state.
//!
//! So an outage neither opens the gates (each node still enforces every limit, locally) nor
//! closes them (nothing is refused because Redis is down). With N nodes, a client can get up to
//! N times its limit during an outage; counts taken in memory are not copied back to Redis.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use super::{Clock, LimitSpec, LimiterError, MemoryLimiter, RedisLimiter, SystemClock, Verdict};

/// While degraded, how often one request may try Redis again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// While degraded, how often the warning is repeated.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct FailoverLimiter {
    redis: RedisLimiter,
    memory: MemoryLimiter,
    clock: Arc<dyn Clock>,
    degraded: AtomicBool,
    /// Milliseconds (on `clock`) of the last attempt to reach Redis while degraded.
    last_probe_ms: AtomicU64,
    last_warn_ms: AtomicU64,
    /// Requests decided in memory since the last warning.
    local_decisions: AtomicU64,
}

impl FailoverLimiter {
    pub fn new(redis: RedisLimiter, memory: MemoryLimiter) -> Self {
        Self::with_clock(redis, memory, Arc::new(SystemClock::default()))
    }

    /// `clock` paces the probes and warnings (the memory limiter has its own).
    pub fn with_clock(redis: RedisLimiter, memory: MemoryLimiter, clock: Arc<dyn Clock>) -> Self {
        FailoverLimiter {
            redis,
            memory,
            clock,
            degraded: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            local_decisions: AtomicU64::new(0),
        }
    }

    pub fn memory(&self) -> &MemoryLimiter {
        &self.memory
    }

    pub fn redis(&self) -> &RedisLimiter {
        &self.redis
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request should try Redis: always when healthy; when degraded, only the one
    /// request that wins the probe slot of the current second.
    fn should_try_redis(&self) -> bool {
        if !self.degraded.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn redis_ok(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            let local = self.local_decisions.swap(0, Ordering::Relaxed);
            tracing::warn!(
                decided_locally = local,
                "Redis answers again: rate limits are shared between nodes again"
            );
        }
    }

    fn redis_failed(&self, error: &LimiterError) {
        let now = self.now_ms();
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.last_probe_ms.store(now, Ordering::Release);
            self.last_warn_ms.store(now, Ordering::Release);
            tracing::warn!(
                %error,
                "Redis unreachable: rate limits are enforced per node (in memory) until it answers again"
            );
        }
    }

    fn served_locally(&self) {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let last = self.last_warn_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let local = self.local_decisions.swap(0, Ordering::Relaxed);
            tracing::warn!(
                decided_locally = local,
                "Redis still unreachable: rate limits are node-local"
            );
        }
    }

    async fn check_limits(&self, limits: &[LimitSpec]) -> Result<Verdict, LimiterError> {
        if self.should_try_redis() {
            match self.redis.check_limits(limits).await {
                Ok(v) => {
                    self.redis_ok();
                    return Ok(v);
                }
                Err(e @ LimiterError::InvalidSpec { .. }) => return Err(e),
                Err(e) => self.redis_failed(&e),
            }
        }
        self.served_locally();
        self.memory.check_now(limits)
    }

    async fn charge_limit(&self, limit: &LimitSpec) -> Result<(), LimiterError> {
        if self.should_try_redis() {
            match self.redis.charge_at(limit, None).await {
                Ok(()) => {
                    self.redis_ok();
                    return Ok(());
                }
                Err(e @ LimiterError::InvalidSpec { .. }) => return Err(e),
                Err(e) => self.redis_failed(&e),
            }
        }
        self.memory.charge_at(limit, self.memory.clock().now())
    }
}

super::async_limiter!(
    FailoverLimiter,
    "redis+memory",
    fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }
);
