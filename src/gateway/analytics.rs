//! The reads behind analytics (SPEC §10): the usage log, newest first with filters
//! ([`logs`]), and the sums `GET …/analytics/stats` is built from ([`add_range`]), taken from
//! the usage log or from the hourly rollups (`rollup.rs`), each aggregated in the database. The
//! routes are in `mod.rs` and `stats.rs`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::rollup::{bucket, Sums};
use crate::{
    error::Error,
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LogEntry {
    pub id: crate::ids::LogId,
    pub key_id: crate::ids::KeyId,
    pub environment: crate::environment::Environment,
    pub provider: String,
    pub model: String,
    pub path: String,
    pub status: i64,
    pub latency_ms: i64,
    pub ttfb_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    pub streamed: bool,
    pub violation_ids: serde_json::Value,
    pub created_at: String,
}

has_id!(LogEntry);

impl LogEntry {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(LogEntry {
            id: r.try_get("id")?,
            key_id: r.try_get("key_id")?,
            environment: r.get_parsed("environment")?,
            provider: r.try_get("provider")?,
            model: r.try_get("model")?,
            path: r.try_get("path")?,
            status: r.try_get("status")?,
            latency_ms: r.try_get("latency_ms")?,
            ttfb_ms: r.try_get("ttfb_ms")?,
            prompt_tokens: r.try_get("prompt_tokens")?,
            completion_tokens: r.try_get("completion_tokens")?,
            total_tokens: r.try_get("total_tokens")?,
            cost_usd: r.try_get("cost_usd")?,
            streamed: r.get_bool("streamed")?,
            violation_ids: r.get_json("violation_ids")?,
            created_at: r.get_time("created_at")?,
        })
    }
}

/// Which log entries to list (the query string of `GET …/analytics/logs`): every field set
/// narrows the list. `start`/`end` (`[start, end)`) are read as given, then made stored
/// timestamps by [`crate::http::time_range`]; the environment is the caller's, never the query's.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct LogFilter {
    #[serde(skip)]
    pub environment: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub status: Option<i64>,
    pub start: Option<String>,
    pub end: Option<String>,
}

/// One page of an organization's usage log, newest first.
pub async fn logs(
    db: &Db,
    org_id: &str,
    f: LogFilter,
    page: &Page,
) -> Result<List<LogEntry>, Error> {
    let mut sql = Sql::new(" FROM usage_logs WHERE organization_id = ");
    sql.bind(org_id.to_string());
    if let Some(env) = f.environment {
        sql.and("environment = ?", env);
    }
    if let Some(v) = f.key_id {
        sql.and("key_id = ?", v);
    }
    if let Some(v) = f.model {
        sql.and("model = ?", v);
    }
    if let Some(v) = f.provider {
        sql.and("provider = ?", v);
    }
    if let Some(v) = f.status {
        sql.and("status = ?", v);
    }
    if let Some(v) = f.start {
        sql.and("created_at >= ?", v);
    }
    if let Some(v) = f.end {
        sql.and("created_at < ?", v);
    }
    page.fetch_newest_first(
        db,
        "logs",
        "SELECT id, key_id, environment, provider, model, path, status, latency_ms, ttfb_ms, \
         prompt_tokens, completion_tokens, total_tokens, cost_usd, streamed, violation_ids, created_at",
        &sql,
        LogEntry::from_row,
    )
    .await
}

/// What a stats series is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    None,
    Model,
    Provider,
    Key,
    Day,
    Hour,
}

impl GroupBy {
    /// The SQL giving each row's group, in the log (`created_at`) and the rollups (`hour`).
    fn sql(self, time_column: &str) -> String {
        match self {
            // Constant within the window's rows (a literal is not groupable everywhere).
            GroupBy::None => "organization_id".into(),
            GroupBy::Model => "model".into(),
            GroupBy::Provider => "provider".into(),
            GroupBy::Key => "key_id".into(),
            GroupBy::Day => format!("substr({time_column}, 1, 10)"),
            GroupBy::Hour => format!("substr({time_column}, 1, 13)"),
        }
    }
}

