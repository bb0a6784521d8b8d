//! The AI gateway (SPEC §10): provider configuration (`providers.rs`), the proxy routes
//! (`proxy.rs`), the mock provider (`mock.rs`), usage and cost (`usage.rs`), and analytics
//! (routes here and in `stats.rs`, queries in `analytics.rs`).

pub mod analytics;
pub mod client;
pub mod mock;
pub mod providers;
pub mod proxy;
pub mod rollup;
pub mod stats;
pub mod usage;

use crate::http::pagination::List;
use axum::extract::State;

pub use analytics::LogEntry;

use crate::{
    app::AppState,
    error::Error,
    http::{extract::Query, pagination::Page, routes::Routes},
    orgs::{access::OrgAccess, roles::perm},
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
        .any(proxy::GOOGLE_V1.route, proxy::google_v1)
        .any(proxy::AZURE.route, proxy::azure)
}

/// `GET …/analytics/logs`: newest first, filters, cursor (or offset) paging.
pub(crate) async fn logs(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    page: Page,
    Query(mut filter): Query<analytics::LogFilter>,
) -> Result<axum::Json<List<LogEntry>>, Error> {
    filter.environment = access.environment().map(str::to_string);
    (filter.start, filter.end) = crate::http::time_range(filter.start, filter.end)?;
    let list = analytics::logs(&state.db, access.org_id(), filter, &page).await?;
    Ok(axum::Json(list))
}
