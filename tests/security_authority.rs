//! Authority (issue #20, items 1, 2, 5, 7, 16): no path gives a caller more authority than it
//! holds — not a key it creates, patches or rotates, not another environment's data — the last
//! owner survives concurrent demotions, and an IP allowlist cannot lock an organization out for
//! good.

mod common;

use common::{
    fixtures::{an_org, token, Org},
    Backend, TestServer,
};
use gatehouse::{environment::Environment, orgs::roles::Role};
use serde_json::{json, Value};

on_both_databases!(
    a_key_never_performs_owner_only_actions,
    an_admin_rotating_an_owners_key_gains_no_owner_authority,
    a_key_hands_out_only_scopes_it_holds,
    a_key_cannot_change_or_rotate_a_stronger_key,
    a_demoted_creators_key_keeps_its_scopes_beyond_a_narrow_caller,
    a_second_permission_checked_in_a_handler_needs_the_keys_scope,
    a_key_gives_people_no_role_beyond_its_scopes,
    test_callers_see_and_change_test_webhooks_only,
    test_events_reach_test_endpoints_only,
    two_owners_demoting_each_other_leave_one_owner,
    a_caller_demoted_before_the_membership_lock_cannot_act,
    a_keys_creator_demoted_before_the_membership_lock_stops_the_key,
    two_of_three_owners_demoting_each_other_leave_two_owners,
    deleting_a_user_never_leaves_an_organization_without_owner,
    an_allowlist_excluding_the_caller_is_refused_unless_forced,
    platform_admins_repair_a_locked_out_organization,
);

