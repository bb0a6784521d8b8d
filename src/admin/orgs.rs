//! Platform administration of organizations and projects.

use axum::{extract::State, response::IntoResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{
    admin::like_pattern,
    app::AppState,
    auth::extract::PlatformAdmin,
    error::{Error, FieldError},
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
        routes::Routes,
    },
    orgs::{
        organizations::{self, Organization, ORG_SELECT},
        projects,
    },
    storage::{self, Sql},
};

pub fn routes() -> Routes {
    Routes::new()
        .get("/v1/admin/organizations", list)
        .get("/v1/admin/organizations/{id}", detail)
        .patch("/v1/admin/organizations/{id}", update)
        .put("/v1/admin/organizations/{id}/status", set_status)
        .get("/v1/admin/projects", list_projects)
}

#[derive(Debug, Deserialize)]
struct OrgFilter {
    q: Option<String>,
    status: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<OrgFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM organizations o WHERE 1 = 1");
    if let Some(q) = filter.q.as_deref().filter(|q| !q.trim().is_empty()) {
        let p = like_pattern(q);
        sql.push(" AND (LOWER(o.name) LIKE ")
            .bind(p.clone())
            .push(" ESCAPE '\\' OR o.slug LIKE ")
            .bind(p)
            .push(" ESCAPE '\\')");
    }
    if let Some(status) = filter.status {
        if status != "active" && status != "suspended" {
            return Err(Error::invalid_field(
                "status",
                "must be active or suspended",
            ));
        }
        sql.and("o.status = ?", status);
    }
    let list = page
        .fetch(
            &state.db,
            "organizations",
            ORG_SELECT,
            &sql,
            "o.id DESC",
            Organization::from_row,
        )
        .await?;
    Ok(axum::Json(list))
}

async fn detail(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Error> {
    let org = organizations::get(&state.db, &id).await?;
    let rows = sqlx::query(
        "SELECT u.id, u.email, u.name, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.organization_id = $1 ORDER BY m.created_at",
    )
    .bind(&id)
    .fetch_all(state.db.pool())
    .await?;
    let members = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "email": r.try_get::<String, _>("email")?,
                "name": r.try_get::<String, _>("name")?,
                "role": r.try_get::<String, _>("role")?,
                "joined_at": storage::api_time(&r.try_get::<String, _>("created_at")?),
            }))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let mut body = serde_json::to_value(org).map_err(anyhow::Error::from)?;
    body["members"] = members.into();
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
    let org = organizations::get(&state.db, &id).await?;
    Ok(axum::Json(
        organizations::apply_update(
            &state,
            &org.id,
            &org.settings,
            body,
            &admin.context(&meta),
            organizations::Lockout::Allow,
        )
        .await?,
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
    if body.status != "active" && body.status != "suspended" {
        errors.push(FieldError::new("status", "must be active or suspended"));
    }
    if body.reason.chars().count() > 1000 {
        errors.push(FieldError::new("reason", "must be at most 1000 characters"));
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let mut tx = crate::events::begin_write(&state.db).await?;
    let done = sqlx::query("UPDATE organizations SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(&body.status)
        .bind(storage::now())
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("Organization not found"));
    }
    let action = if body.status == "suspended" {
        "organization.suspended"
    } else {
        "organization.updated"
    };
    crate::events::emit(
        &mut tx,
        &admin.context(&meta),
        crate::events::NewEvent::new(action, "organization", Some(id.clone()))
            .organization(crate::ids::OrgId(id.clone()))
            .data(json!({"id": id, "status": body.status}))
            .metadata(json!({"reason": body.reason})),
    )
    .await?;
    tx.commit().await?;
    // Keys cached on every node carry the organization's status.
    state
        .bus
        .publish(crate::events::Invalidation::organization(&id))
        .await;
    tracing::info!(organization_id = %id, status = %body.status, reason = %body.reason, "organization status changed");
    Ok(axum::Json(organizations::get(&state.db, &id).await?))
}

#[derive(Debug, Deserialize)]
struct ProjectFilter {
    organization_id: Option<String>,
}

async fn list_projects(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<ProjectFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM projects WHERE 1 = 1");
    if let Some(org) = filter.organization_id {
        sql.and("organization_id = ?", org);
    }
    Ok(axum::Json(
        projects::list_projects(&state.db, &sql, &page).await?,
    ))
}
