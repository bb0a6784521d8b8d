//! Organizations, roles, members, invitations, projects and settings (SPEC §3), with tenant
//! isolation enforced by the `OrgAccess<P>` extractor on every organization-scoped route.

pub mod access;
pub mod members;
pub mod organizations;
pub mod projects;
pub mod roles;

use crate::http::routes::Routes;

pub fn routes() -> Routes {
    const ORG: &str = "/v1/organizations/{org_id}";
    const MEMBERS: &str = "/v1/organizations/{org_id}/members";
    const MEMBER: &str = "/v1/organizations/{org_id}/members/{user_id}";
    const INVITATIONS: &str = "/v1/organizations/{org_id}/invitations";
    const INVITATION: &str = "/v1/organizations/{org_id}/invitations/{id}";
    const PROJECTS: &str = "/v1/organizations/{org_id}/projects";
    const PROJECT: &str = "/v1/organizations/{org_id}/projects/{id}";
    const CONFIGS: &str = "/v1/organizations/{org_id}/configs";
    const CONFIG: &str = "/v1/organizations/{org_id}/configs/{key}";
    const STORAGE: &str = "/v1/organizations/{org_id}/storage";
    let roles = |page: crate::http::pagination::Page| async move {
        axum::Json(roles::roles_document(&page))
    };
    Routes::new()
        .get("/v1/roles", roles)
        .post("/v1/organizations", organizations::create)
        .get("/v1/organizations", organizations::list_mine)
        .get(
            "/v1/organizations/check-availability",
            organizations::check_availability,
        )
        .get(ORG, organizations::get_one)
        .patch(ORG, organizations::update)
        .delete(ORG, organizations::delete)
        .get(MEMBERS, members::list)
        .post(MEMBERS, members::add)
        .patch(MEMBER, members::change_role)
        .delete(MEMBER, members::remove)
        .post(INVITATIONS, members::create_invitation)
        .get(INVITATIONS, members::list_invitations)
        .post(
            "/v1/organizations/{org_id}/invitations/{id}/resend",
            members::resend_invitation,
        )
        .delete(INVITATION, members::revoke_invitation)
        .post("/v1/invitations/accept", members::accept_invitation)
        .post(PROJECTS, projects::create)
        .get(PROJECTS, projects::list)
        .get(PROJECT, projects::get)
        .patch(PROJECT, projects::update)
        .delete(PROJECT, projects::delete)
        .get(CONFIGS, projects::list_configs)
        .get(CONFIG, projects::get_config)
        .put(CONFIG, projects::put_config)
        .delete(CONFIG, projects::delete_config)
        .get(STORAGE, projects::get_storage)
        .put(STORAGE, projects::put_storage)
}