/// Where the sums of a range come from: the usage log (any range, exact latencies) or the
/// hourly rollups (whole hours only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Log,
    Rollups,
}

/// The range `[from, to)` of one organization's usage (in one environment, if given).
#[derive(Clone, Copy, Debug)]
pub struct Range<'a> {
    pub org_id: &'a str,
    pub environment: Option<&'a str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Adds to `groups` the sums of `range` from `source`, grouped by `by` (and, for the
/// histogram, by latency bucket). Groups are keyed by the stored group value (a column's
/// value, or the day / hour prefix of a stored timestamp).
pub async fn add_range(
    db: &Db,
    groups: &mut BTreeMap<String, Sums>,
    range: Range<'_>,
    by: GroupBy,
    source: Source,
) -> Result<(), Error> {
    let rollups = source == Source::Rollups;
    let (table, time, latency) = if rollups {
        ("usage_hourly", "hour", None)
    } else {
        ("usage_logs", "created_at", Some("latency_ms"))
    };
    let filter = |table: &str| {
        let mut sql = Sql::new(&format!(" FROM {table} WHERE organization_id = "));
        sql.bind(range.org_id.to_string())
            .and(&format!("{time} >= ?"), storage::format_time(range.from))
            .and(&format!("{time} < ?"), storage::format_time(range.to));
        if let Some(env) = range.environment {
            sql.and("environment = ?", env.to_string());
        }
        sql
    };
    let g = by.sql(time);
    // Sums. From the log, one row per group and latency (the histogram comes with them).
    let (requests, errors, prompt, completion, cost) = if rollups {
        (
            "SUM(requests)",
            "SUM(errors)",
            "SUM(prompt_tokens)",
            "SUM(completion_tokens)",
            "SUM(cost_usd)",
        )
    } else {
        (
            "COUNT(*)",
            "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)",
            "SUM(prompt_tokens)",
            "SUM(completion_tokens)",
            "SUM(cost_usd)",
        )
    };
    let latency_col = latency
        .map(|l| format!(", {l} AS latency"))
        .unwrap_or_default();
    let group_latency = latency.map(|l| format!(", {l}")).unwrap_or_default();
    let mut q = Sql::prefixed(
        &format!(
            "SELECT {g} AS g{latency_col}, CAST({requests} AS BIGINT) AS requests, \
             CAST({errors} AS BIGINT) AS errors, CAST({prompt} AS BIGINT) AS prompt, \
             CAST({completion} AS BIGINT) AS completion, {cost} AS cost"
        ),
        &filter(table),
    );
    q.push(&format!(" GROUP BY {g}{group_latency}"));
    for r in q.query().fetch_all(db.pool()).await? {
        let sums = groups.entry(r.try_get("g")?).or_default();
        let requests: i64 = r.try_get("requests")?;
        sums.requests += requests;
        sums.errors += r.try_get::<i64, _>("errors")?;
        sums.prompt_tokens += r.try_get::<i64, _>("prompt")?;
        sums.completion_tokens += r.try_get::<i64, _>("completion")?;
        sums.cost_usd += r.try_get::<f64, _>("cost")?;
        if latency.is_some() {
            *sums
                .latency
                .entry(bucket(r.try_get("latency")?))
                .or_default() += requests;
        }
    }
    if rollups {
        let mut q = Sql::prefixed(
            &format!("SELECT {g} AS g, bucket, CAST(SUM(count) AS BIGINT) AS n"),
            &filter("usage_hourly_latency"),
        );
        q.push(&format!(" GROUP BY {g}, bucket"));
        for r in q.query().fetch_all(db.pool()).await? {
            *groups
                .entry(r.try_get("g")?)
                .or_default()
                .latency
                .entry(r.try_get("bucket")?)
                .or_default() += r.try_get::<i64, _>("n")?;
        }
    }
    Ok(())
}
