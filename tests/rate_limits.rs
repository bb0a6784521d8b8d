//! Rate limits and quotas on the request path (SPEC §5, §6): headers, 429s with `Retry-After`,
//! per-key, per-IP, per-plan and per-endpoint limits, monthly quotas with one `quota.exceeded`
//! event per period, the usage endpoint, and exact limits under concurrency (memory and Redis).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    fixtures::{a_key, an_org, an_org_called},
    Backend, ServerOptions, TestServer,
};
use serde_json::{json, Value};

on_both_databases!(
    headers_are_exact_on_authenticated_responses,
    a_key_burst_is_refused_with_retry_after,
    a_key_burst_is_refused_with_retry_after_on_redis,
    unauthenticated_requests_are_limited_per_ip,
    the_plan_catalogue_is_seeded_listed_and_managed_by_platform_admins,
    the_organization_limit_comes_from_its_plan_at_once,
    management_and_analytics_limits_come_from_configuration,
    login_and_reset_limits_come_from_configuration,
    over_quota_is_refused_and_notified_once,
    usage_reports_the_plan_and_what_was_used,
    parallel_requests_with_one_key_exactly_the_limit_succeeds_in_memory,
    parallel_requests_with_one_key_exactly_the_limit_succeeds_on_redis,
    two_nodes_sharing_redis_enforce_one_limit,
    a_tenant_scoped_token_counts_against_its_organization,
    a_plan_edit_reaches_every_node_at_once_and_is_audited,
);

