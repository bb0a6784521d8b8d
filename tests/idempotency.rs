//! `Idempotency-Key` on control-plane POSTs (SPEC §1): executed once per (caller, key) for
//! 24 hours, the answer replayed, another request under the same key refused, a duplicate in
//! progress refused, answers of failed services not kept.

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use axum::{http::StatusCode, routing::post, Extension, Router};
use common::{
    fixtures::{a_key, an_org, token, Org},
    Backend, Response, ServerOptions, TestServer,
};
use gatehouse::{app::AppState, orgs::roles::Role};
use serde_json::{json, Value};

async fn post_with_key(
    srv: &TestServer,
    path: &str,
    credential: Option<&str>,
    key: &str,
    body: &Value,
) -> Response {
    let mut req = srv
        .client
        .post(srv.url(path))
        .header("Idempotency-Key", key)
        .json(body);
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    srv.send(req).await
}

/// Creates an API key of `o` as its owner, with `Idempotency-Key: key`.
async fn owner_creates_key(srv: &TestServer, o: &Org, key: &str, body: &Value) -> Response {
    post_with_key(
        srv,
        &format!("{}/api-keys", o.base),
        Some(&o.owner),
        key,
        body,
    )
    .await
}

/// Asserts a 409 `conflict` whose message contains `says`.
#[track_caller]
fn assert_conflict(res: &Response, says: &str) {
    let err = res.assert_error(409, "conflict");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
}

async fn key_count(srv: &TestServer, o: &Org) -> u64 {
    let list = srv.get_as(&format!("{}/api-keys", o.base), &o.owner).await;
    assert_eq!(list.status, 200, "{}", list.text);
    list.json["total"].as_u64().unwrap()
}

fn replayed(res: &Response) -> bool {
    res.header("idempotent-replayed") == Some("true")
}

async fn a_retry_replays_the_first_answer_and_creates_nothing_twice(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let body = a_key().named("deploy").body();

    let first = owner_creates_key(&srv, &o, "create-deploy-key", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(!replayed(&first));
    let retry = owner_creates_key(&srv, &o, "create-deploy-key", &body).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert!(replayed(&retry));
    // The same key, its secret included: nothing was created again.
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("content-type"), first.header("content-type"));
    assert_ne!(retry.header("x-request-id"), first.header("x-request-id"));
    assert!(retry.header("x-ratelimit-limit").is_some());
    assert_eq!(key_count(&srv, &o).await, 1);

    // The secret is not stored in clear.
    let stored: String = sqlx::query_scalar("SELECT sealed_body FROM idempotency")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert!(!stored.contains(&token(&first.json)));
}

async fn the_same_key_for_another_request_is_a_conflict(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let first = owner_creates_key(&srv, &o, "k1", &a_key().named("a").body()).await;
    assert_eq!(first.status, 201, "{}", first.text);

    let other_body = owner_creates_key(&srv, &o, "k1", &a_key().named("b").body()).await;
    assert_conflict(&other_body, "different request");
    let other_path = post_with_key(
        &srv,
        &format!("{}/projects", o.base),
        Some(&o.owner),
        "k1",
        &json!({"name": "a"}),
    )
    .await;
    other_path.assert_error(409, "conflict");
    assert_eq!(key_count(&srv, &o).await, 1);
}

async fn concurrent_duplicates_execute_once(backend: Backend) {
    let srv = Arc::new(TestServer::start(backend).await);
    let o = an_org(&srv).await;
    let path = format!("{}/api-keys", o.base);
    for round in 0..5 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let fire = |srv: Arc<TestServer>, barrier: Arc<tokio::sync::Barrier>| {
            let (path, owner) = (path.clone(), o.owner.clone());
            tokio::spawn(async move {
                let body = a_key().named("racer").body();
                barrier.wait().await;
                post_with_key(&srv, &path, Some(&owner), &format!("race-{round}"), &body).await
            })
        };
        let a = fire(srv.clone(), barrier.clone());
        let b = fire(srv.clone(), barrier);
        let answers = [a.await.unwrap(), b.await.unwrap()];
        let executed = answers
            .iter()
            .filter(|r| r.status == 201 && !replayed(r))
            .count();
        assert_eq!(executed, 1, "{:?}", answers.map(|r| r.text));
        for r in &answers {
            if r.status == 409 {
                r.assert_error(409, "conflict");
            } else {
                assert_eq!(r.status, 201, "{}", r.text);
            }
        }
        assert_eq!(key_count(&srv, &o).await, round + 1);
    }
}

/// What the probe routes share with the test: how often they ran, and (the slow one) when it
/// started and when it may finish.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
    runs: Arc<AtomicUsize>,
}

