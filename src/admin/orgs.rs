//! Platform administration of organizations and projects; the queries are in [`super::store`].
//!
//! A platform admin acts on any organization's projects, members and invitations through the
//! organization's own handlers, given an [`OrgAccess`] of the admin
//! ([`OrgAccess::platform_admin`]: an owner's authority, audited as the admin in the
//! organization) — one implementation of each rule (quotas, the last owner, who grants owner).

use crate::http::pagination::List;
use crate::keys::store::ApiKey;
use crate::orgs::organizations::Organization;
use crate::orgs::projects::Project;
use axum::{
    extract::{FromRequestParts, State},
    http::{request::Parts, StatusCode},
};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Map, Value};

use super::store;
use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::{extract::PlatformAdmin, users},
    error::{Error, FieldError},
    events::{Change, Invalidation},
    http::{
        extract::{parse_json, Json, Path, Query},
        pagination::Page,
        request_meta::RequestMeta,
        routes::Routes,
    },
    ids::{InvitationId, ProjectId, UserId},
    keys,
    orgs::{
        access::{org_path_param, OrgAccess, OrgRef},
        members, organizations, projects,
        roles::{perm, Permission, RequiredPermission, Role},
    },
};

pub fn routes() -> Routes {
    const PROJECT: &str = "/v1/admin/projects/{id}";
    const MEMBERS: &str = "/v1/admin/organizations/{id}/members";
    const MEMBER: &str = "/v1/admin/organizations/{id}/members/{user_id}";
    const INVITATIONS: &str = "/v1/admin/organizations/{id}/invitations";
    Routes::new()
        .get("/v1/admin/organizations", list)
        .post("/v1/admin/organizations", create)
        .get("/v1/admin/organizations/{id}", detail)
        .patch("/v1/admin/organizations/{id}", update)
        .delete("/v1/admin/organizations/{id}", delete)
        .put("/v1/admin/organizations/{id}/status", set_status)
        .get("/v1/admin/projects", list_projects)
        .post("/v1/admin/projects", create_project)
        .get(PROJECT, get_project)
        .patch(PROJECT, update_project)
        .delete(PROJECT, delete_project)
        .get("/v1/admin/projects/{id}/api-keys", list_project_keys)
        .post("/v1/admin/projects/{id}/api-keys", create_project_key)
        .delete(
            "/v1/admin/projects/{id}/api-keys/{key_id}",
            revoke_project_key,
        )
        .get(MEMBERS, list_members)
        .post(MEMBERS, add_member)
        .patch(MEMBER, change_role)
        .delete(MEMBER, remove_member)
        .get(INVITATIONS, list_invitations)
        .post(INVITATIONS, create_invitation)
        .delete(
            "/v1/admin/organizations/{id}/invitations/{inv_id}",
            revoke_invitation,
        )
}

/// The [`OrgAccess`] of a platform admin on the organization `{id}` (id or slug) of an admin
/// route: refused to anyone but a platform admin; any organization, whatever its status.
pub struct AdminAccess<P>(pub OrgAccess<P>);

impl<P: RequiredPermission> FromRequestParts<AppState> for AdminAccess<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let admin = PlatformAdmin::from_request_parts(parts, state).await?;
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        let id = org_path_param(parts, state, "id").await?;
        let org = OrgRef::find(&state.db, &id).await?;
        Ok(AdminAccess(OrgAccess::platform_admin(admin, org, meta)))
    }
}

/// The [`OrgAccess`] of a platform admin on the organization of the project `{id}` of an admin
/// route, and the path the organization's own project routes take: refused to anyone but a
/// platform admin; not found if there is no such project.
pub struct ProjectAccess<P>(pub OrgAccess<P>, pub Path<(String, ProjectId)>);

impl<P: RequiredPermission> FromRequestParts<AppState> for ProjectAccess<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let admin = PlatformAdmin::from_request_parts(parts, state).await?;
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        let id = ProjectId::from(org_path_param(parts, state, "id").await?);
        let access = project_access(state, admin, meta, &id).await?;
        let path = org_path(&access, id);
        Ok(ProjectAccess(access, path))
    }
}