async fn get_with_key(srv: &TestServer, path: &str, key: &str) -> common::Response {
    srv.send(srv.client.get(srv.url(path)).header("x-api-key", key))
        .await
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn num(res: &common::Response, name: &str) -> u64 {
    res.header(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", res.headers))
        .parse()
        .unwrap()
}

async fn admin_patch_plan(srv: &TestServer, admin: &str, plan: &str, limits: Value) {
    let res = srv
        .patch_as(
            &format!("/v1/admin/plans/{plan}"),
            admin,
            &json!({ "limits": limits }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
}

async fn headers_are_exact_on_authenticated_responses(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let k = o.key_token(&srv, a_key().rate_limit_per_minute(5)).await;
    let before = now_secs();
    let res = get_with_key(&srv, &o.base, &k).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // 5/min is the most restrictive (the plan allows 1,000/hour): one request fills 12 s.
    assert_eq!(num(&res, "x-ratelimit-limit"), 5);
    assert_eq!(num(&res, "x-ratelimit-remaining"), 4);
    let reset = num(&res, "x-ratelimit-reset");
    assert!(
        reset >= before + 12 && reset <= now_secs() + 13,
        "reset {reset}"
    );
    assert!(res.header("retry-after").is_none());
    let res = get_with_key(&srv, &o.base, &k).await;
    assert_eq!(num(&res, "x-ratelimit-remaining"), 3);

    // A signed-in user: the user limit (600/min) is the most restrictive at first.
    let res = srv.get_as(&o.base, &o.owner).await;
    assert_eq!(res.status, 200);
    assert_eq!(num(&res, "x-ratelimit-limit"), 600);
    let res = srv.get_as("/v1/plans", &o.owner).await;
    assert_eq!(res.status, 200);
    assert!(res.header("x-ratelimit-limit").is_some());
    // Unauthenticated and health responses carry none.
    let res = srv.get("/health").await;
    assert!(res.header("x-ratelimit-limit").is_none());
}

async fn a_key_burst_is_refused_with_retry_after(backend: Backend) {
    key_burst(&TestServer::start(backend).await).await;
}

async fn a_key_burst_is_refused_with_retry_after_on_redis(backend: Backend) {
    if !common::redis_available("a_key_burst_on_redis").await {
        return;
    }
    key_burst(&with_redis(backend).await).await;
}

async fn with_redis(backend: Backend) -> TestServer {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.redis_url = Some(common::redis_url().into())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(srv.state.limiter.backend(), "redis+memory");
    srv
}

async fn key_burst(srv: &TestServer) {
    let o = an_org(srv).await;
    let k = o.key_token(srv, a_key().rate_limit_per_minute(3)).await;
    for i in 0..3 {
        let res = get_with_key(srv, &o.base, &k).await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text);
        assert_eq!(num(&res, "x-ratelimit-remaining"), 2 - i);
    }
    let res = get_with_key(srv, &o.base, &k).await;
    let err = res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(err["status"], 429);
    // 3/min: the next request fits 20 s after the first.
    let retry = num(&res, "retry-after");
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(num(&res, "x-ratelimit-limit"), 3);
    assert_eq!(num(&res, "x-ratelimit-remaining"), 0);
    // The owner is not affected by the key's limit.
    assert_eq!(srv.get_as(&o.base, &o.owner).await.status, 200);
    let metrics = srv.get("/metrics").await.text;
    assert!(
        metrics.contains("gatehouse_rate_limit_refusals_total{reason=\"key\"} 1"),
        "{metrics}"
    );
}

async fn unauthenticated_requests_are_limited_per_ip(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.rate_limits.unauthenticated_per_minute = 3),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        srv.get("/v1/plans").await.assert_error(401, "unauthorized");
    }
    let res = srv.get("/v1/plans").await;
    res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(num(&res, "retry-after"), 20);
    // A bad credential counts as none.
    let res = srv
        .send(
            srv.client
                .get(srv.url("/v1/plans"))
                .header("x-api-key", "sk_live_nope"),
        )
        .await;
    res.assert_error(429, "rate_limit_exceeded");
    // Health and metrics are never limited.
    for _ in 0..5 {
        assert_eq!(srv.get("/health").await.status, 200);
        assert_eq!(srv.get("/metrics").await.status, 200);
    }
}

async fn the_plan_catalogue_is_seeded_listed_and_managed_by_platform_admins(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;

    // The catalogue: seeded, listed to any signed-in caller, managed by platform admins.
    let plans = srv.get_as("/v1/plans", &o.owner).await;
    assert_eq!(plans.status, 200, "{}", plans.text);
    assert_eq!(plans.json["total"], 3);
    let ids: Vec<&str> = plans.json["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smb", "midmarket", "enterprise"]);
    let smb = &plans.json["plans"][0];
    assert_eq!(smb["limits"]["requests_per_hour"], 1000);
    assert_eq!(plans.json["plans"][1]["limits"]["requests_per_hour"], 5000);
    assert_eq!(plans.json["plans"][2]["limits"]["requests_per_hour"], 10000);
    assert_eq!(smb["currency"], "usd");
    assert_eq!(smb["interval"], "month");
    assert!(smb["features"].is_object());
    srv.get_as("/v1/admin/plans", &o.owner)
        .await
        .assert_error(403, "forbidden");
    let bad = srv
        .post_as(
            "/v1/admin/plans",
            &admin,
            &json!({"id": "Bad Id", "name": "", "amount": -1, "currency": "USD", "interval": "week", "limits": {"requests_per_hour": -5, "nope": 1}}),
        )
        .await;
    let err = bad.assert_error(400, "invalid_request");
    let fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "id",
        "name",
        "amount",
        "currency",
        "interval",
        "limits.requests_per_hour",
        "limits.nope",
    ] {
        assert!(fields.contains(&f), "{f} not in {fields:?}");
    }
    let startup = json!({"id": "startup", "name": "Startup", "amount": 0, "currency": "usd", "interval": "month",
        "limits": {"requests_per_hour": 100, "api_requests_per_month": 1000, "gateway_requests_per_month": null,
                   "gateway_tokens_per_month": null, "members": 3, "projects": 1},
        "features": {"sso": false}});
    let res = srv.post_as("/v1/admin/plans", &admin, &startup).await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["limits"]["members"], 3);
    srv.post_as("/v1/admin/plans", &admin, &startup)
        .await
        .assert_error(409, "conflict");
    assert_eq!(srv.get_as("/v1/plans", &o.owner).await.json["total"], 4);
    srv.delete_as("/v1/admin/plans/smb", &admin)
        .await
        .assert_error(409, "conflict");
    assert_eq!(
        srv.delete_as("/v1/admin/plans/startup", &admin)
            .await
            .status,
        204
    );
    srv.get_as("/v1/admin/plans/startup", &admin)
        .await
        .assert_error(404, "not_found");
}

