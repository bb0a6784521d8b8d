//! `GET …/analytics/stats`: totals and a series over `[start, end)` grouped by model, provider,
//! key, day or hour — requests, errors, tokens, cost and latency percentiles.
//!
//! Computed from the usage log in one pass over the window's rows (at most [`MAX_ROWS`]; a
//! wider window answers 400 asking for a narrower one). Hourly rollups, so that any window stays
//! fast at any volume, are still to come.

use std::collections::BTreeMap;

use axum::{extract::State, response::IntoResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{
    app::AppState,
    error::Error,
    http::extract::Query,
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Sql},
};

pub const MAX_ROWS: i64 = 200_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    start: Option<String>,
    end: Option<String>,
    group_by: Option<String>,
}

#[derive(Default)]
struct Acc {
    requests: i64,
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    latencies: Vec<i64>,
}

impl Acc {
    fn add(&mut self, status: i64, prompt: i64, completion: i64, cost: f64, latency: i64) {
        self.requests += 1;
        if status >= 400 {
            self.errors += 1;
        }
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.cost_usd += cost;
        self.latencies.push(latency);
    }

    fn json(mut self) -> Value {
        self.latencies.sort_unstable();
        let pct = |p: f64| -> Value {
            if self.latencies.is_empty() {
                return Value::Null;
            }
            // Nearest rank.
            let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
            json!(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
        };
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": (self.cost_usd * 1e9).round() / 1e9,
            "latency_ms": {"p50": pct(50.0), "p95": pct(95.0), "p99": pct(99.0)},
        })
    }
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
    let column = match q.group_by.as_deref() {
        None => None,
        Some("model") => Some("model"),
        Some("provider") => Some("provider"),
        Some("key") => Some("key_id"),
        Some("day") => Some("day"),
        Some("hour") => Some("hour"),
        Some(_) => {
            return Err(Error::invalid_field(
                "group_by",
                "must be model, provider, key, day or hour",
            ))
        }
    };
    let mut sql = Sql::new(" FROM usage_logs WHERE organization_id = ");
    sql.bind(access.org_id().to_string())
        .and("created_at >= ?", storage::format_time(start))
        .and("created_at < ?", storage::format_time(end));
    if let Some(env) = access.environment() {
        sql.and("environment = ?", env.to_string());
    }
    let count: i64 = Sql::prefixed("SELECT COUNT(*)", &sql)
        .query_scalar()
        .fetch_one(state.db.pool())
        .await?;
    if count > MAX_ROWS {
        return Err(Error::invalid_field(
            "start",
            format!("the window holds {count} requests; narrow it to at most {MAX_ROWS}"),
        ));
    }
    let rows = Sql::prefixed(
        "SELECT model, provider, key_id, created_at, status, prompt_tokens, completion_tokens, cost_usd, latency_ms",
        &sql,
    )
    .query()
    .fetch_all(state.db.pool())
    .await?;
    let mut total = Acc::default();
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for r in &rows {
        let status: i64 = r.try_get("status")?;
        let prompt: i64 = r.try_get("prompt_tokens")?;
        let completion: i64 = r.try_get("completion_tokens")?;
        let cost: f64 = r.try_get("cost_usd")?;
        let latency: i64 = r.try_get("latency_ms")?;
        total.add(status, prompt, completion, cost, latency);
        if let Some(c) = column {
            let key = match c {
                "day" => r
                    .try_get::<String, _>("created_at")?
                    .chars()
                    .take(10)
                    .collect(),
                "hour" => format!(
                    "{}:00:00Z",
                    r.try_get::<String, _>("created_at")?
                        .chars()
                        .take(13)
                        .collect::<String>()
                ),
                other => r.try_get::<String, _>(other)?,
            };
            groups
                .entry(key)
                .or_default()
                .add(status, prompt, completion, cost, latency);
        }
    }
    let series: Vec<Value> = groups
        .into_iter()
        .map(|(k, acc)| {
            let mut v = acc.json();
            v["group"] = json!(k);
            v
        })
        .collect();
    Ok(axum::Json(json!({
        "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "end": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "group_by": q.group_by,
        "totals": total.json(),
        "series": series,
    })))
}
