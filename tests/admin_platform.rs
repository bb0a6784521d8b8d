//! Platform administration (SPEC §8): `GET /v1/admin/stats` and the platform configuration
//! (`GET/PUT /v1/admin/configs[/{key}]`), each key enforced where it applies — registration,
//! maintenance, invitation lifetimes, the default rate limits — and on every node at once.
//! (That only platform admins reach these routes is also walked by tests/route_table.rs.)

mod common;

use std::time::{Duration, Instant};

use common::{
    fixtures::{a_key, a_person, an_org, an_org_called, mailed_invitation_token, Org},
    Backend, TestServer, PASSWORD,
};
use gatehouse::environment::Environment;
use serde_json::{json, Value};

on_both_databases!(
    stats_count_organizations_users_keys_and_the_days_gateway_traffic,
    configs_list_every_key_with_its_default_and_page,
    unknown_keys_and_values_of_the_wrong_type_are_refused,
    a_change_is_audited_and_shown_with_its_author,
    closed_signups_refuse_registration_but_not_invitations,
    maintenance_answers_503_except_health_metrics_admin_and_sign_in,
    invitations_expire_after_the_configured_days,
    the_default_rate_limit_of_keys_follows_the_configuration,
    only_platform_admins_read_and_change_the_platform,
    a_change_reaches_every_node_at_once,
);

const CHAT: &str = "/openai/v1/chat/completions";