async fn the_organization_limit_comes_from_its_plan_at_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    // A tiny plan limit applies at once (the catalogue is reloaded on change).
    admin_patch_plan(&srv, &admin, "smb", json!({"requests_per_hour": 3})).await;
    let o2 = an_org_called(&srv, "beta").await;
    for i in 0..3 {
        let res = srv.get_as(&o2.base, &o2.owner).await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text);
        assert_eq!(num(&res, "x-ratelimit-limit"), 3);
        assert_eq!(num(&res, "x-ratelimit-remaining"), 2 - i);
    }
    let res = srv.get_as(&o2.base, &o2.owner).await;
    res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(num(&res, "x-ratelimit-limit"), 3);
    assert_eq!(num(&res, "retry-after"), 1200);
    // Another organization has its own hourly budget; non-organization routes are not charged.
    assert_eq!(srv.get_as("/v1/plans", &o2.owner).await.status, 200);

    // Keys and members of an organization share its hourly budget.
    let o3 = an_org_called(&srv, "gamma").await;
    let k = o3.key_token(&srv, a_key().rate_limit_per_minute(100)).await; // 1
    assert_eq!(srv.get_as(&o3.base, &o3.owner).await.status, 200); // 2
    let res = get_with_key(&srv, &o3.base, &k).await; // 3
    assert_eq!(res.status, 200);
    assert_eq!(num(&res, "x-ratelimit-limit"), 3);
    assert_eq!(num(&res, "x-ratelimit-remaining"), 0);
    let res = get_with_key(&srv, &o3.base, &k).await;
    res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(num(&res, "x-ratelimit-limit"), 3);
    let metrics = srv.get("/metrics").await.text;
    assert!(
        metrics.contains("gatehouse_rate_limit_refusals_total{reason=\"organization\"} 2"),
        "{metrics}"
    );
}

async fn probe() -> &'static str {
    "ok"
}

async fn management_and_analytics_limits_come_from_configuration(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| {
                c.rate_limits.management_per_minute = 3;
                c.rate_limits.analytics_per_minute = 2;
            }),
            extra_routes: axum::Router::new().route(
                "/v1/organizations/{org_id}/analytics/probe",
                axum::routing::get(probe),
            ),
            ..Default::default()
        },
    )
    .await;
    let o = an_org(&srv).await;
    // Creating the key is the first of 3 management requests.
    let k = o.key_token(&srv, a_key().rate_limit_per_minute(100)).await;
    for i in 0..2 {
        let res = srv
            .patch_as(&o.base, &o.owner, &json!({"name": format!("Acme {i}")}))
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(num(&res, "x-ratelimit-limit"), 3);
    }
    let res = srv
        .patch_as(&o.base, &o.owner, &json!({"name": "Acme 3"}))
        .await;
    res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(num(&res, "retry-after"), 20);
    // Reads are not management requests.
    assert_eq!(srv.get_as(&o.base, &o.owner).await.status, 200);

    let path = format!("{}/analytics/probe", o.base);
    for _ in 0..2 {
        let res = srv.get_as(&path, &o.owner).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    srv.get_as(&path, &o.owner)
        .await
        .assert_error(429, "rate_limit_exceeded");
    // The same for an API key.
    for _ in 0..2 {
        assert_eq!(get_with_key(&srv, &path, &k).await.status, 200);
    }
    get_with_key(&srv, &path, &k)
        .await
        .assert_error(429, "rate_limit_exceeded");
}

