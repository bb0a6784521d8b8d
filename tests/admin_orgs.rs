//! Platform admins manage any organization (seed 004, issue 22): its projects
//! (`/v1/admin/projects` CRUD), the organization itself, its members and invitations — through
//! the organization's own rules (quotas, the last owner), each change audited as the admin acting
//! in that organization. (That only platform admins reach these routes is also walked by
//! tests/route_table.rs.)

mod common;

use common::{
    fixtures::{a_person, an_org, token},
    Backend, TestServer,
};
use gatehouse::orgs::roles::Role;
use serde_json::{json, Value};

on_both_databases!(
    an_admin_creates_reads_changes_and_deletes_any_organizations_project,
    admin_project_writes_are_the_organizations_events_by_the_admin,
    admin_project_input_is_validated_like_the_organizations_own,
    admin_project_routes_refuse_everyone_but_platform_admins,
    an_admin_creates_an_organization_for_an_owner_by_id_or_email,
    admin_organization_creation_names_a_missing_or_unknown_owner,
    an_admin_deletes_any_organization,
    an_admin_manages_any_organizations_members_and_invitations,
    the_last_owner_stays_an_owner_under_an_admin_too,
    admin_member_routes_refuse_everyone_but_platform_admins,
    an_admin_lists_and_revokes_a_projects_api_keys,
    an_admin_makes_a_projects_key_that_answers_to_its_longest_standing_owner,
    a_key_an_admin_makes_carries_the_named_members_authority_and_follows_it,
    an_admin_made_key_is_refused_field_by_field,
    a_projects_signing_keys_are_the_platforms,
    rotating_a_projects_signing_key_rotates_the_platforms,
);

/// The admin's user id.
async fn admin_id(srv: &TestServer, admin: &str) -> Value {
    srv.get_as("/v1/me", admin).await.json["id"].clone()
}