fn chat() -> Value {
    json!({"model": "mock-model", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there gateway"}]})
}

/// Sets a platform configuration key as `admin`; returns the key as the answer shows it.
async fn set(srv: &TestServer, admin: &str, key: &str, value: Value) -> Value {
    let res = srv
        .put_as(
            &format!("/v1/admin/configs/{key}"),
            admin,
            &json!({ "value": value }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["value"], value);
    res.json
}

async fn stats(srv: &TestServer, admin: &str) -> Value {
    let res = srv.get_as("/v1/admin/stats", admin).await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

/// A gateway key of the test environment (answered by the built-in mock provider).
async fn a_gateway_key(srv: &TestServer, o: &Org) -> String {
    o.a_key_token(srv, Environment::Test, &["gateway:proxy"])
        .await
}

async fn stats_count_organizations_users_keys_and_the_days_gateway_traffic(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let empty = stats(&srv, &admin).await;
    assert_eq!(
        empty["organizations"],
        json!({"total": 0, "active": 0, "suspended": 0})
    );
    assert_eq!(empty["users"]["total"], 1);
    assert_eq!(empty["api_keys"]["active"], 0);
    assert_eq!(empty["gateway"]["requests"], 0);
    assert_eq!(empty["gateway"]["cost_usd"], 0.0);

    let acme = an_org(&srv).await;
    let beta = an_org_called(&srv, "beta").await;
    let res = srv
        .put_as(
            &format!("/v1/admin/organizations/{}/status", beta.id),
            &admin,
            &json!({"status": "suspended", "reason": "unpaid"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let gateway = a_gateway_key(&srv, &acme).await;
    let revoked = acme.key(&srv, a_key().named("gone")).await;
    let res = srv
        .delete_as(
            &format!("{}/api-keys/{}", acme.base, revoked["id"].as_str().unwrap()),
            &acme.owner,
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    for _ in 0..2 {
        let res = srv.post_as(CHAT, &gateway, &chat()).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    // The usage writer stores each batch with its rollups in one transaction.
    srv.wait_for_usage_logs(2).await;

    let s = stats(&srv, &admin).await;
    assert_eq!(
        s["organizations"],
        json!({"total": 2, "active": 1, "suspended": 1})
    );
    assert_eq!(s["users"]["total"], 3, "the admin and two owners");
    assert_eq!(s["api_keys"]["active"], 1, "the revoked key is not counted");
    let g = &s["gateway"];
    assert_eq!(g["requests"], 2);
    assert_eq!(g["errors"], 0);
    assert_eq!(g["prompt_tokens"], 10);
    assert_eq!(g["completion_tokens"], 12);
    assert_eq!(g["total_tokens"], 22);
    // mock-model: $1 per million prompt tokens, $2 per million completion tokens.
    let cost = g["cost_usd"].as_f64().unwrap();
    assert!((cost - 2.0 * 17.0 / 1e6).abs() < 1e-12, "{cost}");
    let since = chrono::DateTime::parse_from_rfc3339(g["since"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(since);
    assert!(
        age > chrono::Duration::hours(23) && age <= chrono::Duration::hours(24),
        "{age}"
    );
}

async fn configs_list_every_key_with_its_default_and_page(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let res = srv.get_as("/v1/admin/configs", &admin).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["total"], 9);
    assert_eq!(res.json["has_more"], false);
    let configs = res.json["configs"].as_array().unwrap();
    let by_key = |k: &str| configs.iter().find(|c| c["key"] == k).unwrap().clone();
    for (key, default) in [
        ("signup_open", json!(true)),
        ("maintenance_mode", json!(false)),
        ("invitation_ttl_days", json!(30)),
        ("rate_limits.api_key_per_minute", json!(100)),
        ("rate_limits.gateway_key_per_minute", json!(60)),
        ("rate_limits.user_per_minute", json!(600)),
        ("rate_limits.management_per_minute", json!(300)),
        ("rate_limits.analytics_per_minute", json!(60)),
        ("rate_limits.unauthenticated_per_minute", json!(120)),
    ] {
        let c = by_key(key);
        assert_eq!(c["value"], default, "{key}");
        assert_eq!(c["default"], default, "{key}");
        assert!(c["updated_at"].is_null(), "{key}");
        assert!(
            c["description"].as_str().is_some_and(|d| d.len() > 10),
            "{key}"
        );
    }
    let page = srv
        .get_as("/v1/admin/configs?limit=2&offset=1", &admin)
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    let keys: Vec<&str> = page.json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["maintenance_mode", "invitation_ttl_days"]);
    assert_eq!(
        (
            &page.json["total"],
            &page.json["limit"],
            &page.json["offset"]
        ),
        (&json!(9), &json!(2), &json!(1))
    );
    assert_eq!(page.json["has_more"], true);
    let one = srv
        .get_as("/v1/admin/configs/invitation_ttl_days", &admin)
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["value"], 30);
}

async fn unknown_keys_and_values_of_the_wrong_type_are_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let res = srv.get_as("/v1/admin/configs/signups", &admin).await;
    let err = res.assert_error(404, "not_found");
    assert!(
        err["message"].as_str().unwrap().contains("signup_open"),
        "{}",
        res.text
    );
    assert_eq!(err["details"]["known_keys"].as_array().unwrap().len(), 9);
    srv.put_as(
        "/v1/admin/configs/signups",
        &admin,
        &json!({"value": false}),
    )
    .await
    .assert_error(404, "not_found");
    for (key, value) in [
        ("signup_open", json!("false")),
        ("maintenance_mode", json!(1)),
        ("invitation_ttl_days", json!(0)),
        ("invitation_ttl_days", json!(366)),
        ("invitation_ttl_days", json!(7.5)),
        ("invitation_ttl_days", json!("30")),
        ("rate_limits.api_key_per_minute", json!(0)),
        ("rate_limits.api_key_per_minute", json!(-5)),
    ] {
        let res = srv
            .put_as(
                &format!("/v1/admin/configs/{key}"),
                &admin,
                &json!({ "value": value }),
            )
            .await;
        let err = res.assert_error(400, "invalid_request");
        assert_eq!(err["details"][0]["field"], "value", "{key}: {}", res.text);
    }
    // No value, or something beside it.
    srv.put_as("/v1/admin/configs/signup_open", &admin, &json!({}))
        .await
        .assert_error(400, "invalid_request");
    srv.put_as(
        "/v1/admin/configs/signup_open",
        &admin,
        &json!({"value": true, "scope": "all"}),
    )
    .await
    .assert_error(400, "invalid_request");
    // Nothing was stored.
    let list = srv.get_as("/v1/admin/configs", &admin).await;
    assert!(list.json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["updated_at"].is_null()));
}

async fn a_change_is_audited_and_shown_with_its_author(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let me = srv.get_as("/v1/me", &admin).await;
    let admin_id = me.json["id"].clone();
    let c = set(&srv, &admin, "invitation_ttl_days", json!(14)).await;
    assert_eq!(c["default"], 30);
    assert_eq!(c["updated_by"], admin_id);
    assert!(c["updated_at"].is_string());
    let again = srv
        .get_as("/v1/admin/configs/invitation_ttl_days", &admin)
        .await;
    assert_eq!(again.json["value"], 14);
    let audit = srv
        .get_as("/v1/admin/audit?action=platform_config.updated", &admin)
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    assert_eq!(audit.json["total"], 1, "{}", audit.text);
    let e = &audit.json["events"][0];
    assert_eq!(e["resource_id"], "invitation_ttl_days");
    assert_eq!(e["actor_id"], admin_id);
    assert_eq!(e["metadata"]["previous"], 30);
}

async fn closed_signups_refuse_registration_but_not_invitations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    set(&srv, &admin, "signup_open", json!(false)).await;
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "walk-in@example.com", "password": PASSWORD}),
        )
        .await;
    let err = res.assert_error(403, "forbidden");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("invitation_token"));

    // An organization's invitation still opens an account.
    let res = srv
        .post_as(
            &format!("{}/invitations", o.base),
            &o.owner,
            &json!({"email": "guest@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let token = mailed_invitation_token(&srv, &admin, "guest@example.com").await;
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "guest@example.com", "password": PASSWORD, "invitation_token": token}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);

    set(&srv, &admin, "signup_open", json!(true)).await;
    a_person(&srv, "walk-in@example.com").await;
}

async fn maintenance_answers_503_except_health_metrics_admin_and_sign_in(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    let gateway = a_gateway_key(&srv, &o).await;
    set(&srv, &admin, "maintenance_mode", json!(true)).await;

    let refused = [
        srv.get_as(&o.base, &o.owner).await,
        srv.post_as(CHAT, &gateway, &chat()).await,
        srv.post_json(
            "/v1/auth/register",
            &json!({"email": "new@example.com", "password": PASSWORD}),
        )
        .await,
    ];
    for res in &refused {
        res.assert_error(503, "service_unavailable");
        assert_eq!(res.header("retry-after"), Some("60"), "{}", res.text);
    }
    assert_eq!(srv.get("/health").await.status, 200);
    assert_eq!(srv.get("/health/live").await.status, 200);
    assert_eq!(srv.get("/metrics").await.status, 200);
    assert_eq!(srv.get_as("/v1/admin/stats", &admin).await.status, 200);
    // An admin can still sign in (and turn maintenance off).
    let another_admin = srv.admin_token().await;
    set(&srv, &another_admin, "maintenance_mode", json!(false)).await;
    assert_eq!(srv.get_as(&o.base, &o.owner).await.status, 200);
    assert_eq!(srv.post_as(CHAT, &gateway, &chat()).await.status, 200);
}

async fn invitations_expire_after_the_configured_days(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    let path = format!("{}/invitations", o.base);
    let invite = |email: &'static str| {
        srv.call(
            reqwest::Method::POST,
            &path,
            Some(&o.owner),
            Some(&json!({"email": email, "role": "member"})),
        )
    };
    let days_left = |inv: &Value| {
        let expires =
            chrono::DateTime::parse_from_rfc3339(inv["expires_at"].as_str().unwrap()).unwrap();
        expires.signed_duration_since(chrono::Utc::now())
    };
    let before = invite("first@example.com").await;
    assert_eq!(before.status, 201, "{}", before.text);
    let left = days_left(&before.json);
    assert!(left > chrono::Duration::days(29) && left <= chrono::Duration::days(30));

    set(&srv, &admin, "invitation_ttl_days", json!(2)).await;
    let after = invite("second@example.com").await;
    assert_eq!(after.status, 201, "{}", after.text);
    let left = days_left(&after.json);
    assert!(
        left > chrono::Duration::days(1) && left <= chrono::Duration::days(2),
        "{left}"
    );
    let mail = srv.mail(&admin, "second@example.com", "invited").await;
    assert!(mail.contains("within 2 days"), "{mail}");
}

async fn the_default_rate_limit_of_keys_follows_the_configuration(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    let read_key =
        |name: &'static str| o.key_token(&srv, a_key().named(name).scopes(&["organizations:read"]));
    let before = read_key("before").await;
    let res = srv.get_as(&o.base, &before).await;
    assert_eq!(res.header("x-ratelimit-limit"), Some("100"), "{}", res.text);

    set(&srv, &admin, "rate_limits.api_key_per_minute", json!(3)).await;
    // A key first used now: exactly three requests in the minute.
    let plain = read_key("plain").await;
    for _ in 0..3 {
        let res = srv.get_as(&o.base, &plain).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
    }
    let res = srv.get_as(&o.base, &plain).await;
    res.assert_error(429, "rate_limit_exceeded");
    assert!(res.header("retry-after").is_some());
    // A key's own limit is more specific: it still applies.
    let own_limit = o
        .key_token(
            &srv,
            a_key()
                .named("own")
                .scopes(&["organizations:read"])
                .rate_limit_per_minute(5),
        )
        .await;
    let res = srv.get_as(&o.base, &own_limit).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.header("x-ratelimit-limit"), Some("5"));
}

