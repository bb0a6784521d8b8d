//! `/platform/api/admin/…`: the platform admin's routes (`PlatformAdmin` in each `/v1`
//! handler's type): tenants (= organizations), users, statistics, global configs.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};

use super::{items, reshape};
use crate::{
    admin::{self, configs, orgs, ListFilter},
    app::AppState,
    auth::extract::PlatformAdmin,
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
        request_meta::RequestMeta,
        routes::Routes,
    },
};

pub fn routes() -> Routes {
    const A: &str = "/platform/api/admin";
    Routes::new()
        .get(&format!("{A}/tenants"), tenants)
        .get(&format!("{A}/tenants/{{id}}"), tenant)
        .put(&format!("{A}/tenants/{{id}}/status"), tenant_status)
        .get(&format!("{A}/users"), users)
        .get(&format!("{A}/stats"), stats)
        .get(&format!("{A}/configs"), list_configs)
        .put(&format!("{A}/configs/{{key}}"), set_config)
}

async fn tenants(
    state: State<AppState>,
    admin: PlatformAdmin,
    page: Page,
    filter: Query<ListFilter>,
) -> Response {
    reshape(
        orgs::list(state, admin, page, filter).await,
        items("organizations"),
    )
    .await
}

async fn tenant(
    state: State<AppState>,
    admin: PlatformAdmin,
    id: Path<String>,
) -> impl IntoResponse {
    orgs::detail(state, admin, id).await
}

/// `{"status": "suspended" | "active", "reason"?}`.
async fn tenant_status(
    state: State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    id: Path<String>,
    body: Json<orgs::StatusChange>,
) -> impl IntoResponse {
    orgs::set_status(state, admin, meta, id, body).await
}

async fn users(
    state: State<AppState>,
    admin: PlatformAdmin,
    page: Page,
    filter: Query<ListFilter>,
) -> Response {
    reshape(
        admin::list_users(state, admin, page, filter).await,
        items("users"),
    )
    .await
}

async fn stats(state: State<AppState>, admin: PlatformAdmin) -> impl IntoResponse {
    admin::stats(state, admin).await
}

async fn list_configs(state: State<AppState>, admin: PlatformAdmin, page: Page) -> Response {
    reshape(configs::list(state, admin, page).await, items("configs")).await
}

async fn set_config(
    state: State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    key: Path<String>,
    body: Json<configs::SetConfig>,
) -> impl IntoResponse {
    configs::set(state, admin, meta, key, body).await
}
