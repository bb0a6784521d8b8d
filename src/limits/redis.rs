//! The Redis backend: the same GCRA as [`super::memory`], run by one Lua script per request that
//! reads, decides and updates **all** of the request's limits atomically — one round trip
//! (`EVALSHA`, with `SCRIPT LOAD` only after a Redis restart) whatever the number of limits.
//!
//! Time is the Redis server's (`TIME`), so nodes whose clocks disagree still share one limit.
//! Each key holds `"<level>:<last ms>"` and expires (`PX`) when its level has drained, so idle
//! keys vanish by themselves. Keys are `gh:rl:<spec key>`.
//!
//! Levels are integers in milliseconds × requests; Lua numbers are doubles, exact below 2^53,
//! so `limit × period in ms` must stay below about 4.5 × 10^15 (e.g. 10^9 per hour).

use std::time::Duration;

use super::{evaluate, periods_in, LimitSpec, LimiterError, Source, Verdict};

pub const KEY_PREFIX: &str = "gh:rl:";
/// Per call (connection included) unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const MS: Duration = Duration::from_millis(1);
/// Above this, `limit × period_ms` is not exact in Lua's doubles.
const MAX_EXACT: u128 = 1 << 52;

/// KEYS: one per limit. ARGV[1]: now in ms, or "" for the server's clock. ARGV[2]: "check" (all
/// or nothing) or "charge" (add unconditionally). Then, per limit i, ARGV[3i], ARGV[3i+1],
/// ARGV[3i+2]: limit, period (ms), cost. Returns {allowed (0/1), now (ms), level_1 … level_n},
/// the levels as they were before this request (drained to now).
const SCRIPT: &str = r#"
-- Redis < 5 replicates scripts verbatim and then refuses writes after TIME; from 5 on this is
-- the default (and from 7 a no-op).
if redis.replicate_commands then pcall(redis.replicate_commands) end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local charge = ARGV[2] == 'charge'
local n = #KEYS
local levels = {}
local ok = true
for i = 1, n do
  local limit = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local cost = tonumber(ARGV[3 * i + 2])
  local level = 0
  local v = redis.call('GET', KEYS[i])
  if v then
    local l, last = string.match(v, '^(%d+):(%d+)$')
    if l then
      local elapsed = now - tonumber(last)
      if elapsed < 0 then elapsed = 0 end
      level = tonumber(l) - elapsed * limit
      if level < 0 then level = 0 end
    end
  end
  levels[i] = level
  if level + cost * period > limit * period then ok = false end
end
if ok or charge then
  for i = 1, n do
    local limit = tonumber(ARGV[3 * i])
    local period = tonumber(ARGV[3 * i + 1])
    local cost = tonumber(ARGV[3 * i + 2])
    if cost > 0 and limit > 0 then
      local new = levels[i] + cost * period
      local ttl = math.ceil(new / limit)
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], string.format('%d:%d', new, now), 'PX', ttl)
    end
  end
end
local out = {ok and 1 or 0, now}
for i = 1, n do out[i + 2] = levels[i] end
return out
"#;

#[derive(Clone)]
pub struct RedisLimiter {
    redis: crate::redis::Redis,
    script: redis::Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisLimiter {
    pub fn new(redis: crate::redis::Redis) -> Self {
        RedisLimiter {
            redis,
            script: redis::Script::new(SCRIPT),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The time limit of one call, connecting included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The decision on the Redis server's clock.
    pub async fn check_limits(&self, limits: &[LimitSpec]) -> Result<Verdict, LimiterError> {
        self.run(limits, None, false).await.map(|(v, _)| v)
    }

    /// The decision at `now` (unix time) instead of the server's clock (tests). Times given to
    /// one key must not go backwards.
    pub async fn check_at(
        &self,
        limits: &[LimitSpec],
        now: Duration,
    ) -> Result<Verdict, LimiterError> {
        self.run(limits, Some(now), false).await.map(|(v, _)| v)
    }

    /// Adds the limit's cost now (see [`RateLimiter::charge`]).
    pub async fn charge_limit(&self, limit: &LimitSpec) -> Result<(), LimiterError> {
        self.charge_at(limit, None).await
    }

    pub async fn charge_at(
        &self,
        limit: &LimitSpec,
        now: Option<Duration>,
    ) -> Result<(), LimiterError> {
        self.run(std::slice::from_ref(limit), now, true)
            .await
            .map(|_| ())
    }

    async fn run(
        &self,
        limits: &[LimitSpec],
        now: Option<Duration>,
        charge: bool,
    ) -> Result<(Verdict, bool), LimiterError> {
        if limits.is_empty() {
            return Ok((Verdict::unlimited(Source::Redis), true));
        }
        let periods = periods_in(limits, MS)?;
        for (l, p) in limits.iter().zip(&periods) {
            let worst = (u128::from(l.limit) + u128::from(l.cost)) * p;
            if worst >= MAX_EXACT {
                return Err(LimiterError::InvalidSpec {
                    key: l.key.to_string(),
                    reason: "limit × period (ms) too large for the Redis backend",
                });
            }
        }
        let mut call = self.script.prepare_invoke();
        call.arg(now.map(|t| t.as_millis().to_string()).unwrap_or_default())
            .arg(if charge { "charge" } else { "check" });
        for (l, p) in limits.iter().zip(&periods) {
            call.key(format!("{KEY_PREFIX}{}", l.key))
                .arg(l.limit)
                .arg(p.to_string())
                .arg(l.cost);
        }
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, async {
            let mut conn = self
                .redis
                .connection(self.timeout)
                .await
                .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
            call.invoke_async(&mut conn)
                .await
                .map_err(|e| LimiterError::Unavailable(e.to_string()))
        })
        .await
        .map_err(|_| LimiterError::Timeout)??;
        if reply.len() != limits.len() + 2 {
            return Err(LimiterError::Unavailable(format!(
                "unexpected script reply of {} values",
                reply.len()
            )));
        }
        let allowed = reply[0] == 1;
        let now = Duration::from_millis(u64::try_from(reply[1]).unwrap_or(0));
        let levels: Vec<u128> = reply[2..]
            .iter()
            .map(|&l| u128::try_from(l).unwrap_or(0))
            .collect();
        let e = evaluate(limits, &periods, &levels, now, MS, Source::Redis);
        if !charge && e.verdict.allowed != allowed {
            // Both sides apply the same rule to the same integers; disagreement is a bug.
            tracing::error!(
                script = allowed,
                evaluated = e.verdict.allowed,
                "rate-limit script and evaluation disagree"
            );
        }
        let mut verdict = e.verdict;
        verdict.allowed = allowed || charge;
        if verdict.allowed {
            verdict.retry_after = None;
        }
        Ok((verdict, allowed))
    }
}

super::async_limiter!(RedisLimiter, "redis");