impl Gate {
    /// Counts a run; returns its number (from 1).
    fn run(&self) -> usize {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Runs until the test releases it.
async fn slow(Extension(g): Extension<Gate>) -> axum::Json<Value> {
    let n = g.run();
    g.started.notify_one();
    g.release.notified().await;
    axum::Json(json!({"run": n}))
}

/// 500 on its first run, 200 after.
async fn fails_once(Extension(g): Extension<Gate>) -> (StatusCode, axum::Json<Value>) {
    let n = g.run();
    let status = if n == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (status, axum::Json(json!({"run": n})))
}

/// A 2 MiB answer.
async fn large(Extension(g): Extension<Gate>) -> String {
    g.run();
    "x".repeat(2 * 1024 * 1024)
}

fn probes(gate: Gate) -> Router<AppState> {
    Router::new()
        .route("/v1/test/slow", post(slow))
        .route("/v1/test/fails-once", post(fails_once))
        .route("/v1/test/large", post(large))
        .layer(Extension(gate))
}

async fn probe_server(backend: Backend, gate: Gate) -> (TestServer, String) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            extra_routes: probes(gate),
            ..Default::default()
        },
    )
    .await;
    let user = common::fixtures::a_person(&srv, "caller@example.com").await;
    (srv, user.token)
}

async fn a_duplicate_in_progress_is_refused(backend: Backend) {
    let gate = Gate::default();
    let (srv, user) = probe_server(backend, gate.clone()).await;
    let srv = Arc::new(srv);
    let first = {
        let (srv, user) = (srv.clone(), user.clone());
        tokio::spawn(async move {
            post_with_key(&srv, "/v1/test/slow", Some(&user), "slow", &json!({})).await
        })
    };
    gate.started.notified().await;
    let duplicate = post_with_key(&srv, "/v1/test/slow", Some(&user), "slow", &json!({})).await;
    assert_conflict(&duplicate, "in progress");
    gate.release.notify_one();
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let retry = post_with_key(&srv, "/v1/test/slow", Some(&user), "slow", &json!({})).await;
    assert!(replayed(&retry));
    assert_eq!(retry.json, json!({"run": 1}));
    assert_eq!(gate.runs(), 1);
}

async fn a_server_error_is_not_kept(backend: Backend) {
    let gate = Gate::default();
    let (srv, user) = probe_server(backend, gate.clone()).await;
    let first = post_with_key(&srv, "/v1/test/fails-once", Some(&user), "f", &json!({})).await;
    assert_eq!(first.status, 500);
    let retry = post_with_key(&srv, "/v1/test/fails-once", Some(&user), "f", &json!({})).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert!(!replayed(&retry));
    let again = post_with_key(&srv, "/v1/test/fails-once", Some(&user), "f", &json!({})).await;
    assert!(replayed(&again));
    assert_eq!(again.json, json!({"run": 2}));
    assert_eq!(gate.runs(), 2);
}

async fn a_client_error_is_kept(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let bad = json!({"name": "k", "scopes": ["no:such-scope"]});
    let first = owner_creates_key(&srv, &o, "bad", &bad).await;
    first.assert_error(400, "invalid_request");
    let retry = owner_creates_key(&srv, &o, "bad", &bad).await;
    assert_eq!(retry.status, 400);
    assert!(replayed(&retry));
    // The envelope as first answered (its request id is the first request's).
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("content-type"), Some("application/json"));
}

async fn an_answer_too_large_to_keep_is_not_executed_again(backend: Backend) {
    let gate = Gate::default();
    let (srv, user) = probe_server(backend, gate.clone()).await;
    let first = post_with_key(&srv, "/v1/test/large", Some(&user), "big", &json!({})).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text.len(), 2 * 1024 * 1024);
    let retry = post_with_key(&srv, "/v1/test/large", Some(&user), "big", &json!({})).await;
    assert_conflict(&retry, "not kept");
    assert_eq!(gate.runs(), 1);
}

async fn an_expired_key_runs_again(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let body = a_key().body();
    let first = owner_creates_key(&srv, &o, "daily", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);

    // Made 25 hours ago: expired an hour ago.
    let made = chrono::Utc::now() - chrono::Duration::hours(25);
    sqlx::query("UPDATE idempotency SET created_at = $1, expires_at = $2")
        .bind(gatehouse::storage::format_time(made))
        .bind(gatehouse::storage::format_time(
            made + chrono::Duration::hours(24),
        ))
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    let again = owner_creates_key(&srv, &o, "daily", &body).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert!(!replayed(&again));
    assert_ne!(token(&again.json), token(&first.json));
    assert_eq!(key_count(&srv, &o).await, 2);
    // The new answer is the one kept now.
    let retry = owner_creates_key(&srv, &o, "daily", &body).await;
    assert_eq!(retry.text, again.text);
}

