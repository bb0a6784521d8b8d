//! Hourly rollups of the usage log (`usage_hourly`, `usage_hourly_latency`): the usage writer
//! adds each batch to them in the transaction that stores the batch's entries ([`add_batch`]),
//! so a rollup row always equals the entries it sums; `analytics/stats` reads full hours from
//! them and only a window's partial edge hours from the log.
//!
//! Latency percentiles come from a histogram whose buckets are exact below 64 ms and keep six
//! significant bits above (each bucket at most 1/64 of its value wide), so a percentile is
//! reported within 1.6 % whatever the volume.

use std::collections::{BTreeMap, HashMap};

use super::usage::Stored;
use crate::storage::{Arg, Backend, Sql};

/// Rows per upsert statement (at most 11 values each).
const ROWS_PER_STATEMENT: usize = 400;

/// The lower bound (ms) of the histogram bucket `latency_ms` falls in.
pub fn bucket(latency_ms: i64) -> i64 {
    let v = latency_ms.max(0);
    if v < 64 {
        return v;
    }
    let shift = 63 - v.leading_zeros() as i64 - 5;
    v - (v % (1 << shift))
}

/// The value a bucket stands for in a percentile: its middle, in whole ms.
pub fn representative(bucket: i64) -> i64 {
    if bucket < 64 {
        return bucket;
    }
    let shift = 63 - bucket.leading_zeros() as i64 - 5;
    bucket + ((1 << shift) - 1) / 2
}

/// The stored hour (`2026-01-15T10:00:00.000000Z`) of a stored timestamp.
pub fn hour_of(stored: &str) -> String {
    format!("{}:00:00.000000Z", &stored[..stored.len().min(13)])
}

/// One rollup row's dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dims {
    pub organization_id: String,
    pub environment: String,
    pub hour: String,
    pub model: String,
    pub provider: String,
    pub key_id: String,
}

/// Sums and a latency histogram.
#[derive(Debug, Default, Clone)]
pub struct Sums {
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    /// bucket lower bound → count
    pub latency: BTreeMap<i64, i64>,
}

impl Sums {
    pub fn add_entry(&mut self, status: i64, prompt: i64, completion: i64, cost: f64, ms: i64) {
        self.requests += 1;
        self.errors += i64::from(status >= 400);
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.cost_usd += cost;
        *self.latency.entry(bucket(ms)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        for (b, n) in &other.latency {
            *self.latency.entry(*b).or_default() += n;
        }
    }

    /// The nearest-rank percentile `p` (0–100) of the latencies, as a bucket's middle.
    pub fn percentile(&self, p: f64) -> Option<i64> {
        let total: i64 = self.latency.values().sum();
        if total == 0 {
            return None;
        }
        let rank = (((p / 100.0) * total as f64).ceil() as i64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return Some(representative(*b));
            }
        }
        None
    }
}

