//! `GET …/analytics/stats`: totals and a series over `[start, end)` grouped by model, provider,
//! key, day or hour — requests, errors, tokens, cost and latency percentiles.
//!
//! Full hours of the window come from the hourly rollups (`rollup.rs`), the partial hours at its
//! edges from the usage log, each aggregated in the database — so the work is bounded by the
//! number of hours and groups, not by the number of requests. Percentiles are nearest-rank over
//! the latency histogram (exact below 64 ms, within 1.6 % above).

use std::collections::BTreeMap;

use axum::{extract::State, response::IntoResponse};
use chrono::{DateTime, DurationRound, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::rollup::{bucket, Sums};
use crate::{
    app::AppState,
    error::Error,
    http::extract::Query,
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Db, Sql},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    start: Option<String>,
    end: Option<String>,
    group_by: Option<String>,
}

fn summary(s: &Sums) -> Value {
    json!({
        "requests": s.requests,
        "errors": s.errors,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "cost_usd": (s.cost_usd * 1e9).round() / 1e9,
        "latency_ms": {"p50": s.percentile(50.0), "p95": s.percentile(95.0), "p99": s.percentile(99.0)},
    })
}

/// What a series is grouped by: the SQL giving each row's group in the log and in the rollups.
#[derive(Clone, Copy)]
enum GroupBy {
    None,
    Column(&'static str),
    Day,
    Hour,
}

impl GroupBy {
    fn sql(self, time_column: &str) -> String {
        match self {
            // Constant within the window's rows (a literal is not groupable everywhere).
            GroupBy::None => "organization_id".into(),
            GroupBy::Column(c) => c.into(),
            GroupBy::Day => format!("substr({time_column}, 1, 10)"),
            GroupBy::Hour => format!("substr({time_column}, 1, 13)"),
        }
    }

    fn label(self, g: String) -> String {
        match self {
            GroupBy::Hour => format!("{g}:00:00Z"),
            _ => g,
        }
    }
}

/// Adds to `groups` the sums of `table` over `[from, to)`, grouped by `by` (and, for the
/// histogram, by latency bucket).
#[allow(clippy::too_many_arguments)]
async fn add_range(
    db: &Db,
    groups: &mut BTreeMap<String, Sums>,
    org_id: &str,
    env: Option<&str>,
    by: GroupBy,
    rollups: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), Error> {
    let (table, time, latency) = if rollups {
        ("usage_hourly", "hour", None)
    } else {
        ("usage_logs", "created_at", Some("latency_ms"))
    };
    let filter = |table: &str| {
        let mut sql = Sql::new(&format!(" FROM {table} WHERE organization_id = "));
        sql.bind(org_id.to_string())
            .and(&format!("{time} >= ?"), storage::format_time(from))
            .and(&format!("{time} < ?"), storage::format_time(to));
        if let Some(env) = env {
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

pub async fn stats(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    Query(q): Query<StatsQuery>,
) -> Result<impl IntoResponse, Error> {
    let now = chrono::Utc::now();
    let parse = |field: &str, v: &Option<String>, default: chrono::DateTime<chrono::Utc>| match v {
        Some(s) => storage::parse_time(s)
            .ok_or_else(|| Error::invalid_field(field, "must be an RFC 3339 timestamp")),
        None => Ok(default),
    };
    let end = parse("end", &q.end, now)?;
    let start = parse("start", &q.start, end - chrono::Duration::days(1))?;
    if start >= end {
        return Err(Error::invalid_field("start", "must be before end"));
    }
    let by = match q.group_by.as_deref() {
        None => GroupBy::None,
        Some("model") => GroupBy::Column("model"),
        Some("provider") => GroupBy::Column("provider"),
        Some("key") => GroupBy::Column("key_id"),
        Some("day") => GroupBy::Day,
        Some("hour") => GroupBy::Hour,
        Some(_) => {
            return Err(Error::invalid_field(
                "group_by",
                "must be model, provider, key, day or hour",
            ))
        }
    };
    // [start, h0) and [h1, end) from the log, the full hours [h0, h1) from the rollups.
    let hour = chrono::Duration::hours(1);
    let floor = |t: DateTime<Utc>| t.duration_trunc(hour).unwrap_or(t);
    let h1 = floor(end);
    let h0 = if floor(start) == start {
        start
    } else {
        floor(start) + hour
    };
    let (org, env) = (access.org_id(), access.environment());
    let mut groups = BTreeMap::new();
    let db = &state.db;
    if h0 < h1 {
        add_range(db, &mut groups, org, env, by, true, h0, h1).await?;
        if start < h0 {
            add_range(db, &mut groups, org, env, by, false, start, h0).await?;
        }
        if h1 < end {
            add_range(db, &mut groups, org, env, by, false, h1, end).await?;
        }
    } else {
        add_range(db, &mut groups, org, env, by, false, start, end).await?;
    }
    let mut total = Sums::default();
    groups.values().for_each(|s| total.merge(s));
    let series: Vec<Value> = match by {
        GroupBy::None => Vec::new(),
        _ => groups
            .into_iter()
            .map(|(k, sums)| {
                let mut v = summary(&sums);
                v["group"] = json!(by.label(k));
                v
            })
            .collect(),
    };
    Ok(axum::Json(json!({
        "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "end": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "group_by": q.group_by,
        "totals": summary(&total),
        "series": series,
    })))
}
