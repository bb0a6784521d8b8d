//! Rate limits and usage metering (SPEC §5) against the real stores: memory, the shared Redis
//! (`GATEHOUSE_TEST_REDIS`, skipped loudly outside CI when down), private `redis-server`s that
//! the tests start and stop themselves (outage and recovery), SQLite and PostgreSQL.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{in_ci, redis_available, redis_url, Backend, ServerOptions, TestServer};
use gatehouse::{
    limits::{
        usage::{Counter, UsageMeter},
        FailoverLimiter, LimitSpec, ManualClock, MemoryLimiter, RateLimiter, RedisLimiter, Source,
    },
    redis::Redis,
    storage::Db,
};

const MIN: Duration = Duration::from_secs(60);
/// A fixed "now" for decisions whose exact values are asserted.
const T0: Duration = Duration::from_secs(1_800_000_000);

fn unique(name: &str) -> String {
    format!("test:{name}:{}", gatehouse::crypto::random_base62(10))
}

fn redis_limiter(url: &str) -> RedisLimiter {
    RedisLimiter::new(Redis::new(url).expect("redis url"))
}

/// A node: Redis with in-memory failover, its probes paced by a clock the test moves. Tests
/// that need Redis to answer give it a generous time limit (a busy CI machine must not turn a
/// slow answer into a local decision); outage tests a short one.
fn node(url: &str, timeout: Duration) -> (FailoverLimiter, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let limiter = FailoverLimiter::with_clock(
        redis_limiter(url).with_timeout(timeout),
        MemoryLimiter::new(),
        clock.clone(),
    );
    (limiter, clock)
}

/// `tasks` concurrent requests through one limiter; how many were allowed.
async fn race(limiter: Arc<dyn RateLimiter>, specs: Vec<LimitSpec>, tasks: usize) -> usize {
    let specs = Arc::new(specs);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (l, s) = (limiter.clone(), specs.clone());
            tokio::spawn(async move { l.check(&s).await.expect("decision").allowed })
        })
        .collect();
    let mut allowed = 0;
    for h in handles {
        allowed += usize::from(h.await.unwrap());
    }
    allowed
}

