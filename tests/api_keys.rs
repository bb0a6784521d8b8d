//! API keys (SPEC §4): formats, shown once, stored hashed, scopes capped by the creator's role,
//! patch rules, revocation, rotation with grace, expiry, environments, publishable keys,
//! suspension, refusals in the audit log.

mod common;

use common::{
    fixtures::{an_org as org, token, Org},
    Backend, TestServer,
};
use gatehouse::orgs::roles::Role;
use serde_json::{json, Value};

on_both_databases!(
    keys_are_shown_once_and_stored_hashed,
    key_input_is_validated,
    keys_are_listed_by_project,
    keys_authenticate_with_their_scopes_only,
    a_key_never_exceeds_its_creators_role,
    patch_revoke_and_disable_take_effect_at_once,
    rotation_keeps_the_old_secret_for_the_grace_period,
    expired_keys_and_suspended_organizations_are_refused,
    test_keys_see_test_keys_only,
    publishable_keys_need_an_allowed_origin,
    refused_keys_are_audited_and_last_use_is_recorded,
);

async fn keys_are_shown_once_and_stored_hashed(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let k = o.a_key(&srv, &o.owner, json!({"name": "ci"})).await;
    let t = token(&k);
    assert!(t.starts_with("sk_live_"));
    let random = &t["sk_live_".len()..];
    assert!(random.len() >= 32 && random.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(k["type"], "secret");
    assert_eq!(k["environment"], "live");
    assert_eq!(k["status"], "active");
    assert!(k["id"].as_str().unwrap().starts_with("key_"));
    let preview = k["key_preview"].as_str().unwrap();
    assert!(
        preview.starts_with(&t[..11])
            && preview.ends_with(&t[t.len() - 3..])
            && preview.contains('…')
    );
    // Omitted scopes on a secret key: all of them (within the owner's role).
    assert!(k["scopes"].as_array().unwrap().len() >= 17);

    let shown = srv
        .get_as(
            &format!("{}/api-keys/{}", o.base, k["id"].as_str().unwrap()),
            &o.owner,
        )
        .await;
    assert!(shown.json.get("token").is_none());
    assert!(!shown.text.contains(random));
    let list = srv.get_as(&format!("{}/api-keys", o.base), &o.owner).await;
    assert_eq!(list.json["total"], 1);
    assert!(!list.text.contains(random));
    // Only the digest is stored.
    for table in ["api_keys", "api_key_secrets"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(srv.state.db.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
    let hash: String = sqlx::query_scalar("SELECT secret_hash FROM api_key_secrets")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(hash, gatehouse::crypto::sha256_hex(t.as_bytes()));
    let audit = srv
        .get_as(
            &format!("{}/audit?action=api_key.created", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(audit.json["total"], 1);
    assert!(!audit.text.contains(random));
}

async fn key_input_is_validated(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "k", "type": "magic"}), "type"),
        (json!({"name": "k", "environment": "prod"}), "environment"),
        (json!({"name": "k", "scopes": ["everything"]}), "scopes[0]"),
        (
            json!({"name": "k", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "k", "type": "publishable"}),
            "allowed_origins",
        ),
        (
            json!({"name": "k", "type": "publishable", "allowed_origins": ["https://a.example"], "scopes": ["members:read"]}),
            "scopes",
        ),
        (
            json!({"name": "k", "allowed_origins": ["https://a.example"]}),
            "allowed_origins",
        ),
        (
            json!({"name": "k", "rate_limit": {"requests_per_minute": 0}}),
            "rate_limit.requests_per_minute",
        ),
        (
            json!({"name": "k", "project_id": "proj_elsewhere"}),
            "project_id",
        ),
        (json!({"name": "k", "colour": "red"}), "colour"),
    ] {
        let res = srv
            .post_as(&format!("{}/api-keys", o.base), &o.owner, &body)
            .await;
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
    let k = o.a_key(&srv, &o.owner, json!({"name": "limited", "rate_limit": {"requests_per_minute": 30, "tokens_per_minute": 1000}, "expires_in_days": 7})).await;
    assert_eq!(k["rate_limit"]["requests_per_minute"], 30);
    assert!(k["expires_at"].is_string());
}

async fn keys_are_listed_by_project(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let project = srv
        .post_as(
            &format!("{}/projects", o.base),
            &o.owner,
            &json!({"name": "web"}),
        )
        .await;
    assert_eq!(project.status, 201, "{}", project.text);
    let project_id = project.json["id"].as_str().unwrap();
    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "web", "project_id": project_id}),
        )
        .await;
    o.a_key(&srv, &o.owner, json!({"name": "unbound"})).await;

    let list = |query: String| {
        let path = format!("{}/api-keys?{query}", o.base);
        let srv = &srv;
        let owner = o.owner.clone();
        async move { srv.get_as(&path, &owner).await }
    };
    assert_eq!(list(String::new()).await.json["total"], 2);
    let of_project = list(format!("project_id={project_id}")).await;
    assert_eq!(of_project.json["total"], 1, "{}", of_project.text);
    assert_eq!(of_project.json["api_keys"][0]["id"], k["id"]);
    // An unknown project has no keys: an empty list, not an error.
    let unknown = list("project_id=proj_unknown".into()).await;
    assert_eq!(unknown.status, 200, "{}", unknown.text);
    assert_eq!(unknown.json["total"], 0);
    assert_eq!(unknown.json["api_keys"], json!([]));
    let err = list(format!("project_id={}", "p".repeat(65)))
        .await
        .assert_error(400, "invalid_request")
        .clone();
    assert_eq!(err["details"][0]["field"], "project_id");
}