async fn only_platform_admins_read_and_change_the_platform(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let key = o
        .key_token(&srv, a_key().scopes(&["organizations:read"]))
        .await;
    for path in [
        "/v1/admin/stats",
        "/v1/admin/configs",
        "/v1/admin/configs/signup_open",
    ] {
        srv.get(path).await.assert_error(401, "unauthorized");
        srv.get_as(path, &o.owner)
            .await
            .assert_error(403, "forbidden");
        let res = srv.get_as(path, &key).await;
        assert!([401, 403].contains(&res.status), "{path}: {}", res.text);
    }
    srv.put_as(
        "/v1/admin/configs/signup_open",
        &o.owner,
        &json!({"value": false}),
    )
    .await
    .assert_error(403, "forbidden");
    // Registration stays open: the refused change changed nothing.
    a_person(&srv, "still-open@example.com").await;
}

async fn a_change_reaches_every_node_at_once(backend: Backend) {
    let Some(srv) = TestServer::start_with_a_bus(backend, "configs_on_every_node").await else {
        return;
    };
    let (b, node_b) = srv.second_node().await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    let on_b = |path: &str| srv.send(srv.client.get(format!("{b}{path}")).bearer_auth(&o.owner));
    assert_eq!(on_b(&o.base).await.status, 200);

    set(&srv, &admin, "maintenance_mode", json!(true)).await;
    // Broadcast, not waited out: well within the refresher's 30 s safety net.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = on_b(&o.base).await;
        if res.status == 503 {
            assert_eq!(res.header("retry-after"), Some("60"));
            break;
        }
        assert_eq!(res.status, 200, "{}", res.text);
        assert!(Instant::now() < deadline, "node B is not in maintenance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set(&srv, &admin, "maintenance_mode", json!(false)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_b(&o.base).await.status != 200 {
        assert!(Instant::now() < deadline, "node B is still in maintenance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node_b.abort();
}
