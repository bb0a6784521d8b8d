//! `/platform/api/service/…`: the tenant's own resources (info, members, invitations, plans,
//! subscription, configs, storage). The tenant is [`TenantAccess`]'s; each route's permission is
//! the `/v1` route's (`TenantAccess<perm::X>` wraps the `OrgAccess<perm::X>` the `/v1` handler
//! takes).

use axum::extract::State;

use super::{in_tenant, listed, TenantAccess};
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

in_tenant!(info, OrganizationsRead, organizations::get_one, ());
in_tenant!(list_members, MembersRead, members::list, items "members",
    (page: Page, query: Query<members::MemberQuery>));
in_tenant!(remove_member, MembersRead, members::remove, path String, ());
in_tenant!(invite, MembersManage, members::create_invitation, (body: Json<members::Invite>));
// The plan catalogue (any signed-in user, as `GET /v1/plans`).
listed!(plans, billing::list_plans, items "plans",
    (state: State<AppState>, user: AuthUser, page: Page));
in_tenant!(subscribe, BillingManage, subscriptions::create,
    (body: Json<subscriptions::SubscriptionInput>));
in_tenant!(list_configs, ConfigsRead, projects::list_configs, items "configs", (page: Page));
in_tenant!(put_config, ConfigsManage, projects::put_config, path String,
    (body: Json<projects::ConfigValue>));
in_tenant!(get_storage, StorageManage, projects::get_storage, ());
in_tenant!(put_storage, StorageManage, projects::put_storage,
    (body: Json<projects::StorageInput>));