// ---------------------------------------------------------------------------------------------
// Exact decisions on Redis (the script's own clock replaced by a given time)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redis_burst_then_refusal_then_refill_with_exact_headers() {
    if !redis_available("redis_burst_then_refusal_then_refill_with_exact_headers").await {
        return;
    }
    let l = redis_limiter(&redis_url());
    let spec = [LimitSpec::new(unique("burst"), 10, MIN)];
    for i in 0..10u64 {
        let v = l.check_at(&spec, T0).await.unwrap();
        assert!(v.allowed, "request {i}");
        assert_eq!(v.source, Source::Redis);
        assert_eq!(v.limit, 10);
        assert_eq!(v.remaining, 9 - i);
        // Each request fills 6 s of the minute; the reset is when it has all drained.
        assert_eq!(v.reset_after, Duration::from_secs(6 * (i + 1)));
        assert_eq!(v.reset, T0.as_secs() + 6 * (i + 1));
        assert_eq!(v.retry_after, None);
    }
    let v = l.check_at(&spec, T0).await.unwrap();
    assert!(!v.allowed);
    assert_eq!(v.remaining, 0);
    assert_eq!(v.retry_after, Some(Duration::from_secs(6)));
    assert_eq!(v.reset, T0.as_secs() + 60);
    let headers: Vec<_> = v.headers().collect();
    assert_eq!(
        headers,
        vec![
            ("x-ratelimit-limit", 10),
            ("x-ratelimit-remaining", 0),
            ("x-ratelimit-reset", T0.as_secs() + 60),
            ("retry-after", 6),
        ]
    );
    // 1 ms before the retry time: still refused (and the refusals charged nothing).
    let almost = T0 + Duration::from_millis(5_999);
    let v = l.check_at(&spec, almost).await.unwrap();
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(Duration::from_millis(1)));
    assert_eq!(v.retry_after_secs(), Some(1));
    // At the retry time exactly one more, then refused again.
    let t = T0 + Duration::from_secs(6);
    assert!(l.check_at(&spec, t).await.unwrap().allowed);
    assert!(!l.check_at(&spec, t).await.unwrap().allowed);
    // After 25 s more (4 intervals + 1 s), four more and a 5 s wait for the fifth.
    let t = t + Duration::from_secs(25);
    for i in 0..4u64 {
        let v = l.check_at(&spec, t).await.unwrap();
        assert!(v.allowed);
        assert_eq!(v.remaining, 3 - i);
    }
    let v = l.check_at(&spec, t).await.unwrap();
    assert_eq!(v.retry_after, Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn redis_several_limits_are_all_or_nothing_in_one_script() {
    if !redis_available("redis_several_limits_are_all_or_nothing_in_one_script").await {
        return;
    }
    let l = redis_limiter(&redis_url());
    let key = LimitSpec::new(unique("key"), 100, MIN);
    let org = LimitSpec::new(unique("org"), 3, Duration::from_secs(3600));
    let tpm = LimitSpec::new(unique("tpm"), 1_000, MIN).with_cost(200);
    let all = [key.clone(), org.clone(), tpm.clone()];
    for _ in 0..3 {
        assert!(l.check_at(&all, T0).await.unwrap().allowed);
    }
    let v = l.check_at(&all, T0).await.unwrap();
    assert!(!v.allowed);
    assert_eq!(v.limiting, Some(1), "the org limit refused");
    assert_eq!(v.retry_after, Some(Duration::from_secs(1200)));
    // The refused request charged neither the key nor the tokens limit.
    let v = l.check_at(std::slice::from_ref(&key), T0).await.unwrap();
    assert_eq!(v.remaining, 96);
    let v = l.check_at(&[tpm.clone().with_cost(0)], T0).await.unwrap();
    assert_eq!(v.remaining, 400);
    // Tokens known after the response: charged unconditionally, here over the limit.
    l.charge_at(&tpm.clone().with_cost(700), Some(T0))
        .await
        .unwrap();
    let v = l.check_at(&[tpm.with_cost(0)], T0).await.unwrap();
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(Duration::from_millis(18_000)));
    // A limit of 0 refuses (waiting a period would not help) and writes nothing.
    let zero = LimitSpec::new(unique("zero"), 0, MIN);
    let v = l.check_at(std::slice::from_ref(&zero), T0).await.unwrap();
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(MIN));
    l.charge_at(&zero, Some(T0)).await.unwrap();
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_expire_when_drained() {
    if !redis_available("redis_keys_carry_the_prefix_and_expire_when_drained").await {
        return;
    }
    let l = redis_limiter(&redis_url());
    let name = unique("ttl");
    // Server clock: 2 requests under 10/min leave 12 s to drain.
    l.check_limits(&[LimitSpec::new(name.clone(), 10, MIN).with_cost(2)])
        .await
        .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("gh:rl:{name}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((11_000..=12_000).contains(&ttl), "PTTL {ttl}");
}

// ---------------------------------------------------------------------------------------------
// Concurrency: exactly the limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_200_parallel_requests_against_50_get_exactly_50() {
    let l: Arc<dyn RateLimiter> = Arc::new(MemoryLimiter::new());
    let specs = vec![
        LimitSpec::new("k", 50, Duration::from_secs(3600)),
        LimitSpec::new("org", 10_000, Duration::from_secs(3600)),
    ];
    assert_eq!(race(l, specs, 200).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_200_parallel_requests_against_50_get_exactly_50() {
    if !redis_available("redis_200_parallel_requests_against_50_get_exactly_50").await {
        return;
    }
    let l: Arc<dyn RateLimiter> =
        Arc::new(redis_limiter(&redis_url()).with_timeout(Duration::from_secs(5)));
    let specs = vec![
        LimitSpec::new(unique("k"), 50, Duration::from_secs(3600)),
        LimitSpec::new(unique("org"), 10_000, Duration::from_secs(3600)),
    ];
    assert_eq!(race(l, specs, 200).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_sharing_redis_enforce_one_global_limit() {
    if !redis_available("two_nodes_sharing_redis_enforce_one_global_limit").await {
        return;
    }
    // Two limiters, two connections: two nodes.
    let (a, _) = node(&redis_url(), Duration::from_secs(5));
    let (b, _) = node(&redis_url(), Duration::from_secs(5));
    let (a, b): (Arc<dyn RateLimiter>, Arc<dyn RateLimiter>) = (Arc::new(a), Arc::new(b));
    let specs = vec![LimitSpec::new(
        unique("global"),
        50,
        Duration::from_secs(3600),
    )];
    let (na, nb) = tokio::join!(
        race(a.clone(), specs.clone(), 100),
        race(b.clone(), specs.clone(), 100)
    );
    assert_eq!(na + nb, 50, "node a allowed {na}, node b {nb}");
    assert!(!a.is_degraded() && !b.is_degraded());
    // Each node alone would have allowed 50 in memory: the limit is global, not per node.
    assert!(!a.check(&specs).await.unwrap().allowed);
    assert!(!b.check(&specs).await.unwrap().allowed);
}

// ---------------------------------------------------------------------------------------------
// Redis outage and recovery
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_redis_down_a_node_limits_from_memory_and_says_degraded() {
    let (l, clock) = node("redis://127.0.0.1:1", Duration::from_millis(300));
    assert!(!l.is_degraded());
    let spec = [LimitSpec::new("outage", 3, MIN)];
    for i in 0..3 {
        let v = l.check(&spec).await.expect("served, not failed");
        assert!(v.allowed, "request {i}");
        assert_eq!(v.source, Source::Memory);
    }
    assert!(l.is_degraded());
    // Neither open nor closed: the limit still holds, per node.
    let v = l.check(&spec).await.unwrap();
    assert!(!v.allowed);
    assert!(v.retry_after.is_some());
    // Still down at the next probe: still degraded, still served.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        l.check(&[LimitSpec::new("other", 3, MIN)])
            .await
            .unwrap()
            .source,
        Source::Memory
    );
    assert!(l.is_degraded());
}

#[tokio::test]
async fn health_says_limits_are_node_local_while_redis_is_down() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        ServerOptions {
            configure: Box::new(|c| c.redis_url = Some("redis://127.0.0.1:1".into())),
            ..Default::default()
        },
    )
    .await;
    let h = server.get("/health").await;
    assert_eq!(
        h.json["checks"]["rate_limits"]["status"], "ok",
        "{}",
        h.text
    );
    assert_eq!(h.json["checks"]["rate_limits"]["backend"], "redis+memory");
    // A throttled route decides (from memory) instead of failing.
    let res = server
        .post_json(
            "/v1/auth/login",
            &serde_json::json!({"email": "nobody@example.com", "password": "wrong-password-1"}),
        )
        .await;
    assert_eq!(res.status, 401, "{}", res.text);
    let h = server.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json["status"], "degraded", "{}", h.text);
    let limits = &h.json["checks"]["rate_limits"];
    assert_eq!(limits["status"], "degraded");
    assert!(
        limits["error"].as_str().unwrap().contains("node-local"),
        "{}",
        h.text
    );
}

