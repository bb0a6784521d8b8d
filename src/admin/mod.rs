//! Platform administration (SPEC §8): every route here requires a platform admin. The
//! queries are in [`store`] (and, for a user's own rows, [`crate::auth::users`]); every change
//! is written through [`Change`](crate::events::Change), audited as the admin.

pub mod configs;
pub mod orgs;
pub mod store;

use crate::auth::tokens::SigningKeyInfo;
use crate::mail::StoredMail;
use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::json;
use store::PlatformStats;

pub use store::{escape_like, like_pattern};

use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::{
        extract::PlatformAdmin,
        sessions,
        users::{self, AdminPatch, ProfilePatch, User},
    },
    error::Error,
    events::{Actor, ActorContext, Change},
    http::request_meta::RequestMeta,
    http::{
        extract::{Json, Path, Query},
        pagination::{has_id, List, Page},
        routes::Routes,
    },
    ids::{ProjectId, SigningKeyId, UserId},
};

pub fn routes() -> Routes {
    const USER: &str = "/v1/admin/users/{id}";
    Routes::new()
        .get("/v1/admin/users", list_users)
        .get(USER, get_user)
        .patch(USER, update_user)
        .delete(USER, delete_user)
        .get("/v1/admin/signing-keys", list_signing_keys)
        .get(
            "/v1/admin/projects/{id}/signing-keys",
            list_project_signing_keys,
        )
        .post("/v1/admin/signing-keys/rotate", rotate_signing_key)
        .post(
            "/v1/admin/projects/{id}/signing-keys/rotate",
            rotate_project_signing_key,
        )
        .get("/v1/admin/mailbox", mailbox)
        .get("/v1/admin/stats", stats)
        .get("/v1/admin/configs", configs::list)
        .get("/v1/admin/configs/{key}", configs::get)
        .put("/v1/admin/configs/{key}", configs::set)
}

/// Counts of organizations, users and keys, and the last 24 hours of gateway traffic.
pub(crate) async fn stats(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<axum::Json<PlatformStats>, Error> {
    Ok(axum::Json(store::platform_stats(&state.db).await?))
}

impl PlatformAdmin {
    /// The admin as the actor of an audited change.
    pub fn context(&self, meta: &RequestMeta) -> ActorContext {
        ActorContext::new(Actor::User(self.0.user.id.clone()), meta.into())
    }
}

has_id!(User);

/// The filters of the admin lists; each list reads the ones it documents (`q` and `status`
/// for users and organizations, `organization_id` for projects, `to` for the mailbox).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ListFilter {
    pub q: Option<String>,
    pub status: Option<String>,
    pub organization_id: Option<String>,
    pub to: Option<String>,
}

pub(crate) async fn list_users(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<ListFilter>,
) -> Result<axum::Json<List<User>>, Error> {
    let list = store::users(&state.db, filter.q.as_deref(), filter.status, &page).await?;
    Ok(axum::Json(list))
}

async fn load_user(state: &AppState, id: &UserId) -> Result<User, Error> {
    users::get(&state.db, id)
        .await?
        .ok_or_else(|| Error::not_found("User not found"))
}

async fn get_user(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<UserId>,
) -> Result<axum::Json<UserDetail>, Error> {
    Ok(axum::Json(UserDetail {
        user: load_user(&state, &id).await?,
        sessions: sessions::list(&state.db, &id, None).await?,
        organizations: store::user_organizations(&state.db, &id).await?,
    }))
}

