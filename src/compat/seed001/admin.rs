//! `/platform/api/admin/…`: the platform admin's routes (`PlatformAdmin` in each `/v1`
//! handler's type): tenants (= organizations), users, statistics, global configs.

use crate::error::Error;
use axum::extract::State;

use super::listed;
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
        .get(&format!("{A}/tenants/{{id}}"), orgs::detail)
        .put(&format!("{A}/tenants/{{id}}/status"), orgs::set_status)
        .get(&format!("{A}/users"), users)
        .get(&format!("{A}/stats"), admin::stats)
        .get(&format!("{A}/configs"), list_configs)
        .put(&format!("{A}/configs/{{key}}"), set_config)
}

async fn set_config(
    state: State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    key: Path<String>,
    body: Json<configs::SetConfig>,
) -> Result<axum::Json<crate::platform::ConfigEntry>, Error> {
    configs::set(state, admin, meta, key, body).await
}

listed!(tenants, orgs::list, items "organizations",
    (state: State<AppState>, admin: PlatformAdmin, page: Page, filter: Query<ListFilter>));
listed!(users, admin::list_users, items "users",
    (state: State<AppState>, admin: PlatformAdmin, page: Page, filter: Query<ListFilter>));
listed!(list_configs, configs::list, items "configs",
    (state: State<AppState>, admin: PlatformAdmin, page: Page));