/// A private `redis-server` on a free port, stopped when dropped.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// `None` (reported) when `redis-server` is not installed, outside CI.
    async fn start_on(port: u16, test: &str) -> Option<PrivateRedis> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if in_ci() {
                    panic!("cannot start redis-server: {e}");
                }
                eprintln!("\n!!! SKIPPED {test}: cannot start redis-server ({e}) !!!\n");
                return None;
            }
        };
        let server = PrivateRedis { child, port };
        let redis = Redis::new(&server.url()).unwrap();
        for _ in 0..100 {
            if redis.ping(Duration::from_millis(200)).await.is_ok() {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_node_returns_to_redis_when_it_answers_again() {
    let port = PrivateRedis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (l, clock) = node(&url, Duration::from_secs(2));
    let spec = [LimitSpec::new("recover", 100, MIN)];
    // Nothing listens yet: memory, degraded.
    assert_eq!(l.check(&spec).await.unwrap().source, Source::Memory);
    assert!(l.is_degraded());
    let Some(mut server) =
        PrivateRedis::start_on(port, "a_node_returns_to_redis_when_it_answers_again").await
    else {
        return;
    };
    // Within the probe interval the node does not even try Redis.
    assert_eq!(l.check(&spec).await.unwrap().source, Source::Memory);
    assert!(l.is_degraded());
    // At the next probe it is back on Redis.
    clock.advance(Duration::from_secs(1));
    let v = l.check(&spec).await.unwrap();
    assert_eq!(v.source, Source::Redis);
    assert!(!l.is_degraded());
    assert_eq!(v.remaining, 99, "Redis counts from its own state");
    // Redis goes away again: the next request is served from memory.
    server.stop();
    let v = l.check(&spec).await.unwrap();
    assert_eq!(v.source, Source::Memory);
    assert!(l.is_degraded());
    // A restarted Redis (empty: no script, no counts) is used again at the next probe.
    let Some(_server) =
        PrivateRedis::start_on(port, "a_node_returns_to_redis_when_it_answers_again").await
    else {
        return;
    };
    clock.advance(Duration::from_secs(1));
    let mut v = l.check(&spec).await.unwrap();
    // The connection manager may still be reconnecting: then one more probe a second later.
    for _ in 0..50 {
        if v.source == Source::Redis {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.advance(Duration::from_secs(1));
        v = l.check(&spec).await.unwrap();
    }
    assert_eq!(v.source, Source::Redis);
    assert!(!l.is_degraded());
    assert_eq!(v.remaining, 99, "a fresh Redis counts from zero");
}

#[tokio::test]
async fn one_round_trip_per_request_whatever_the_number_of_limits() {
    let port = PrivateRedis::free_port();
    let Some(server) = PrivateRedis::start_on(
        port,
        "one_round_trip_per_request_whatever_the_number_of_limits",
    )
    .await
    else {
        return;
    };
    let l = redis_limiter(&server.url()).with_timeout(Duration::from_secs(5));
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let specs = [
        LimitSpec::new("rt:key", 1_000, MIN),
        LimitSpec::new("rt:org", 10_000, Duration::from_secs(3600)),
        LimitSpec::new("rt:tpm", 100_000, MIN).with_cost(50),
    ];
    // The first call loads the script (EVALSHA → NOSCRIPT → SCRIPT LOAD → EVALSHA).
    l.check_limits(&specs).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    for _ in 0..100 {
        l.check_limits(&specs).await.unwrap();
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("evalsha"), 100, "{info}");
    // Nothing else was sent: GET, SET and TIME are the script's own calls; INFO and CONFIG
    // are this test's.
    let inside_or_ours = ["evalsha", "get", "set", "time", "info", "config|resetstat"];
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = &line["cmdstat_".len()..line.find(':').unwrap()];
        assert!(inside_or_ours.contains(&name), "unexpected command: {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Usage meter
// ---------------------------------------------------------------------------------------------

async fn open_db(url: &str) -> Db {
    let db = Db::connect(url, 5).await.unwrap();
    db.migrate().await.unwrap();
    db
}

async fn usage_counts_survive_a_restart(backend: Backend) {
    let test_db = common::TestDatabase::create(backend).await;
    let c = Counter::new("org_a", "api_requests", "2026-11");
    {
        let db = open_db(&test_db.url).await;
        let meter = UsageMeter::new(db.clone());
        for _ in 0..7 {
            meter.record_in(c.clone(), 1);
        }
        meter.record_in(Counter::new("org_b", "api_requests", "2026-11"), 2);
        meter.record_in(Counter::new("org_a", "api_requests", "2026-10"), 5);
        assert_eq!(
            meter.current(&c).await.unwrap(),
            7,
            "unflushed counts are read"
        );
        assert_eq!(meter.flush().await.unwrap(), 3);
        assert_eq!(meter.flush().await.unwrap(), 0, "nothing twice");
        meter.record_in(c.clone(), 3);
        assert_eq!(meter.current(&c).await.unwrap(), 10);
        meter.flush().await.unwrap();
        db.close().await;
    }
    // A new process: a new pool and a new meter on the same database.
    let db = open_db(&test_db.url).await;
    let meter = UsageMeter::new(db.clone());
    assert_eq!(meter.current(&c).await.unwrap(), 10);
    assert_eq!(
        meter
            .current(&Counter::new("org_a", "api_requests", "2026-10"))
            .await
            .unwrap(),
        5
    );
    // Two nodes flushing into one database add up.
    let other = UsageMeter::new(db.clone());
    meter.record_in(c.clone(), 1);
    other.record_in(c.clone(), 2);
    meter.flush().await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(meter.current(&c).await.unwrap(), 13);
    db.close().await;
}

on_both_databases!(usage_counts_survive_a_restart);

async fn the_request_path_read_is_cached_yet_exact_for_this_node(backend: Backend) {
    let test_db = common::TestDatabase::create(backend).await;
    let db = open_db(&test_db.url).await;
    let c = Counter::new("org_a", "gateway_requests", "2026-11");
    let a = UsageMeter::new(db.clone());
    // Node b trusts what it read for an hour: no clock games needed to show the cache.
    let b = UsageMeter::with_refresh(db.clone(), Duration::from_secs(3600));
    a.record_in(c.clone(), 5);
    a.flush().await.unwrap();
    assert_eq!(
        b.used(&c).await.unwrap(),
        5,
        "first read goes to the database"
    );
    a.record_in(c.clone(), 3);
    a.flush().await.unwrap();
    assert_eq!(
        b.used(&c).await.unwrap(),
        5,
        "cached: a's new counts not yet seen"
    );
    // b's own counts are exact at once, before and after its flush.
    b.record_in(c.clone(), 2);
    assert_eq!(b.used(&c).await.unwrap(), 7);
    b.flush().await.unwrap();
    assert_eq!(b.used(&c).await.unwrap(), 7);
    // A database read sees everyone.
    assert_eq!(b.current(&c).await.unwrap(), 10);
    assert_eq!(b.used(&c).await.unwrap(), 10);
    // With no caching, every read is fresh.
    let fresh = UsageMeter::with_refresh(db.clone(), Duration::ZERO);
    assert_eq!(fresh.used(&c).await.unwrap(), 10);
    a.record_in(c.clone(), 1);
    a.flush().await.unwrap();
    assert_eq!(fresh.used(&c).await.unwrap(), 11);
    db.close().await;
}

on_both_databases!(the_request_path_read_is_cached_yet_exact_for_this_node);

async fn a_stale_read_is_served_while_it_is_read_again(backend: Backend) {
    let test_db = common::TestDatabase::create(backend).await;
    let db = open_db(&test_db.url).await;
    let c = Counter::new("org_a", "gateway_requests", "2026-11");
    let a = UsageMeter::new(db.clone());
    let refresh = Duration::from_secs(3600);
    let b = UsageMeter::with_refresh(db.clone(), refresh);
    a.record_in(c.clone(), 5);
    a.flush().await.unwrap();
    assert_eq!(b.used(&c).await.unwrap(), 5);
    a.record_in(c.clone(), 3);
    a.flush().await.unwrap();
    // Older than `refresh_after`: the request gets the value held at once (b's own counts
    // included), and a re-read starts in the background.
    b.age_stored_values(refresh + Duration::from_secs(1));
    b.record_in(c.clone(), 1);
    assert_eq!(b.used(&c).await.unwrap(), 6, "served without waiting");
    let mut seen = 6;
    for _ in 0..500 {
        seen = b.used(&c).await.unwrap();
        if seen == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 9, "the background re-read brought a's counts");
    // Much older (three times `refresh_after`): the request waits for the database.
    a.record_in(c.clone(), 10);
    a.flush().await.unwrap();
    b.age_stored_values(refresh * 3);
    assert_eq!(b.used(&c).await.unwrap(), 19);
    // Quotas of the current month take the same path.
    let month = gatehouse::limits::usage::period_of(chrono::Utc::now());
    let now = Counter::new("org_a", "gateway_tokens", month);
    a.record_in(now.clone(), 4);
    a.flush().await.unwrap();
    assert_eq!(
        b.used_this_month("org_a", "gateway_tokens").await.unwrap(),
        4
    );
    a.record_in(now, 2);
    a.flush().await.unwrap();
    b.age_stored_values(refresh + Duration::from_secs(1));
    assert_eq!(
        b.used_this_month("org_a", "gateway_tokens").await.unwrap(),
        4
    );
    let mut seen = 4;
    for _ in 0..500 {
        seen = b.used_this_month("org_a", "gateway_tokens").await.unwrap();
        if seen == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 6);
    db.close().await;
}

on_both_databases!(a_stale_read_is_served_while_it_is_read_again);

#[tokio::test]
async fn a_failed_flush_loses_nothing() {
    let test_db = common::TestDatabase::create(Backend::Sqlite).await;
    let db = open_db(&test_db.url).await;
    let meter = UsageMeter::new(db.clone());
    let c = Counter::new("org_a", "gateway_tokens", "2026-11");
    meter.record_in(c.clone(), 1_234);
    db.close().await;
    assert!(meter.flush().await.is_err());
    assert_eq!(meter.unflushed(&c), 1_234, "kept for the next flush");
    meter.record_in(c.clone(), 1);
    assert_eq!(meter.unflushed(&c), 1_235);
}

#[tokio::test]
async fn the_server_state_holds_the_limiter_and_meter() {
    let server = TestServer::start(Backend::Sqlite).await;
    assert_eq!(server.state.limiter.backend(), "memory");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let v = server
        .state
        .limiter
        .check(&[LimitSpec::new("state", 5, MIN)])
        .await
        .unwrap();
    assert!(v.allowed);
    assert_eq!(v.remaining, 4);
    assert!(v.reset >= now.as_secs() + 12 && v.reset <= now.as_secs() + 13);
    server.state.usage.record("org_x", "api_requests", 2);
    assert_eq!(
        server
            .state
            .usage
            .used_this_month("org_x", "api_requests")
            .await
            .unwrap(),
        2
    );
}
