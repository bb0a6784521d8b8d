//! Platform administration (SPEC §8): every route here requires a platform admin.

pub mod orgs;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use crate::{
    app::AppState,
    auth::{
        extract::PlatformAdmin,
        sessions,
        users::{self, AdminPatch, ProfilePatch, User, USER_COLUMNS},
    },
    error::Error,
    events::{Actor, ActorContext},
    http::request_meta::RequestMeta,
    http::{
        extract::{Json, Path, Query},
        pagination::{HasId, Page},
        routes::Routes,
    },
    ids::UserId,
    storage::{self, Sql},
};

pub fn routes() -> Routes {
    const USER: &str = "/v1/admin/users/{id}";
    Routes::new()
        .get("/v1/admin/users", list_users)
        .get(USER, get_user)
        .patch(USER, update_user)
        .delete(USER, delete_user)
        .get("/v1/admin/signing-keys", list_signing_keys)
        .post("/v1/admin/signing-keys/rotate", rotate_signing_key)
        .get("/v1/admin/mailbox", mailbox)
}

impl PlatformAdmin {
    /// The admin as the actor of an audited change.
    pub fn context(&self, meta: &RequestMeta) -> ActorContext {
        ActorContext::new(Actor::User(self.0.user.id.clone()), meta.into())
    }
}

impl HasId for User {
    fn id(&self) -> &str {
        &self.id.0
    }
}

/// `%term%` for LIKE (lower-cased), with the pattern characters of the term escaped.
pub fn like_pattern(term: &str) -> String {
    format!("%{}%", escape_like(&term.trim().to_lowercase()))
}

/// Escapes LIKE's pattern characters (use with `ESCAPE '\\'`).
pub fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[derive(Debug, Deserialize)]
struct UserFilter {
    q: Option<String>,
    status: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<UserFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut where_ = Sql::new(" FROM users WHERE 1 = 1");
    if let Some(q) = filter.q.as_deref().filter(|q| !q.trim().is_empty()) {
        let pattern = like_pattern(q);
        where_
            .push(" AND (email LIKE ")
            .bind(pattern.clone())
            .push(" ESCAPE '\\' OR LOWER(name) LIKE ")
            .bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if let Some(status) = filter.status {
        where_.and("status = ?", status);
    }
    let select = format!("SELECT {USER_COLUMNS}");
    let list = page
        .fetch(
            &state.db,
            "users",
            &select,
            &where_,
            "id DESC",
            User::from_row,
        )
        .await?;
    Ok(axum::Json(list))
}

async fn load_user(state: &AppState, id: &str) -> Result<User, Error> {
    users::get(&state.db, &UserId(id.to_string()))
        .await?
        .ok_or_else(|| Error::not_found("User not found"))
}

async fn get_user(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Error> {
    let user = load_user(&state, &id).await?;
    let sessions = sessions::list(&state.db, &id, None).await?;
    let rows = sqlx::query(
        "SELECT o.id, o.name, o.slug, o.status, m.role, m.created_at FROM memberships m \
         JOIN organizations o ON o.id = m.organization_id WHERE m.user_id = $1 ORDER BY o.id",
    )
    .bind(&id)
    .fetch_all(state.db.pool())
    .await?;
    let organizations = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "name": r.try_get::<String, _>("name")?,
                "slug": r.try_get::<String, _>("slug")?,
                "status": r.try_get::<String, _>("status")?,
                "role": r.try_get::<String, _>("role")?,
                "joined_at": storage::api_time(&r.try_get::<String, _>("created_at")?),
            }))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let mut body = serde_json::to_value(&user).map_err(anyhow::Error::from)?;
    body["sessions"] = serde_json::to_value(sessions).map_err(anyhow::Error::from)?;
    body["organizations"] = organizations.into();
    Ok(axum::Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminUserPatch {
    name: Option<String>,
    metadata: Option<serde_json::Value>,
    status: Option<String>,
    is_platform_admin: Option<bool>,
}

async fn update_user(
    State(state): State<AppState>,
    PlatformAdmin(admin): PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
    Json(patch): Json<AdminUserPatch>,
) -> Result<impl IntoResponse, Error> {
    load_user(&state, &id).await?;
    if id == admin.user.id.0
        && (patch.status.as_deref() == Some("suspended") || patch.is_platform_admin == Some(false))
    {
        return Err(Error::bad_request(
            "You cannot suspend yourself or remove your own platform-admin role",
        ));
    }
    let ctx = ActorContext::new(Actor::User(admin.user.id.clone()), (&meta).into());
    let user = users::update(
        &state.db,
        &ctx,
        &id,
        ProfilePatch {
            name: patch.name,
            metadata: patch.metadata,
        },
        AdminPatch {
            status: patch.status,
            is_platform_admin: patch.is_platform_admin,
        },
    )
    .await?;
    Ok(axum::Json(user))
}

async fn delete_user(
    State(state): State<AppState>,
    PlatformAdmin(admin): PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    if id == admin.user.id.0 {
        return Err(Error::bad_request("You cannot delete your own account"));
    }
    let mut tx = crate::events::begin_write(&state.db).await?;
    // Every organization keeps an owner: deleting its only one is refused.
    let sole = crate::orgs::members::sole_owner_of(&mut tx, state.db.backend(), &id).await?;
    if !sole.is_empty() {
        return Err(Error::conflict(format!(
            "This user is the only owner of {} organization(s); make someone else owner there first",
            sole.len()
        ))
        .with_details(json!({ "organizations": sole })));
    }
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("User not found"));
    }
    crate::events::emit(
        &mut tx,
        &ActorContext::new(Actor::User(admin.user.id.clone()), (&meta).into()),
        crate::events::NewEvent::new("user.deleted", "user", Some(id.clone()))
            .data(json!({"id": id})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_signing_keys(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<impl IntoResponse, Error> {
    let keys = state.keys.list().await?;
    let total = keys.len();
    Ok(axum::Json(json!({
        "signing_keys": keys, "total": total, "limit": total, "offset": 0, "has_more": false,
    })))
}

async fn rotate_signing_key(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<impl IntoResponse, Error> {
    let kid = state.keys.rotate().await?;
    let keys = state.keys.list().await?;
    let key = keys.into_iter().find(|k| k.id == kid);
    Ok((StatusCode::CREATED, axum::Json(key)))
}

#[derive(Debug, Deserialize)]
struct MailboxFilter {
    to: Option<String>,
}

async fn mailbox(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<MailboxFilter>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(
        crate::mail::list_mailbox(&state.db, filter.to.as_deref(), &page).await?,
    ))
}