async fn login_and_reset_limits_come_from_configuration(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| {
                c.rate_limits.login_attempts = 2;
                c.rate_limits.login_window_secs = 60;
                c.rate_limits.password_reset_per_hour = 1;
            }),
            ..Default::default()
        },
    )
    .await;
    srv.register("ann@example.com").await;
    let wrong = json!({"email": "ann@example.com", "password": "not-the-password"});
    for _ in 0..2 {
        srv.post_json("/v1/auth/login", &wrong)
            .await
            .assert_error(401, "unauthorized");
    }
    let res = srv.post_json("/v1/auth/login", &wrong).await;
    res.assert_error(429, "rate_limit_exceeded");
    assert_eq!(num(&res, "retry-after"), 30);
    let forgot = json!({"email": "ann@example.com"});
    assert_eq!(
        srv.post_json("/v1/auth/forgot-password", &forgot)
            .await
            .status,
        202
    );
    srv.post_json("/v1/auth/forgot-password", &forgot)
        .await
        .assert_error(429, "rate_limit_exceeded");
}

async fn over_quota_is_refused_and_notified_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    admin_patch_plan(&srv, &admin, "smb", json!({"api_requests_per_month": 3})).await;
    for i in 0..3 {
        let res = srv.get_as(&o.base, &o.owner).await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text);
    }
    for _ in 0..3 {
        let res = srv.get_as(&o.base, &o.owner).await;
        res.assert_error(429, "quota_exceeded");
        assert!(res.header("x-ratelimit-limit").is_some());
        // Available again when the month turns.
        assert!(num(&res, "retry-after") <= 31 * 86_400);
    }
    // Keys of the organization are refused too.
    let res = srv
        .send(
            srv.client
                .post(srv.url(&format!("{}/api-keys", o.base)))
                .bearer_auth(&o.owner)
                .json(&json!({"name": "k"})),
        )
        .await;
    res.assert_error(429, "quota_exceeded");

    // Raise the quota to read the audit log: exactly one quota.exceeded this period.
    admin_patch_plan(&srv, &admin, "smb", json!({"api_requests_per_month": 1000})).await;
    let audit = srv
        .get_as(&format!("{}/audit?action=quota.exceeded", o.base), &o.owner)
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let events = audit.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", audit.text);
    let notices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quota_notices")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(notices, 1);
    // Over again (another node, or this one after a restart): still one notice.
    let org_id = o.base.rsplit('/').next().unwrap();
    gatehouse::limits::middleware::notify_quota_exceeded(&srv.state, org_id, "api_requests", 3, 4)
        .await;
    let audit = srv
        .get_as(&format!("{}/audit?action=quota.exceeded", o.base), &o.owner)
        .await;
    assert_eq!(audit.json["events"].as_array().unwrap().len(), 1);
}

