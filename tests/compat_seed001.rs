//! Seed 001 (TruePortAI, `src/compat/seed001/`): the seed's own calls — `/platform/api/…` and
//! `/trueportai-services/…`, its bodies and headers (`Authorization: Bearer`, `x-api-key`,
//! `X-Tenant-Slug`) — replayed against a fresh server, its documented answer shapes checked:
//! `global_access_token` and `scoped_access_token` (claims `sub, tid, role, env`), lists as
//! `{items, total, limit, offset}`, `{key: …}` on key creation, `{"enabled": false}` disabling.

mod common;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::{
    fixtures::{a_person, an_org, an_org_called, Org, Person},
    Backend, Response, ServerOptions, TestServer, PASSWORD,
};
use gatehouse::orgs::roles::Role;
use reqwest::Method;
use serde_json::{json, Value};

on_both_databases!(
    seed_001_global_auth_answers_global_and_scoped_tokens,
    seed_001_tenants_are_created_listed_and_checked,
    seed_001_service_routes_act_in_the_scoped_tenant,
    seed_001_service_roles_are_the_v1_routes_roles,
    seed_001_keys_are_created_disabled_and_deleted_and_proxy_at_the_seed_paths,
    seed_001_analytics_and_policies_answer_for_the_tenant,
    seed_001_admin_routes_serve_platform_admins_only,
    seed_001_another_tenants_slug_is_refused_on_every_tenant_route,
    seed_001_tenant_writes_count_against_the_management_limit,
    seed_001_an_idempotency_key_is_one_request_in_one_tenant,
    seed_001_tenant_requests_count_against_the_plan_limit,
    seed_001_maintenance_leaves_the_seeds_sign_in_admin_and_health_open,
);

const AUTH: &str = "/platform/api/global/auth";
const SERVICE: &str = "/platform/api/service";
const GATEWAY: &str = "/trueportai-services";

/// A call with a bearer token and the seed's dev-only `X-Tenant-Slug`.
async fn call_in(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    tenant: &str,
    body: Option<&Value>,
) -> Response {
    let mut req = srv
        .client
        .request(method, srv.url(path))
        .bearer_auth(token)
        .header("X-Tenant-Slug", tenant);
    if let Some(b) = body {
        req = req.json(b);
    }
    srv.send(req).await
}

/// The tenants `acme` and `beta`, and `email` a member of both with these roles.
async fn tenants_and_a_member_of_both(
    srv: &TestServer,
    email: &str,
    in_acme: Role,
    in_beta: Role,
) -> (Org, Org, Person) {
    let (a, b) = (an_org(srv).await, an_org_called(srv, "beta").await);
    let person = a_person(srv, email).await;
    a.add(srv, &person, in_acme).await;
    b.add(srv, &person, in_beta).await;
    (a, b, person)
}

