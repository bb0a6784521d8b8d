//! `/platform/api/service/…`: the tenant's own resources (info, members, invitations, plans,
//! subscription, configs, storage). The tenant is [`TenantAccess`]'s; each route's permission is
//! the `/v1` route's (`TenantAccess<perm::X>` wraps the `OrgAccess<perm::X>` the `/v1` handler
//! takes).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};

use super::{items, reshape, TenantAccess};
use crate::{
    app::AppState,
    auth::extract::AuthUser,
    billing::{self, subscriptions},
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
        routes::Routes,
    },
    orgs::{members, organizations, projects, roles::perm},
};

pub fn routes() -> Routes {
    const S: &str = "/platform/api/service";
    Routes::new()
        .get(&format!("{S}/info"), info)
        .get(&format!("{S}/members"), list_members)
        .delete(&format!("{S}/members/{{user_id}}"), remove_member)
        .post(&format!("{S}/invites"), invite)
        .get(&format!("{S}/catalog/plans"), plans)
        .post(&format!("{S}/subscriptions"), subscribe)
        .get(&format!("{S}/configs"), list_configs)
        .put(&format!("{S}/configs/{{key}}"), put_config)
        .get(&format!("{S}/storage"), get_storage)
        .put(&format!("{S}/storage"), put_storage)
}

async fn info(
    state: State<AppState>,
    access: TenantAccess<perm::OrganizationsRead>,
) -> impl IntoResponse {
    organizations::get_one(state, access.0).await
}

async fn list_members(
    state: State<AppState>,
    access: TenantAccess<perm::MembersRead>,
    page: Page,
    query: Query<members::MemberQuery>,
) -> Response {
    reshape(
        members::list(state, access.0, page, query).await,
        items("members"),
    )
    .await
}

async fn remove_member(
    state: State<AppState>,
    access: TenantAccess<perm::MembersRead>,
    Path(user_id): Path<String>,
) -> impl IntoResponse {
    let path = access.path(user_id);
    members::remove(state, access.0, path).await
}

async fn invite(
    state: State<AppState>,
    access: TenantAccess<perm::MembersManage>,
    body: Json<members::Invite>,
) -> impl IntoResponse {
    members::create_invitation(state, access.0, body).await
}

/// The plan catalogue (any signed-in user, as `GET /v1/plans`).
async fn plans(state: State<AppState>, user: AuthUser, page: Page) -> Response {
    reshape(billing::list_plans(state, user, page).await, items("plans")).await
}

async fn subscribe(
    state: State<AppState>,
    access: TenantAccess<perm::BillingManage>,
    body: Json<subscriptions::SubscriptionInput>,
) -> impl IntoResponse {
    subscriptions::create(state, access.0, body).await
}

async fn list_configs(
    state: State<AppState>,
    access: TenantAccess<perm::ConfigsRead>,
    page: Page,
) -> Response {
    reshape(
        projects::list_configs(state, access.0, page).await,
        items("configs"),
    )
    .await
}

async fn put_config(
    state: State<AppState>,
    access: TenantAccess<perm::ConfigsManage>,
    Path(key): Path<String>,
    body: Json<projects::ConfigValue>,
) -> impl IntoResponse {
    let path = access.path(key);
    projects::put_config(state, access.0, path, body).await
}

async fn get_storage(
    state: State<AppState>,
    access: TenantAccess<perm::StorageManage>,
) -> impl IntoResponse {
    projects::get_storage(state, access.0).await
}

async fn put_storage(
    state: State<AppState>,
    access: TenantAccess<perm::StorageManage>,
    body: Json<projects::StorageInput>,
) -> impl IntoResponse {
    projects::put_storage(state, access.0, body).await
}