async fn keys_authenticate_with_their_scopes_only(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "reader", "scopes": ["organizations:read", "members:read"]}),
        )
        .await;
    let t = token(&k);
    // Bearer and X-API-Key both work.
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    let res = srv
        .send(
            srv.client
                .get(srv.url(&format!("{}/members", o.base)))
                .header("x-api-key", &t),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Outside its scopes: forbidden; user-only routes: unauthorized.
    srv.patch_as(&o.base, &t, &json!({"name": "x"}))
        .await
        .assert_error(403, "forbidden");
    srv.get_as(&format!("{}/api-keys", o.base), &t)
        .await
        .assert_error(403, "forbidden");
    srv.delete_as(&o.base, &t)
        .await
        .assert_error(403, "forbidden");
    srv.get_as("/v1/me", &t)
        .await
        .assert_error(401, "unauthorized");
    // A key of this organization is no key for another one.
    let other = srv
        .post_as(
            "/v1/organizations",
            &o.owner,
            &json!({"name": "Other", "slug": "other"}),
        )
        .await;
    srv.get_as(
        &format!("/v1/organizations/{}", other.json["id"].as_str().unwrap()),
        &t,
    )
    .await
    .assert_error(404, "not_found");
    srv.get_as(&o.base, "sk_live_0000000000000000000000000000000000000000")
        .await
        .assert_error(401, "unauthorized");
    // Actions by a key are audited as the key.
    let full = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "writer", "scopes": ["configs:manage"]}),
        )
        .await;
    let res = srv
        .put_as(
            &format!("{}/configs/x", o.base),
            &token(&full),
            &json!({"value": 1}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let audit = srv
        .get_as(&format!("{}/audit?action=config.updated", o.base), &o.owner)
        .await;
    assert_eq!(audit.json["events"][0]["actor_type"], "api_key");
    assert_eq!(audit.json["events"][0]["actor_id"], full["id"]);
}

/// A server, an organization, and a key of its owner that may read the organization.
async fn an_org_with_a_read_key(backend: Backend) -> (TestServer, Org, Value) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "k", "scopes": ["organizations:read"]}),
        )
        .await;
    (srv, o, k)
}

