//! Platform administration of organizations and projects; the queries are in [`super::store`].

use axum::{extract::State, response::IntoResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store;
use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::extract::PlatformAdmin,
    error::{Error, FieldError},
    events::{Change, Invalidation},
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
        routes::Routes,
    },
    orgs::organizations,
};

pub fn routes() -> Routes {
    Routes::new()
        .get("/v1/admin/organizations", list)
        .get("/v1/admin/organizations/{id}", detail)
        .patch("/v1/admin/organizations/{id}", update)
        .put("/v1/admin/organizations/{id}/status", set_status)
        .get("/v1/admin/projects", list_projects)
}

async fn list(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<super::ListFilter>,
) -> Result<impl IntoResponse, Error> {
    let status = filter
        .status
        .as_deref()
        .map(Standing::input)
        .transpose()
        .map_err(|e| Error::invalid(vec![e]))?;
    let list = store::organizations(&state.db, filter.q.as_deref(), status, &page).await?;
    Ok(axum::Json(list))
}

async fn detail(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Error> {
    let org = organizations::get(&state.db, &id).await?;
    let members = store::organization_members(&state.db, &id).await?;
    let mut body = serde_json::to_value(org).map_err(anyhow::Error::from)?;
    body["members"] = serde_json::to_value(members).map_err(anyhow::Error::from)?;
    body["subscription"] = crate::billing::subscriptions::find(&state, &id)
        .await?
        .unwrap_or(Value::Null);
    body["usage"] = crate::billing::usage_document(&state, &id).await?;
    Ok(axum::Json(body))
}

/// `PATCH /v1/admin/organizations/{id}`: a platform admin repairs an organization's profile or
/// settings — e.g. an IP allowlist that locked every member out — audited as the admin.
async fn update(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: crate::http::request_meta::RequestMeta,
    Path(id): Path<String>,
    Json(body): Json<organizations::UpdateOrganization>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(
        organizations::update_as_platform_admin(&state, &admin, &meta, &id, body).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusChange {
    status: String,
    #[serde(default)]
    reason: String,
}

/// Suspension refuses the organization's tokens (and keys) from the next request: every
/// organization-scoped request reads the status.
async fn set_status(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: crate::http::request_meta::RequestMeta,
    Path(id): Path<String>,
    Json(body): Json<StatusChange>,
) -> Result<impl IntoResponse, Error> {
    let mut errors = Vec::new();
    let status = Standing::input(&body.status).map_err(|e| errors.push(e));
    if body.reason.chars().count() > 1000 {
        errors.push(FieldError::new("reason", "must be at most 1000 characters"));
    }
    let (Ok(status), true) = (status, errors.is_empty()) else {
        return Err(Error::invalid(errors));
    };
    let action = if status == Standing::Suspended {
        "organization.suspended"
    } else {
        "organization.updated"
    };
    // Keys cached on every node carry the organization's status.
    Change::new(
        action,
        "organization",
        &id,
        json!({"id": id, "status": body.status}),
    )
    .organization(&id)
    .metadata(json!({"reason": body.reason}))
    .invalidates(Invalidation::organization(&id))
    .write(&state, &admin.context(&meta), async |tx| {
        store::set_organization_status(tx, &id, status).await
    })
    .await?;
    tracing::info!(organization_id = %id, status = %body.status, reason = %body.reason, "organization status changed");
    Ok(axum::Json(organizations::get(&state.db, &id).await?))
}

async fn list_projects(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<super::ListFilter>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(
        store::projects(&state.db, filter.organization_id, &page).await?,
    ))
}
