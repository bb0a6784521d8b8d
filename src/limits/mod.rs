//! Rate limiting. An exact in-memory GCRA limiter (the generic cell rate algorithm: one
//! timestamp per key, O(1) per decision), sharded to keep lock contention low, with idle keys
//! evicted so memory stays bounded.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The outcome of one decision, with what the rate-limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the key is back to its full allowance.
    pub reset_after: Duration,
    /// When refused: until the next request would be allowed.
    pub retry_after: Duration,
}

const SHARDS: usize = 16;
/// Per shard; beyond it, idle keys are swept before inserting.
const SWEEP_AT: usize = 50_000;

pub struct MemoryLimiter {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryLimiter")
    }
}

impl MemoryLimiter {
    pub fn new() -> Self {
        MemoryLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// Allows at most `limit` requests per `period` for `key` (a burst of `limit` from idle).
    pub fn check(&self, key: &str, limit: u32, period: Duration) -> Decision {
        self.check_at(key, limit, period, Instant::now())
    }

    pub fn check_at(&self, key: &str, limit: u32, period: Duration, now: Instant) -> Decision {
        let limit = limit.max(1);
        let interval = period / limit;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let ahead = new_tat - now;
        if ahead > period {
            let retry_after = ahead - period;
            let reset_after = tat - now;
            return Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after,
                retry_after,
            };
        }
        if map.len() >= SWEEP_AT && !map.contains_key(key) {
            // Keys whose theoretical arrival time has passed are at full allowance: forget them.
            map.retain(|_, t| *t > now);
        }
        map.insert(key.to_string(), new_tat);
        let used = ahead.as_nanos() / interval.as_nanos().max(1);
        Decision {
            allowed: true,
            limit,
            remaining: (limit as u128).saturating_sub(used) as u32,
            reset_after: ahead,
            retry_after: Duration::ZERO,
        }
    }

    /// Number of keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_then_refusal_then_refill() {
        let l = MemoryLimiter::new();
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        for i in 0..10 {
            let d = l.check_at("k", 10, period, t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
        }
        let d = l.check_at("k", 10, period, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(6));
        // One interval later exactly one more is allowed.
        let d = l.check_at("k", 10, period, t0 + Duration::from_secs(6));
        assert!(d.allowed);
        assert!(
            !l.check_at("k", 10, period, t0 + Duration::from_secs(6))
                .allowed
        );
        // Other keys are independent.
        assert!(l.check_at("other", 10, period, t0).allowed);
        // After a whole period idle, the full burst is back.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(l.check_at("k", 10, period, later).remaining, 9);
    }
}
