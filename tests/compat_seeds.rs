//! The seed adapters (issue 22, `src/compat/`): each seed's own examples replayed against a
//! fresh server, its documented answer shape checked.

mod common;

use common::{
    fixtures::{a_key, an_org, token, Org},
    Backend, TestServer, PASSWORD,
};
use gatehouse::environment::Environment;
use gatehouse::orgs::roles::Role;
use serde_json::json;

on_both_databases!(
    seed_002_login_answers_camel_case_for_both_grants,
    seed_002_login_errors_keep_the_spec_envelope,
    seed_002_login_with_mfa_asks_for_the_second_factor_camel_cased,
    seed_003_keys_and_organizations_carry_the_additive_fields,
    seed_003_a_secret_key_creates_an_organization_owned_by_its_creator,
    seed_003_status_is_patched_by_owners_and_platform_admins,
    seed_003_scope_list_is_enforced_or_refused_by_name,
    seed_002_keys_carry_the_operators_prefix_and_older_keys_keep_working,
);

const LOGIN: &str = "/api/v1/auth/login";
const EMAIL: &str = "seed@example.com";

/// Seed 002's example login body, verbatim but for the account.
async fn seed_login(srv: &TestServer, password: &str) -> common::Response {
    srv.post_json(
        LOGIN,
        &json!({"grantType": "password", "email": EMAIL, "password": password}),
    )
    .await
}

/// A fresh server with one registered user, [`EMAIL`]; and the user's access token.
async fn a_seed_user(backend: Backend) -> (TestServer, String) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register(EMAIL).await;
    let token = reg["access_token"].as_str().unwrap().to_string();
    (srv, token)
}

