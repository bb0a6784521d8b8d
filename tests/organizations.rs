//! Organizations, roles, members, invitations, projects, configs, storage, IP allowlists,
//! platform administration — and tenant isolation over every organization-scoped route.

mod common;

use common::{
    find_code,
    fixtures::{a_person, add_member, an_org_of, Person},
    Backend, ServerOptions, TestServer, PASSWORD,
};
use gatehouse::orgs::roles::{Permission, Role};
use serde_json::{json, Value};

on_both_databases!(
    organizations_are_created_listed_and_found_by_id_or_slug,
    organization_input_is_validated_field_by_field,
    settings_are_deep_merged_and_roles_gate_changes,
    only_owners_delete_organizations,
    roles_are_listed_with_their_permissions,
    members_are_invited_once_with_a_known_role,
    a_pending_members_id_changes_its_role_and_revokes_it,
    members_count_agrees_with_the_members_list,
    only_the_invited_person_accepts_an_invitation_once,
    members_are_filtered_by_role_and_searched,
    admins_change_roles_and_anyone_can_leave,
    owner_rules_protect_the_last_owner,
    a_resent_invitation_gets_a_new_token_and_the_old_one_stops_working,
    an_expired_invitation_is_listed_as_expired_and_cannot_be_accepted,
    revoked_invitations_are_listed_by_status,
    registration_with_an_invitation_joins_the_organization,
    projects_are_validated_listed_renamed_and_deleted,
    configs_hold_any_json_value_with_validated_keys_and_sizes,
    configs_and_roles_page_with_limit_and_offset,
    storage_credentials_are_write_only_and_encrypted_at_rest,
    ip_allowlist_is_enforced_behind_trusted_proxies_only,
    platform_admin_lists_and_suspends_organizations,
    another_organizations_owner_is_refused_every_org_route,
    another_organizations_tenant_token_is_refused_every_org_route,
    another_organizations_key_is_refused_every_org_route,
    every_role_gets_exactly_its_permissions,
    plans_cap_members_and_projects,
);

async fn organizations_are_created_listed_and_found_by_id_or_slug(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let res = srv
        .post_as("/v1/organizations", &alice.token, &json!({"name": "Acme Corp", "timezone": "America/New_York", "website": "https://acme.example"}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let org = res.json;
    assert!(org["id"].as_str().unwrap().starts_with("org_"));
    assert_eq!(org["slug"], "acme-corp");
    assert_eq!(org["role"], "owner");
    assert_eq!(org["members_count"], 1);
    assert_eq!(org["projects_count"], 0);
    assert_eq!(org["status"], "active");
    assert_eq!(org["plan"], "smb");
    assert_eq!(org["timezone"], "America/New_York");
    assert_eq!(org["settings"]["ip_allowlist"], json!([]));

    // The same name again gets a free slug; an explicit taken slug is a conflict.
    let again = srv
        .post_as(
            "/v1/organizations",
            &alice.token,
            &json!({"name": "Acme Corp"}),
        )
        .await;
    assert_eq!(again.status, 201);
    assert_ne!(again.json["slug"], "acme-corp");
    assert!(again.json["slug"]
        .as_str()
        .unwrap()
        .starts_with("acme-corp-"));
    srv.post_as(
        "/v1/organizations",
        &alice.token,
        &json!({"name": "X", "slug": "acme-corp"}),
    )
    .await
    .assert_error(409, "conflict");

    let mine = srv.get_as("/v1/organizations", &alice.token).await;
    assert_eq!(mine.json["total"], 2);
    assert_eq!(mine.json["organizations"][0]["role"], "owner");
    let by_id = srv
        .get_as(
            &format!("/v1/organizations/{}", org["id"].as_str().unwrap()),
            &alice.token,
        )
        .await;
    let by_slug = srv
        .get_as("/v1/organizations/acme-corp", &alice.token)
        .await;
    assert_eq!(by_id.json["id"], org["id"]);
    assert_eq!(by_slug.json["id"], org["id"]);

    let avail = srv
        .get("/v1/organizations/check-availability?slug=acme-corp")
        .await;
    assert_eq!(avail.json, json!({"slug": "acme-corp", "available": false}));
    let avail = srv
        .get("/v1/organizations/check-availability?slug=brand-new")
        .await;
    assert_eq!(avail.json["available"], true);
    let avail = srv
        .get("/v1/organizations/check-availability?slug=NO")
        .await;
    assert_eq!(avail.json["available"], false);
    assert!(avail.json["reason"].is_string());
    srv.get("/v1/organizations/check-availability")
        .await
        .assert_error(400, "invalid_request");

    // Another user sees none of them.
    let bob = a_person(&srv, "bob@example.com").await;
    assert_eq!(
        srv.get_as("/v1/organizations", &bob.token).await.json["total"],
        0
    );
    srv.get_as("/v1/organizations/acme-corp", &bob.token)
        .await
        .assert_error(404, "not_found");
    srv.get("/v1/organizations")
        .await
        .assert_error(401, "unauthorized");
}

async fn organization_input_is_validated_field_by_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "A", "slug": "Bad Slug"}), "slug"),
        (json!({"name": "A", "slug": "ab"}), "slug"),
        (json!({"name": "A", "timezone": "Mars/Base"}), "timezone"),
        (json!({"name": "A", "website": "ftp://x"}), "website"),
        (
            json!({"name": "A", "settings": {"ip_allowlist": ["10.0.0.0/8", "nope"]}}),
            "settings.ip_allowlist[1]",
        ),
        (
            json!({"name": "A", "settings": {"colour": "red"}}),
            "settings.colour",
        ),
        (
            json!({"name": "A", "settings": {"sso_enabled": "yes"}}),
            "settings.sso_enabled",
        ),
        (json!({"name": "A", "owner": "me"}), "owner"),
    ] {
        let res = srv.post_as("/v1/organizations", &alice.token, &body).await;
        let err = res.assert_error(400, "invalid_request");
        assert!(
            err["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"] == field),
            "{field}: {}",
            res.text
        );
    }
    assert_eq!(
        srv.get_as("/v1/organizations", &alice.token).await.json["total"],
        0
    );
}

