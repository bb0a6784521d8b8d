//! `GET …/analytics/stats`: totals and a series over `[start, end)` grouped by model, provider,
//! key, day or hour — requests, errors, tokens, cost and latency percentiles.
//!
//! Full hours of the window come from the hourly rollups (`rollup.rs`), the partial hours at its
//! edges from the usage log, each aggregated in the database — so the work is bounded by the
//! number of hours and groups, not by the number of requests. Percentiles are nearest-rank over
//! the latency histogram (exact below 64 ms, within 1.6 % above). The queries are in
//! `analytics.rs`.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use super::{
    analytics::{add_range, GroupBy, Range, Source},
    rollup::Sums,
};
use crate::{
    app::AppState,
    error::Error,
    http::extract::Query,
    orgs::{access::OrgAccess, roles::perm},
    storage,
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    start: Option<String>,
    end: Option<String>,
    group_by: Option<String>,
}

/// `GET …/analytics/stats`: the window, its totals and (with `group_by`) one entry per group.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Stats {
    /// RFC 3339, inclusive.
    start: String,
    /// RFC 3339, exclusive.
    end: String,
    group_by: Option<String>,
    totals: Summary,
    /// Empty without `group_by`.
    series: Vec<Summary>,
}

/// The requests of a window or of one group.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "StatsSummary")]
pub struct Summary {
    requests: i64,
    /// Answers with a status of 400 or more.
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    cost_usd: f64,
    latency_ms: Latency,
    /// The group (a model, provider, key id, day, or hour as `…T13:00:00Z`); in `series` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

/// Latency percentiles in milliseconds (`null` without requests).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Latency {
    p50: Option<i64>,
    p95: Option<i64>,
    p99: Option<i64>,
}

fn summary(s: &Sums) -> Summary {
    Summary {
        requests: s.requests,
        errors: s.errors,
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.completion_tokens,
        total_tokens: s.prompt_tokens + s.completion_tokens,
        cost_usd: (s.cost_usd * 1e9).round() / 1e9,
        latency_ms: Latency {
            p50: s.percentile(50.0),
            p95: s.percentile(95.0),
            p99: s.percentile(99.0),
        },
        group: None,
    }
}

fn label(by: GroupBy, g: String) -> String {
    match by {
        GroupBy::Hour => format!("{g}:00:00Z"),
        _ => g,
    }
}

pub async fn stats(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    Query(q): Query<StatsQuery>,
) -> Result<axum::Json<Stats>, Error> {
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
        Some("model") => GroupBy::Model,
        Some("provider") => GroupBy::Provider,
        Some("key") => GroupBy::Key,
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
    let range = |from, to| Range {
        org_id: access.org_id(),
        environment: access.environment(),
        from,
        to,
    };
    let mut groups = BTreeMap::new();
    let db = &state.db;
    if h0 < h1 {
        add_range(db, &mut groups, range(h0, h1), by, Source::Rollups).await?;
        if start < h0 {
            add_range(db, &mut groups, range(start, h0), by, Source::Log).await?;
        }
        if h1 < end {
            add_range(db, &mut groups, range(h1, end), by, Source::Log).await?;
        }
    } else {
        add_range(db, &mut groups, range(start, end), by, Source::Log).await?;
    }
    let mut total = Sums::default();
    groups.values().for_each(|s| total.merge(s));
    let series: Vec<Summary> = match by {
        GroupBy::None => Vec::new(),
        _ => groups
            .into_iter()
            .map(|(k, sums)| Summary {
                group: Some(label(by, k)),
                ..summary(&sums)
            })
            .collect(),
    };
    Ok(axum::Json(Stats {
        start: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        end: end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        group_by: q.group_by,
        totals: summary(&total),
        series,
    }))
}
