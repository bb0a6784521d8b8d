//! Recorded violations: `GET /v1/organizations/{org_id}/analytics/violations[/{id}]` (member /
//! `analytics:read`), newest first with filters and cursor pagination. Violations are written
//! by the gateway's usage writer together with the log entry they belong to (see
//! [`record`]), each with a `policy.violation` event; excerpts are masked before they get here.
//! The queries are in `violations/store.rs`.

pub(crate) mod store;

use crate::http::pagination::List;
use axum::extract::State;

pub use store::{record, Context, Violation};

use super::engine::Hit;
use crate::{
    app::AppState,
    error::Error,
    http::{
        extract::{Path, Query},
        pagination::Page,
    },
    orgs::{access::OrgAccess, roles::perm},
};

/// A violation found on the request path, waiting for the usage writer.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub stage: &'static str,
    pub hit: Hit,
}

impl Found {
    pub fn new(stage: &'static str, hit: Hit) -> Found {
        Found {
            id: crate::ids::ViolationId::generate().into(),
            stage,
            hit,
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    page: Page,
    Query(mut filter): Query<store::Filter>,
) -> Result<axum::Json<List<Violation>>, Error> {
    filter.environment = access.environment().map(str::to_string);
    (filter.start, filter.end) = crate::http::time_range(filter.start, filter.end)?;
    let list = store::list(&state.db, access.org_id(), filter, &page).await?;
    Ok(axum::Json(list))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<axum::Json<Violation>, Error> {
    let violation = store::get(&state.db, access.org_id(), access.environment(), &id)
        .await?
        .ok_or_else(|| Error::not_found("Violation not found"))?;
    Ok(axum::Json(violation))
}