/// Creates the project `name` of `org` as the admin; its `/v1/admin/projects/{id}` path.
async fn a_project(srv: &TestServer, admin: &str, org: &str, name: &str) -> String {
    let res = srv
        .post_as(
            "/v1/admin/projects",
            admin,
            &json!({"organization_id": org, "name": name}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    format!("/v1/admin/projects/{}", res.json["id"].as_str().unwrap())
}

/// Gives the member (or pending member) at `path` the `role` as the admin; the answer.
async fn set_role(srv: &TestServer, admin: &str, path: &str, role: &str) -> Value {
    let res = srv.patch_as(path, admin, &json!({ "role": role })).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["role"], role);
    res.json
}

/// The one audit event of `action`, as the platform's audit log shows it.
async fn the_event(srv: &TestServer, admin: &str, action: &str) -> Value {
    let audit = srv
        .get_as(&format!("/v1/admin/audit?action={action}"), admin)
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    assert_eq!(audit.json["total"], 1, "{}", audit.text);
    audit.json["events"][0].clone()
}

async fn an_admin_creates_reads_changes_and_deletes_any_organizations_project(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;

    // The admin is no member of acme, yet creates its project.
    let res = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": acme.id, "name": "Storefront", "allowed_origins": ["https://shop.example.com"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["organization_id"], acme.id.as_str());
    assert_eq!(res.json["name"], "Storefront");
    let id = res.json["id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/projects/{id}");

    // The organization sees it as its own.
    let own = srv
        .get_as(&format!("{}/projects/{id}", acme.base), &acme.owner)
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(
        own.json["allowed_origins"],
        json!(["https://shop.example.com"])
    );

    let got = srv.get_as(&path, &admin).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json, own.json);

    // A slug names the organization as well as its id.
    let by_slug = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": "acme", "name": "Backoffice"}),
        )
        .await;
    assert_eq!(by_slug.status, 201, "{}", by_slug.text);
    assert_eq!(by_slug.json["organization_id"], acme.id.as_str());

    let res = srv
        .patch_as(
            &path,
            &admin,
            &json!({"name": "Shop", "redirect_urls": ["https://shop.example.com/cb"], "settings": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["name"], "Shop");
    assert_eq!(
        res.json["allowed_origins"],
        json!(["https://shop.example.com"])
    );
    assert_eq!(
        res.json["redirect_urls"],
        json!(["https://shop.example.com/cb"])
    );
    assert_eq!(res.json["settings"], json!({"theme": "dark"}));

    let list = srv
        .get_as(
            &format!("/v1/admin/projects?organization_id={}", acme.id),
            &admin,
        )
        .await;
    assert_eq!(list.json["total"], 2, "{}", list.text);

    let res = srv.delete_as(&path, &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
    srv.get_as(&path, &admin)
        .await
        .assert_error(404, "not_found");
    srv.get_as(&format!("{}/projects/{id}", acme.base), &acme.owner)
        .await
        .assert_error(404, "not_found");
    srv.delete_as(&path, &admin)
        .await
        .assert_error(404, "not_found");
    srv.patch_as(&path, &admin, &json!({"name": "x"}))
        .await
        .assert_error(404, "not_found");
}

async fn admin_project_writes_are_the_organizations_events_by_the_admin(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    let path = a_project(&srv, &admin, &acme.id, "Storefront").await;
    let id = path.rsplit('/').next().unwrap();
    srv.patch_as(&path, &admin, &json!({"name": "Shop"})).await;
    srv.delete_as(&path, &admin).await;
    for action in ["project.created", "project.updated", "project.deleted"] {
        let e = the_event(&srv, &admin, action).await;
        assert_eq!(e["resource_id"], id, "{action}");
        assert_eq!(e["actor_id"], admin_id, "{action}");
        assert_eq!(e["actor_type"], "user", "{action}");
        assert_eq!(e["organization_id"], acme.id.as_str(), "{action}");
    }
    // The organization's own audit log shows the admin's changes.
    let own = srv
        .get_as(
            &format!("{}/audit?action=project.created", acme.base),
            &acme.owner,
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.json["total"], 1, "{}", own.text);
    assert_eq!(own.json["events"][0]["actor_id"], admin_id);
}

async fn admin_project_input_is_validated_like_the_organizations_own(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;

    let err = srv
        .post_as("/v1/admin/projects", &admin, &json!({"name": "No home"}))
        .await;
    err.assert_error(400, "invalid_request");
    assert!(err.text.contains("organization_id"), "{}", err.text);

    let err = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": "org_nothere", "name": "Lost"}),
        )
        .await;
    let e = err.assert_error(400, "invalid_request");
    assert_eq!(e["details"][0]["field"], "organization_id", "{}", err.text);

    let err = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": acme.id, "name": " ", "allowed_origins": ["https://a.example.com/path"]}),
        )
        .await;
    let e = err.assert_error(400, "invalid_request");
    let fields: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert!(fields.contains(&"name"), "{}", err.text);
    assert!(fields.contains(&"allowed_origins[0]"), "{}", err.text);

    let err = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": acme.id, "name": "Shop", "colour": "red"}),
        )
        .await;
    err.assert_error(400, "invalid_request");
    assert!(err.text.contains("colour"), "{}", err.text);

    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let err = srv
        .patch_as(&path, &admin, &json!({"organization_id": "acme"}))
        .await;
    err.assert_error(400, "invalid_request");
    let err = srv
        .patch_as(&path, &admin, &json!({"redirect_urls": ["ftp://x"]}))
        .await;
    err.assert_error(400, "invalid_request");
    srv.get_as("/v1/admin/projects/not-a-project-id", &admin)
        .await
        .assert_error(404, "not_found");
}