fn role_of(members: &Value, user_id: &str) -> String {
    members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == user_id || m["user_id"] == user_id)
        .map(|m| m["role"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{user_id} not in {members}"))
}

async fn a_key_never_performs_owner_only_actions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (_, admin_id) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    // The owner's own key, with every scope.
    let k = token(&o.a_key(&srv, &o.owner, json!({"name": "owner's"})).await);
    let members = format!("{}/members", o.base);
    let err = srv
        .patch_as(
            &format!("{members}/{admin_id}"),
            &k,
            &json!({"role": "owner"}),
        )
        .await;
    let err = err.assert_error(403, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("owner-only"),
        "{err}"
    );
    srv.patch_as(
        &format!("{members}/{}", o.owner_id),
        &k,
        &json!({"role": "admin"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.delete_as(&format!("{members}/{}", o.owner_id), &k)
        .await
        .assert_error(403, "forbidden");
    srv.post_as(
        &format!("{}/invitations", o.base),
        &k,
        &json!({"email": "new@example.com", "role": "owner"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.delete_as(&o.base, &k)
        .await
        .assert_error(403, "forbidden");
    // What an admin may do, the key still does.
    let res = srv
        .patch_as(
            &format!("{members}/{admin_id}"),
            &k,
            &json!({"role": "editor"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let list = srv.get_as(&members, &o.owner).await;
    assert_eq!(role_of(&list.json, &o.owner_id), "owner");
    assert_eq!(role_of(&list.json, &admin_id), "editor");
}

async fn an_admin_rotating_an_owners_key_gains_no_owner_authority(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (admin, admin_id) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let owners_key = o.a_key(&srv, &o.owner, json!({"name": "owner's"})).await;
    // The key's authority is an admin's at most, which the admin holds: rotation is allowed…
    let res = srv
        .post_as(
            &format!(
                "{}/api-keys/{}/rotations",
                o.base,
                owners_key["id"].as_str().unwrap()
            ),
            &admin,
            &json!({"grace_period_seconds": 0}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let rotated = token(&res.json);
    // …and the token it hands out cannot promote the admin nor demote the owner.
    let members = format!("{}/members", o.base);
    srv.patch_as(
        &format!("{members}/{admin_id}"),
        &rotated,
        &json!({"role": "owner"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.patch_as(
        &format!("{members}/{}", o.owner_id),
        &rotated,
        &json!({"role": "viewer"}),
    )
    .await
    .assert_error(403, "forbidden");
    let list = srv.get_as(&members, &o.owner).await;
    assert_eq!(role_of(&list.json, &o.owner_id), "owner");
    assert_eq!(role_of(&list.json, &admin_id), "admin");
}

async fn a_key_hands_out_only_scopes_it_holds(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let narrow = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "narrow", "scopes": ["api_keys:manage"]}),
        )
        .await;
    let k = token(&narrow);
    let all: Vec<&str> = gatehouse::keys::SCOPES.to_vec();
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &k,
            &json!({"name": "wide", "scopes": all}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    let fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    // Every scope but the two it holds (api_keys:manage and the api_keys:read it includes).
    assert_eq!(fields.len(), all.len() - 2, "{err}");
    // Omitted scopes: everything the calling key holds, no more.
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &k,
            &json!({"name": "default"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let mut scopes: Vec<&str> = res.json["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["api_keys:manage", "api_keys:read"]);
    // Nor a publishable key: those carry gateway:proxy, which it does not hold.
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &k,
            &json!({"name": "web", "type": "publishable", "allowed_origins": ["https://app.example.com"]}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "type", "{err}");
    // It cannot widen itself either; narrowing is fine.
    let own = format!("{}/api-keys/{}", o.base, narrow["id"].as_str().unwrap());
    srv.patch_as(
        &own,
        &k,
        &json!({"scopes": ["api_keys:manage", "members:manage"]}),
    )
    .await
    .assert_error(400, "invalid_request");
    let res = srv
        .patch_as(&own, &k, &json!({"scopes": ["api_keys:manage"]}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // A person is capped by their role: a member cannot mint keys; an admin mints any scope.
    let (admin, _) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &admin,
            &json!({"name": "admin's", "scopes": all}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
}

async fn a_key_cannot_change_or_rotate_a_stronger_key(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let narrow = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "narrow", "scopes": ["api_keys:manage"]}),
        )
        .await;
    let k = token(&narrow);
    let full = o.a_key(&srv, &o.owner, json!({"name": "full"})).await;
    let full_path = format!("{}/api-keys/{}", o.base, full["id"].as_str().unwrap());
    let err = srv
        .post_as(&format!("{full_path}/rotations"), &k, &json!({}))
        .await;
    let err = err.assert_error(403, "forbidden");
    assert!(
        err["details"]["scopes_beyond_caller"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "members:manage")),
        "{err}"
    );
    srv.patch_as(&full_path, &k, &json!({"name": "renamed"}))
        .await
        .assert_error(403, "forbidden");
    srv.patch_as(&full_path, &k, &json!({"scopes": ["api_keys:manage"]}))
        .await
        .assert_error(403, "forbidden");
    // The full key still works, unchanged; the narrow key may rotate itself.
    let res = srv.get_as(&full_path, &o.owner).await;
    assert_eq!(res.json["name"], "full");
    assert_eq!(res.json["key_preview"], full["key_preview"]);
    let res = srv
        .post_as(
            &format!(
                "{}/api-keys/{}/rotations",
                o.base,
                narrow["id"].as_str().unwrap()
            ),
            &k,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    // Nor revoke it; the owner can.
    srv.delete_as(&full_path, &k)
        .await
        .assert_error(403, "forbidden");
    let res = srv.delete_as(&full_path, &o.owner).await;
    assert_eq!(res.status, 204, "{}", res.text);
}

async fn a_demoted_creators_key_keeps_its_scopes_beyond_a_narrow_caller(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (admin, admin_id) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let wide = o.a_key(&srv, &admin, json!({"name": "admin's"})).await;
    let member = format!("{}/members/{admin_id}", o.base);
    let res = srv
        .patch_as(&member, &o.owner, &json!({"role": "member"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Its creator is a member now, so the key can do little today — but its stored scopes come
    // back if the creator is promoted again: a narrow key may not rotate it for its token.
    let narrow = o
        .a_key_token(
            &srv,
            Environment::Live,
            &["api_keys:manage", "api_keys:read"],
        )
        .await;
    srv.post_as(
        &format!(
            "{}/api-keys/{}/rotations",
            o.base,
            wide["id"].as_str().unwrap()
        ),
        &narrow,
        &json!({}),
    )
    .await
    .assert_error(403, "forbidden");
}

async fn a_second_permission_checked_in_a_handler_needs_the_keys_scope(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (_, member_id) = o.a_member(&srv, "member@example.com", Role::Member).await;
    // The route itself takes members:read; removing someone else needs members:manage too.
    let k = o
        .a_key_token(&srv, Environment::Live, &["members:read"])
        .await;
    let err = srv
        .delete_as(&format!("{}/members/{member_id}", o.base), &k)
        .await;
    let err = err.assert_error(403, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("members:manage"),
        "{err}"
    );
    let list = srv.get_as(&format!("{}/members", o.base), &o.owner).await;
    assert_eq!(role_of(&list.json, &member_id), "member");
}

/// A server whose webhook URLs may point at this machine (nothing is delivered in these tests:
/// no delivery worker runs).
async fn with_local_webhooks(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        common::ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            ..Default::default()
        },
    )
    .await
}

async fn a_key_gives_people_no_role_beyond_its_scopes(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (_, member_id) = o.a_member(&srv, "member@example.com", Role::Member).await;
    let k = o
        .a_key_token(&srv, Environment::Live, &["members:manage"])
        .await;
    // An admin holds api_keys:manage, billing:manage, … which this key does not.
    let err = srv
        .patch_as(
            &format!("{}/members/{member_id}", o.base),
            &k,
            &json!({"role": "admin"}),
        )
        .await;
    let err = err.assert_error(403, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("api_keys:manage"),
        "{err}"
    );
    srv.post_as(
        &format!("{}/invitations", o.base),
        &k,
        &json!({"email": "new@example.com", "role": "admin"}),
    )
    .await
    .assert_error(403, "forbidden");
    let list = srv.get_as(&format!("{}/members", o.base), &o.owner).await;
    assert_eq!(role_of(&list.json, &member_id), "member");
    // A key holding every scope an admin needs may make an admin; a signed-in admin too.
    let full = token(&o.a_key(&srv, &o.owner, json!({"name": "full"})).await);
    let res = srv
        .patch_as(
            &format!("{}/members/{member_id}", o.base),
            &full,
            &json!({"role": "admin"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
}

async fn test_callers_see_and_change_test_webhooks_only(backend: Backend) {
    let srv = with_local_webhooks(backend).await;
    let o = an_org(&srv).await;
    let hooks = format!("{}/webhooks", o.base);
    let live = srv
        .post_as(
            &hooks,
            &o.owner,
            &json!({"url": "http://127.0.0.1:9/live", "events": ["*"]}),
        )
        .await;
    assert_eq!(live.status, 201, "{}", live.text);
    assert_eq!(live.json["environment"], "live");
    let live_id = live.json["id"].as_str().unwrap().to_string();
    let test_key = o
        .a_key_token(&srv, Environment::Test, &["webhooks:manage"])
        .await;
    let one = format!("{hooks}/{live_id}");
    srv.get_as(&one, &test_key)
        .await
        .assert_error(404, "not_found");
    srv.patch_as(&one, &test_key, &json!({"enabled": false}))
        .await
        .assert_error(404, "not_found");
    srv.delete_as(&one, &test_key)
        .await
        .assert_error(404, "not_found");
    srv.post_as(&format!("{one}/rotate-secret"), &test_key, &json!({}))
        .await
        .assert_error(404, "not_found");
    srv.get_as(&format!("{one}/deliveries"), &test_key)
        .await
        .assert_error(404, "not_found");
    let err = srv
        .post_as(
            &hooks,
            &test_key,
            &json!({"url": "http://127.0.0.1:9/x", "events": ["*"], "environment": "live"}),
        )
        .await;
    let err = err.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "environment");
    let created = srv
        .post_as(
            &hooks,
            &test_key,
            &json!({"url": "http://127.0.0.1:9/test", "events": ["*"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["environment"], "test");
    let list = srv.get_as(&hooks, &test_key).await;
    let ids: Vec<&str> = list.json["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [created.json["id"].as_str().unwrap()]);
    // The live endpoint is untouched; the owner sees both.
    let res = srv.get_as(&one, &o.owner).await;
    assert_eq!(res.json["enabled"], true);
    assert_eq!(srv.get_as(&hooks, &o.owner).await.json["total"], 2);
}

async fn deliveries_of(srv: &TestServer, o: &Org, endpoint: &str) -> Vec<String> {
    let res = srv
        .get_as(
            &format!("{}/webhooks/{endpoint}/deliveries", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let list = res.json["deliveries"]
        .as_array()
        .or_else(|| res.json["data"].as_array())
        .unwrap_or_else(|| panic!("no delivery list in {}", res.text));
    list.iter()
        .map(|d| d["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn test_events_reach_test_endpoints_only(backend: Backend) {
    let srv = with_local_webhooks(backend).await;
    let o = an_org(&srv).await;
    let hooks = format!("{}/webhooks", o.base);
    let mut ids = Vec::new();
    for env in ["live", "test"] {
        let res = srv
            .post_as(
                &hooks,
                &o.owner,
                &json!({"url": format!("http://127.0.0.1:9/{env}"), "events": ["api_key.created"], "environment": env}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        ids.push(res.json["id"].as_str().unwrap().to_string());
    }
    // A test key creates a key: a test-environment event.
    let test_key = o
        .a_key_token(&srv, Environment::Test, &["api_keys:manage"])
        .await;
    // (The owner's own creation of that key is a live event: one delivery to the live endpoint.)
    o.a_key(&srv, &test_key, json!({"name": "made by a test key"}))
        .await;
    assert_eq!(deliveries_of(&srv, &o, &ids[0]).await.len(), 1);
    assert_eq!(deliveries_of(&srv, &o, &ids[1]).await, ["api_key.created"]);
}

async fn two_owners_demoting_each_other_leave_one_owner(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (second, second_id) = o.a_member(&srv, "second@example.com", Role::Owner).await;
    let members = format!("{}/members", o.base);
    for trial in 0..10 {
        let (demote_second, demote_first) = (
            format!("{members}/{second_id}"),
            format!("{members}/{}", o.owner_id),
        );
        let to_admin = json!({"role": "admin"});
        let a = srv.patch_as(&demote_second, &o.owner, &to_admin);
        let b = srv.patch_as(&demote_first, &second, &to_admin);
        let (a, b) = tokio::join!(a, b);
        let ok = [a.status, b.status].iter().filter(|s| **s == 200).count();
        assert_eq!(ok, 1, "trial {trial}: {} / {}", a.text, b.text);
        let owners: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
        )
        .bind(&o.id)
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
        assert_eq!(owners, 1, "trial {trial}");
        // Make both owners again for the next trial.
        sqlx::query("UPDATE memberships SET role = 'owner' WHERE organization_id = $1")
            .bind(&o.id)
            .execute(srv.state.db.pool())
            .await
            .unwrap();
    }
}

async fn role_in_db(srv: &TestServer, org_id: &str, user_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(srv.state.db.pool())
        .await
        .unwrap()
}

/// Runs `held` (a membership change) with the organization's next membership change held just
/// before its lock; while it is held, `meanwhile` runs to completion.
async fn with_change_held_before_lock<H, M>(org_id: &str, held: H, meanwhile: M) -> H::Output
where
    H: std::future::Future,
    M: std::future::Future<Output = ()>,
{
    let mut pause = gatehouse::orgs::members::pause::arm(org_id);
    let other = async move {
        pause.arrived().await;
        meanwhile.await;
        pause.release();
    };
    tokio::join!(held, other).0
}

async fn a_caller_demoted_before_the_membership_lock_cannot_act(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (second, second_id) = o.a_member(&srv, "second@example.com", Role::Owner).await;
    let (_, third_id) = o.a_member(&srv, "third@example.com", Role::Owner).await;
    let members = format!("{}/members", o.base);
    let to_admin = json!({"role": "admin"});
    let demote_second = || async {
        let res = srv
            .patch_as(&format!("{members}/{second_id}"), &o.owner, &to_admin)
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    };
    // The second owner's demotion of the third passes the extractor as an owner; the first owner
    // demotes the second before that change takes the lock.
    let res = with_change_held_before_lock(
        &o.id,
        srv.patch_as(&format!("{members}/{third_id}"), &second, &to_admin),
        demote_second(),
    )
    .await;
    res.assert_error(403, "forbidden");
    assert_eq!(role_in_db(&srv, &o.id, &third_id).await.unwrap(), "owner");
    assert_eq!(role_in_db(&srv, &o.id, &second_id).await.unwrap(), "admin");

    // The same for removal.
    sqlx::query("UPDATE memberships SET role = 'owner' WHERE organization_id = $1")
        .bind(&o.id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    let res = with_change_held_before_lock(
        &o.id,
        srv.delete_as(&format!("{members}/{third_id}"), &second),
        demote_second(),
    )
    .await;
    res.assert_error(403, "forbidden");
    assert_eq!(role_in_db(&srv, &o.id, &third_id).await.unwrap(), "owner");

    // A caller whose role was lowered before the request cannot act either.
    let res = srv
        .patch_as(&format!("{members}/{third_id}"), &second, &to_admin)
        .await;
    res.assert_error(403, "forbidden");
    assert_eq!(role_in_db(&srv, &o.id, &third_id).await.unwrap(), "owner");
}

async fn a_keys_creator_demoted_before_the_membership_lock_stops_the_key(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (_, viewer_id) = o.a_member(&srv, "viewer@example.com", Role::Viewer).await;
    let members = format!("{}/members", o.base);
    let scopes = [
        "members:read",
        "members:manage",
        "organizations:read",
        "usage:read",
        "configs:read",
    ];
    // An admin's key; the admin becomes a viewer while the key's change waits for the lock.
    let admins_key = |email: &'static str| {
        let (srv, o) = (&srv, &o);
        async move {
            let (admin, admin_id) = o.a_member(srv, email, Role::Admin).await;
            let body = json!({"name": email, "environment": "live", "scopes": scopes});
            (token(&o.a_key(srv, &admin, body).await), admin_id)
        }
    };
    let demote = |user_id: String| {
        let (srv, o, members) = (&srv, &o, &members);
        async move {
            let to_viewer = json!({"role": "viewer"});
            let res = srv
                .patch_as(&format!("{members}/{user_id}"), &o.owner, &to_viewer)
                .await;
            assert_eq!(res.status, 200, "{}", res.text);
        }
    };

    let (key, creator) = admins_key("admin1@example.com").await;
    let res = with_change_held_before_lock(
        &o.id,
        srv.delete_as(&format!("{members}/{viewer_id}"), &key),
        demote(creator),
    )
    .await;
    res.assert_error(403, "forbidden");
    assert_eq!(role_in_db(&srv, &o.id, &viewer_id).await.unwrap(), "viewer");

    let (key, creator) = admins_key("admin2@example.com").await;
    let res = with_change_held_before_lock(
        &o.id,
        srv.patch_as(
            &format!("{members}/{viewer_id}"),
            &key,
            &json!({"role": "viewer"}),
        ),
        demote(creator),
    )
    .await;
    res.assert_error(403, "forbidden");
    let events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE organization_id = $1 \
         AND action = 'member.updated' AND resource_id = $2",
    )
    .bind(&o.id)
    .bind(&viewer_id)
    .fetch_one(srv.state.db.pool())
    .await
    .unwrap();
    assert_eq!(events, 0, "the held change did not happen");
}

async fn two_of_three_owners_demoting_each_other_leave_two_owners(backend: Backend) {
    // With a third owner, neither demotion is the last owner's: only the fresh role of the
    // caller, read under the lock, stops the second from acting as an owner it no longer is.
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (second, second_id) = o.a_member(&srv, "second@example.com", Role::Owner).await;
    o.a_member(&srv, "third@example.com", Role::Owner).await;
    let members = format!("{}/members", o.base);
    for trial in 0..10 {
        let to_admin = json!({"role": "admin"});
        let (demote_second, demote_first) = (
            format!("{members}/{second_id}"),
            format!("{members}/{}", o.owner_id),
        );
        let a = srv.patch_as(&demote_second, &o.owner, &to_admin);
        let b = srv.patch_as(&demote_first, &second, &to_admin);
        let (a, b) = tokio::join!(a, b);
        let ok = [a.status, b.status].iter().filter(|s| **s == 200).count();
        assert_eq!(ok, 1, "trial {trial}: {} / {}", a.text, b.text);
        let loser = if a.status == 200 { &b } else { &a };
        loser.assert_error(403, "forbidden");
        let owners: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
        )
        .bind(&o.id)
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
        assert_eq!(owners, 2, "trial {trial}");
        sqlx::query("UPDATE memberships SET role = 'owner' WHERE organization_id = $1")
            .bind(&o.id)
            .execute(srv.state.db.pool())
            .await
            .unwrap();
    }
}

async fn deleting_a_user_never_leaves_an_organization_without_owner(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let admin = srv.admin_token().await;
    let user = format!("/v1/admin/users/{}", o.owner_id);
    let err = srv.delete_as(&user, &admin).await;
    let err = err.assert_error(409, "conflict");
    assert_eq!(err["details"]["organizations"], json!([o.id]), "{err}");
    assert_eq!(srv.get_as(&o.base, &o.owner).await.status, 200);
    // With a second owner, the first may go.
    o.a_member(&srv, "second@example.com", Role::Owner).await;
    let res = srv.delete_as(&user, &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
}

async fn an_allowlist_excluding_the_caller_is_refused_unless_forced(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let elsewhere = json!({"settings": {"ip_allowlist": ["203.0.113.0/24"]}});
    let err = srv.patch_as(&o.base, &o.owner, &elsewhere).await;
    let err = err.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "settings.ip_allowlist");
    assert!(
        err["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{err}"
    );
    // Nothing changed.
    let res = srv.get_as(&o.base, &o.owner).await;
    assert_eq!(res.json["settings"]["ip_allowlist"], json!([]));
    // A list that includes the caller is fine.
    let res = srv
        .patch_as(
            &o.base,
            &o.owner,
            &json!({"settings": {"ip_allowlist": ["127.0.0.0/8", "203.0.113.0/24"]}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // With ?force=true the caller means it, and is locked out.
    let res = srv
        .patch_as(&format!("{}?force=true", o.base), &o.owner, &elsewhere)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.get_as(&o.base, &o.owner)
        .await
        .assert_error(403, "forbidden");
}

async fn platform_admins_repair_a_locked_out_organization(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let res = srv
        .patch_as(
            &format!("{}?force=true", o.base),
            &o.owner,
            &json!({"settings": {"ip_allowlist": ["203.0.113.7"]}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.get_as(&o.base, &o.owner)
        .await
        .assert_error(403, "forbidden");
    // The owner cannot reach the admin route; a platform admin can.
    let admin_path = format!("/v1/admin/organizations/{}", o.id);
    let repair = json!({"settings": {"ip_allowlist": []}});
    srv.patch_as(&admin_path, &o.owner, &repair)
        .await
        .assert_error(403, "forbidden");
    let admin = srv.admin_token().await;
    srv.patch_as(
        &admin_path,
        &admin,
        &json!({"settings": {"ip_allowlist": ["nope"]}}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.patch_as("/v1/admin/organizations/org_nope", &admin, &repair)
        .await
        .assert_error(404, "not_found");
    let res = srv.patch_as(&admin_path, &admin, &repair).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["settings"]["ip_allowlist"], json!([]));
    let res = srv.get_as(&o.base, &o.owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Audited as the platform admin acting on the organization.
    let audit = srv
        .get_as(
            &format!("{}/audit?action=organization.updated", o.base),
            &o.owner,
        )
        .await;
    let newest = &audit.json["events"][0];
    assert_eq!(newest["actor_type"], "user", "{}", audit.text);
    assert_ne!(newest["actor_id"], o.owner_id.as_str(), "{}", audit.text);
}
