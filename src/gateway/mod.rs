//! The AI gateway (SPEC §10): provider configuration (`providers.rs`), the proxy routes
//! (`proxy.rs`), the mock provider (`mock.rs`), usage and cost (`usage.rs`), and analytics.

pub mod client;
pub mod mock;
pub mod providers;
pub mod proxy;
pub mod rollup;
pub mod stats;
pub mod usage;

use axum::{extract::State, response::IntoResponse};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{
    app::AppState,
    error::Error,
    http::{
        extract::Query,
        pagination::{HasId, Page},
        routes::Routes,
    },
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, RowExt, Sql},
};

/// Management routes (organization-scoped, in the route table).
pub fn routes() -> Routes {
    const P: &str = "/v1/organizations/{org_id}/providers";
    const ONE: &str = "/v1/organizations/{org_id}/providers/{id}";
    Routes::new()
        .post(P, providers::create)
        .get(P, providers::list)
        .get(ONE, providers::get)
        .patch(ONE, providers::update)
        .delete(ONE, providers::delete)
        .get("/v1/organizations/{org_id}/analytics/logs", logs)
        .get("/v1/organizations/{org_id}/analytics/stats", stats::stats)
}

/// The proxy routes: no layers (no control-plane timeout, as streams last; the handler reads
/// the body up to `gateway_max_body_bytes` itself).
pub fn proxy_routes() -> Routes {
    Routes::new()
        .any(proxy::OPENAI.route, proxy::openai)
        .any(proxy::ANTHROPIC.route, proxy::anthropic)
        .any(proxy::GOOGLE.route, proxy::google)
        .any(proxy::AZURE.route, proxy::azure)
}

#[derive(Debug, Serialize)]
pub struct LogEntry {
    pub id: String,
    pub key_id: String,
    pub environment: String,
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

impl HasId for LogEntry {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Deserialize)]
pub struct LogFilter {
    key_id: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    status: Option<i64>,
    start: Option<String>,
    end: Option<String>,
}

/// `GET …/analytics/logs`: newest first, filters, cursor (or offset) paging.
async fn logs(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    page: Page,
    Query(f): Query<LogFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM usage_logs WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    if let Some(env) = access.environment() {
        sql.and("environment = ?", env.to_string());
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
    if let Some(v) = &f.start {
        sql.and("created_at >= ?", crate::http::time_bound("start", v)?);
    }
    if let Some(v) = &f.end {
        sql.and("created_at < ?", crate::http::time_bound("end", v)?);
    }
    let list = page
        .fetch_newest_first(
            &state.db,
            "logs",
            "SELECT id, key_id, environment, provider, model, path, status, latency_ms, ttfb_ms, \
             prompt_tokens, completion_tokens, total_tokens, cost_usd, streamed, violation_ids, created_at",
            &sql,
            LogEntry::from_row,
        )
        .await?;
    Ok(axum::Json(list))
}

impl LogEntry {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(LogEntry {
            id: r.try_get("id")?,
            key_id: r.try_get("key_id")?,
            environment: r.try_get("environment")?,
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
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
        })
    }
}