async fn a_key_never_exceeds_its_creators_role(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let (admin, admin_id) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let res = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &admin,
            &json!({"name": "k", "scopes": ["api_keys:manage", "configs:manage"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let t = token(&res.json);
    assert_eq!(
        srv.get_as(&format!("{}/api-keys", o.base), &t).await.status,
        200
    );
    // Demote the creator: the key shrinks with them, on the next request.
    let res = srv
        .patch_as(
            &format!("{}/members/{admin_id}", o.base),
            &o.owner,
            &json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.get_as(&format!("{}/api-keys", o.base), &t)
        .await
        .assert_error(403, "forbidden");
    srv.put_as(&format!("{}/configs/x", o.base), &t, &json!({"value": 1}))
        .await
        .assert_error(403, "forbidden");
    // And a viewer cannot mint keys at all.
    srv.post_as(
        &format!("{}/api-keys", o.base),
        &admin,
        &json!({"name": "k2"}),
    )
    .await
    .assert_error(403, "forbidden");
}

async fn patch_revoke_and_disable_take_effect_at_once(backend: Backend) {
    let (srv, o, k) = an_org_with_a_read_key(backend).await;
    let (t, path) = (
        token(&k),
        format!("{}/api-keys/{}", o.base, k["id"].as_str().unwrap()),
    );
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    let res = srv
        .patch_as(
            &path,
            &o.owner,
            &json!({"type": "publishable", "environment": "test"}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    let fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["type", "environment"]);
    srv.patch_as(&path, &o.owner, &json!({"status": "revoked"}))
        .await
        .assert_error(400, "invalid_request");

    let res = srv
        .patch_as(
            &path,
            &o.owner,
            &json!({"status": "disabled", "name": "renamed"}),
        )
        .await;
    assert_eq!(res.json["status"], "disabled");
    assert_eq!(res.json["name"], "renamed");
    srv.get_as(&o.base, &t)
        .await
        .assert_error(401, "unauthorized");
    srv.patch_as(&path, &o.owner, &json!({"status": "active"}))
        .await;
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    // Scope changes apply to the next request.
    srv.patch_as(&path, &o.owner, &json!({"scopes": ["members:read"]}))
        .await;
    srv.get_as(&o.base, &t).await.assert_error(403, "forbidden");
    assert_eq!(
        srv.get_as(&format!("{}/members", o.base), &t).await.status,
        200
    );

    assert_eq!(srv.delete_as(&path, &o.owner).await.status, 204);
    let res = srv.get_as(&format!("{}/members", o.base), &t).await;
    res.assert_error(401, "unauthorized");
    assert!(res.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let shown = srv.get_as(&path, &o.owner).await;
    assert_eq!(shown.json["status"], "revoked");
    assert!(shown.json["revoked_at"].is_string());
    srv.patch_as(&path, &o.owner, &json!({"name": "x"}))
        .await
        .assert_error(409, "conflict");
}

async fn rotation_keeps_the_old_secret_for_the_grace_period(backend: Backend) {
    let (srv, o, k) = an_org_with_a_read_key(backend).await;
    let old = token(&k);
    let rotations = format!(
        "{}/api-keys/{}/rotations",
        o.base,
        k["id"].as_str().unwrap()
    );
    srv.post_as(
        &rotations,
        &o.owner,
        &json!({"grace_period_seconds": 604801}),
    )
    .await
    .assert_error(400, "invalid_request");
    let res = srv.post_as(&rotations, &o.owner, &json!({})).await;
    assert_eq!(res.status, 201, "{}", res.text);
    let new = token(&res.json);
    assert_ne!(new, old);
    assert!(res.json["rotated_at"].is_string() && res.json["grace_expires_at"].is_string());
    let grace =
        gatehouse::storage::parse_time(res.json["grace_expires_at"].as_str().unwrap()).unwrap();
    let expected = chrono::Utc::now() + chrono::Duration::seconds(86_400);
    assert!((grace - expected).num_seconds().abs() < 60);
    assert_eq!(srv.get_as(&o.base, &new).await.status, 200);
    assert_eq!(srv.get_as(&o.base, &old).await.status, 200);
    // Rotating again with no grace ends the previous value at once.
    let res = srv
        .post_as(&rotations, &o.owner, &json!({"grace_period_seconds": 0}))
        .await;
    let newest = token(&res.json);
    srv.get_as(&o.base, &new)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(srv.get_as(&o.base, &newest).await.status, 200);
    // The first value's own grace (one day) still runs.
    assert_eq!(srv.get_as(&o.base, &old).await.status, 200);
}

async fn expired_keys_and_suspended_organizations_are_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let platform = srv.admin_token().await;
    let o = org(&srv).await;
    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "k", "scopes": ["organizations:read"], "expires_in_days": 1}),
        )
        .await;
    let t = token(&k);
    let id = k["id"].as_str().unwrap();
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
        .bind("2020-01-01T00:00:00.000000Z")
        .bind(id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    srv.state.api_keys.invalidate_key(id);
    let res = srv.get_as(&o.base, &t).await;
    res.assert_error(401, "unauthorized");
    assert!(res.text.contains("expired"));
    assert_eq!(
        srv.get_as(&format!("{}/api-keys/{id}", o.base), &o.owner)
            .await
            .json["status"],
        "expired"
    );
    assert_eq!(
        srv.get_as(&format!("{}/api-keys?status=expired", o.base), &o.owner)
            .await
            .json["total"],
        1
    );

    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "k2", "scopes": ["organizations:read"]}),
        )
        .await;
    let t = token(&k);
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    let org_id = o.base.rsplit('/').next().unwrap();
    srv.put_as(
        &format!("/v1/admin/organizations/{org_id}/status"),
        &platform,
        &json!({"status": "suspended"}),
    )
    .await;
    srv.get_as(&o.base, &t)
        .await
        .assert_error(403, "organization_suspended");
    srv.put_as(
        &format!("/v1/admin/organizations/{org_id}/status"),
        &platform,
        &json!({"status": "active"}),
    )
    .await;
    assert_eq!(srv.get_as(&o.base, &t).await.status, 200);
    // The IP allowlist applies to keys too (forced: it shuts out the owner's address as well).
    srv.patch_as(
        &format!("{}?force=true", o.base),
        &o.owner,
        &json!({"settings": {"ip_allowlist": ["203.0.113.0/24"]}}),
    )
    .await;
    srv.get_as(&o.base, &t).await.assert_error(403, "forbidden");
}