async fn settings_are_deep_merged_and_roles_gate_changes(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let path = format!("/v1/organizations/{}", org["id"].as_str().unwrap());
    let res = srv
        .patch_as(
            &path,
            &alice.token,
            &json!({"settings": {"sso_enabled": true, "sso_provider": "okta"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let res = srv
        .patch_as(&path, &alice.token, &json!({"timezone": "Europe/Paris", "settings": {"ip_allowlist": ["127.0.0.0/8", "::1"]}}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["settings"]["sso_enabled"], true);
    assert_eq!(res.json["settings"]["sso_provider"], "okta");
    assert_eq!(
        res.json["settings"]["ip_allowlist"],
        json!(["127.0.0.0/8", "::1"])
    );
    assert_eq!(res.json["timezone"], "Europe/Paris");
    let res = srv
        .patch_as(&path, &alice.token, &json!({"timezone": "Nowhere/Land"}))
        .await;
    res.assert_error(400, "invalid_request");
    assert_eq!(
        srv.get_as(&path, &alice.token).await.json["timezone"],
        "Europe/Paris"
    );

    let ed = a_person(&srv, "ed@example.com").await;
    add_member(&srv, org["id"].as_str().unwrap(), &ed.id, Role::Editor).await;
    assert_eq!(srv.get_as(&path, &ed.token).await.status, 200);
    srv.patch_as(&path, &ed.token, &json!({"name": "Mine"}))
        .await
        .assert_error(403, "forbidden");
}

async fn only_owners_delete_organizations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let id = org["id"].as_str().unwrap();
    let admin = a_person(&srv, "adm@example.com").await;
    add_member(&srv, id, &admin.id, Role::Admin).await;
    srv.delete_as(&format!("/v1/organizations/{id}"), &admin.token)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        srv.delete_as(&format!("/v1/organizations/{id}"), &alice.token)
            .await
            .status,
        204
    );
    srv.get_as(&format!("/v1/organizations/{id}"), &alice.token)
        .await
        .assert_error(404, "not_found");
}

async fn roles_are_listed_with_their_permissions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let res = srv.get_as("/v1/roles", &alice.token).await;
    let roles = res.json["roles"].as_array().unwrap();
    let names: Vec<&str> = roles.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["owner", "admin", "editor", "member", "viewer"]);
    let perms = |i: usize| roles[i]["permissions"].as_array().unwrap().len();
    assert!(
        perms(0) > perms(1) && perms(1) > perms(2) && perms(2) > perms(3) && perms(3) > perms(4)
    );
    assert!(roles[2]["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("policies:manage")));
    assert!(!roles[3]["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("policies:manage")));
}

/// A server, its platform admin's token, and Alice owning Acme at `base` (in that order).
struct Acme(TestServer, String, Person, String);

async fn acme(backend: Backend) -> Acme {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let base = an_org_of(&srv, &alice, "Acme", "acme").await.base;
    Acme(srv, admin, alice, base)
}

/// Bob, invited by Alice, accepts and becomes a member of Acme.
async fn bob_joins(srv: &TestServer, admin: &str, alice: &Person, base: &str) -> Person {
    let token = invite_bob(srv, admin, alice, base).await;
    let bob = a_person(srv, "bob@example.com").await;
    let res = srv
        .post_as(
            "/v1/invitations/accept",
            &bob.token,
            &json!({"token": token}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    bob
}

/// Alice invites bob@example.com as a member; returns the invitation token from the mail.
async fn invite_bob(srv: &TestServer, admin: &str, alice: &Person, base: &str) -> String {
    let res = srv
        .post_as(
            &format!("{base}/members"),
            &alice.token,
            &json!({"email": "Bob@Example.com", "name": "Bob", "role": "member"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["status"], "pending_invite");
    assert_eq!(res.json["email"], "bob@example.com");
    assert!(res.json["invitation_sent_at"].is_string());
    let mail = srv.mail(admin, "bob@example.com", "invited").await;
    mail.split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .unwrap()
        .to_string()
}

async fn members_are_invited_once_with_a_known_role(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    invite_bob(&srv, &admin, &alice, &base).await;
    srv.post_as(
        &format!("{base}/members"),
        &alice.token,
        &json!({"email": "bob@example.com", "role": "member"}),
    )
    .await
    .assert_error(409, "conflict");
    srv.post_as(
        &format!("{base}/members"),
        &alice.token,
        &json!({"email": "c@example.com", "role": "god"}),
    )
    .await
    .assert_error(400, "invalid_request");

    let list = srv.get_as(&format!("{base}/members"), &alice.token).await;
    assert_eq!(list.json["total"], 2);
    let statuses: Vec<&str> = list.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "pending_invite"]);
}

/// The id `POST …/members` answers for a pending member (`inv_…`) is a member id like any
/// other: `PATCH` changes the invitation's role (with the authority inviting needs), `DELETE`
/// revokes it.
async fn a_pending_members_id_changes_its_role_and_revokes_it(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let members = format!("{base}/members");
    let res = srv
        .post_as(
            &members,
            &alice.token,
            &json!({"email": "carol@example.com", "name": "Carol", "role": "member"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let id = res.json["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("inv_"), "{id}");
    let set_role = |token: &str, member: &str, role: &str| {
        let (srv, path, token) = (&srv, format!("{members}/{member}"), token.to_string());
        let body = json!({ "role": role });
        async move { srv.patch_as(&path, &token, &body).await }
    };
    let remove = |token: &str, member: &str| {
        let (srv, path, token) = (&srv, format!("{members}/{member}"), token.to_string());
        async move { srv.delete_as(&path, &token).await }
    };

    let res = set_role(&alice.token, &id, "editor").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["id"], id);
    assert_eq!(res.json["role"], "editor");
    assert_eq!(res.json["status"], "pending_invite");
    assert_eq!(res.json["name"], "Carol");
    let list = srv.get_as(&members, &alice.token).await;
    let listed = list.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .expect("the pending member is listed");
    assert_eq!(listed["role"], "editor");
    let audit = srv.get_as(&format!("{base}/audit"), &alice.token).await;
    assert_eq!(audit.json["events"][0]["action"], "invitation.updated");
    assert_eq!(
        audit.json["events"][0]["metadata"],
        json!({"role": "editor", "previous_role": "member"})
    );

    // The authority of inviting: an admin cannot make an owner, a viewer changes nothing; an
    // unknown invitation is not found.
    let org_id = base.trim_start_matches("/v1/organizations/");
    let boss = a_person(&srv, "boss@example.com").await;
    add_member(&srv, org_id, &boss.id, Role::Admin).await;
    let viewer = a_person(&srv, "viewer@example.com").await;
    add_member(&srv, org_id, &viewer.id, Role::Viewer).await;
    let unknown = "inv_00000000000000000000000000";
    for (token, member, role, status, code) in [
        (&boss.token, id.as_str(), "owner", 403, "forbidden"),
        (&boss.token, &id, "god", 400, "invalid_request"),
        (&viewer.token, &id, "viewer", 403, "forbidden"),
        (&alice.token, unknown, "viewer", 404, "not_found"),
    ] {
        set_role(token, member, role)
            .await
            .assert_error(status, code);
    }
    remove(&viewer.token, &id)
        .await
        .assert_error(403, "forbidden");
    remove(&alice.token, unknown)
        .await
        .assert_error(404, "not_found");

    // DELETE revokes the invitation: gone from the members, revoked among the invitations,
    // and no longer changeable.
    let res = remove(&boss.token, &id).await;
    assert_eq!(res.status, 204, "{}", res.text);
    let list = srv.get_as(&members, &alice.token).await;
    assert!(!list.text.contains(&id), "{}", list.text);
    let revoked = srv
        .get_as(&format!("{base}/invitations?status=revoked"), &alice.token)
        .await;
    assert_eq!(revoked.json["invitations"][0]["id"], id.as_str());
    set_role(&alice.token, &id, "viewer")
        .await
        .assert_error(409, "conflict");

    // An accepted invitation's id is no pending member any more.
    bob_joins(&srv, &admin, &alice, &base).await;
    let accepted = srv
        .get_as(&format!("{base}/invitations?status=accepted"), &alice.token)
        .await;
    let accepted_id = accepted.json["invitations"][0]["id"].as_str().unwrap();
    set_role(&alice.token, accepted_id, "viewer")
        .await
        .assert_error(409, "conflict");
    remove(&alice.token, accepted_id)
        .await
        .assert_error(409, "conflict");
}

/// `members_count` counts what the members list shows: members and live invitations (an
/// expired one is in neither), wherever an organization is shown.
async fn members_count_agrees_with_the_members_list(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let org_id = base.trim_start_matches("/v1/organizations/");
    let dan = a_person(&srv, "dan@example.com").await;
    add_member(&srv, org_id, &dan.id, Role::Member).await;
    invite_bob(&srv, &admin, &alice, &base).await;
    let (expired, _) = invite_carol(&srv, &admin, &alice, &base).await;
    expire_invitation(&srv, &expired).await;

    let total = srv
        .get_as(&format!("{base}/members"), &alice.token)
        .await
        .json["total"]
        .clone();
    assert_eq!(total, 3, "alice, dan and the pending bob");
    assert_eq!(
        srv.get_as(&base, &alice.token).await.json["members_count"],
        total
    );
    let mine = srv.get_as("/v1/organizations", &alice.token).await;
    assert_eq!(mine.json["organizations"][0]["members_count"], total);
    let all = srv.get_as("/v1/admin/organizations", &admin).await;
    assert_eq!(all.json["organizations"][0]["members_count"], total);
}

async fn only_the_invited_person_accepts_an_invitation_once(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let token = invite_bob(&srv, &admin, &alice, &base).await;

    // Someone else cannot accept Bob's invitation.
    let eve = a_person(&srv, "eve@example.com").await;
    srv.post_as(
        "/v1/invitations/accept",
        &eve.token,
        &json!({"token": token}),
    )
    .await
    .assert_error(403, "forbidden");
    let bob = a_person(&srv, "bob@example.com").await;
    let res = srv
        .post_as(
            "/v1/invitations/accept",
            &bob.token,
            &json!({"token": token}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["role"], "member");
    srv.post_as(
        "/v1/invitations/accept",
        &bob.token,
        &json!({"token": token}),
    )
    .await
    .assert_error(409, "conflict");
    srv.post_as(
        "/v1/invitations/accept",
        &bob.token,
        &json!({"token": "invt_nope"}),
    )
    .await
    .assert_error(404, "not_found");

    let list = srv.get_as(&format!("{base}/members"), &bob.token).await;
    assert_eq!(list.json["total"], 2);
    assert!(list.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["status"] == "active"));
}

async fn members_are_filtered_by_role_and_searched(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let bob = bob_joins(&srv, &admin, &alice, &base).await;

    let members = srv
        .get_as(&format!("{base}/members?role=member"), &bob.token)
        .await;
    assert_eq!(members.json["total"], 1);
    assert_eq!(members.json["members"][0]["id"], bob.id);
    let found = srv
        .get_as(&format!("{base}/members?q=ALICE"), &bob.token)
        .await;
    assert_eq!(found.json["total"], 1);
    srv.get_as(&format!("{base}/members?role=boss"), &bob.token)
        .await
        .assert_error(400, "invalid_request");
}

async fn admins_change_roles_and_anyone_can_leave(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let bob = bob_joins(&srv, &admin, &alice, &base).await;

    // Members cannot manage members; admins can change roles; anyone can leave.
    srv.patch_as(
        &format!("{base}/members/{}", bob.id),
        &bob.token,
        &json!({"role": "admin"}),
    )
    .await
    .assert_error(403, "forbidden");
    let res = srv
        .patch_as(
            &format!("{base}/members/{}", bob.id),
            &alice.token,
            &json!({"role": "editor"}),
        )
        .await;
    assert_eq!(res.json["role"], "editor");
    srv.patch_as(
        &format!("{base}/members/user_nobody"),
        &alice.token,
        &json!({"role": "editor"}),
    )
    .await
    .assert_error(404, "not_found");
    assert_eq!(
        srv.delete_as(&format!("{base}/members/{}", bob.id), &bob.token)
            .await
            .status,
        204
    );
    srv.get_as(&base, &bob.token)
        .await
        .assert_error(404, "not_found");
}

async fn owner_rules_protect_the_last_owner(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let id = org["id"].as_str().unwrap();
    let base = format!("/v1/organizations/{id}");
    let adm = a_person(&srv, "adm@example.com").await;
    add_member(&srv, id, &adm.id, Role::Admin).await;

    // The last owner can neither be demoted nor removed (not even by themselves).
    srv.patch_as(
        &format!("{base}/members/{}", alice.id),
        &alice.token,
        &json!({"role": "admin"}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.delete_as(&format!("{base}/members/{}", alice.id), &alice.token)
        .await
        .assert_error(400, "invalid_request");
    // Only an owner grants owner, or touches an owner.
    srv.patch_as(
        &format!("{base}/members/{}", adm.id),
        &adm.token,
        &json!({"role": "owner"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.patch_as(
        &format!("{base}/members/{}", alice.id),
        &adm.token,
        &json!({"role": "viewer"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.delete_as(&format!("{base}/members/{}", alice.id), &adm.token)
        .await
        .assert_error(403, "forbidden");
    srv.post_as(
        &format!("{base}/invitations"),
        &adm.token,
        &json!({"email": "o@example.com", "role": "owner"}),
    )
    .await
    .assert_error(403, "forbidden");
    let res = srv
        .patch_as(
            &format!("{base}/members/{}", adm.id),
            &alice.token,
            &json!({"role": "owner"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // With two owners, one may step down.
    let res = srv
        .patch_as(
            &format!("{base}/members/{}", alice.id),
            &alice.token,
            &json!({"role": "admin"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.delete_as(&format!("{base}/members/{}", adm.id), &adm.token)
        .await
        .assert_error(400, "invalid_request");
}

/// Alice invites carol@example.com as a viewer; returns the invitation's id and the token
/// from the mail.
async fn invite_carol(
    srv: &TestServer,
    admin: &str,
    alice: &Person,
    base: &str,
) -> (String, String) {
    let inv = srv
        .post_as(
            &format!("{base}/invitations"),
            &alice.token,
            &json!({"email": "carol@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(inv.status, 201, "{}", inv.text);
    assert!(inv.json["id"].as_str().unwrap().starts_with("inv_"));
    assert_eq!(inv.json["status"], "pending");
    assert!(inv.json.get("token").is_none() && !inv.text.contains("invt_"));
    let inv_id = inv.json["id"].as_str().unwrap().to_string();
    let first = srv.mail(admin, "carol@example.com", "invited").await;
    let token = first
        .split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .unwrap()
        .to_string();
    (inv_id, token)
}

/// Expiry (30 days) is derived from expires_at: moves it into the past.
async fn expire_invitation(srv: &TestServer, inv_id: &str) {
    sqlx::query("UPDATE invitations SET expires_at = $1 WHERE id = $2")
        .bind("2020-01-01T00:00:00.000000Z")
        .bind(inv_id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
}

async fn a_resent_invitation_gets_a_new_token_and_the_old_one_stops_working(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let (inv_id, first_token) = invite_carol(&srv, &admin, &alice, &base).await;

    // Resend: a new token; the old one no longer works.
    let res = srv
        .post_as(
            &format!("{base}/invitations/{inv_id}/resend"),
            &alice.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let second_token = loop {
        let body = srv.mail(&admin, "carol@example.com", "invited").await;
        let t = body
            .split_whitespace()
            .find(|w| w.starts_with("invt_"))
            .unwrap()
            .to_string();
        if t != first_token || std::time::Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_ne!(second_token, first_token);
    let carol = a_person(&srv, "carol@example.com").await;
    srv.post_as(
        "/v1/invitations/accept",
        &carol.token,
        &json!({"token": first_token}),
    )
    .await
    .assert_error(404, "not_found");
}

async fn an_expired_invitation_is_listed_as_expired_and_cannot_be_accepted(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let (inv_id, token) = invite_carol(&srv, &admin, &alice, &base).await;
    let carol = a_person(&srv, "carol@example.com").await;

    expire_invitation(&srv, &inv_id).await;
    let expired = srv
        .get_as(&format!("{base}/invitations?status=expired"), &alice.token)
        .await;
    assert_eq!(expired.json["total"], 1);
    assert_eq!(expired.json["invitations"][0]["status"], "expired");
    srv.post_as(
        "/v1/invitations/accept",
        &carol.token,
        &json!({"token": token}),
    )
    .await
    .assert_error(400, "invalid_request");
}

async fn revoked_invitations_are_listed_by_status(backend: Backend) {
    let Acme(srv, admin, alice, base) = acme(backend).await;
    let (inv_id, _) = invite_carol(&srv, &admin, &alice, &base).await;
    expire_invitation(&srv, &inv_id).await;

    let other = srv
        .post_as(
            &format!("{base}/invitations"),
            &alice.token,
            &json!({"email": "dan@example.com", "role": "member"}),
        )
        .await;
    let other_id = other.json["id"].as_str().unwrap();
    assert_eq!(
        srv.delete_as(&format!("{base}/invitations/{other_id}"), &alice.token)
            .await
            .status,
        204
    );
    let revoked = srv
        .get_as(&format!("{base}/invitations?status=revoked"), &alice.token)
        .await;
    assert_eq!(revoked.json["total"], 1);
    assert_eq!(
        srv.get_as(&format!("{base}/invitations?status=pending"), &alice.token)
            .await
            .json["total"],
        0
    );
    assert_eq!(
        srv.get_as(&format!("{base}/invitations"), &alice.token)
            .await
            .json["total"],
        2
    );
    srv.get_as(&format!("{base}/invitations?status=weird"), &alice.token)
        .await
        .assert_error(400, "invalid_request");
    srv.delete_as(&format!("{base}/invitations/inv_unknown"), &alice.token)
        .await
        .assert_error(404, "not_found");
}

async fn registration_with_an_invitation_joins_the_organization(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let base = format!("/v1/organizations/{}", org["id"].as_str().unwrap());
    srv.post_as(
        &format!("{base}/invitations"),
        &alice.token,
        &json!({"email": "new@example.com", "role": "editor"}),
    )
    .await;
    let mail = srv.mail(&admin, "new@example.com", "invited").await;
    let token = mail
        .split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .unwrap()
        .to_string();

    // The wrong email creates no account.
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "other@example.com", "password": PASSWORD, "invitation_token": token}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "invitation_token"
    );
    srv.post_json(
        "/v1/auth/login",
        &json!({"email": "other@example.com", "password": PASSWORD}),
    )
    .await
    .assert_error(401, "unauthorized");

    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "new@example.com", "password": PASSWORD, "invitation_token": token}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["membership"]["role"], "editor");
    assert_eq!(res.json["user"]["email_verified"], true);
    let t = res.json["access_token"].as_str().unwrap();
    assert_eq!(srv.get_as(&base, t).await.json["role"], "editor");
}

/// Alice owning Acme (its id and `base`), and a viewer of it.
async fn acme_with_a_viewer(backend: Backend) -> (TestServer, Person, String, String, Person) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let org_id = org["id"].as_str().unwrap().to_string();
    let base = format!("/v1/organizations/{org_id}");
    let viewer = a_person(&srv, "v@example.com").await;
    add_member(&srv, &org_id, &viewer.id, Role::Viewer).await;
    (srv, alice, org_id, base, viewer)
}

async fn projects_are_validated_listed_renamed_and_deleted(backend: Backend) {
    let (srv, alice, _, base, viewer) = acme_with_a_viewer(backend).await;

    let res = srv
        .post_as(&format!("{base}/projects"), &alice.token, &json!({"name": "Web", "allowed_origins": ["https://app.example.com"], "redirect_urls": ["https://app.example.com/cb"], "settings": {"theme": "dark"}}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let pid = res.json["id"].as_str().unwrap().to_string();
    assert!(pid.starts_with("proj_"));
    for (body, field) in [
        (json!({}), "name"),
        (
            json!({"name": "x", "allowed_origins": ["https://app.example.com/path"]}),
            "allowed_origins[0]",
        ),
        (
            json!({"name": "x", "redirect_urls": ["javascript:alert(1)"]}),
            "redirect_urls[0]",
        ),
        (json!({"name": "x", "settings": [1]}), "settings"),
    ] {
        let res = srv
            .post_as(&format!("{base}/projects"), &alice.token, &body)
            .await;
        assert_eq!(
            res.assert_error(400, "invalid_request")["details"][0]["field"],
            field,
            "{}",
            res.text
        );
    }
    srv.post_as(
        &format!("{base}/projects"),
        &viewer.token,
        &json!({"name": "nope"}),
    )
    .await
    .assert_error(403, "forbidden");
    assert_eq!(
        srv.get_as(&format!("{base}/projects"), &viewer.token)
            .await
            .json["total"],
        1
    );
    let res = srv
        .patch_as(
            &format!("{base}/projects/{pid}"),
            &alice.token,
            &json!({"name": "Web app"}),
        )
        .await;
    assert_eq!(res.json["name"], "Web app");
    assert_eq!(
        res.json["allowed_origins"],
        json!(["https://app.example.com"])
    );
    assert_eq!(
        srv.get_as(&base, &alice.token).await.json["projects_count"],
        1
    );
    assert_eq!(
        srv.delete_as(&format!("{base}/projects/{pid}"), &alice.token)
            .await
            .status,
        204
    );
    srv.get_as(&format!("{base}/projects/{pid}"), &alice.token)
        .await
        .assert_error(404, "not_found");
}

async fn configs_and_roles_page_with_limit_and_offset(backend: Backend) {
    let (srv, alice, _, base, viewer) = acme_with_a_viewer(backend).await;
    for key in ["a.flag", "b.limit", "c.theme"] {
        let res = srv
            .put_as(
                &format!("{base}/configs/{key}"),
                &alice.token,
                &json!({"value": key}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    srv.assert_pages(&format!("{base}/configs"), &viewer.token, "configs", 3)
        .await;
    srv.assert_pages("/v1/roles", &viewer.token, "roles", 5)
        .await;
    srv.get_as(&format!("{base}/configs?limit=0"), &viewer.token)
        .await
        .assert_error(400, "invalid_request");
    srv.get_as("/v1/roles?offset=-1", &viewer.token)
        .await
        .assert_error(400, "invalid_request");
}

async fn configs_hold_any_json_value_with_validated_keys_and_sizes(backend: Backend) {
    let (srv, alice, _, base, viewer) = acme_with_a_viewer(backend).await;

    // Configs: any JSON value, size-limited, keys validated.
    let res = srv
        .put_as(
            &format!("{base}/configs/feature.flags"),
            &alice.token,
            &json!({"value": {"beta": true, "n": 3}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.put_as(
        &format!("{base}/configs/limit"),
        &alice.token,
        &json!({"value": 42}),
    )
    .await;
    let one = srv
        .get_as(&format!("{base}/configs/feature.flags"), &viewer.token)
        .await;
    assert_eq!(one.json["value"], json!({"beta": true, "n": 3}));
    assert_eq!(
        srv.get_as(&format!("{base}/configs"), &viewer.token)
            .await
            .json["total"],
        2
    );
    srv.put_as(
        &format!("{base}/configs/x"),
        &viewer.token,
        &json!({"value": 1}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.put_as(
        &format!("{base}/configs/big"),
        &alice.token,
        &json!({"value": "x".repeat(70_000)}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.put_as(
        &format!("{base}/configs/bad%20key"),
        &alice.token,
        &json!({"value": 1}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.put_as(
        &format!("{base}/configs/k"),
        &alice.token,
        &json!({"val": 1}),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_eq!(
        srv.delete_as(&format!("{base}/configs/limit"), &alice.token)
            .await
            .status,
        204
    );
    srv.get_as(&format!("{base}/configs/limit"), &alice.token)
        .await
        .assert_error(404, "not_found");
}

async fn storage_credentials_are_write_only_and_encrypted_at_rest(backend: Backend) {
    let (srv, alice, org_id, base, viewer) = acme_with_a_viewer(backend).await;

    // Storage: credentials are write-only and encrypted at rest.
    assert_eq!(
        srv.get_as(&format!("{base}/storage"), &alice.token)
            .await
            .json["configured"],
        false
    );
    let res = srv
        .put_as(&format!("{base}/storage"), &alice.token, &json!({"provider": "s3", "bucket": "logs", "region": "eu-west-1", "prefix": "acme/", "retention_days": 90, "credentials": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "very-secret-value"}}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["credentials_set"], true);
    assert!(!res.text.contains("very-secret-value"));
    let stored: String =
        sqlx::query_scalar("SELECT credentials FROM org_storage WHERE organization_id = $1")
            .bind(&org_id)
            .fetch_one(srv.state.db.pool())
            .await
            .unwrap();
    assert!(!stored.contains("very-secret-value") && !stored.contains("AKIA"));
    // Updating without credentials keeps them.
    let res = srv
        .put_as(
            &format!("{base}/storage"),
            &alice.token,
            &json!({"provider": "s3", "bucket": "logs2", "retention_days": 30}),
        )
        .await;
    assert_eq!(res.json["credentials_set"], true);
    assert_eq!(res.json["bucket"], "logs2");
    srv.put_as(
        &format!("{base}/storage"),
        &alice.token,
        &json!({"provider": "ftp", "bucket": "", "retention_days": 0}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.get_as(&format!("{base}/storage"), &viewer.token)
        .await
        .assert_error(403, "forbidden");
}

async fn ip_allowlist_is_enforced_behind_trusted_proxies_only(backend: Backend) {
    for trusted in [true, false] {
        let srv = TestServer::start_with(
            backend,
            ServerOptions {
                configure: Box::new(move |c| {
                    if trusted {
                        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
                    }
                }),
                ..Default::default()
            },
        )
        .await;
        let alice = a_person(&srv, "alice@example.com").await;
        let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
        let base = format!("/v1/organizations/{}", org["id"].as_str().unwrap());
        // Forced: the list shuts out the address this change comes from.
        let res = srv
            .patch_as(
                &format!("{base}?force=true"),
                &alice.token,
                &json!({"settings": {"ip_allowlist": ["203.0.113.0/24"]}}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
        let from = |xff: Option<&str>| {
            let mut req = srv.client.get(srv.url(&base)).bearer_auth(&alice.token);
            if let Some(x) = xff {
                req = req.header("x-forwarded-for", x);
            }
            srv.send(req)
        };
        from(None).await.assert_error(403, "forbidden");
        from(Some("198.51.100.1"))
            .await
            .assert_error(403, "forbidden");
        let inside = from(Some("203.0.113.7")).await;
        if trusted {
            assert_eq!(inside.status, 200, "{}", inside.text);
        } else {
            // Without trusted proxies the header is ignored: the peer (127.0.0.1) is outside.
            inside.assert_error(403, "forbidden");
        }
        // Tenant selection from outside the list is refused too.
        srv.post_as(
            "/v1/auth/select-tenant",
            &alice.token,
            &json!({"organization_id": "acme"}),
        )
        .await
        .assert_error(403, "forbidden");
    }
}

async fn platform_admin_lists_and_suspends_organizations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let acme = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    an_org_of(&srv, &alice, "Globex", "globex").await;
    let id = acme["id"].as_str().unwrap();
    srv.post_as(
        &format!("/v1/organizations/{id}/projects"),
        &alice.token,
        &json!({"name": "P"}),
    )
    .await;

    srv.get_as("/v1/admin/organizations", &alice.token)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        srv.get_as("/v1/admin/organizations", &admin).await.json["total"],
        2
    );
    let found = srv.get_as("/v1/admin/organizations?q=acm", &admin).await;
    assert_eq!(found.json["total"], 1);
    let detail = srv
        .get_as(&format!("/v1/admin/organizations/{id}"), &admin)
        .await;
    assert_eq!(detail.json["members"][0]["id"], alice.id);
    assert_eq!(detail.json["usage"]["plan"], "smb");
    assert_eq!(detail.json["usage"]["members"]["used"], 1);
    assert_eq!(detail.json["usage"]["projects"]["used"], 1);
    assert_eq!(
        srv.get_as("/v1/admin/projects", &admin).await.json["total"],
        1
    );

    let scoped = srv
        .post_as(
            "/v1/auth/select-tenant",
            &alice.token,
            &json!({"organization_id": id}),
        )
        .await;
    let scoped = scoped.json["access_token"].as_str().unwrap().to_string();
    srv.put_as(
        &format!("/v1/admin/organizations/{id}/status"),
        &admin,
        &json!({"status": "paused"}),
    )
    .await
    .assert_error(400, "invalid_request");
    let res = srv
        .put_as(
            &format!("/v1/admin/organizations/{id}/status"),
            &admin,
            &json!({"status": "suspended", "reason": "unpaid"}),
        )
        .await;
    assert_eq!(res.json["status"], "suspended");
    // At once: the organization's routes, scoped tokens, tenant selection.
    srv.get_as(&format!("/v1/organizations/{id}"), &alice.token)
        .await
        .assert_error(403, "organization_suspended");
    srv.get_as("/v1/me", &scoped)
        .await
        .assert_error(403, "organization_suspended");
    srv.post_as(
        "/v1/auth/select-tenant",
        &alice.token,
        &json!({"organization_id": id}),
    )
    .await
    .assert_error(403, "organization_suspended");
    assert_eq!(
        srv.get_as("/v1/admin/organizations?status=suspended", &admin)
            .await
            .json["total"],
        1
    );
    srv.put_as(
        &format!("/v1/admin/organizations/{id}/status"),
        &admin,
        &json!({"status": "active"}),
    )
    .await;
    assert_eq!(
        srv.get_as(&format!("/v1/organizations/{id}"), &alice.token)
            .await
            .status,
        200
    );
    srv.put_as(
        "/v1/admin/organizations/org_missing/status",
        &admin,
        &json!({"status": "active"}),
    )
    .await
    .assert_error(404, "not_found");
}

/// Generated from the router's own table: for **every** organization-scoped route, a member of
/// organization B gets `not_found` or `forbidden` on organization A's resources, sees none of
/// A's data, and changes nothing. A route added later is covered without editing this test.
/// Organization A (alice's, with bob as a member, a project, a config, a pending invitation, a
/// webhook and a key, all named "secret…") beside organization B (mallory's), and B's three
/// kinds of caller.
struct TwoOrganizations {
    srv: TestServer,
    alice: Person,
    a_id: String,
    base: String,
    project_id: String,
    inv_id: String,
    hook_id: String,
    a_key_id: String,
    /// B's owner, B's tenant-scoped token, B's key.
    mallory: Person,
    b_scoped: String,
    b_key: String,
}

async fn two_organizations(backend: Backend) -> TwoOrganizations {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| {
                c.allow_private_webhook_targets = true;
                // Every route is called several times by each caller: limits are not the subject.
                c.rate_limits.analytics_per_minute = 100_000;
                c.rate_limits.management_per_minute = 100_000;
                c.rate_limits.api_key_per_minute = 100_000;
                c.rate_limits.user_per_minute = 100_000;
            }),
            ..Default::default()
        },
    )
    .await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let bob = a_person(&srv, "bob@example.com").await;
    let mallory = a_person(&srv, "mallory@example.com").await;
    let a = an_org_of(&srv, &alice, "Secret A", "org-a").await.json;
    let a_id = a["id"].as_str().unwrap().to_string();
    let b = an_org_of(&srv, &mallory, "Org B", "org-b").await.json;
    let b_id = b["id"].as_str().unwrap().to_string();
    add_member(&srv, &a_id, &bob.id, Role::Member).await;
    let base = format!("/v1/organizations/{a_id}");
    let project = srv
        .post_as(
            &format!("{base}/projects"),
            &alice.token,
            &json!({"name": "secret-project"}),
        )
        .await;
    let project_id = project.json["id"].as_str().unwrap().to_string();
    srv.put_as(
        &format!("{base}/configs/secret-key"),
        &alice.token,
        &json!({"value": "secret-value"}),
    )
    .await;
    let inv = srv
        .post_as(
            &format!("{base}/invitations"),
            &alice.token,
            &json!({"email": "x@example.com", "role": "viewer"}),
        )
        .await;
    let inv_id = inv.json["id"].as_str().unwrap().to_string();
    srv.mail(&admin, "x@example.com", "invited").await;
    let hook = srv
        .post_as(
            &format!("{base}/webhooks"),
            &alice.token,
            &json!({"url": "http://127.0.0.1:9/secret-hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text);
    let hook_id = hook.json["id"].as_str().unwrap().to_string();
    let a_key = srv
        .post_as(
            &format!("{base}/api-keys"),
            &alice.token,
            &json!({"name": "secret-key-name"}),
        )
        .await;
    assert_eq!(a_key.status, 201, "{}", a_key.text);
    let a_key_id = a_key.json["id"].as_str().unwrap().to_string();
    let b_key = srv
        .post_as(
            &format!("/v1/organizations/{b_id}/api-keys"),
            &mallory.token,
            &json!({"name": "b"}),
        )
        .await;
    let b_key = b_key.json["token"].as_str().unwrap().to_string();
    let b_scoped = srv
        .post_as(
            "/v1/auth/select-tenant",
            &mallory.token,
            &json!({"organization_id": b_id}),
        )
        .await;
    let b_scoped = b_scoped.json["access_token"].as_str().unwrap().to_string();

    TwoOrganizations {
        srv,
        alice,
        a_id,
        base,
        project_id,
        inv_id,
        hook_id,
        a_key_id,
        mallory,
        b_scoped,
        b_key,
    }
}

/// Every organization-scoped route of A, by id and by slug, answers `caller` 404 or 403 and
/// leaks nothing; nothing of A changed afterwards.
async fn assert_every_org_route_refuses(w: &TwoOrganizations, caller: &str) {
    let TwoOrganizations {
        srv,
        alice,
        a_id,
        project_id,
        inv_id,
        hook_id,
        a_key_id,
        ..
    } = w;
    let table = gatehouse::http::route_table();
    let org_routes: Vec<_> = table
        .iter()
        .filter(|r| r.path.contains("{org_id}"))
        .collect();
    assert!(
        org_routes.len() >= 20,
        "only {} org routes?",
        org_routes.len()
    );
    for route in &org_routes {
        for org_ref in [a_id.as_str(), "org-a"] {
            let path = route
                .path
                .replace("{org_id}", org_ref)
                .replace("{user_id}", &alice.id)
                .replace("{key}", "secret-key")
                .replace("{delivery_id}", "del_01aaaaaaaaaaaaaaaaaaaaaaaa")
                .replace("{key_id}", a_key_id)
                .replace(
                    "{id}",
                    if route.path.contains("/invitations/") {
                        inv_id
                    } else if route.path.contains("/webhooks/") {
                        hook_id
                    } else {
                        project_id
                    },
                );
            assert!(!path.contains('{'), "unfilled parameter in {path}");
            {
                let body = json!({"name": "pwn", "role": "owner", "value": 1, "email": "m@example.com",
                                  "provider": "s3", "bucket": "b", "retention_days": 1});
                let res = srv
                    .call(route.method.clone(), &path, Some(caller), Some(&body))
                    .await;
                assert!(
                    res.status == 404 || res.status == 403,
                    "{} {} answered {} to another organization: {}",
                    route.method,
                    path,
                    res.status,
                    res.text
                );
                for secret in [
                    "secret-project",
                    "secret-value",
                    "Secret A",
                    "secret-hook",
                    &alice.id,
                ] {
                    assert!(
                        !res.text.contains(secret),
                        "{} {} leaked {secret}",
                        route.method,
                        path
                    );
                }
            }
        }
    }
    assert_nothing_of_a_changed(w).await;
}

async fn assert_nothing_of_a_changed(w: &TwoOrganizations) {
    let TwoOrganizations {
        srv,
        alice,
        base,
        project_id,
        ..
    } = w;
    // Nothing of A changed.
    let org = srv.get_as(base, &alice.token).await;
    assert_eq!(org.json["name"], "Secret A");
    // Alice, Bob and the pending invitee.
    assert_eq!(org.json["members_count"], 3);
    assert_eq!(
        srv.get_as(&format!("{base}/projects/{project_id}"), &alice.token)
            .await
            .json["name"],
        "secret-project"
    );
    assert_eq!(
        srv.get_as(&format!("{base}/configs/secret-key"), &alice.token)
            .await
            .json["value"],
        "secret-value"
    );
    assert_eq!(
        srv.get_as(&format!("{base}/invitations?status=pending"), &alice.token)
            .await
            .json["total"],
        1
    );
    assert_eq!(
        srv.get_as(&format!("{base}/storage"), &alice.token)
            .await
            .json["configured"],
        false
    );
}

async fn another_organizations_owner_is_refused_every_org_route(backend: Backend) {
    let w = two_organizations(backend).await;
    assert_every_org_route_refuses(&w, &w.mallory.token).await;
}

async fn another_organizations_tenant_token_is_refused_every_org_route(backend: Backend) {
    let w = two_organizations(backend).await;
    assert_every_org_route_refuses(&w, &w.b_scoped).await;
}

async fn another_organizations_key_is_refused_every_org_route(backend: Backend) {
    let w = two_organizations(backend).await;
    assert_every_org_route_refuses(&w, &w.b_key).await;
}

/// The permission each organization route checks, with a call that needs it.
fn permission_checks(base: &str) -> Vec<(Permission, reqwest::Method, String, Option<Value>)> {
    use reqwest::Method;
    let base = base.to_string();
    vec![
        (
            Permission::OrganizationsRead,
            Method::GET,
            base.clone(),
            None,
        ),
        (
            Permission::OrganizationsUpdate,
            Method::PATCH,
            base.clone(),
            Some(json!({"description": "d"})),
        ),
        (
            Permission::MembersRead,
            Method::GET,
            format!("{base}/members"),
            None,
        ),
        (
            Permission::MembersManage,
            Method::GET,
            format!("{base}/invitations"),
            None,
        ),
        (
            Permission::ConfigsRead,
            Method::GET,
            format!("{base}/configs/k"),
            None,
        ),
        (
            Permission::ConfigsManage,
            Method::PUT,
            format!("{base}/configs/k"),
            Some(json!({"value": 2})),
        ),
        (
            Permission::StorageManage,
            Method::GET,
            format!("{base}/storage"),
            None,
        ),
        (
            Permission::OrganizationsUpdate,
            Method::POST,
            format!("{base}/projects"),
            Some(json!({"name": "p"})),
        ),
        (
            Permission::OrganizationsRead,
            Method::GET,
            format!("{base}/projects"),
            None,
        ),
    ]
}

/// Each role against each permission the organization routes check.
async fn every_role_gets_exactly_its_permissions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let owner = a_person(&srv, "owner@example.com").await;
    let org = an_org_of(&srv, &owner, "Matrix", "matrix").await.json;
    let org_id = org["id"].as_str().unwrap().to_string();
    let base = format!("/v1/organizations/{org_id}");
    srv.put_as(
        &format!("{base}/configs/k"),
        &owner.token,
        &json!({"value": 1}),
    )
    .await;
    let mut people = vec![(Role::Owner, owner.token.clone())];
    for role in [Role::Admin, Role::Editor, Role::Member, Role::Viewer] {
        let p = a_person(&srv, &format!("{}@example.com", role.as_str())).await;
        add_member(&srv, &org_id, &p.id, role).await;
        people.push((role, p.token));
    }
    let checks = permission_checks(&base);
    for (role, token) in &people {
        for (perm, method, path, body) in &checks {
            let res = srv
                .call(method.clone(), path, Some(token), body.as_ref())
                .await;
            if role.can(*perm) {
                assert!(
                    res.status < 300,
                    "{role:?} should {perm:?}: {} {path} → {} {}",
                    method,
                    res.status,
                    res.text
                );
            } else {
                res.assert_error(403, "forbidden");
            }
        }
    }
    // Deletion: owner only (checked last).
    for (role, token) in people.iter().rev() {
        let res = srv.delete_as(&base, token).await;
        if *role == Role::Owner {
            assert_eq!(res.status, 204);
        } else {
            res.assert_error(403, "forbidden");
        }
    }
    let _ = find_code;
}

async fn plans_cap_members_and_projects(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await.json;
    let base = format!("/v1/organizations/{}", org["id"].as_str().unwrap());
    let res = srv
        .patch_as(
            "/v1/admin/plans/smb",
            &admin,
            &json!({"limits": {"projects": 1, "members": 2}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        srv.post_as(
            &format!("{base}/projects"),
            &alice.token,
            &json!({"name": "one"})
        )
        .await
        .status,
        201
    );
    let res = srv
        .post_as(
            &format!("{base}/projects"),
            &alice.token,
            &json!({"name": "two"}),
        )
        .await;
    res.assert_error(429, "quota_exceeded");
    // The owner and one pending invitation fill two seats.
    let res = srv
        .post_as(
            &format!("{base}/invitations"),
            &alice.token,
            &json!({"email": "b@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    srv.post_as(
        &format!("{base}/members"),
        &alice.token,
        &json!({"email": "c@example.com", "role": "viewer"}),
    )
    .await
    .assert_error(429, "quota_exceeded");
    let usage = srv.get_as(&format!("{base}/usage"), &alice.token).await;
    assert_eq!(usage.json["projects"], json!({"limit": 1, "used": 1}));
}