/// An admin route that runs the organization's own handler `$target` with the admin's access to
/// the organization (`AdminAccess<perm::$perm>`, or `ProjectAccess` for a project's routes,
/// which also hands over the project's path), passing the other extractors through.
macro_rules! as_admin {
    ($(#[$doc:meta])* $name:ident, $perm:ident, $target:path, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        async fn $name(
            state: State<AppState>,
            AdminAccess(access): AdminAccess<perm::$perm>,
            $($arg: $ty),*
        ) -> Result<$ret, Error> {
            $target(state, access, $($arg),*).await
        }
    };
    (project $name:ident, $perm:ident, $target:path, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        async fn $name(
            state: State<AppState>,
            ProjectAccess(access, path): ProjectAccess<perm::$perm>,
            $($arg: $ty),*
        ) -> Result<$ret, Error> {
            $target(state, access, path, $($arg),*).await
        }
    };
}

pub(crate) async fn list(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
    Query(filter): Query<super::ListFilter>,
) -> Result<axum::Json<List<Organization>>, Error> {
    let status = filter
        .status
        .as_deref()
        .map(Standing::input)
        .transpose()
        .map_err(|e| Error::invalid(vec![e]))?;
    let list = store::organizations(&state.db, filter.q.as_deref(), status, &page).await?;
    Ok(axum::Json(list))
}

/// `POST /v1/admin/organizations`: the organization's fields (as `POST /v1/organizations` takes
/// them) and its owner, an existing user named by `owner_id` or `owner_email` (one of the two).
async fn create(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<(StatusCode, axum::Json<Organization>), Error> {
    let owner = match (
        take_string(&mut body, "owner_id")?,
        take_string(&mut body, "owner_email")?,
    ) {
        (Some(id), None) => users::get(&state.db, &UserId(id))
            .await?
            .map(|u| u.id)
            .ok_or_else(|| Error::invalid_field("owner_id", "no user has this id"))?,
        (None, Some(email)) => users::credentials_by_email(&state.db, &email)
            .await?
            .map(|u| u.id)
            .ok_or_else(|| Error::invalid_field("owner_email", "no user has this email"))?,
        _ => {
            return Err(Error::invalid_field(
                "owner_id",
                "give the owner as exactly one of owner_id and owner_email (an existing user)",
            ))
        }
    };
    let org =
        organizations::create_owned(&state, &admin.context(&meta), &owner, rest(body)?).await?;
    Ok((StatusCode::CREATED, axum::Json(org)))
}

/// `DELETE /v1/admin/organizations/{id}`: as its owner would, with everything it holds.
async fn delete(
    state: State<AppState>,
    AdminAccess(access): AdminAccess<perm::OrganizationsDelete>,
) -> Result<StatusCode, Error> {
    organizations::delete(state, access).await
}

/// `GET /v1/admin/organizations/{id}`: the organization, its members, its subscription and its
/// usage this period.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct OrganizationDetail {
    #[serde(flatten)]
    organization: Organization,
    members: Vec<store::OrganizationMember>,
    subscription: Option<crate::billing::subscriptions::SubscriptionDocument>,
    usage: crate::billing::UsageDocument,
}