async fn test_keys_see_test_keys_only(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    o.a_key(&srv, &o.owner, json!({"name": "live"})).await;
    let test = o.a_key(&srv, &o.owner, json!({"name": "test", "environment": "test", "scopes": ["api_keys:manage", "api_keys:read"]})).await;
    let t = token(&test);
    assert!(t.starts_with("sk_test_"));
    let list = srv.get_as(&format!("{}/api-keys", o.base), &t).await;
    assert_eq!(list.json["total"], 1);
    assert_eq!(list.json["api_keys"][0]["environment"], "test");
    let all = srv.get_as(&format!("{}/api-keys", o.base), &o.owner).await;
    assert_eq!(all.json["total"], 2);
    let live_id = all.json["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["environment"] == "live")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.get_as(&format!("{}/api-keys/{live_id}", o.base), &t)
        .await
        .assert_error(404, "not_found");
    srv.delete_as(&format!("{}/api-keys/{live_id}", o.base), &t)
        .await
        .assert_error(404, "not_found");
    let made = srv
        .post_as(
            &format!("{}/api-keys", o.base),
            &t,
            &json!({"name": "child", "scopes": ["api_keys:read"]}),
        )
        .await;
    assert_eq!(made.json["environment"], "test", "{}", made.text);
    srv.post_as(
        &format!("{}/api-keys", o.base),
        &t,
        &json!({"name": "x", "environment": "live"}),
    )
    .await
    .assert_error(400, "invalid_request");
}

async fn publishable_keys_need_an_allowed_origin(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = org(&srv).await;
    let k = o.a_key(&srv, &o.owner, json!({"name": "web", "type": "publishable", "allowed_origins": ["https://app.example.com"]})).await;
    let t = token(&k);
    assert!(t.starts_with("pk_live_"));
    assert_eq!(k["scopes"], json!(["gateway:proxy"]));
    let from = |origin: Option<&str>| {
        let mut req = srv.client.get(srv.url(&o.base)).bearer_auth(&t);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        srv.send(req)
    };
    let res = from(None).await;
    res.assert_error(403, "forbidden");
    assert!(res.text.contains("origin"));
    from(Some("https://evil.example"))
        .await
        .assert_error(403, "forbidden");
    // From its origin it authenticates, but carries no management scope.
    let res = from(Some("https://app.example.com")).await;
    res.assert_error(403, "forbidden");
    assert!(res.text.contains("scope"));
    let path = format!("{}/api-keys/{}", o.base, k["id"].as_str().unwrap());
    srv.patch_as(&path, &o.owner, &json!({"scopes": ["members:read"]}))
        .await
        .assert_error(400, "invalid_request");
    let res = srv
        .patch_as(
            &path,
            &o.owner,
            &json!({"allowed_origins": ["https://new.example.com"]}),
        )
        .await;
    assert_eq!(
        res.json["allowed_origins"],
        json!(["https://new.example.com"])
    );
}

async fn refused_keys_are_audited_and_last_use_is_recorded(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let platform = srv.admin_token().await;
    let o = org(&srv).await;
    let k = o
        .a_key(
            &srv,
            &o.owner,
            json!({"name": "k", "scopes": ["organizations:read"]}),
        )
        .await;
    let t = token(&k);
    srv.get_as(&o.base, &t).await;
    assert_eq!(
        srv.state
            .api_keys
            .flush_last_used(&srv.state.db)
            .await
            .unwrap(),
        1
    );
    let shown = srv
        .get_as(
            &format!("{}/api-keys/{}", o.base, k["id"].as_str().unwrap()),
            &o.owner,
        )
        .await;
    assert!(shown.json["last_used_at"].is_string(), "{}", shown.text);
    // Nothing new to write.
    assert_eq!(
        srv.state
            .api_keys
            .flush_last_used(&srv.state.db)
            .await
            .unwrap(),
        0
    );

    srv.delete_as(
        &format!("{}/api-keys/{}", o.base, k["id"].as_str().unwrap()),
        &o.owner,
    )
    .await;
    for _ in 0..3 {
        srv.get_as(&o.base, &t)
            .await
            .assert_error(401, "unauthorized");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit = srv
            .get_as("/v1/admin/audit?action=api_key.refused", &platform)
            .await;
        if audit.json["total"] == 1 {
            let e = &audit.json["events"][0];
            assert_eq!(e["resource_id"], k["id"]);
            assert!(e["metadata"]["reason"]
                .as_str()
                .unwrap()
                .contains("revoked"));
            assert!(
                !audit.text.contains(&t[12..]),
                "the key value leaked into the audit log"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal recorded: {}",
            audit.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