async fn admin_project_routes_refuse_everyone_but_platform_admins(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;
    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let stranger = a_person(&srv, "x@example.com").await;
    // Not even the organization's own owner goes through the admin routes.
    for token in [acme.owner.as_str(), stranger.token.as_str()] {
        srv.get_as(&path, token)
            .await
            .assert_error(403, "forbidden");
        srv.post_as(
            "/v1/admin/projects",
            token,
            &json!({"organization_id": acme.id, "name": "Mine"}),
        )
        .await
        .assert_error(403, "forbidden");
        srv.delete_as(&path, token)
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(srv.get_as(&path, &admin).await.status, 200);
}

async fn an_admin_creates_an_organization_for_an_owner_by_id_or_email(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let ann = a_person(&srv, "ann@example.com").await;
    let res = srv
        .post_as(
            "/v1/admin/organizations",
            &admin,
            &json!({"owner_email": "Ann@Example.com", "name": "Ann's Shop", "slug": "anns-shop", "timezone": "Europe/Paris"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["slug"], "anns-shop");
    assert_eq!(res.json["timezone"], "Europe/Paris");
    let id = res.json["id"].as_str().unwrap().to_string();

    // Ann owns it (the admin is not a member) and sees it among hers.
    let mine = srv.get_as("/v1/organizations", &ann.token).await;
    assert_eq!(
        mine.json["organizations"][0]["id"],
        id.as_str(),
        "{}",
        mine.text
    );
    assert_eq!(mine.json["organizations"][0]["role"], "owner");
    let members = srv
        .get_as(&format!("/v1/organizations/{id}/members"), &ann.token)
        .await;
    assert_eq!(members.json["total"], 1, "{}", members.text);
    assert_eq!(members.json["members"][0]["id"], ann.id.as_str());
    srv.get_as(&format!("/v1/organizations/{id}"), &admin)
        .await
        .assert_error(404, "not_found");

    // Audited as the admin, in the new organization.
    for action in ["organization.created", "member.added"] {
        let e = the_event(&srv, &admin, action).await;
        assert_eq!(e["actor_id"], admin_id, "{action}");
        assert_eq!(e["organization_id"], id.as_str(), "{action}");
    }

    // By id, with a slug made from the name.
    let res = srv
        .post_as(
            "/v1/admin/organizations",
            &admin,
            &json!({"owner_id": ann.id, "name": "Second Shop"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["slug"], "second-shop");
    let mine = srv.get_as("/v1/organizations", &ann.token).await;
    assert_eq!(mine.json["total"], 2, "{}", mine.text);

    // The slug is the organizations' own rule: taken → 409.
    srv.post_as(
        "/v1/admin/organizations",
        &admin,
        &json!({"owner_id": ann.id, "name": "Again", "slug": "anns-shop"}),
    )
    .await
    .assert_error(409, "conflict");
}

async fn admin_organization_creation_names_a_missing_or_unknown_owner(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let ann = a_person(&srv, "ann@example.com").await;
    let cases = [
        (json!({"name": "Nobody's"}), "owner_id"),
        (
            json!({"name": "Both", "owner_id": ann.id, "owner_email": "ann@example.com"}),
            "owner_id",
        ),
        (
            json!({"name": "Ghost", "owner_id": "usr_nothere"}),
            "owner_id",
        ),
        (
            json!({"name": "Ghost", "owner_email": "ghost@example.com"}),
            "owner_email",
        ),
        (json!({"name": "Typed", "owner_email": 7}), "owner_email"),
        (json!({"owner_id": ann.id, "name": ""}), "name"),
        (
            json!({"owner_id": ann.id, "name": "X", "slug": "Bad Slug"}),
            "slug",
        ),
        (
            json!({"owner_id": ann.id, "name": "X", "plan": "enterprise"}),
            "plan",
        ),
    ];
    for (body, field) in cases {
        let res = srv.post_as("/v1/admin/organizations", &admin, &body).await;
        let e = res.assert_error(400, "invalid_request");
        assert!(
            e["details"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["field"] == field)),
            "{body}: {}",
            res.text
        );
    }
    let none = srv.get_as("/v1/admin/organizations", &admin).await;
    assert_eq!(none.json["total"], 0, "{}", none.text);
    srv.post_as(
        "/v1/admin/organizations",
        &ann.token,
        &json!({"owner_id": ann.id, "name": "Mine"}),
    )
    .await
    .assert_error(403, "forbidden");
}

async fn an_admin_deletes_any_organization(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    srv.delete_as(&format!("/v1/admin/organizations/{}", acme.id), &acme.owner)
        .await
        .assert_error(403, "forbidden");
    // Suspended, too: the admin is not held back by the organization's status; a slug names it.
    let res = srv
        .put_as(
            &format!("/v1/admin/organizations/{}/status", acme.id),
            &admin,
            &json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let res = srv.delete_as("/v1/admin/organizations/acme", &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
    srv.get_as(&format!("/v1/admin/organizations/{}", acme.id), &admin)
        .await
        .assert_error(404, "not_found");
    srv.delete_as(&format!("/v1/admin/organizations/{}", acme.id), &admin)
        .await
        .assert_error(404, "not_found");
    let mine = srv.get_as("/v1/organizations", &acme.owner).await;
    assert_eq!(mine.json["total"], 0, "{}", mine.text);
    let e = the_event(&srv, &admin, "organization.deleted").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["resource_id"], acme.id.as_str());
}

async fn an_admin_manages_any_organizations_members_and_invitations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    let (_, bob) = acme.a_member(&srv, "bob@example.com", Role::Member).await;
    let members = format!("/v1/admin/organizations/{}/members", acme.id);
    let invitations = format!("/v1/admin/organizations/{}/invitations", acme.id);

    let list = srv.get_as(&members, &admin).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["total"], 2, "{}", list.text);
    let list = srv.get_as(&format!("{members}?role=owner"), &admin).await;
    assert_eq!(list.json["total"], 1, "{}", list.text);
    assert_eq!(list.json["members"][0]["id"], acme.owner_id.as_str());

    // Adding by email invites: a pending member.
    let res = srv
        .post_as(
            &members,
            &admin,
            &json!({"email": "carol@example.com", "role": "editor"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["status"], "pending_invite");
    let carol = res.json["id"].as_str().unwrap().to_string();
    assert!(carol.starts_with("inv_"), "{carol}");
    set_role(&srv, &admin, &format!("{members}/{carol}"), "admin").await;
    set_role(&srv, &admin, &format!("{members}/{bob}"), "owner").await;
    let own = srv
        .get_as(&format!("{}/members?role=owner", acme.base), &acme.owner)
        .await;
    assert_eq!(own.json["total"], 2, "{}", own.text);
    let e = the_event(&srv, &admin, "member.updated").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["organization_id"], acme.id.as_str());
    assert_eq!(e["resource_id"], bob.as_str());

    let res = srv
        .post_as(
            &invitations,
            &admin,
            &json!({"email": "dan@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let dan = res.json["id"].as_str().unwrap().to_string();
    srv.post_as(
        &invitations,
        &admin,
        &json!({"email": "dan@example.com", "role": "viewer"}),
    )
    .await
    .assert_error(409, "conflict");
    srv.post_as(
        &invitations,
        &admin,
        &json!({"email": "eve@example.com", "role": "chief"}),
    )
    .await
    .assert_error(400, "invalid_request");
    let list = srv
        .get_as(&format!("{invitations}?status=pending"), &admin)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["total"], 2, "{}", list.text);

    let res = srv.delete_as(&format!("{invitations}/{dan}"), &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
    let e = the_event(&srv, &admin, "invitation.revoked").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["organization_id"], acme.id.as_str());
    srv.delete_as(&format!("{invitations}/inv_nothere"), &admin)
        .await
        .assert_error(404, "not_found");
    let list = srv
        .get_as(&format!("{invitations}?status=pending"), &admin)
        .await;
    assert_eq!(list.json["total"], 1, "{}", list.text);

    let res = srv.delete_as(&format!("{members}/{bob}"), &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
    let e = the_event(&srv, &admin, "member.removed").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["organization_id"], acme.id.as_str());
    srv.delete_as(&format!("{members}/{bob}"), &admin)
        .await
        .assert_error(404, "not_found");
    // The admin's actions never made them a member.
    srv.get_as(&acme.base, &admin)
        .await
        .assert_error(404, "not_found");
    srv.get_as("/v1/admin/organizations/org_nothere/members", &admin)
        .await
        .assert_error(404, "not_found");
}

async fn the_last_owner_stays_an_owner_under_an_admin_too(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;
    let owner = format!(
        "/v1/admin/organizations/{}/members/{}",
        acme.id, acme.owner_id
    );
    srv.patch_as(&owner, &admin, &json!({"role": "admin"}))
        .await
        .assert_error(400, "invalid_request");
    srv.delete_as(&owner, &admin)
        .await
        .assert_error(400, "invalid_request");
    let own = srv
        .get_as(&format!("{}/members?role=owner", acme.base), &acme.owner)
        .await;
    assert_eq!(own.json["total"], 1, "{}", own.text);

    // With a second owner, the first may go.
    let (_, bob) = acme.a_member(&srv, "bob@example.com", Role::Owner).await;
    set_role(&srv, &admin, &owner, "viewer").await;
    let bob = format!("/v1/admin/organizations/{}/members/{bob}", acme.id);
    srv.delete_as(&bob, &admin)
        .await
        .assert_error(400, "invalid_request");
}

async fn admin_member_routes_refuse_everyone_but_platform_admins(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let acme = an_org(&srv).await;
    let members = format!("/v1/admin/organizations/{}/members", acme.id);
    // The organization's own owner is no platform admin.
    srv.get_as(&members, &acme.owner)
        .await
        .assert_error(403, "forbidden");
    srv.post_as(
        &members,
        &acme.owner,
        &json!({"email": "x@example.com", "role": "owner"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.delete_as(&format!("{members}/{}", acme.owner_id), &acme.owner)
        .await
        .assert_error(403, "forbidden");
    srv.get_as(
        &format!("/v1/admin/organizations/{}/invitations", acme.id),
        &acme.owner,
    )
    .await
    .assert_error(403, "forbidden");
    let anonymous = srv.get(&members).await;
    anonymous.assert_error(401, "unauthorized");
}

async fn an_admin_lists_and_revokes_a_projects_api_keys(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    let mut projects = Vec::new();
    for name in ["Shop", "Blog"] {
        let res = srv
            .post_as(
                &format!("{}/projects", acme.base),
                &acme.owner,
                &json!({"name": name}),
            )
            .await;
        projects.push(res.json["id"].as_str().unwrap().to_string());
    }
    let shop = acme
        .a_key(
            &srv,
            &acme.owner,
            json!({"name": "shop", "project_id": projects[0]}),
        )
        .await;
    let blog = acme
        .a_key(
            &srv,
            &acme.owner,
            json!({"name": "blog", "project_id": projects[1]}),
        )
        .await;
    let loose = acme
        .a_key(&srv, &acme.owner, json!({"name": "loose"}))
        .await;
    let keys = format!("/v1/admin/projects/{}/api-keys", projects[0]);

    let list = srv.get_as(&keys, &admin).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["total"], 1, "{}", list.text);
    assert_eq!(list.json["api_keys"][0]["id"], shop["id"]);
    assert!(
        list.json["api_keys"][0].get("token").is_none(),
        "{}",
        list.text
    );
    // A `?project_id=` cannot widen it to another project.
    let list = srv
        .get_as(&format!("{keys}?project_id={}", projects[1]), &admin)
        .await;
    assert_eq!(list.json["total"], 1, "{}", list.text);
    assert_eq!(list.json["api_keys"][0]["id"], shop["id"]);

    // Another project's key, or one of no project, is not this project's to revoke.
    for other in [&blog, &loose] {
        srv.delete_as(&format!("{keys}/{}", other["id"].as_str().unwrap()), &admin)
            .await
            .assert_error(404, "not_found");
    }
    let res = srv
        .delete_as(&format!("{keys}/{}", shop["id"].as_str().unwrap()), &admin)
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    let own = srv
        .get_as(
            &format!("{}/api-keys/{}", acme.base, shop["id"].as_str().unwrap()),
            &acme.owner,
        )
        .await;
    assert_eq!(own.json["status"], "revoked", "{}", own.text);
    let blog_now = srv
        .get_as(
            &format!("{}/api-keys/{}", acme.base, blog["id"].as_str().unwrap()),
            &acme.owner,
        )
        .await;
    assert_eq!(blog_now.json["status"], "active", "{}", blog_now.text);
    let e = the_event(&srv, &admin, "api_key.revoked").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["organization_id"], acme.id.as_str());

    srv.get_as("/v1/admin/projects/proj_nothere/api-keys", &admin)
        .await
        .assert_error(404, "not_found");
    srv.get_as(&keys, &acme.owner)
        .await
        .assert_error(403, "forbidden");
    srv.delete_as(
        &format!("{keys}/{}", blog["id"].as_str().unwrap()),
        &acme.owner,
    )
    .await
    .assert_error(403, "forbidden");
}

/// Creates a key at the admin path `keys` with `body`; the answer, which must be `201`.
async fn an_admin_key(srv: &TestServer, admin: &str, keys: &str, body: Value) -> Value {
    let res = srv.post_as(keys, admin, &body).await;
    assert_eq!(res.status, 201, "{}", res.text);
    res.json
}

/// The fields a refusal names, in order.
fn refused_fields(res: &common::Response) -> Vec<String> {
    let e = res.assert_error(400, "invalid_request");
    e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

async fn an_admin_makes_a_projects_key_that_answers_to_its_longest_standing_owner(
    backend: Backend,
) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    // A second owner, made later: the first stays the longest-standing one.
    acme.a_member(&srv, "second-owner@example.com", Role::Owner)
        .await;
    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let project = path.rsplit('/').next().unwrap();
    let keys = format!("{path}/api-keys");

    let key = an_admin_key(
        &srv,
        &admin,
        &keys,
        json!({"name": "shop", "environment": "test", "scopes": ["gateway:proxy", "organizations:read"]}),
    )
    .await;
    let secret = token(&key);
    assert!(secret.starts_with("sk_test_"), "{key}");
    assert_eq!(key["revealed_key"], key["token"]);
    assert_eq!(key["project_id"], project);
    assert_eq!(key["organization_id"], acme.id.as_str());
    assert_eq!(key["created_by"], acme.owner_id.as_str(), "{key}");
    assert_eq!(
        key["scopes"],
        json!(["gateway:proxy", "organizations:read"])
    );

    // Listed at the project's admin path, the token not shown again.
    let list = srv.get_as(&keys, &admin).await;
    assert_eq!(list.json["total"], 1, "{}", list.text);
    assert!(!list.text.contains(&secret), "{}", list.text);

    // It works at the gateway (a test key: the built-in mock answers)…
    let chat = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello there gateway"}]});
    let res = srv
        .post_as("/openai/v1/chat/completions", &secret, &chat)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["object"], "chat.completion");
    // …and on the organization's API, within its scopes only.
    let res = srv.get_as(&acme.base, &secret).await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.get_as(&format!("{}/members", acme.base), &secret)
        .await
        .assert_error(403, "forbidden");

    // The organization's event, by the admin, naming whom the key answers to.
    let e = the_event(&srv, &admin, "api_key.created").await;
    assert_eq!(e["actor_type"], "user");
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["organization_id"], acme.id.as_str());
    assert_eq!(e["resource_id"], key["id"]);
    assert_eq!(e["metadata"]["on_behalf_of"], acme.owner_id.as_str(), "{e}");
    let own = srv
        .get_as(
            &format!("{}/audit?action=api_key.created", acme.base),
            &acme.owner,
        )
        .await;
    assert_eq!(own.json["total"], 1, "{}", own.text);
    assert_eq!(own.json["events"][0]["actor_id"], admin_id);
}

async fn a_key_an_admin_makes_carries_the_named_members_authority_and_follows_it(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;
    let (_, alice) = acme.a_member(&srv, "alice@example.com", Role::Admin).await;
    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let key = an_admin_key(
        &srv,
        &admin,
        &format!("{path}/api-keys"),
        json!({"name": "ops", "on_behalf_of": alice, "scopes": ["members:read", "audit:read"]}),
    )
    .await;
    assert_eq!(key["created_by"], alice.as_str(), "{key}");
    assert_eq!(key["environment"], "live");
    let secret = token(&key);
    let members = format!("{}/members", acme.base);
    let audit = format!("{}/audit", acme.base);
    for route in [&members, &audit] {
        let res = srv.get_as(route, &secret).await;
        assert_eq!(res.status, 200, "{route}: {}", res.text);
    }
    let e = the_event(&srv, &admin, "api_key.created").await;
    assert_eq!(e["metadata"]["on_behalf_of"], alice.as_str(), "{e}");

    // Alice demoted to member: the key keeps only what a member holds.
    let alice_path = format!("{members}/{alice}");
    let res = srv
        .patch_as(&alice_path, &acme.owner, &json!({"role": "member"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(srv.get_as(&members, &secret).await.status, 200);
    srv.get_as(&audit, &secret)
        .await
        .assert_error(403, "forbidden");

    // Alice removed: the key is refused.
    let res = srv.delete_as(&alice_path, &acme.owner).await;
    assert_eq!(res.status, 204, "{}", res.text);
    let refused = srv.get_as(&members, &secret).await;
    refused.assert_error(403, "forbidden");
    assert!(
        refused.text.contains("no longer a member"),
        "{}",
        refused.text
    );
}

async fn an_admin_made_key_is_refused_field_by_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;
    let (_, viewer) = acme
        .a_member(&srv, "viewer@example.com", Role::Viewer)
        .await;
    let (_, editor) = acme
        .a_member(&srv, "editor@example.com", Role::Editor)
        .await;
    let (_, alice) = acme.a_member(&srv, "alice@example.com", Role::Admin).await;
    let stranger = a_person(&srv, "stranger@example.com").await;
    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let other = a_project(&srv, &admin, &acme.id, "Blog").await;
    let keys = format!("{path}/api-keys");
    let post = |body: Value| {
        let (srv, admin, keys) = (&srv, &admin, &keys);
        async move { srv.post_as(keys, admin, &body).await }
    };

    // A member who may not manage API keys, a stranger, no user at all.
    let res = post(json!({"name": "k", "on_behalf_of": viewer})).await;
    assert_eq!(refused_fields(&res), ["on_behalf_of"], "{}", res.text);
    assert!(res.text.contains("viewer"), "{}", res.text);
    for nobody in [stranger.id.as_str(), "user_nothere"] {
        let res = post(json!({"name": "k", "on_behalf_of": nobody})).await;
        assert_eq!(refused_fields(&res), ["on_behalf_of"], "{}", res.text);
        assert!(res.text.contains("not a member"), "{}", res.text);
    }
    // Scopes are checked against the named member's role, field by field: an editor holds
    // policies:manage but not webhooks:manage.
    let res = post(json!({"name": "k", "on_behalf_of": editor,
                          "scopes": ["policies:manage", "webhooks:manage"]}))
    .await;
    assert_eq!(
        refused_fields(&res),
        ["on_behalf_of", "scopes[1]"],
        "{}",
        res.text
    );
    assert!(
        res.text
            .contains("needs the admin role, which the member named by on_behalf_of does not have"),
        "{}",
        res.text
    );
    // As the organization's route refuses them: an unknown scope, a bad name.
    let res = post(json!({"name": " ", "scopes": ["organizations:read", "sessions:list"]})).await;
    assert_eq!(refused_fields(&res), ["name", "scopes[1]"], "{}", res.text);
    // The project is the path's; the body's fields are the organization route's.
    let other_id = other.rsplit('/').next().unwrap();
    let res = post(json!({"name": "k", "project_id": other_id})).await;
    assert_eq!(refused_fields(&res), ["project_id"], "{}", res.text);
    post(json!({"name": "k", "colour": "red"}))
        .await
        .assert_error(400, "invalid_request");
    srv.post_as(
        "/v1/admin/projects/proj_nothere/api-keys",
        &admin,
        &json!({"name": "k"}),
    )
    .await
    .assert_error(404, "not_found");
    // Only platform admins: not even the organization's owner, nor anyone anonymous.
    srv.post_as(&keys, &acme.owner, &json!({"name": "k"}))
        .await
        .assert_error(403, "forbidden");
    srv.post_json(&keys, &json!({"name": "k"}))
        .await
        .assert_error(401, "unauthorized");
    // Nothing was made by a refused call.
    let list = srv.get_as(&keys, &admin).await;
    assert_eq!(list.json["total"], 0, "{}", list.text);

    // An organization left with no owner (not reachable through the API): no default member.
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND role = 'owner'")
        .bind(&acme.id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    let res = post(json!({"name": "k"})).await;
    res.assert_error(409, "conflict");
    assert!(res.text.contains("on_behalf_of"), "{}", res.text);
    let key = an_admin_key(
        &srv,
        &admin,
        &keys,
        json!({"name": "k", "on_behalf_of": alice, "project_id": path.rsplit('/').next().unwrap()}),
    )
    .await;
    assert_eq!(key["created_by"], alice.as_str());
}

async fn a_projects_signing_keys_are_the_platforms(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let acme = an_org(&srv).await;
    let res = srv
        .post_as(
            &format!("{}/projects", acme.base),
            &acme.owner,
            &json!({"name": "Shop"}),
        )
        .await;
    let path = format!(
        "/v1/admin/projects/{}/signing-keys",
        res.json["id"].as_str().unwrap()
    );
    let res = srv
        .post_as("/v1/admin/signing-keys/rotate", &admin, &json!({}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let platform = srv.get_as("/v1/admin/signing-keys", &admin).await;
    let project = srv.get_as(&path, &admin).await;
    assert_eq!(project.status, 200, "{}", project.text);
    assert_eq!(project.json, platform.json);
    assert_eq!(project.json["total"], 2, "{}", project.text);
    let first = srv.get_as(&format!("{path}?limit=1"), &admin).await;
    assert_eq!(
        first.json["signing_keys"].as_array().unwrap().len(),
        1,
        "{}",
        first.text
    );
    srv.get_as("/v1/admin/projects/proj_nothere/signing-keys", &admin)
        .await
        .assert_error(404, "not_found");
    srv.get_as(&path, &acme.owner)
        .await
        .assert_error(403, "forbidden");
}

/// The `kid` in an access token's header.
fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// The `kid`s `/.well-known/jwks.json` publishes.
async fn published_kids(srv: &TestServer) -> Vec<String> {
    let jwks = srv.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200, "{}", jwks.text);
    jwks.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

async fn rotating_a_projects_signing_key_rotates_the_platforms(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let admin_id = admin_id(&srv, &admin).await;
    let acme = an_org(&srv).await;
    let path = a_project(&srv, &admin, &acme.id, "Shop").await;
    let project = path.rsplit('/').next().unwrap();
    let rotate = format!("{path}/signing-keys/rotate");
    let before = published_kids(&srv).await;
    assert_eq!(before.len(), 1);
    assert_eq!(kid_of(&acme.owner), before[0]);

    let res = srv.post_as(&rotate, &admin, &json!({})).await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["scope"], "platform", "{}", res.text);
    assert_eq!(res.json["status"], "active");
    let kid = res.json["id"].as_str().unwrap().to_string();
    assert_ne!(kid, before[0]);
    assert!(res.json["public_jwk"].get("d").is_none(), "{}", res.text);
    // The new key is published beside the old one, and signs from now on.
    let after = published_kids(&srv).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.contains(&kid) && after.contains(&before[0]),
        "{after:?}"
    );
    let fresh = a_person(&srv, "fresh@example.com").await;
    assert_eq!(kid_of(&fresh.token), kid);
    // Tokens signed before still verify.
    for old in [&acme.owner, &admin] {
        let res = srv.get_as("/v1/me", old).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert_eq!(srv.get_as(&acme.base, &acme.owner).await.status, 200);
    // The same list at the platform's path and the project's.
    let listed = srv.get_as("/v1/admin/signing-keys", &admin).await;
    assert_eq!(listed.json["signing_keys"][0]["id"], kid.as_str());
    assert_eq!(listed.json["signing_keys"][1]["status"], "retired");

    // Audited as the platform's rotation, by the admin, naming the project.
    let e = the_event(&srv, &admin, "signing_key.rotated").await;
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["resource_type"], "signing_key");
    assert_eq!(e["resource_id"], kid.as_str());
    assert_eq!(e["metadata"]["project_id"], project, "{e}");
    assert_eq!(e["metadata"]["organization_id"], acme.id.as_str(), "{e}");
    assert_eq!(e["organization_id"], Value::Null, "{e}");
    // The platform path's rotation is audited the same way, without a project.
    let res = srv
        .post_as("/v1/admin/signing-keys/rotate", &admin, &json!({}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert!(res.json.get("scope").is_none(), "{}", res.text);
    let audit = srv
        .get_as("/v1/admin/audit?action=signing_key.rotated", &admin)
        .await;
    assert_eq!(audit.json["total"], 2, "{}", audit.text);
    assert_eq!(
        audit.json["events"][0]["metadata"],
        json!({}),
        "{}",
        audit.text
    );

    // An unknown project rotates nothing; only platform admins rotate.
    srv.post_as(
        "/v1/admin/projects/proj_nothere/signing-keys/rotate",
        &admin,
        &json!({}),
    )
    .await
    .assert_error(404, "not_found");
    srv.post_as(&rotate, &acme.owner, &json!({}))
        .await
        .assert_error(403, "forbidden");
    srv.post_json(&rotate, &json!({}))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(published_kids(&srv).await.len(), 3);
}