/// The claims of an access token (its middle part).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The seed's sign-in flow for the owner of `org`: login → global token → select-tenant →
/// scoped token (in `environment`).
async fn scoped_token(srv: &TestServer, email: &str, org: &Org, environment: &str) -> String {
    let login = srv
        .post_json(
            &format!("{AUTH}/login"),
            &json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    let global = login.json["global_access_token"].as_str().unwrap();
    let res = srv
        .post_as(
            &format!("{AUTH}/select-tenant"),
            global,
            &json!({"organization_id": org.id, "environment": environment}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json["scoped_access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn seed_001_global_auth_answers_global_and_scoped_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv
        .post_json(
            &format!("{AUTH}/register"),
            &json!({"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}),
        )
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    assert_eq!(reg.json["global_access_token"], reg.json["access_token"]);
    assert_eq!(reg.json["user"]["email"], "ada@example.com");

    let login = srv
        .post_json(
            &format!("{AUTH}/login"),
            &json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    let global = login.json["global_access_token"].as_str().unwrap();
    // The global JWT: `{sub}`, no tenant.
    let c = claims(global);
    assert_eq!(c["sub"], reg.json["user"]["id"]);
    assert!(c.get("tid").is_none(), "{c}");
    let me = srv.get_as(&format!("{AUTH}/me"), global).await;
    assert_eq!(me.json["email"], "ada@example.com", "{}", me.text);
    // The refresh grant of the same route renews the global token.
    let renewed = srv
        .post_json(
            &format!("{AUTH}/login"),
            &json!({"grant_type": "refresh_token", "refresh_token": login.json["refresh_token"]}),
        )
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let again = renewed.json["global_access_token"]
        .as_str()
        .expect("global_access_token");
    assert_eq!(claims(again)["sub"], reg.json["user"]["id"]);

    let org = srv
        .post_as(
            "/platform/api/global/tenants",
            global,
            &json!({"name": "Ada Labs", "slug": "ada-labs"}),
        )
        .await;
    assert_eq!(org.status, 201, "{}", org.text);
    let org_id = org.json["id"].as_str().unwrap();

    // select-tenant: the scoped JWT `{sub, tid, role, env}`.
    let scoped = srv
        .post_as(
            &format!("{AUTH}/select-tenant"),
            global,
            &json!({"organization_id": "ada-labs"}),
        )
        .await;
    assert_eq!(scoped.status, 200, "{}", scoped.text);
    let token = scoped.json["scoped_access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(
        (&c["sub"], c["tid"].as_str(), &c["role"], &c["env"]),
        (
            &reg.json["user"]["id"],
            Some(org_id),
            &json!("owner"),
            &json!("live")
        )
    );
    let info = srv.get_as(&format!("{SERVICE}/info"), token).await;
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.json["slug"], "ada-labs");

    // switch-environment: a scoped token in the other environment.
    let test = srv
        .post_as(
            &format!("{SERVICE}/auth/switch-environment"),
            token,
            &json!({"environment": "test"}),
        )
        .await;
    assert_eq!(test.status, 200, "{}", test.text);
    let c = claims(test.json["scoped_access_token"].as_str().unwrap());
    assert_eq!(
        (c["tid"].as_str(), &c["env"]),
        (Some(org_id), &json!("test"))
    );

    // A service route with a global token and no tenant named: told how to name one.
    let err = srv.get_as(&format!("{SERVICE}/info"), global).await;
    let msg = err.assert_error(400, "invalid_request")["message"].clone();
    assert!(msg.as_str().unwrap().contains("X-Tenant-Slug"), "{msg}");
    // …or with X-Tenant-Slug, the global token acts in that tenant.
    let info = call_in(
        &srv,
        Method::GET,
        &format!("{SERVICE}/info"),
        global,
        "ada-labs",
        None,
    )
    .await;
    assert_eq!(info.json["id"], org_id, "{}", info.text);

    // Errors keep the SPEC envelope.
    srv.post_json(
        &format!("{AUTH}/login"),
        &json!({"email": "ada@example.com", "password": "not-the-password"}),
    )
    .await
    .assert_error(401, "unauthorized");
    srv.get(&format!("{SERVICE}/info"))
        .await
        .assert_error(401, "unauthorized");

    // Change the password (global JWT), then log in with the new one.
    let res = srv
        .put_as(
            &format!("{AUTH}/password"),
            global,
            &json!({"current_password": PASSWORD, "new_password": "another-long-passphrase"}),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    let res = srv
        .post_json(
            &format!("{AUTH}/login"),
            &json!({"email": "ada@example.com", "password": "another-long-passphrase"}),
        )
        .await;
    assert!(res.json["global_access_token"].is_string(), "{}", res.text);

    // The OTP and reset flows answer as `/v1` does (no account is revealed).
    for path in ["otp/request", "forgot-password"] {
        let res = srv
            .post_json(
                &format!("{AUTH}/{path}"),
                &json!({"email": "nobody@example.com"}),
            )
            .await;
        assert!(
            res.status == 200 || res.status == 202,
            "{path}: {}",
            res.text
        );
    }
    srv.post_json(
        &format!("{AUTH}/otp/verify"),
        &json!({"email": "ada@example.com", "code": "000000"}),
    )
    .await
    .assert_error(401, "unauthorized");
}

async fn seed_001_tenants_are_created_listed_and_checked(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    an_org_called(&srv, "elsewhere").await;
    let list = srv.get_as("/platform/api/global/tenants", &org.owner).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", list.text);
    assert_eq!(items[0]["id"], org.id.as_str());
    assert_eq!(list.json["total"], 1);
    assert!(list.json.get("organizations").is_none(), "{}", list.text);

    for (slug, available) in [("acme", false), ("fresh-slug", true)] {
        let res = srv
            .get(&format!(
                "/platform/api/global/tenants/check-availability?slug={slug}"
            ))
            .await;
        assert_eq!(res.json["available"], available, "{}", res.text);
    }

    // Creating needs a signed-in user; a taken slug is a conflict.
    srv.post_json(
        "/platform/api/global/tenants",
        &json!({"name": "X", "slug": "x-co"}),
    )
    .await
    .assert_error(401, "unauthorized");
    srv.post_as(
        "/platform/api/global/tenants",
        &org.owner,
        &json!({"name": "Again", "slug": "acme"}),
    )
    .await
    .assert_error(409, "conflict");
}

async fn seed_001_service_routes_act_in_the_scoped_tenant(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let (_, member_id) = org.a_member(&srv, "bob@example.com", Role::Viewer).await;
    let t = scoped_token(&srv, "owner@example.com", &org, "live").await;
    let t = t.as_str();

    let members = srv.get_as(&format!("{SERVICE}/members"), t).await;
    assert_eq!(members.status, 200, "{}", members.text);
    assert_eq!(members.json["total"], 2, "{}", members.text);
    assert_eq!(members.json["items"].as_array().unwrap().len(), 2);
    let paged = srv
        .get_as(&format!("{SERVICE}/members?limit=1&offset=1"), t)
        .await;
    assert_eq!(
        (
            &paged.json["limit"],
            &paged.json["offset"],
            paged.json["items"].as_array().map(Vec::len)
        ),
        (&json!(1), &json!(1), Some(1)),
        "{}",
        paged.text
    );

    let invite = srv
        .post_as(
            &format!("{SERVICE}/invites"),
            t,
            &json!({"email": "carol@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(invite.status, 201, "{}", invite.text);
    assert_eq!(invite.json["email"], "carol@example.com");

    let removed = srv
        .delete_as(&format!("{SERVICE}/members/{member_id}"), t)
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    let members = srv.get_as(&format!("{SERVICE}/members"), t).await;
    // The owner and the pending invitation.
    assert_eq!(members.json["total"], 2, "{}", members.text);
    assert!(members.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["id"] != member_id.as_str()));

    let plans = srv.get_as(&format!("{SERVICE}/catalog/plans"), t).await;
    assert_eq!(plans.status, 200, "{}", plans.text);
    assert!(
        plans.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "midmarket"),
        "{}",
        plans.text
    );
    let sub = srv
        .post_as(
            &format!("{SERVICE}/subscriptions"),
            t,
            &json!({"plan": "midmarket"}),
        )
        .await;
    assert_eq!(sub.status, 201, "{}", sub.text);
    assert_eq!(
        (&sub.json["plan"], &sub.json["organization_id"]),
        (&json!("midmarket"), &json!(org.id))
    );

    let put = srv
        .put_as(
            &format!("{SERVICE}/configs/theme"),
            t,
            &json!({"value": "dark"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let configs = srv.get_as(&format!("{SERVICE}/configs"), t).await;
    assert_eq!(configs.json["items"][0]["key"], "theme", "{}", configs.text);
    assert_eq!(configs.json["items"][0]["value"], "dark");

    let storage = srv.get_as(&format!("{SERVICE}/storage"), t).await;
    assert_eq!(storage.status, 200, "{}", storage.text);
    // The same resources as the `/v1` routes of the organization.
    let v1 = srv
        .get_as(&format!("{}/storage", org.base), &org.owner)
        .await;
    assert_eq!(storage.json, v1.json);
    let v1 = srv
        .get_as(&format!("{}/configs/theme", org.base), &org.owner)
        .await;
    assert_eq!(v1.json["value"], "dark", "{}", v1.text);
}

async fn seed_001_service_roles_are_the_v1_routes_roles(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let (viewer, _) = org.a_member(&srv, "viewer@example.com", Role::Viewer).await;
    let t = scoped_token(&srv, "viewer@example.com", &org, "live").await;
    let _ = viewer;
    // A viewer reads (the seed's `viewer` rows)…
    for path in ["info", "members", "configs", "catalog/plans"] {
        let res = srv.get_as(&format!("{SERVICE}/{path}"), &t).await;
        assert_eq!(res.status, 200, "{path}: {}", res.text);
    }
    // …and is refused the seed's `admin` rows, as on `/v1`.
    srv.post_as(
        &format!("{SERVICE}/invites"),
        &t,
        &json!({"email": "x@example.com", "role": "member"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.put_as(
        &format!("{SERVICE}/configs/theme"),
        &t,
        &json!({"value": 1}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.get_as(&format!("{SERVICE}/storage"), &t)
        .await
        .assert_error(403, "forbidden");
    srv.post_as(
        &format!("{SERVICE}/subscriptions"),
        &t,
        &json!({"plan": "midmarket"}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.post_as(&format!("{GATEWAY}/api/v1/keys"), &t, &json!({"name": "k"}))
        .await
        .assert_error(403, "forbidden");
}

async fn seed_001_keys_are_created_disabled_and_deleted_and_proxy_at_the_seed_paths(
    backend: Backend,
) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    // A test-environment scoped token: its keys are test keys, answered by the mock.
    let t = scoped_token(&srv, "owner@example.com", &org, "test").await;
    let t = t.as_str();
    let keys = format!("{GATEWAY}/api/v1/keys");
    let created = srv
        .post_as(
            &keys,
            t,
            &json!({"name": "ci", "scopes": ["gateway:proxy"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.json["key"].as_str().expect("key").to_string();
    assert_eq!(created.json["token"], key.as_str());
    assert_eq!(created.json["enabled"], true);
    let id = created.json["id"].as_str().unwrap().to_string();

    // The seed's proxy call: `x-api-key`, at /trueportai-services/openai/v1/….
    let chat = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello there gateway"}]});
    let call = || {
        srv.send(
            srv.client
                .post(srv.url(&format!("{GATEWAY}/openai/v1/chat/completions")))
                .header("x-api-key", &key)
                .json(&chat),
        )
    };
    let res = call().await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json["choices"][0]["message"]["content"],
        "Mock reply to: hello there gateway"
    );
    // The gateway's per-key default (the seed's 60 a minute), as on /openai/v1/….
    assert_eq!(
        res.header("x-ratelimit-limit"),
        Some("60"),
        "{:?}",
        res.headers
    );
    let anthropic = srv
        .send(
            srv.client
                .post(srv.url(&format!("{GATEWAY}/anthropic/v1/messages")))
                .header("x-api-key", &key)
                .json(&json!({"model": "mock-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(anthropic.status, 200, "{}", anthropic.text);
    assert_eq!(anthropic.json["type"], "message", "{}", anthropic.text);
    let gemini = srv
        .send(
            srv.client
                .post(srv.url(&format!(
                    "{GATEWAY}/google/v1beta/models/gemini-2.0-flash:generateContent"
                )))
                .header("x-api-key", &key)
                .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})),
        )
        .await;
    assert_eq!(gemini.status, 200, "{}", gemini.text);
    assert!(gemini.json["usageMetadata"].is_object(), "{}", gemini.text);
    let azure = srv
        .send(
            srv.client
                .post(srv.url(&format!(
                    "{GATEWAY}/azure/my-resource/my-deployment/chat/completions?api-version=2024-06-01"
                )))
                .header("x-api-key", &key)
                .json(&json!({"messages": [{"role": "user", "content": "hello azure"}]})),
        )
        .await;
    assert_eq!(
        azure.json["choices"][0]["message"]["content"], "Mock reply to: hello azure",
        "{}",
        azure.text
    );

    let list = srv.get_as(&keys, t).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", list.text);
    assert_eq!(
        (&items[0]["id"], &items[0]["enabled"]),
        (&json!(id), &json!(true))
    );
    assert!(items[0].get("token").is_none(), "{}", list.text);

    // `{"enabled": false}` disables the key: the proxy refuses it.
    let off = srv
        .patch_as(&format!("{keys}/{id}"), t, &json!({"enabled": false}))
        .await;
    assert_eq!(off.status, 200, "{}", off.text);
    assert_eq!(
        (&off.json["enabled"], &off.json["status"]),
        (&json!(false), &json!("disabled"))
    );
    assert_eq!(call().await.status, 401);
    let on = srv
        .patch_as(&format!("{keys}/{id}"), t, &json!({"enabled": true}))
        .await;
    assert_eq!(on.json["enabled"], true, "{}", on.text);
    assert_eq!(call().await.status, 200);
    // A bad `enabled` is named; an unknown field too.
    let err = srv
        .patch_as(&format!("{keys}/{id}"), t, &json!({"enabled": "no"}))
        .await;
    assert_eq!(
        err.assert_error(400, "invalid_request")["details"][0]["field"],
        "enabled"
    );
    srv.patch_as(&format!("{keys}/{id}"), t, &json!({"colour": "red"}))
        .await
        .assert_error(400, "invalid_request");

    let gone = srv.delete_as(&format!("{keys}/{id}"), t).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(call().await.status, 401);
    srv.patch_as(
        &format!("{keys}/key_01aaaaaaaaaaaaaaaaaaaaaaaa"),
        t,
        &json!({"enabled": false}),
    )
    .await
    .assert_error(404, "not_found");
}

async fn seed_001_analytics_and_policies_answer_for_the_tenant(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let t = scoped_token(&srv, "owner@example.com", &org, "test").await;
    let t = t.as_str();
    let created = srv
        .post_as(&format!("{GATEWAY}/api/v1/keys"), t, &json!({"name": "ci"}))
        .await;
    let key = created.json["key"].as_str().unwrap().to_string();
    let res = srv
        .send(
            srv.client
                .post(srv.url(&format!("{GATEWAY}/openai/v1/chat/completions")))
                .header("x-api-key", &key)
                .json(&json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.wait_for_usage_logs(1).await;

    let logs = srv
        .get_as(
            &format!("{GATEWAY}/api/v1/analytics/logs?limit=50&offset=0"),
            t,
        )
        .await;
    assert_eq!(logs.status, 200, "{}", logs.text);
    assert_eq!(
        (
            &logs.json["total"],
            &logs.json["limit"],
            &logs.json["offset"]
        ),
        (&json!(1), &json!(50), &json!(0)),
        "{}",
        logs.text
    );
    assert_eq!(
        logs.json["items"][0]["path"],
        "/trueportai-services/openai/v1/chat/completions"
    );
    let stats = srv
        .get_as(&format!("{GATEWAY}/api/v1/analytics/stats"), t)
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text);

    let policies = format!("{GATEWAY}/api/v1/policies");
    let rule = json!({"name": "no secrets", "type": "keyword", "action": "block", "config": {"keywords": ["hunter2"]}});
    let created = srv.post_as(&policies, t, &rule).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    let list = srv.get_as(&policies, t).await;
    assert_eq!(list.json["items"][0]["id"], id.as_str(), "{}", list.text);
    let mut renamed = rule.clone();
    renamed["name"] = json!("still no secrets");
    let put = srv.put_as(&format!("{policies}/{id}"), t, &renamed).await;
    assert_eq!(put.json["name"], "still no secrets", "{}", put.text);

    // The rule blocks at the seed's proxy path; the violation is listed.
    let blocked = srv
        .send(
            srv.client
                .post(srv.url(&format!("{GATEWAY}/openai/v1/chat/completions")))
                .header("x-api-key", &key)
                .json(&json!({"model": "mock-model", "messages": [{"role": "user", "content": "my password is hunter2"}]})),
        )
        .await;
    blocked.assert_error(403, "policy_violation");
    srv.wait_for_usage_logs(2).await;
    let violations = srv
        .get_as(&format!("{GATEWAY}/api/v1/analytics/violations"), t)
        .await;
    assert_eq!(violations.status, 200, "{}", violations.text);
    let v = violations.json["items"][0]["id"]
        .as_str()
        .expect("a violation")
        .to_string();
    let one = srv
        .get_as(&format!("{GATEWAY}/api/v1/analytics/violations/{v}"), t)
        .await;
    assert_eq!(one.json["id"], v.as_str(), "{}", one.text);

    let gone = srv.delete_as(&format!("{policies}/{id}"), t).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(srv.get_as(&policies, t).await.json["total"], 0);

    let health = srv.get(&format!("{GATEWAY}/health")).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json["status"], "ok", "{}", health.text);
    assert!(
        health.json["checks"]["database"].is_object(),
        "{}",
        health.text
    );
}

async fn seed_001_admin_routes_serve_platform_admins_only(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let admin = srv.admin_token().await;
    const A: &str = "/platform/api/admin";

    let tenants = srv.get_as(&format!("{A}/tenants"), &admin).await;
    assert_eq!(tenants.status, 200, "{}", tenants.text);
    assert_eq!(
        tenants.json["items"][0]["id"],
        org.id.as_str(),
        "{}",
        tenants.text
    );
    let one = srv.get_as(&format!("{A}/tenants/{}", org.id), &admin).await;
    assert_eq!(one.json["id"], org.id.as_str(), "{}", one.text);
    let users = srv.get_as(&format!("{A}/users"), &admin).await;
    assert!(
        users.json["items"].as_array().unwrap().len() >= 2,
        "{}",
        users.text
    );
    let stats = srv.get_as(&format!("{A}/stats"), &admin).await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    let configs = srv.get_as(&format!("{A}/configs"), &admin).await;
    assert!(
        configs.json["items"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        configs.text
    );
    let set = srv
        .put_as(
            &format!("{A}/configs/signup_open"),
            &admin,
            &json!({"value": false}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    srv.post_json(
        &format!("{AUTH}/register"),
        &json!({"email": "late@example.com", "password": PASSWORD, "name": "Late"}),
    )
    .await
    .assert_error(403, "forbidden");

    // Suspending the tenant refuses its scoped token from the next request.
    let t = scoped_token(&srv, "owner@example.com", &org, "live").await;
    let res = srv
        .put_as(
            &format!("{A}/tenants/{}/status", org.id),
            &admin,
            &json!({"status": "suspended", "reason": "unpaid"}),
        )
        .await;
    assert_eq!(res.json["status"], "suspended", "{}", res.text);
    srv.get_as(&format!("{SERVICE}/info"), &t)
        .await
        .assert_error(403, "organization_suspended");

    // Nobody else: the tenant's owner, a scoped token.
    for path in ["tenants", "users", "stats", "configs"] {
        srv.get_as(&format!("{A}/{path}"), &org.owner)
            .await
            .assert_error(403, "forbidden");
    }
}

/// Every tenant route of the table (`/platform/api/service/…`, `/trueportai-services/api/…`)
/// refuses a caller who names another tenant: a scoped token of tenant A with A's slug
/// elsewhere, a member of A naming B, and A's all-scopes key naming B.
async fn seed_001_another_tenants_slug_is_refused_on_every_tenant_route(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // An owner of A is also a member of B: a token scoped to A still cannot act in B.
    let (a, b, _) =
        tenants_and_a_member_of_both(&srv, "owner2@example.com", Role::Owner, Role::Viewer).await;
    let scoped_a = scoped_token(&srv, "owner2@example.com", &a, "live").await;
    let key_a = common::fixtures::token(&a.a_key(&srv, &a.owner, json!({"name": "all"})).await);
    let b_before = srv.get_as(&b.base, &b.owner).await.json;

    let table = gatehouse::http::route_table();
    let tenant_routes: Vec<_> = table
        .iter()
        .filter(|r| {
            r.path.starts_with(SERVICE)
                && !r.path.ends_with("/catalog/plans")
                && !r.path.ends_with("/switch-environment")
                || r.path.starts_with(&format!("{GATEWAY}/api/"))
        })
        .collect();
    assert!(tenant_routes.len() >= 20, "only {}", tenant_routes.len());
    let body = json!({"name": "n", "email": "m@example.com", "role": "member", "value": 1, "enabled": false, "plan": "midmarket"});
    for route in tenant_routes {
        let path = route
            .path
            .replace("{user_id}", &b.owner_id)
            .replace("{key}", "theme")
            .replace("{id}", "x_01aaaaaaaaaaaaaaaaaaaaaaaa");
        for (who, token, status) in [
            ("A's scoped token", &scoped_a, 403),
            ("A's owner", &a.owner, 404),
            ("A's key", &key_a, 404),
        ] {
            let res = call_in(
                &srv,
                route.method.clone(),
                &path,
                token,
                "beta",
                Some(&body),
            )
            .await;
            assert_eq!(
                res.status, status,
                "{} {} named tenant beta with {who}: {}",
                route.method, route.path, res.text
            );
        }
    }
    // Nothing of B changed.
    assert_eq!(srv.get_as(&b.base, &b.owner).await.json, b_before);
    let members = srv.get_as(&format!("{}/members", b.base), &b.owner).await;
    assert_eq!(members.json["total"], 2, "{}", members.text);
}

/// The seed's "Platform Management: 300 requests a minute": a user's writes on the tenant
/// routes share `rate_limits.management_per_minute` with `/v1/organizations/…`, whichever way
/// the tenant is named.
async fn seed_001_tenant_writes_count_against_the_management_limit(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.rate_limits.management_per_minute = 3),
            ..Default::default()
        },
    )
    .await;
    let org = an_org(&srv).await;
    let path = format!("{SERVICE}/configs/theme");
    let put = |i: u32| {
        let (srv, path, owner) = (&srv, path.clone(), org.owner.clone());
        async move {
            let body = json!({"value": i});
            call_in(srv, Method::PUT, &path, &owner, "acme", Some(&body)).await
        }
    };
    for i in 0..2 {
        let res = put(i).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(
            res.header("x-ratelimit-limit"),
            Some("3"),
            "{:?}",
            res.headers
        );
    }
    let res = srv
        .patch_as(&org.base, &org.owner, &json!({"name": "Acme 2"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    put(3).await.assert_error(429, "rate_limit_exceeded");
}

/// The organization's hourly plan limit counts the seed's tenant requests however the tenant is
/// named (`X-Tenant-Slug` with a global token, or a scoped token), with `/v1`'s.
async fn seed_001_tenant_requests_count_against_the_plan_limit(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let res = srv
        .patch_as(
            "/v1/admin/plans/smb",
            &admin,
            &json!({"limits": {"requests_per_hour": 3}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let org = an_org(&srv).await;
    let info = format!("{SERVICE}/info");
    let res = call_in(&srv, Method::GET, &info, &org.owner, "acme", None).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.header("x-ratelimit-limit"),
        Some("3"),
        "{:?}",
        res.headers
    );
    assert_eq!(srv.get_as(&org.base, &org.owner).await.status, 200);
    let res = call_in(&srv, Method::GET, &info, &org.owner, "acme", None).await;
    assert_eq!(
        res.header("x-ratelimit-remaining"),
        Some("0"),
        "{:?}",
        res.headers
    );
    call_in(&srv, Method::GET, &info, &org.owner, "acme", None)
        .await
        .assert_error(429, "rate_limit_exceeded");
}

/// `Idempotency-Key` on a seed POST: replayed in the same tenant; the same key naming another
/// tenant in `X-Tenant-Slug` is another request (409), never tenant A's answer for tenant B.
async fn seed_001_an_idempotency_key_is_one_request_in_one_tenant(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, b, owner) =
        tenants_and_a_member_of_both(&srv, "both@example.com", Role::Admin, Role::Admin).await;
    let invite = |tenant: &'static str| {
        let (srv, token) = (&srv, owner.token.clone());
        async move {
            srv.send(
                srv.client
                    .post(srv.url(&format!("{SERVICE}/invites")))
                    .bearer_auth(token)
                    .header("X-Tenant-Slug", tenant)
                    .header("Idempotency-Key", "invite-carol-1")
                    .json(&json!({"email": "carol@example.com", "role": "member"})),
            )
            .await
        }
    };
    let first = invite("acme").await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = invite("acme").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json, first.json);
    invite("beta").await.assert_error(409, "conflict");
    let pending = srv
        .get_as(&format!("{}/invitations", b.base), &b.owner)
        .await;
    assert_eq!(pending.json["total"], 0, "{}", pending.text);
}

/// In maintenance, the seed's tenant and gateway routes answer 503 like `/v1`'s; its health,
/// its login and its admin routes stay open, so an admin signs in there and ends maintenance.
async fn seed_001_maintenance_leaves_the_seeds_sign_in_admin_and_health_open(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let admin = srv.admin_token().await;
    let email = srv.get_as("/v1/me", &admin).await.json["email"].clone();
    let config = "/platform/api/admin/configs/maintenance_mode";
    let res = srv.put_as(config, &admin, &json!({"value": true})).await;
    assert_eq!(res.status, 200, "{}", res.text);

    let info = call_in(
        &srv,
        Method::GET,
        &format!("{SERVICE}/info"),
        &org.owner,
        "acme",
        None,
    )
    .await;
    info.assert_error(503, "service_unavailable");
    srv.get_as(&format!("{GATEWAY}/api/v1/keys"), &org.owner)
        .await
        .assert_error(503, "service_unavailable");
    assert_eq!(srv.get(&format!("{GATEWAY}/health")).await.status, 200);
    let login = srv
        .post_json(
            &format!("{AUTH}/login"),
            &json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    let global = login.json["global_access_token"].as_str().unwrap();
    let res = srv.put_as(config, global, &json!({"value": false})).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let info = call_in(
        &srv,
        Method::GET,
        &format!("{SERVICE}/info"),
        &org.owner,
        "acme",
        None,
    )
    .await;
    assert_eq!(info.status, 200, "{}", info.text);
}