/// Adds a batch of log entries (with their stored `created_at`) to the rollups, inside `tx`:
/// a few multi-row upserts over the rollup rows and histogram buckets the batch touches.
pub async fn add_batch(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    batch: &[Stored],
) -> Result<(), sqlx::Error> {
    // Grouped by borrowed dimensions (the hour as its stored prefix, `2026-01-15T10`).
    let mut groups: HashMap<[&str; 6], Sums> = HashMap::new();
    for s in batch {
        let r = &s.record;
        let hour = &s.created_at[..s.created_at.len().min(13)];
        groups
            .entry([
                &r.organization_id,
                &r.environment,
                hour,
                &r.model,
                r.provider,
                &r.key_id,
            ])
            .or_default()
            .add_entry(
                i64::from(r.status),
                r.prompt_tokens,
                r.completion_tokens,
                s.cost_usd,
                r.latency_ms,
            );
    }
    let rows = groups
        .into_iter()
        .map(|([org, env, hour, model, provider, key], sums)| {
            let dims = Dims {
                organization_id: org.to_string(),
                environment: env.to_string(),
                hour: hour_of(hour),
                model: model.to_string(),
                provider: provider.to_string(),
                key_id: key.to_string(),
            };
            (dims, sums)
        });
    // A stable order, so that two writers touching the same rows lock them in the same order.
    let mut rows: Vec<(Dims, Sums)> = rows.collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let dims = |d: &Dims| -> [Arg; 6] {
        [
            d.organization_id.as_str().into(),
            d.environment.as_str().into(),
            d.hour.as_str().into(),
            d.model.as_str().into(),
            d.provider.as_str().into(),
            d.key_id.as_str().into(),
        ]
    };
    // Multi-row upserts (each row appears once per statement, as PostgreSQL requires).
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::for_backend(
                backend,
            "INSERT INTO usage_hourly (organization_id, environment, hour, model, provider, key_id, \
             requests, errors, prompt_tokens, completion_tokens, cost_usd) VALUES ",
        );
        for (i, (d, s)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple(dims(d).into_iter().chain([
                s.requests.into(),
                s.errors.into(),
                s.prompt_tokens.into(),
                s.completion_tokens.into(),
                s.cost_usd.into(),
            ]));
        }
        sql.push(
            " ON CONFLICT (organization_id, hour, environment, model, provider, key_id) DO UPDATE SET \
             requests = usage_hourly.requests + excluded.requests, \
             errors = usage_hourly.errors + excluded.errors, \
             prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens, \
             completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens, \
             cost_usd = usage_hourly.cost_usd + excluded.cost_usd",
        );
        sql.query().persistent(false).execute(&mut *conn).await?;
    }
    let buckets: Vec<(&Dims, i64, i64)> = rows
        .iter()
        .flat_map(|(d, s)| s.latency.iter().map(move |(b, n)| (d, *b, *n)))
        .collect();
    for chunk in buckets.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::for_backend(
                backend,
            "INSERT INTO usage_hourly_latency (organization_id, environment, hour, model, provider, \
             key_id, bucket, count) VALUES ",
        );
        for (i, (d, b, n)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple(dims(d).into_iter().chain([(*b).into(), (*n).into()]));
        }
        sql.push(
            " ON CONFLICT (organization_id, hour, environment, model, provider, key_id, bucket) \
             DO UPDATE SET count = usage_hourly_latency.count + excluded.count",
        );
        sql.query().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_64_ms_and_within_1_6_percent_above() {
        for v in 0..64 {
            assert_eq!(bucket(v), v);
            assert_eq!(representative(bucket(v)), v);
        }
        let mut last = 0;
        for v in 64..200_000 {
            let b = bucket(v);
            assert!(b <= v && b >= last, "{v} → {b}");
            last = b;
            let r = representative(b);
            assert!(
                ((r - v).abs() as f64) / (v as f64) <= 1.0 / 64.0,
                "{v} → {r}"
            );
        }
        assert_eq!(bucket(100), 100);
        assert_eq!(bucket(129), 128);
        assert_eq!(bucket(1000), 992);
        assert_eq!(bucket(-5), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_the_histogram() {
        let mut s = Sums::default();
        for ms in 1..=100 {
            s.add_entry(200, 1, 1, 0.0, ms);
        }
        assert_eq!(s.percentile(50.0), Some(50));
        // 99 ms shares the 2 ms wide bucket [98, 100) with 98 ms.
        assert_eq!(s.percentile(99.0), Some(98));
        let mut other = Sums::default();
        other.add_entry(500, 0, 0, 0.0, 10_000);
        s.merge(&other);
        assert_eq!(s.requests, 101);
        assert_eq!(s.errors, 1);
        let p100 = s.percentile(100.0).unwrap();
        assert!((p100 - 10_000).abs() <= 10_000 / 64, "{p100}");
        assert_eq!(Sums::default().percentile(50.0), None);
    }

    #[test]
    fn hours_are_stored_timestamps_truncated() {
        assert_eq!(
            hour_of("2026-01-15T10:42:07.123456Z"),
            "2026-01-15T10:00:00.000000Z"
        );
    }
}
