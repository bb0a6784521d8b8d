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
    Routes::new()
        .get(
            "/v1/roles",
            |page: crate::http::pagination::Page| async move {
                axum::Json(roles::roles_document(&page))
            },
        )
        .post("/v1/organizations", organizations::create)
        .get("/v1/organizations", organizations::list_mine)
        .get(
            "/v1/organizations/check-availability",
            organizations::check_availability,
        )
        .get(ORG, organizations::get_one)
        .patch(ORG, organizations::update)
        .delete(ORG, organizations::delete)
        .get("/v1/organizations/{org_id}/members", members::list)
        .post("/v1/organizations/{org_id}/members", members::add)
        .patch(
            "/v1/organizations/{org_id}/members/{user_id}",
            members::change_role,
        )
        .delete(
            "/v1/organizations/{org_id}/members/{user_id}",
            members::remove,
        )
        .post(
            "/v1/organizations/{org_id}/invitations",
            members::create_invitation,
        )
        .get(
            "/v1/organizations/{org_id}/invitations",
            members::list_invitations,
        )
        .post(
            "/v1/organizations/{org_id}/invitations/{id}/resend",
            members::resend_invitation,
        )
        .delete(
            "/v1/organizations/{org_id}/invitations/{id}",
            members::revoke_invitation,
        )
        .post("/v1/invitations/accept", members::accept_invitation)
        .post("/v1/organizations/{org_id}/projects", projects::create)
        .get("/v1/organizations/{org_id}/projects", projects::list)
        .get("/v1/organizations/{org_id}/projects/{id}", projects::get)
        .patch("/v1/organizations/{org_id}/projects/{id}", projects::update)
        .delete("/v1/organizations/{org_id}/projects/{id}", projects::delete)
        .get("/v1/organizations/{org_id}/configs", projects::list_configs)
        .get(
            "/v1/organizations/{org_id}/configs/{key}",
            projects::get_config,
        )
        .put(
            "/v1/organizations/{org_id}/configs/{key}",
            projects::put_config,
        )
        .delete(
            "/v1/organizations/{org_id}/configs/{key}",
            projects::delete_config,
        )
        .get("/v1/organizations/{org_id}/storage", projects::get_storage)
        .put("/v1/organizations/{org_id}/storage", projects::put_storage)
}