async fn the_cleanup_deletes_expired_keys_only(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    for k in ["old", "new"] {
        let res = owner_creates_key(&srv, &o, k, &a_key().named(k).body()).await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
    let past = gatehouse::storage::format_time(chrono::Utc::now() - chrono::Duration::hours(1));
    sqlx::query("UPDATE idempotency SET expires_at = $1 WHERE idempotency_key = 'old'")
        .bind(past)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    let deleted = gatehouse::http::idempotency::store::delete_expired(
        &srv.state.db,
        &gatehouse::storage::now(),
    )
    .await
    .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM idempotency")
        .fetch_all(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(left, ["new"]);
}

async fn a_malformed_key_is_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let path = format!("{}/api-keys", o.base);
    let long = "k".repeat(256);
    for bad in [b"".as_slice(), long.as_bytes(), b"caf\xe9", b"tab\there"] {
        let req = srv
            .client
            .post(srv.url(&path))
            .bearer_auth(&o.owner)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
            )
            .json(&a_key().body());
        let res = srv.send(req).await;
        let err = res.assert_error(400, "invalid_request");
        assert_eq!(err["details"][0]["field"], "Idempotency-Key", "{err}");
    }
    assert_eq!(key_count(&srv, &o).await, 0);
}

async fn callers_do_not_share_keys(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (admin, _) = o.a_member(&srv, "admin@example.com", Role::Admin).await;
    let manager = o
        .key_token(&srv, a_key().named("manager").scopes(&["api_keys:manage"]))
        .await;
    let path = format!("{}/api-keys", o.base);
    let body = a_key().named("shared").body();
    let mut tokens = Vec::new();
    for caller in [&o.owner, &admin, &manager] {
        let res = post_with_key(&srv, &path, Some(caller), "same-key", &body).await;
        assert_eq!(res.status, 201, "{}", res.text);
        assert!(!replayed(&res));
        tokens.push(token(&res.json));
        // Each caller's retry replays its own answer.
        let retry = post_with_key(&srv, &path, Some(caller), "same-key", &body).await;
        assert!(replayed(&retry));
        assert_eq!(retry.text, res.text);
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 3);
    // The manager key, and the three created.
    assert_eq!(key_count(&srv, &o).await, 4);
}

async fn anonymous_requests_are_not_kept(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("someone@example.com").await;
    let login = json!({"email": "someone@example.com", "password": common::PASSWORD});
    let a = post_with_key(&srv, "/v1/auth/login", None, "login", &login).await;
    let b = post_with_key(&srv, "/v1/auth/login", None, "login", &login).await;
    for r in [&a, &b] {
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(!replayed(r));
    }
    assert_ne!(a.json["access_token"], b.json["access_token"]);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

async fn an_ended_session_gets_no_replay(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let body = a_key().body();
    let first = owner_creates_key(&srv, &o, "before-logout", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let out = srv
        .call(
            reqwest::Method::POST,
            "/v1/auth/logout",
            Some(&o.owner),
            None,
        )
        .await;
    assert!(out.status < 300, "{}", out.text);
    // The token still verifies by its signature, but its session has ended.
    let retry = owner_creates_key(&srv, &o, "before-logout", &body).await;
    retry.assert_error(401, "unauthorized");
    assert!(!replayed(&retry));
    assert!(!retry.text.contains(&token(&first.json)));
}

async fn other_methods_ignore_the_key(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    for name in ["one", "two"] {
        let req = srv
            .client
            .patch(srv.url(&o.base))
            .bearer_auth(&o.owner)
            .header("Idempotency-Key", "rename")
            .json(&json!({"name": name}));
        let res = srv.send(req).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["name"], name);
        assert!(!replayed(&res));
    }
}

on_both_databases!(
    a_retry_replays_the_first_answer_and_creates_nothing_twice,
    the_same_key_for_another_request_is_a_conflict,
    concurrent_duplicates_execute_once,
    a_duplicate_in_progress_is_refused,
    a_server_error_is_not_kept,
    a_client_error_is_kept,
    an_answer_too_large_to_keep_is_not_executed_again,
    an_expired_key_runs_again,
    the_cleanup_deletes_expired_keys_only,
    a_malformed_key_is_refused,
    callers_do_not_share_keys,
    anonymous_requests_are_not_kept,
    an_ended_session_gets_no_replay,
    other_methods_ignore_the_key,
);