/// `GET /v1/admin/users/{id}`: the user, their sessions and their organizations.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    user: User,
    sessions: Vec<crate::auth::sessions::SessionView>,
    organizations: Vec<store::UserOrganization>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    Path(id): Path<UserId>,
    Json(patch): Json<AdminUserPatch>,
) -> Result<axum::Json<User>, Error> {
    load_user(&state, &id).await?;
    if id == admin.user.id
        && (patch.status.as_deref().and_then(Standing::parse) == Some(Standing::Suspended)
            || patch.is_platform_admin == Some(false))
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
    Path(id): Path<UserId>,
) -> Result<StatusCode, Error> {
    if id == admin.user.id {
        return Err(Error::bad_request("You cannot delete your own account"));
    }
    let by = ActorContext::new(Actor::User(admin.user.id.clone()), (&meta).into());
    Change::new("user.deleted", "user", &id, json!({"id": id}))
        .write(&state, &by, async |tx| {
            // Every organization keeps an owner: deleting its only one is refused.
            let sole = crate::orgs::members::sole_owner_of(tx, state.db.backend(), &id).await?;
            if !sole.is_empty() {
                return Err(Error::conflict(format!(
                    "This user is the only owner of {} organization(s); make someone else owner there first",
                    sole.len()
                ))
                .with_details(json!({ "organizations": sole })));
            }
            store::delete_user(tx, &id).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/projects/{id}/signing-keys`: the platform's token-signing keys, which every
/// project shares (there are no per-project keys); not found for an unknown project.
async fn list_project_signing_keys(
    state: State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<ProjectId>,
    page: Page,
) -> Result<axum::Json<List<SigningKeyInfo>>, Error> {
    crate::orgs::projects::organization_of(&state.db, &id).await?;
    list_signing_keys(state, admin, page).await
}

async fn list_signing_keys(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
) -> Result<axum::Json<List<SigningKeyInfo>>, Error> {
    let keys = state.keys.list().await?;
    Ok(axum::Json(List::slice("signing_keys", keys, &page)))
}

/// `POST /v1/admin/signing-keys/rotate`: a new token-signing key becomes active (the previous
/// ones keep verifying until their tokens expire); `201` with the new key's public parts.
async fn rotate_signing_key(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
) -> Result<(StatusCode, axum::Json<SigningKeyInfo>), Error> {
    let key = rotate_platform_key(&state, &admin.context(&meta), json!({})).await?;
    Ok((StatusCode::CREATED, axum::Json(key)))
}

/// `POST /v1/admin/projects/{id}/signing-keys/rotate`: the platform's rotation (every project
/// shares the platform's signing keys), answered as `POST /v1/admin/signing-keys/rotate` answers
/// it plus `"scope": "platform"`, and audited as that rotation with the project (and its
/// organization) in the entry's metadata; not found for an unknown project.
async fn rotate_project_signing_key(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<ProjectId>,
) -> Result<(StatusCode, axum::Json<ProjectSigningKey>), Error> {
    let org = crate::orgs::projects::organization_of(&state.db, &id).await?;
    let metadata = json!({"project_id": id, "organization_id": org});
    let key = rotate_platform_key(&state, &admin.context(&meta), metadata).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ProjectSigningKey {
            key,
            scope: "platform",
        }),
    ))
}

/// A signing key rotated from a project's path: the platform's, which every project shares.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
struct ProjectSigningKey {
    #[serde(flatten)]
    key: SigningKeyInfo,
    /// Always `platform`.
    scope: &'static str,
}

/// Rotates the platform's signing key as `by`, audited (`signing_key.rotated`, a platform
/// event, with `metadata`); the new key as listed.
async fn rotate_platform_key(
    state: &AppState,
    by: &ActorContext,
    metadata: serde_json::Value,
) -> Result<crate::auth::tokens::SigningKeyInfo, Error> {
    let kid = SigningKeyId::generate();
    Change::new(
        "signing_key.rotated",
        "signing_key",
        kid.as_str(),
        json!({ "id": kid }),
    )
    .metadata(metadata)
    .write(state, by, async |tx| state.keys.rotate(tx, &kid).await)
    .await?;
    state.keys.reload().await?;
    let keys = state.keys.list().await?;
    keys.into_iter()
        .find(|k| k.id == kid)
        .ok_or_else(|| anyhow::anyhow!("the new signing key is not listed").into())
}

async fn mailbox(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<ListFilter>,
) -> Result<axum::Json<List<StoredMail>>, Error> {
    Ok(axum::Json(
        crate::mail::list_mailbox(&state.db, filter.to.as_deref(), &page).await?,
    ))
}