async fn seed_002_login_answers_camel_case_for_both_grants(backend: Backend) {
    let (srv, _) = a_seed_user(backend).await;
    let res = seed_login(&srv, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let access = res.json["accessToken"].as_str().expect("accessToken");
    let refresh = res.json["refreshToken"].as_str().expect("refreshToken");
    assert_eq!(res.json["expiresIn"], 3600, "{}", res.text);
    assert_eq!(res.json["tokenType"], "Bearer", "{}", res.text);
    assert_eq!(res.json["user"]["email"], EMAIL);
    assert_eq!(res.json["user"]["emailVerified"], false, "{}", res.text);
    assert!(res.json.get("access_token").is_none(), "{}", res.text);
    // The access token works as a Bearer, as the seed shows.
    let me = srv.get_as("/v1/me", access).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["email"], EMAIL);

    // The refresh grant, camelCased both ways; the refresh token rotates.
    let res = srv
        .post_json(
            LOGIN,
            &json!({"grantType": "refresh_token", "refreshToken": refresh}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let renewed = res.json["accessToken"].as_str().expect("accessToken");
    assert_ne!(res.json["refreshToken"].as_str(), Some(refresh));
    assert_eq!(res.json["expiresIn"], 3600);
    assert_eq!(srv.get_as("/v1/me", renewed).await.status, 200);
    // Spent: the old refresh token no longer works.
    srv.post_json(
        LOGIN,
        &json!({"grantType": "refresh_token", "refreshToken": refresh}),
    )
    .await
    .assert_error(401, "unauthorized");
}

async fn seed_002_login_errors_keep_the_spec_envelope(backend: Backend) {
    let (srv, _) = a_seed_user(backend).await;
    let err = seed_login(&srv, "wrong-one-here").await;
    let body = err.assert_error(401, "unauthorized");
    assert_eq!(body["message"], "Invalid email or password");
    assert!(body["request_id"].is_string(), "{}", err.text);

    let err = srv
        .post_json(LOGIN, &json!({"grantType": "password", "email": EMAIL}))
        .await;
    names_field(&err, "password");

    srv.post_json(LOGIN, &json!({"grantType": "client_credentials"}))
        .await
        .assert_error(400, "invalid_request");
    srv.post_json(
        LOGIN,
        &json!({"grantType": "password", "email": EMAIL, "password": PASSWORD, "extra": 1}),
    )
    .await
    .assert_error(400, "invalid_request");
}

async fn seed_002_login_with_mfa_asks_for_the_second_factor_camel_cased(backend: Backend) {
    let (srv, t) = a_seed_user(backend).await;
    let t = t.as_str();
    let enrol = srv.post_as("/v1/me/mfa/totp", t, &json!({})).await;
    assert_eq!(enrol.status, 201, "{}", enrol.text);
    let secret = totp_rs::Secret::Encoded(enrol.json["secret"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp =
        totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret, None, "x".into()).unwrap();
    let code = totp.generate_current().unwrap();
    let res = srv
        .post_as("/v1/me/mfa/totp/verify", t, &json!({"code": code}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);

    let res = seed_login(&srv, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["mfaRequired"], true, "{}", res.text);
    assert!(res.json["mfaToken"].is_string(), "{}", res.text);
    assert!(res.json.get("accessToken").is_none(), "{}", res.text);
    assert!(res.json.get("mfa_required").is_none(), "{}", res.text);
}

async fn seed_003_keys_and_organizations_carry_the_additive_fields(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    assert_eq!(o.json["object"], "organization", "{}", o.json);
    // Seed 003's calls are made with a secret key holding the route's scope.
    let admin_key = o
        .key_token(
            &srv,
            a_key().scopes(&["api_keys:read", "api_keys:manage", "organizations:read"]),
        )
        .await;
    let org = srv.get_as(&o.base, &admin_key).await;
    assert_eq!(org.status, 200, "{}", org.text);
    assert_eq!(org.json["object"], "organization");
    assert_eq!(org.json["id"], o.id.as_str());
    let mine = srv.get_as("/v1/organizations", &o.owner).await;
    assert_eq!(
        mine.json["organizations"][0]["object"], "organization",
        "{}",
        mine.text
    );

    // Creation: the secret shown once, as `token` and as `revealed_key`.
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &admin_key,
            &json!({"name": "Backend", "type": "secret", "environment": "live", "scopes": ["api_keys:read"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let created = res.json;
    assert_eq!(created["object"], "api_key");
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(created["revealed_key"], created["token"]);
    assert!(token(&created).starts_with("sk_live_"));
    assert_eq!(created["display_key"], created["key_preview"]);
    let id = created["id"].as_str().unwrap();

    // Listed and read: `object` and `display_key`, never the secret.
    let list = srv
        .get_as(&format!("{}/api-keys", o.base), &admin_key)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let item = listed(&list.json, "api_keys", id);
    assert_eq!(item["object"], "api_key");
    assert_eq!(item["display_key"], created["key_preview"]);
    assert!(item.get("revealed_key").is_none() && item.get("token").is_none());
    let one = srv
        .get_as(&format!("{}/api-keys/{id}", o.base), &admin_key)
        .await;
    assert_eq!(
        one.json["display_key"], created["key_preview"],
        "{}",
        one.text
    );
    assert!(one.json.get("revealed_key").is_none());

    // Key material is immutable, under either name.
    for field in ["display_key", "revealed_key"] {
        let res = srv
            .patch_as(
                &format!("{}/api-keys/{id}", o.base),
                &admin_key,
                &json!({ field: "sk_live_x" }),
            )
            .await;
        names_field(&res, field);
    }

    // Rotation: the replacement in `revealed_key` (and `token`), a new preview.
    let res = srv
        .post_as(
            &format!("{}/api-keys/{id}/rotations", o.base),
            &admin_key,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["revealed_key"], res.json["token"]);
    assert_ne!(res.json["revealed_key"], created["revealed_key"]);
    assert_eq!(res.json["display_key"], res.json["key_preview"]);
    assert_ne!(res.json["display_key"], created["display_key"]);
}

/// `res` is a 400 `invalid_request` whose details name `field`.
fn names_field(res: &common::Response, field: &str) {
    let body = res.assert_error(400, "invalid_request");
    assert!(body["details"].to_string().contains(field), "{}", res.text);
}

/// The item of `list[plural]` with `id`.
fn listed(list: &serde_json::Value, plural: &str, id: &str) -> serde_json::Value {
    list[plural]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone()
}

/// The audit events of the organization at `base`, newest first, as `token` reads them.
async fn audited(srv: &TestServer, base: &str, token: &str) -> Vec<serde_json::Value> {
    let audit = srv.get_as(&format!("{base}/audit?limit=100"), token).await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    audit.json["events"].as_array().unwrap().clone()
}

/// Seed 003's example creation body.
fn tripwire() -> serde_json::Value {
    json!({"name": "Tripwire Production", "slug": "tripwire-production"})
}

/// A secret key of `o` with `organizations:create`, created by `creator`.
async fn a_creating_key(srv: &TestServer, o: &Org, creator: &str) -> String {
    token(
        &o.a_key(
            srv,
            creator,
            a_key().scopes(&["organizations:create"]).body(),
        )
        .await,
    )
}

async fn seed_003_a_secret_key_creates_an_organization_owned_by_its_creator(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (admin, admin_id) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let key = a_creating_key(&srv, &o, &admin).await;

    // A key without the scope is told which one it lacks.
    let other = o
        .key_token(&srv, a_key().scopes(&["organizations:read"]))
        .await;
    let err = srv.post_as("/v1/organizations", &other, &tripwire()).await;
    let body = err.assert_error(403, "forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("organizations:create"),
        "{}",
        err.text
    );

    let res = srv.post_as("/v1/organizations", &key, &tripwire()).await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["object"], "organization");
    assert_eq!(res.json["slug"], "tripwire-production");
    assert_eq!(res.json["status"], "active");
    let new_id = res.json["id"].as_str().unwrap();
    // Owned by the key's creator, who sees it among their organizations as its owner.
    let mine = srv.get_as("/v1/organizations", &admin).await;
    assert_eq!(listed(&mine.json, "organizations", new_id)["role"], "owner");
    let members = srv
        .get_as(&format!("/v1/organizations/{new_id}/members"), &admin)
        .await;
    assert_eq!(members.json["total"], 1, "{}", members.text);
    assert_eq!(members.json["members"][0]["id"], admin_id.as_str());
    assert_eq!(members.json["members"][0]["role"], "owner");
    // Audited as the key acting.
    let events = audited(&srv, &format!("/v1/organizations/{new_id}"), &admin).await;
    let created = events
        .iter()
        .find(|e| e["action"] == "organization.created")
        .expect("organization.created audited");
    assert_eq!(created["actor_type"], "api_key", "{created}");
    // The key still works only in its own organization.
    srv.get_as(&format!("/v1/organizations/{new_id}"), &key)
        .await
        .assert_error(404, "not_found");
    // A taken slug is a conflict, as for a user.
    srv.post_as("/v1/organizations", &key, &tripwire())
        .await
        .assert_error(409, "conflict");

    // The creator demoted below admin: the key can no longer create organizations.
    let res = srv
        .patch_as(
            &format!("{}/members/{admin_id}", o.base),
            &o.owner,
            &json!({"role": "member"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let err = srv
        .post_as("/v1/organizations", &key, &json!({"name": "Another"}))
        .await;
    err.assert_error(403, "forbidden");
}

async fn seed_003_status_is_patched_by_owners_and_platform_admins(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (admin, _) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let key = o
        .key_token(&srv, a_key().scopes(&["organizations:update"]))
        .await;
    // The seed's name change, with a secret key holding organizations:update.
    let res = srv
        .patch_as(&o.base, &key, &json!({"name": "Tripwire Staging"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["name"], "Tripwire Staging");
    // Status: not for a key, nor for an admin of the organization.
    for caller in [&key, &admin] {
        let err = srv
            .patch_as(&o.base, caller, &json!({"status": "suspended"}))
            .await;
        let body = err.assert_error(403, "forbidden");
        assert!(
            body["message"].as_str().unwrap().contains("owner"),
            "{}",
            err.text
        );
    }
    // A value outside the set is named.
    let err = srv
        .patch_as(&o.base, &o.owner, &json!({"status": "paused"}))
        .await;
    names_field(&err, "status");

    // The owner suspends: the organization's tokens and keys are refused from then on.
    let res = srv
        .patch_as(&o.base, &o.owner, &json!({"status": "suspended"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "suspended");
    srv.get_as(&o.base, &o.owner)
        .await
        .assert_error(403, "organization_suspended");
    srv.patch_as(&o.base, &o.owner, &json!({"status": "active"}))
        .await
        .assert_error(403, "organization_suspended");

    // A platform admin (not a member) sets it active again on the same path.
    let platform = srv.admin_token().await;
    let res = srv
        .patch_as(&o.base, &platform, &json!({"status": "active"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "active");
    assert_eq!(srv.get_as(&o.base, &o.owner).await.status, 200);
    // Both changes audited, the suspension under its own action.
    let events = audited(&srv, &o.base, &o.owner).await;
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "organization.suspended"),
        "{events:?}"
    );

    // Anyone else still gets 404 for an organization they do not belong to.
    let stranger = srv.register("stranger@example.com").await;
    srv.patch_as(
        &o.base,
        stranger["access_token"].as_str().unwrap(),
        &json!({"status": "suspended"}),
    )
    .await
    .assert_error(404, "not_found");
}

/// Seed 003's "supported secret-key scopes", in its order.
const SEED_003_SCOPES: [&str; 14] = [
    "sessions:list",
    "sessions:read",
    "fingerprints:list",
    "fingerprints:read",
    "organizations:create",
    "organizations:read",
    "organizations:update",
    "api_keys:read",
    "api_keys:manage",
    "gate:agent_tokens:verify",
    "gate:agent_tokens:revoke",
    "gate:login_sessions:consume",
    "gate:services:read",
    "gate:services:manage",
];

/// The seed scopes whose capability Gatehouse has.
const SERVED: [&str; 5] = [
    "organizations:create",
    "organizations:read",
    "organizations:update",
    "api_keys:read",
    "api_keys:manage",
];

async fn seed_003_scope_list_is_enforced_or_refused_by_name(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let keys = format!("{}/api-keys", o.base);
    // The whole list: each scope without a capability refused by name, nothing created.
    let err = srv
        .post_as(
            &keys,
            &o.owner,
            &json!({"name": "all", "type": "secret", "scopes": SEED_003_SCOPES}),
        )
        .await;
    let body = err.assert_error(400, "invalid_request");
    let details = body["details"].as_array().unwrap();
    assert_eq!(
        details.len(),
        SEED_003_SCOPES.len() - SERVED.len(),
        "{}",
        err.text
    );
    for (i, scope) in SEED_003_SCOPES.iter().enumerate() {
        let refusal = details
            .iter()
            .find(|d| d["field"] == format!("scopes[{i}]"));
        if SERVED.contains(scope) {
            assert!(refusal.is_none(), "{scope} refused: {}", err.text);
        } else {
            let message = refusal.expect("refused")["message"].as_str().unwrap();
            assert!(
                message.contains(scope) && message.contains("not supported"),
                "{message}"
            );
        }
    }
    // The removed scope is named with its replacement; a made-up one is unknown.
    let err = srv
        .post_as(
            &keys,
            &o.owner,
            &json!({"name": "old", "scopes": ["organizations:manage", "x:y"]}),
        )
        .await;
    let body = err.assert_error(400, "invalid_request");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("organizations:update"),
        "{}",
        err.text
    );
    assert_eq!(body["details"][1]["message"], "is not a known scope");
    let listed = srv.get_as(&keys, &o.owner).await;
    assert_eq!(listed.json["total"], 0, "{}", listed.text);

    // The served ones are accepted and enforced: api_keys:read reads keys but does not create.
    let reader = o.key_token(&srv, a_key().scopes(&["api_keys:read"])).await;
    assert_eq!(srv.get_as(&keys, &reader).await.status, 200);
    srv.post_as(&keys, &reader, &json!({"name": "x"}))
        .await
        .assert_error(403, "forbidden");
    srv.get_as(&o.base, &reader)
        .await
        .assert_error(403, "forbidden");
    // And on PATCH, as on creation.
    let id = srv.get_as(&keys, &o.owner).await.json["api_keys"][0]["id"].clone();
    let err = srv
        .patch_as(
            &format!("{keys}/{}", id.as_str().unwrap()),
            &o.owner,
            &json!({"scopes": ["gate:services:read"]}),
        )
        .await;
    names_field(&err, "scopes[0]");
    assert!(
        err.text.contains("gate:services:read is not supported"),
        "{}",
        err.text
    );
}

/// Seed 002's `tv_live_…`/`tv_test_…` keys: an operator who sets `secret_key_prefix = "tv"` mints
/// them, and they authenticate as the seed shows (Bearer and `X-API-Key`); a key minted under
/// the earlier `sk` prefix keeps working, and publishable keys keep `pk`.
async fn seed_002_keys_carry_the_operators_prefix_and_older_keys_keep_working(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let older = o
        .a_key_token(&srv, Environment::Live, &["organizations:read"])
        .await;
    assert!(older.starts_with("sk_live_"), "{older}");

    // The same deployment restarted with the seed's prefix.
    let (tv, node) = srv
        .second_node_with(|c| c.secret_key_prefix = "tv".into())
        .await;
    let keys = format!("{tv}{}/api-keys", o.base);
    let mint = |body: serde_json::Value| {
        let req = srv.client.post(&keys).bearer_auth(&o.owner).json(&body);
        async { srv.send(req).await }
    };
    let mut minted = Vec::new();
    for body in [
        json!({"name": "live", "scopes": ["organizations:read"]}),
        json!({"name": "test", "environment": "test", "scopes": ["organizations:read"]}),
        json!({"name": "browser", "type": "publishable", "allowed_origins": ["https://app.example.com"]}),
    ] {
        let res = mint(body).await;
        assert_eq!(res.status, 201, "{}", res.text);
        minted.push(token(&res.json));
    }
    let [live, test, publishable] = &minted[..] else {
        unreachable!()
    };
    assert!(
        live.starts_with("tv_live_") && live.len() == 8 + 40,
        "{live}"
    );
    assert!(test.starts_with("tv_test_"), "{test}");
    assert!(publishable.starts_with("pk_live_"), "{publishable}");

    let org = format!("{tv}/v1/organizations/{}", o.id);
    for key in [live, &older] {
        let bearer = srv.send(srv.client.get(&org).bearer_auth(key)).await;
        assert_eq!(bearer.status, 200, "{key}: {}", bearer.text);
        let header = srv
            .send(srv.client.get(&org).header("X-API-Key", key))
            .await;
        assert_eq!(header.status, 200, "{key}: {}", header.text);
    }
    // A key-shaped token that is no key is refused as an API key, not as an access token.
    let bogus = srv
        .send(srv.client.get(&org).bearer_auth("tv_live_notakeyatall"))
        .await;
    let err = bogus.assert_error(401, "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("API key"),
        "{}",
        bogus.text
    );
    node.abort();
}
