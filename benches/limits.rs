//! Rate-limiter benchmarks (run by `bench/limits.sh`, results in `BENCHMARKS.md`).
//!
//! `cargo bench --bench limits`: decisions per second in memory — one key or 100,000 keys,
//! 1 or 3 limits per request, one thread or two — and, when `GATEHOUSE_BENCH_REDIS` names a
//! Redis, sequential decisions per second on Redis.
//!
//! `GATEHOUSE_BENCH_ROUNDTRIPS=N GATEHOUSE_BENCH_LIMITS=K cargo bench --bench limits`: instead,
//! makes N decisions of K limits each on `GATEHOUSE_BENCH_REDIS` and exits, so that the script can
//! count the commands Redis received (`INFO commandstats`) around it.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput};
use gatehouse::limits::{LimitSpec, MemoryLimiter, RateLimiter, RedisLimiter};

const KEYS: usize = 100_000;

/// The limits of one request: per key (huge, so that the allowed path is measured), and with
/// `n` = 3 also per organization and tokens per minute, as a gateway request has.
fn specs(key: usize, n: usize) -> Vec<LimitSpec> {
    let mut s = vec![LimitSpec::new(
        format!("key:{key}"),
        1_000_000_000,
        Duration::from_secs(60),
    )];
    if n >= 3 {
        s.push(LimitSpec::new(
            format!("org:{}", key % 1_000),
            1_000_000_000,
            Duration::from_secs(3600),
        ));
        s.push(
            LimitSpec::new(format!("tpm:{key}"), 1_000_000_000, Duration::from_secs(60))
                .with_cost(100),
        );
    }
    s
}

/// Every request's specs, built beforehand so that only the decision is timed.
fn request_set(keys: usize, n: usize) -> Vec<Vec<LimitSpec>> {
    (0..keys).map(|k| specs(k, n)).collect()
}

fn memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));
    for n in [1, 3] {
        for keys in [1, KEYS] {
            let requests = request_set(keys, n);
            let l = MemoryLimiter::new();
            let mut i = 0;
            g.bench_function(
                BenchmarkId::new(format!("{n} limit(s)"), format!("{keys} key(s)")),
                |b| {
                    b.iter(|| {
                        i = (i + 1) % requests.len();
                        black_box(l.check_now(&requests[i]))
                    })
                },
            );
        }
        // Two threads deciding at once on 100,000 keys (lock contention across shards).
        let requests = Arc::new(request_set(KEYS, n));
        let l = Arc::new(MemoryLimiter::new());
        g.bench_function(
            BenchmarkId::new(format!("{n} limit(s)"), "100000 keys, 2 threads"),
            |b| {
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..2u64 {
                            let (l, r) = (&l, &requests);
                            s.spawn(move || {
                                for i in 0..iters / 2 {
                                    let k = ((i * 2 + t) as usize * 7_919) % r.len();
                                    black_box(l.check_now(&r[k]).ok());
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            },
        );
    }
    // Through the trait object, as the server calls it (a boxed, immediately ready future).
    let l: Arc<dyn RateLimiter> = Arc::new(MemoryLimiter::new());
    let requests = request_set(KEYS, 3);
    let mut i = 0;
    g.bench_function(
        BenchmarkId::new("3 limit(s)", "100000 keys, dyn RateLimiter"),
        |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                black_box(futures_ready(l.check(&requests[i])))
            })
        },
    );
    g.finish();
}

fn futures_ready<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn redis_limiter() -> Option<(RedisLimiter, tokio::runtime::Runtime)> {
    let url = std::env::var("GATEHOUSE_BENCH_REDIS").ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let redis = gatehouse::redis::Redis::new(&url).ok()?;
    let l = RedisLimiter::new(redis).with_timeout(Duration::from_secs(5));
    Some((l, rt))
}

fn redis(c: &mut Criterion) {
    let Some((l, rt)) = redis_limiter() else {
        eprintln!("GATEHOUSE_BENCH_REDIS not set: Redis benchmarks skipped");
        return;
    };
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(1));
    // Many requests in flight on the one multiplexed connection, as a busy server has them.
    for n in [1, 3] {
        let requests = request_set(10_000, n);
        g.bench_function(
            BenchmarkId::new(format!("{n} limit(s)"), "64 in flight, one connection"),
            |b| {
                b.iter_custom(|iters| {
                    use futures_util::stream::{self, StreamExt};
                    let start = std::time::Instant::now();
                    rt.block_on(
                        stream::iter(0..iters as usize)
                            .map(|i| l.check_limits(&requests[i % requests.len()]))
                            .buffer_unordered(64)
                            .for_each(|r| {
                                black_box(r.ok());
                                std::future::ready(())
                            }),
                    );
                    start.elapsed()
                })
            },
        );
    }
    for n in [1, 3] {
        let requests = request_set(10_000, n);
        let mut i = 0;
        g.bench_function(
            BenchmarkId::new(format!("{n} limit(s)"), "sequential, one connection"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % requests.len();
                    black_box(rt.block_on(l.check_limits(&requests[i])).ok())
                })
            },
        );
    }
    g.finish();
}

/// N decisions of K limits each, then exit (see the module comment).
fn roundtrips(n: usize, k: usize) {
    let Some((l, rt)) = redis_limiter() else {
        eprintln!("GATEHOUSE_BENCH_REDIS is required");
        std::process::exit(2);
    };
    let requests = request_set(1_000, k);
    let mut allowed = 0;
    rt.block_on(async {
        for i in 0..n {
            match l.check_limits(&requests[i % requests.len()]).await {
                Ok(v) => allowed += usize::from(v.allowed),
                Err(e) => {
                    eprintln!("decision failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    });
    println!("decisions={n} limits_per_decision={k} allowed={allowed}");
}

fn main() {
    if let Ok(n) = std::env::var("GATEHOUSE_BENCH_ROUNDTRIPS") {
        let k = std::env::var("GATEHOUSE_BENCH_LIMITS")
            .ok()
            .and_then(|k| k.parse().ok())
            .unwrap_or(1);
        roundtrips(n.parse().unwrap_or(1_000), k);
        return;
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    memory(&mut c);
    redis(&mut c);
    c.final_summary();
}