async fn usage_reports_the_plan_and_what_was_used(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let res = srv
        .post_as(
            &format!("{}/projects", o.base),
            &o.owner,
            &json!({"name": "Web"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let res = srv.get_as(&format!("{}/usage", o.base), &o.owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let u = &res.json;
    assert_eq!(u["plan"], "smb");
    // The period is the billing cycle of the subscription every organization has (SPEC §6).
    let sub = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await;
    assert_eq!(u["period"]["start"], sub.json["billing_cycle_start"]);
    assert_eq!(u["period"]["end"], sub.json["billing_cycle_end"]);
    // The project creation and this request itself.
    assert_eq!(u["api_requests"], json!({"limit": 100000, "used": 2}));
    assert_eq!(u["gateway_requests"]["used"], 0);
    assert_eq!(u["gateway_tokens"]["limit"], 10_000_000);
    assert_eq!(u["members"], json!({"limit": 10, "used": 1}));
    assert_eq!(u["projects"], json!({"limit": 5, "used": 1}));
    // Viewer or usage:read; another user sees nothing.
    let other = srv.register("other@example.com").await;
    srv.get_as(
        &format!("{}/usage", o.base),
        other["access_token"].as_str().unwrap(),
    )
    .await
    .assert_error(404, "not_found");
}

/// `n` parallel requests with one key limited to `limit` per minute: exactly `limit` succeed.
async fn parallel_with_one_key(srv: &TestServer, limit: u64, n: usize) {
    let o = an_org(srv).await;
    let k = o.key_token(srv, a_key().rate_limit_per_minute(limit)).await;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = srv.client.clone();
        let url = srv.url(&o.base);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .header("x-api-key", k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, limit as usize);
    assert_eq!(limited, n - limit as usize);
}

async fn parallel_requests_with_one_key_exactly_the_limit_succeeds_in_memory(backend: Backend) {
    let srv = TestServer::start(backend).await;
    assert_eq!(srv.state.limiter.backend(), "memory");
    parallel_with_one_key(&srv, 20, 80).await;
}

async fn parallel_requests_with_one_key_exactly_the_limit_succeeds_on_redis(backend: Backend) {
    if !common::redis_available("parallel_requests_on_redis").await {
        return;
    }
    let srv = with_redis(backend).await;
    parallel_with_one_key(&srv, 20, 80).await;
    assert!(!srv.state.limiter.is_degraded());
}

/// A second node on the same database and Redis, served in this process.
async fn two_nodes_sharing_redis_enforce_one_limit(backend: Backend) {
    if !common::redis_available("two_nodes_sharing_redis").await {
        return;
    }
    let srv = with_redis(backend).await;
    let (b, node_b) = srv.second_node().await;
    let o = an_org(&srv).await;
    let k = o.key_token(&srv, a_key().rate_limit_per_minute(10)).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            srv.url(&o.base)
        } else {
            format!("{b}{}", o.base)
        };
        let client = srv.client.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .header("x-api-key", k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 10, "one limit across both nodes");
    node_b.abort();
}

async fn a_tenant_scoped_token_counts_against_its_organization(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    admin_patch_plan(&srv, &admin, "smb", json!({"requests_per_hour": 2})).await;
    let res = srv
        .post_as(
            "/v1/auth/select-tenant",
            &o.owner,
            &json!({"organization_id": "acme"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let scoped = res.json["access_token"].as_str().unwrap().to_string();
    // Any route, the organization's budget: 2 per hour.
    for i in 0..2 {
        let res = srv.get_as("/v1/plans", &scoped).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(num(&res, "x-ratelimit-remaining"), 1 - i);
    }
    srv.get_as("/v1/plans", &scoped)
        .await
        .assert_error(429, "rate_limit_exceeded");
    // The same user unscoped, outside the organization's routes, is not charged to it.
    assert_eq!(srv.get_as("/v1/plans", &o.owner).await.status, 200);
}

async fn a_plan_edit_reaches_every_node_at_once_and_is_audited(backend: Backend) {
    if !common::redis_available("a_plan_edit_reaches_every_node").await {
        return;
    }
    let srv = with_redis(backend).await;
    let (b, node_b) = srv.second_node().await;
    let admin = srv.admin_token().await;
    let plans_on_b = || async {
        let res = srv
            .client
            .get(format!("{b}/v1/plans"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    };
    assert_eq!(
        plans_on_b().await["plans"][0]["limits"]["requests_per_hour"],
        1000
    );

    admin_patch_plan(&srv, &admin, "smb", json!({"requests_per_hour": 7})).await;
    // Node B reloads on the bus message, long before its 30 s refresh would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let plans = plans_on_b().await;
        if plans["plans"][0]["limits"]["requests_per_hour"] == 7 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node B still has {plans}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The change is in the audit log with the limits before and after.
    let audit = srv
        .get_as("/v1/admin/audit?action=plan.updated", &admin)
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let events = audit.json["events"].as_array().expect("audit events");
    assert_eq!(events.len(), 1, "{}", audit.text);
    assert_eq!(events[0]["resource_id"], "smb");
    node_b.abort();
}