pub(crate) async fn detail(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<axum::Json<OrganizationDetail>, Error> {
    Ok(axum::Json(OrganizationDetail {
        organization: organizations::get(&state.db, &id).await?,
        members: store::organization_members(&state.db, &id).await?,
        subscription: crate::billing::subscriptions::find(&state, &id).await?,
        usage: crate::billing::usage_document(&state, &id).await?,
    }))
}

/// `PATCH /v1/admin/organizations/{id}`: a platform admin repairs an organization's profile or
/// settings — e.g. an IP allowlist that locked every member out — audited as the admin.
async fn update(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
    Json(body): Json<organizations::UpdateOrganization>,
) -> Result<axum::Json<Organization>, Error> {
    Ok(axum::Json(
        organizations::update_as_platform_admin(&state, &admin, &meta, &id, body).await?,
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusChange {
    status: String,
    #[serde(default)]
    reason: String,
}

/// Suspension refuses the organization's tokens (and keys) from the next request: every
/// organization-scoped request reads the status.
pub(crate) async fn set_status(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
    Json(body): Json<StatusChange>,
) -> Result<axum::Json<Organization>, Error> {
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
) -> Result<axum::Json<List<Project>>, Error> {
    Ok(axum::Json(
        store::projects(&state.db, filter.organization_id, &page).await?,
    ))
}

/// Takes the string `field` out of a JSON object body (`None` if absent); the rest of the body
/// is then read as the organization's own route reads it.
fn take_string(body: &mut Map<String, Value>, field: &str) -> Result<Option<String>, Error> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 320 => Ok(Some(s)),
        Some(_) => Err(Error::invalid_field(
            field,
            "must be a string of at most 320 characters",
        )),
    }
}

/// The rest of a body, once [`take_string`] took the admin route's own fields out of it.
fn rest<T: DeserializeOwned>(body: Map<String, Value>) -> Result<T, Error> {
    parse_json(&serde_json::to_vec(&body).map_err(anyhow::Error::from)?)
}

/// `POST /v1/admin/projects`: the project's fields (as `POST …/projects` takes them) and the
/// `organization_id` (or slug) it belongs to.
async fn create_project(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<(StatusCode, axum::Json<Project>), Error> {
    let Some(org) = take_string(&mut body, "organization_id")? else {
        return Err(Error::invalid_field("organization_id", "is required"));
    };
    let project = rest(body)?;
    let org = match OrgRef::find(&state.db, &org).await {
        Err(e) if e.code() == crate::error::ErrorCode::NotFound => {
            return Err(Error::invalid_field(
                "organization_id",
                "no organization has this id or slug",
            ))
        }
        found => found?,
    };
    let access = OrgAccess::platform_admin(admin, org, meta);
    projects::create(State(state), access, Json(project)).await
}

/// The admin's access to the organization of the project `id` (not found if there is none).
async fn project_access<P>(
    state: &AppState,
    admin: PlatformAdmin,
    meta: RequestMeta,
    id: &ProjectId,
) -> Result<OrgAccess<P>, Error> {
    let org_id = projects::organization_of(&state.db, id).await?;
    let org = OrgRef::find(&state.db, &org_id).await?;
    Ok(OrgAccess::platform_admin(admin, org, meta))
}

/// The path the organization's own routes of one of its resources take.
fn org_path<P, T>(access: &OrgAccess<P>, id: T) -> Path<(String, T)> {
    Path((access.org_id().to_string(), id))
}

as_admin!(project get_project, OrganizationsRead, projects::get, () -> axum::Json<Project>);
as_admin!(project update_project, OrganizationsUpdate, projects::update, (body: Json<projects::ProjectInput>) -> axum::Json<Project>);
as_admin!(project delete_project, OrganizationsUpdate, projects::delete, () -> StatusCode);

/// `GET /v1/admin/projects/{id}/api-keys`: the organization's keys list, confined to the
/// project (its other filters — `status`, `type`, `environment` — apply).
async fn list_project_keys(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<ProjectId>,
    page: Page,
    Query(filter): Query<keys::routes::KeyFilter>,
) -> Result<axum::Json<List<ApiKey>>, Error> {
    let access = project_access(&state, admin, meta, &id).await?;
    keys::routes::list(State(state), access, page, Query(filter.in_project(&id))).await
}

/// `POST /v1/admin/projects/{id}/api-keys`: a key of the project, made by the admin for a member
/// of its organization — `on_behalf_of` (a member who may manage API keys: an admin or an
/// owner), else the organization's longest-standing owner. The key's `created_by` is that
/// member, so its authority is exactly theirs, now and later (lost when they leave or are
/// demoted); the scopes asked for are checked against their role. The rest of the body is the
/// organization route's; `api_key.created` is the organization's event, by the admin, with
/// `on_behalf_of` in its metadata. `201` with the token, shown once.
async fn create_project_key(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<ProjectId>,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<(StatusCode, axum::Json<keys::routes::CreatedKey>), Error> {
    let mut access = project_access::<perm::ApiKeysManage>(&state, admin, meta, &id).await?;
    let named = take_string(&mut body, "on_behalf_of")?;
    let key: keys::routes::CreateKey = rest(body)?;
    let key = key.in_project(&id)?;
    let org = access.org_id().clone();
    let (member, role) = match named {
        Some(user) => {
            let user = UserId(user);
            let role = members::store::member_role(&state.db, &org, &user)
                .await?
                .ok_or_else(|| {
                    Error::invalid_field(
                        "on_behalf_of",
                        "is not a member of the project's organization",
                    )
                })?;
            (user, role)
        }
        None => {
            let owner = members::store::longest_standing_owner(&state.db, &org)
                .await?
                .ok_or_else(|| {
                    Error::conflict(
                        "The project's organization has no owner for the key to answer to; \
                         name a member who may manage API keys in on_behalf_of",
                    )
                })?;
            (owner, Role::Owner)
        }
    };
    let mut refusals = Vec::new();
    if !role.can(Permission::ApiKeysManage) {
        refusals.push(FieldError::new(
            "on_behalf_of",
            format!(
                "is a member with the {} role; a key answers to a member who may manage API \
                 keys (admin or owner)",
                role.as_str()
            ),
        ));
    }
    // The key carries the member's authority, not the admin's.
    access.role = role;
    let on_behalf_of = keys::routes::OnBehalfOf { member, refusals };
    keys::routes::create_key(&state, &access, key, Some(on_behalf_of)).await
}

/// `DELETE /v1/admin/projects/{id}/api-keys/{key_id}`: revokes a key of the project (a key of
/// another project, or of none, is not found here).
async fn revoke_project_key(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path((id, key_id)): Path<(ProjectId, String)>,
) -> Result<StatusCode, Error> {
    let access = project_access(&state, admin, meta, &id).await?;
    let key = keys::store::load(&state.db, access.org_id(), &key_id, None).await?;
    if key.project_id.as_deref() != Some(&*id) {
        return Err(Error::not_found("API key not found"));
    }
    let path = org_path(&access, key_id);
    keys::routes::revoke(State(state), access, path).await
}

// ---- members and invitations: the organization's own handlers, run by the admin -----------

as_admin!(list_members, MembersRead, members::list, (page: Page, query: Query<members::MemberQuery>) -> axum::Json<List<members::Member>>);
as_admin!(
    /// Invites (a pending member), as `POST …/members` does.
    add_member, MembersManage, members::add, (body: Json<members::Invite>) -> (StatusCode, axum::Json<members::PendingMember>)
);
as_admin!(
    /// Another role for a member or a pending member (`inv_…`); the last owner stays one.
    change_role, MembersManage, members::change_role,
    (path: Path<(String, String)>, body: Json<members::ChangeRole>) -> axum::Json<members::RoleChanged>
);
as_admin!(
    /// Removes a member, or revokes a pending member's invitation; never the last owner.
    remove_member, MembersRead, members::remove, (path: Path<(String, String)>) -> StatusCode
);
as_admin!(
    list_invitations, MembersManage, members::list_invitations,
    (page: Page, filter: Query<members::InvitationFilter>) -> axum::Json<List<members::Invitation>>
);
as_admin!(create_invitation, MembersManage, members::create_invitation, (body: Json<members::Invite>) -> (StatusCode, axum::Json<members::Invitation>));
as_admin!(
    revoke_invitation, MembersManage, members::revoke_invitation,
    (path: Path<(String, InvitationId)>) -> StatusCode
);

impl<P: RequiredPermission> crate::http::openapi::Input for AdminAccess<P> {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        <PlatformAdmin as crate::http::openapi::Input>::describe(d, op);
        op.note("Acts on any organization with an owner's authority, audited as the admin.");
        op.error(404, "Not found: no such organization");
    }
}

impl<P: RequiredPermission> crate::http::openapi::Input for ProjectAccess<P> {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        <PlatformAdmin as crate::http::openapi::Input>::describe(d, op);
        op.error(404, "Not found: no such project");
    }
}
