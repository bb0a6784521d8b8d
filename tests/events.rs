//! The event pipeline (SPEC §7) on SQLite and PostgreSQL: events emitted in the caller's
//! transaction, the audit log's filters, paging and streamed export, webhook endpoints, and
//! delivery to a real receiver on loopback — signatures checked by an independent Standard
//! Webhooks implementation, retries with a stable `webhook-id`, a dead worker's claim taken over,
//! a restart between commit and delivery, SSRF refusals.
//!
//! There are no routes yet: the tests call the domain functions on the server's state.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    Router,
};
use bytes::Bytes;
use chrono::Utc;
use common::{fixtures::an_org_row, Backend, ServerOptions, TestDatabase, TestServer};
use futures_util::StreamExt;
use gatehouse::ids::WebhookId;
use gatehouse::{
    app::AppState,
    error::Error,
    events::{
        self,
        audit::{self, AuditFilter, AuditQuery, AuditScope, ExportFormat},
        deliveries::{self, status, Delivery},
        delivery::{self, DeliveryWorker, RetrySchedule, WorkerConfig, WorkerHandle},
        signing::WebhookSecret,
        webhooks::{self, EndpointPatch, NewEndpoint},
        Actor, ActorContext, Emitted, NewEvent, RequestMeta, Scope,
    },
    http::pagination::{List, Page},
    ids::{OrgId, UserId},
    storage,
};
use serde_json::{json, Value};
use sqlx::Row;
use tokio::sync::{mpsc, Mutex};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A server whose configuration allows loopback webhook targets (the receivers run there).
async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            ..ServerOptions::default()
        },
    )
    .await
}

fn user_ctx(user: &str) -> ActorContext {
    ActorContext::new(
        Actor::User(UserId::from(user.to_string())),
        RequestMeta {
            ip_address: Some("203.0.113.7".into()),
            user_agent: Some("events-test/1".into()),
            request_id: Some("req_test".into()),
        },
    )
}

async fn emit_committed(state: &AppState, ctx: &ActorContext, event: NewEvent) -> Emitted {
    let mut tx = state.db.pool().begin().await.unwrap();
    let emitted = events::emit(&mut tx, ctx, event).await.unwrap();
    tx.commit().await.unwrap();
    emitted
}

fn member_added(org: &OrgId, member: &str) -> NewEvent {
    NewEvent::new("member.added", "member", Some(member.to_string()))
        .organization(org.clone())
        .data(json!({ "id": member, "role": "admin" }))
        .metadata(json!({ "role": "admin" }))
}

async fn endpoint(
    state: &AppState,
    scope: &Scope,
    url: &str,
    events: &[&str],
) -> webhooks::CreatedEndpoint {
    webhooks::create(
        state,
        scope,
        &user_ctx("user_admin"),
        NewEndpoint {
            url: url.to_string(),
            events: events.iter().map(|e| e.to_string()).collect(),
            description: "test receiver".into(),
            enabled: true,
            environment: None,
        },
    )
    .await
    .unwrap()
}

async fn count(state: &AppState, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(state.db.pool())
        .await
        .unwrap()
}

/// A worker fast enough for tests: polls every 20 ms, the standard schedule divided by 100,000
/// (5 s → 50 µs, 10 h → 0.36 s).
fn fast_config(allow_private: bool) -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(20),
        batch_size: 16,
        attempt_timeout: Duration::from_secs(5),
        lease: Duration::from_secs(10),
        schedule: RetrySchedule::standard_scaled(100_000),
        disable_after: Duration::from_secs(5 * 24 * 3600),
        allow_private_targets: allow_private,
        response_body_limit: 4096,
    }
}

fn start_worker(state: &AppState, config: WorkerConfig) -> WorkerHandle {
    DeliveryWorker::new(state.clone(), config).unwrap().spawn()
}

/// Polls `check` until it holds (at most 20 s). For waiting on the worker, not for timing.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until an attempt to the endpoint is recorded as succeeded.
async fn recorded_as_succeeded(state: &AppState, scope: &Scope, endpoint_id: &WebhookId) {
    eventually("recorded as succeeded", || async {
        attempts(state, scope, endpoint_id)
            .await
            .iter()
            .any(|d| d.status == status::SUCCEEDED)
    })
    .await;
}

async fn attempts(state: &AppState, scope: &Scope, endpoint_id: &WebhookId) -> Vec<Delivery> {
    let page = Page {
        limit: 100,
        ..Page::default()
    };
    let mut list = deliveries::list(&state.db, scope, endpoint_id, &page)
        .await
        .unwrap()
        .items;
    list.sort_by_key(|d| d.attempt);
    list
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    at: chrono::DateTime<Utc>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (a receiver that hangs, or a worker killed mid-delivery).
    Hang,
    /// This status with a 64 KiB body.
    Verbose(u16),
}

/// A webhook receiver on loopback; `script(n)` decides the answer to the n-th request (0-based).
struct Receiver {
    url: String,
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on("127.0.0.1", script).await
    }

    async fn start_on(
        host: &str,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let counter = count.clone();
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (tx, script, counter) = (tx.clone(), script.clone(), counter.clone());
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let _ = tx.send(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: Utc::now(),
                });
                match script(n) {
                    Reply::Status(s) => {
                        (StatusCode::from_u16(s).unwrap(), "receiver says hi").into_response()
                    }
                    Reply::Verbose(s) => {
                        (StatusCode::from_u16(s).unwrap(), "x".repeat(64 * 1024)).into_response()
                    }
                    Reply::Hang => std::future::pending().await,
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{host}:{port}/hook"),
            rx: Mutex::new(rx),
            count,
            task,
        }
    }

    async fn next(&self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.lock().await.recv())
            .await
            .expect("the receiver got no request within 20 s")
            .expect("receiver channel open")
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Emitting

async fn a_rolled_back_change_emits_nothing(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    endpoint(
        state,
        &Scope::Organization(org.clone(), None),
        "http://127.0.0.1:9/hook",
        &["*"],
    )
    .await;

    let mut tx = state.db.pool().begin().await.unwrap();
    let emitted = events::emit(&mut tx, &user_ctx("user_1"), member_added(&org, "mem_1"))
        .await
        .unwrap();
    assert_eq!(emitted.deliveries, 1);
    assert!(emitted.event_id.is_some());
    tx.rollback().await.unwrap();

    let audit_rows = "SELECT COUNT(*) FROM audit_events WHERE action = 'member.added'";
    assert_eq!(count(state, audit_rows).await, 0);
    assert_eq!(count(state, "SELECT COUNT(*) FROM webhook_events").await, 0);
    assert_eq!(
        count(state, "SELECT COUNT(*) FROM webhook_deliveries").await,
        0
    );

    let emitted = emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    assert_eq!(count(state, audit_rows).await, 1);
    assert_eq!(count(state, "SELECT COUNT(*) FROM webhook_events").await, 1);
    assert_eq!(
        count(state, "SELECT COUNT(*) FROM webhook_deliveries").await,
        1
    );
    let row = sqlx::query("SELECT * FROM audit_events WHERE id = $1")
        .bind(&emitted.audit_id)
        .fetch_one(state.db.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("actor_type"), "user");
    assert_eq!(row.get::<String, _>("actor_id"), "user_1");
    assert_eq!(row.get::<String, _>("organization_id"), org.as_str());
    assert_eq!(row.get::<String, _>("ip_address"), "203.0.113.7");
    assert_eq!(row.get::<String, _>("request_id"), "req_test");
}

async fn events_reach_subscribed_endpoints_of_their_organization_and_the_platform(
    backend: Backend,
) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, other) = (
        an_org_row(state, "acme", "active").await,
        an_org_row(state, "other", "active").await,
    );
    let url = "http://127.0.0.1:9/hook";
    let acme_scope = Scope::Organization(acme.clone(), None);
    let all = endpoint(state, &acme_scope, url, &["*"]).await.endpoint.id;
    let members = endpoint(state, &acme_scope, url, &["member.added"])
        .await
        .endpoint
        .id;
    endpoint(state, &acme_scope, url, &["invoice.paid"]).await; // not subscribed
    let disabled = endpoint(state, &acme_scope, url, &["*"]).await.endpoint.id;
    webhooks::update(
        state,
        &acme_scope,
        &user_ctx("user_admin"),
        &disabled,
        EndpointPatch {
            enabled: Some(false),
            ..EndpointPatch::default()
        },
    )
    .await
    .unwrap();
    endpoint(
        state,
        &Scope::Organization(other.clone(), None),
        url,
        &["*"],
    )
    .await; // other org
    let platform = endpoint(state, &Scope::Platform, url, &["member.added"])
        .await
        .endpoint
        .id;

    let emitted = emit_committed(state, &user_ctx("user_1"), member_added(&acme, "mem_1")).await;
    assert_eq!(emitted.deliveries, 3);
    let mut receivers: Vec<WebhookId> = sqlx::query_scalar(
        "SELECT endpoint_id FROM webhook_deliveries WHERE event_id = $1 ORDER BY endpoint_id",
    )
    .bind(emitted.event_id.as_deref().unwrap())
    .fetch_all(state.db.pool())
    .await
    .unwrap();
    let mut expected = vec![all, members, platform];
    expected.sort();
    receivers.sort();
    assert_eq!(receivers, expected);

    // Audit-only actions are recorded but sent nowhere.
    let login = NewEvent::new("user.login_failed", "user", Some("user_1".into()));
    let emitted = emit_committed(state, &user_ctx("user_1"), login).await;
    assert_eq!((emitted.event_id, emitted.deliveries), (None, 0));
}

// ---------------------------------------------------------------------------------------------
// Audit log

/// Seven audit events, each in its own millisecond: five in `acme` (three `member.added`, the
/// first three spread over January 2026), one in `other`, one platform event; returns `acme` and
/// the events' ids in order.
async fn seven_events(state: &AppState) -> (OrgId, Vec<String>) {
    let (acme, other) = (
        an_org_row(state, "acme", "active").await,
        an_org_row(state, "other", "active").await,
    );
    let alice = user_ctx("user_alice");
    let bob = user_ctx("user_bob");
    let mut ids = Vec::new();
    for (ctx, event) in [
        (&alice, member_added(&acme, "mem_1")),
        (&alice, member_added(&acme, "mem_2")),
        (&bob, member_added(&acme, "mem_3")),
        (
            &bob,
            NewEvent::new("api_key.created", "api_key", Some("key_1".into()))
                .organization(acme.clone()),
        ),
        (
            &alice,
            NewEvent::new(
                "organization.updated",
                "organization",
                Some(acme.to_string()),
            )
            .organization(acme.clone()),
        ),
        (&bob, member_added(&other, "mem_9")),
        (
            &alice,
            NewEvent::new("user.login_failed", "user", Some("user_alice".into())),
        ),
    ] {
        ids.push(emit_committed(state, ctx, event).await.audit_id);
        // Ids sort by their millisecond; keep each event in its own.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Spread the first events over January 2026.
    for (i, day) in ["2026-01-05", "2026-01-10", "2026-01-15"]
        .iter()
        .enumerate()
    {
        sqlx::query("UPDATE audit_events SET created_at = $1 WHERE id = $2")
            .bind(format!("{day}T12:00:00.000000Z"))
            .bind(&ids[i])
            .execute(state.db.pool())
            .await
            .unwrap();
    }

    (acme, ids)
}

/// The audit list of `scope` for the query string `query`, as the route would read it.
async fn list(state: &AppState, scope: AuditScope, query: &str) -> List<audit::AuditEvent> {
    let q: AuditQuery = serde_urlencoded::from_str(query).unwrap();
    let filter = AuditFilter::from_query(&q).unwrap();
    let page = Page::parse(query).unwrap();
    audit::list(&state.db, &scope, &filter, &page)
        .await
        .unwrap()
}

fn actions(l: &List<audit::AuditEvent>) -> Vec<String> {
    l.items.iter().map(|e| e.action.clone()).collect()
}

async fn the_audit_log_lists_a_scope_newest_first_in_the_api_shape(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, _) = seven_events(state).await;
    let acme_scope = AuditScope::Organization(acme.clone());
    let all_acme = list(state, acme_scope.clone(), "").await;
    assert_eq!(all_acme.total, 5);
    assert_eq!(
        all_acme.items[0].action, "organization.updated",
        "newest first"
    );
    assert_eq!(list(state, AuditScope::All, "").await.total, 7);

    // The API shape (seed 004).
    let json = serde_json::to_value(&all_acme).unwrap();
    let first = &json["events"][0];
    for field in [
        "id",
        "actor_type",
        "actor_id",
        "action",
        "resource_type",
        "resource_id",
        "organization_id",
        "ip_address",
        "user_agent",
        "request_id",
        "metadata",
        "created_at",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert!(first["id"].as_str().unwrap().starts_with("aud_"));
    assert_eq!(json["total"], 5);
}

async fn the_audit_log_filters_by_action_actor_resource_and_dates(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, ids) = seven_events(state).await;
    let acme_scope = AuditScope::Organization(acme.clone());
    let by_action = list(state, acme_scope.clone(), "action=member.added").await;
    assert_eq!(by_action.total, 3);
    assert!(actions(&by_action).iter().all(|a| a == "member.added"));

    let by_actor = list(state, acme_scope.clone(), "actor_id=user_bob").await;
    assert_eq!(actions(&by_actor), vec!["api_key.created", "member.added"]);

    let by_resource = list(state, AuditScope::All, "resource_type=user").await;
    assert_eq!(actions(&by_resource), vec!["user.login_failed"]);

    let by_dates = list(
        state,
        acme_scope.clone(),
        "start_date=2026-01-06&end_date=2026-01-15",
    )
    .await;
    assert_eq!(by_dates.total, 2, "the end date includes its whole day");
    let since = list(
        state,
        acme_scope.clone(),
        "start_date=2026-01-10T12:00:00Z&end_date=2026-01-10T12:00:00Z",
    )
    .await;
    assert_eq!(since.items.len(), 1);
    assert_eq!(since.items[0].id, ids[1]);

    let combined = list(
        state,
        acme_scope.clone(),
        "action=member.added&actor_id=user_alice&end_date=2026-01-07",
    )
    .await;
    assert_eq!(
        combined.items.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&ids[0]]
    );
}

async fn the_audit_log_pages_by_offset_and_by_cursor(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, _) = seven_events(state).await;
    let acme_scope = AuditScope::Organization(acme.clone());
    let all_acme = list(state, acme_scope.clone(), "").await;
    // Offset and page paging.
    let page2 = list(state, acme_scope.clone(), "limit=2&page=2").await;
    assert_eq!(
        (page2.offset, page2.items.len(), page2.has_more),
        (2, 2, true)
    );
    assert_eq!(page2.items[0].id, all_acme.items[2].id);

    // Cursor paging walks every event once, newest first.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let page = list(state, acme_scope.clone(), &query).await;
        assert_eq!(page.total, 5);
        seen.extend(page.items.iter().map(|e| e.id.clone()));
        match page.next_cursor {
            Some(c) => query = format!("limit=2&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = all_acme.items.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(seen, expected);
}

/// 100,000 rows, inserted directly (500 per statement) to keep the test quick.
async fn insert_audit_rows(state: &AppState, org: &OrgId, n: usize) {
    let mut tx = state.db.pool().begin().await.unwrap();
    let now = storage::now();
    for chunk_start in (0..n).step_by(500) {
        let mut sql = storage::Sql::new(
            "INSERT INTO audit_events (id, actor_type, actor_id, action, resource_type, \
             resource_id, organization_id, metadata, created_at) VALUES ",
        );
        for i in chunk_start..(chunk_start + 500).min(n) {
            if i > chunk_start {
                sql.push(", ");
            }
            sql.push("(")
                .bind(gatehouse::ids::AuditId::generate())
                .push(", 'user', ")
                .bind(format!("user_{}", i % 7))
                .push(", 'member.added', 'member', ")
                .bind(format!("mem_{i}"))
                .push(", ")
                .bind(org.as_str())
                .push(", ")
                .bind(format!(r#"{{"n":{i},"note":"a, \"quoted\" value"}}"#))
                .push(", ")
                .bind(now.as_str())
                .push(")");
        }
        sql.query().execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn the_audit_export_of_100000_events_streams_in_batches(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let other = an_org_row(state, "other", "active").await;
    const N: usize = 100_000;
    insert_audit_rows(state, &org, N).await;
    emit_committed(
        state,
        &user_ctx("user_x"),
        member_added(&other, "mem_other"),
    )
    .await;

    for format in [ExportFormat::Csv, ExportFormat::Ndjson] {
        let stream = audit::export(
            state.db.clone(),
            AuditScope::Organization(org.clone()),
            AuditFilter::default(),
            format,
        );
        // As a handler would send it; the body hands out one keyset batch per chunk, fetched as
        // the previous one is taken: never the whole export at once.
        let mut stream = axum::body::Body::from_stream(stream).into_data_stream();
        let (mut chunks, mut lines, mut max_chunk, mut last_id) =
            (0usize, 0usize, 0usize, String::new());
        let mut header = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            chunks += 1;
            max_chunk = max_chunk.max(chunk.len());
            let text = std::str::from_utf8(&chunk).unwrap();
            let mut rows: Vec<&str> = match format {
                ExportFormat::Csv => text.split("\r\n").filter(|l| !l.is_empty()).collect(),
                ExportFormat::Ndjson => text.lines().collect(),
            };
            if chunks == 1 && format == ExportFormat::Csv {
                header = Some(rows.remove(0).to_string());
            }
            assert!(
                rows.len() as i64 <= audit::EXPORT_BATCH_ROWS,
                "a chunk holds at most one batch"
            );
            for row in rows {
                let id = match format {
                    ExportFormat::Csv => row.split(',').next().unwrap().to_string(),
                    ExportFormat::Ndjson => {
                        let v: Value = serde_json::from_str(row).unwrap();
                        assert_eq!(v["organization_id"], org.as_str());
                        v["id"].as_str().unwrap().to_string()
                    }
                };
                assert!(id > last_id, "rows come oldest first, once each");
                last_id = id;
                lines += 1;
            }
        }
        assert_eq!(
            lines, N,
            "{format:?}: every event exported, only this organization's"
        );
        assert_eq!(
            chunks,
            N / audit::EXPORT_BATCH_ROWS as usize,
            "{format:?}: one chunk per batch"
        );
        assert!(
            max_chunk < 512 * 1024,
            "{format:?}: chunks stay small ({max_chunk} bytes)"
        );
        if format == ExportFormat::Csv {
            assert!(header
                .unwrap()
                .starts_with("id,actor_type,actor_id,action,"));
        }
    }

    // CSV quoting survives a real parser's rules: the metadata column is one quoted field.
    let filter = AuditFilter {
        actor_id: Some("user_3".into()),
        ..AuditFilter::default()
    };
    let mut small = std::pin::pin!(audit::export_in_batches(
        state.db.clone(),
        AuditScope::All,
        filter,
        ExportFormat::Csv,
        100,
    ));
    let first = small.next().await.unwrap().unwrap();
    let text = std::str::from_utf8(&first).unwrap();
    let row = text.split("\r\n").nth(1).unwrap();
    assert!(row.contains(r#""{""n"":"#), "{row}");
    assert!(row.contains(r#"\""quoted\"""#), "{row}");
}

// ---------------------------------------------------------------------------------------------
// Webhook endpoints

async fn a_webhook_secret_is_shown_once_and_never_stored_in_the_clear(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let acme = an_org_row(state, "acme", "active").await;
    let acme_scope = Scope::Organization(acme.clone(), None);

    let created = endpoint(
        state,
        &acme_scope,
        "https://example.com/hooks",
        &["member.added"],
    )
    .await;
    let id = created.endpoint.id.clone();
    assert!(id.starts_with("wh_"));
    let secret = created.secret.expose().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    let json = serde_json::to_value(&created).unwrap();
    assert_eq!(json["secret"], secret.as_str(), "shown once, at creation");
    assert_eq!(json["events"], json!(["member.added"]));
    assert_eq!(json["enabled"], true);

    // Never shown again, never stored in the clear, never in the audit log.
    let got = webhooks::get(&state.db, &acme_scope, &id).await.unwrap();
    assert!(!serde_json::to_string(&got).unwrap().contains("whsec_"));
    let stored: String =
        sqlx::query_scalar("SELECT secret_ciphertext FROM webhook_endpoints WHERE id = $1")
            .bind(&id)
            .fetch_one(state.db.pool())
            .await
            .unwrap();
    assert!(!stored.contains(&secret[6..]));
    let audit_text: Vec<String> = sqlx::query_scalar("SELECT metadata FROM audit_events")
        .fetch_all(state.db.pool())
        .await
        .unwrap();
    assert!(audit_text.iter().all(|m| !m.contains("whsec_")));
}

async fn webhook_endpoints_are_seen_in_their_scope_only(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, other) = (
        an_org_row(state, "acme", "active").await,
        an_org_row(state, "other", "active").await,
    );
    let acme_scope = Scope::Organization(acme.clone(), None);
    let other_scope = Scope::Organization(other.clone(), None);

    let created = endpoint(
        state,
        &acme_scope,
        "https://example.com/hooks",
        &["member.added"],
    )
    .await;
    let id = created.endpoint.id.clone();
    // Another organization and the platform cannot see it.
    for scope in [&other_scope, &Scope::Platform] {
        let err = webhooks::get(&state.db, scope, &id).await.unwrap_err();
        assert_eq!(err.code(), gatehouse::error::ErrorCode::NotFound);
    }
    let platform = endpoint(
        state,
        &Scope::Platform,
        "https://example.com/platform",
        &["*"],
    )
    .await;
    let page = Page::default();
    let acme_list = webhooks::list(&state.db, &acme_scope, &page).await.unwrap();
    assert_eq!(
        acme_list.items.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&id]
    );
    let platform_list = webhooks::list(&state.db, &Scope::Platform, &page)
        .await
        .unwrap();
    assert_eq!(platform_list.items.len(), 1);
    assert_eq!(platform_list.items[0].id, platform.endpoint.id);
    assert_eq!(
        serde_json::to_value(&acme_list).unwrap()["webhooks"][0]["id"],
        id.as_str()
    );
}

async fn webhook_endpoint_input_is_validated_field_by_field(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let acme = an_org_row(state, "acme", "active").await;
    let acme_scope = Scope::Organization(acme.clone(), None);
    let admin = user_ctx("user_admin");

    // Validation names each bad field.
    let bad = |url: &str, events: &[&str]| NewEndpoint {
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: String::new(),
        enabled: true,
        environment: None,
    };
    for (input, fields) in [
        (bad("ftp://example.com/x", &["*"]), vec!["url"]),
        (
            bad(&format!("https://example.com/{}", "a".repeat(2048)), &["*"]),
            vec!["url"],
        ),
        (bad("https://example.com/x", &[]), vec!["events"]),
        (
            bad("https://example.com/x", &["member.exploded"]),
            vec!["events"],
        ),
        (bad("not a url", &["nope"]), vec!["url", "events"]),
    ] {
        let err = webhooks::create(state, &acme_scope, &admin, input)
            .await
            .unwrap_err();
        let Error::Api {
            details: Some(details),
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        let named: Vec<&str> = details
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields);
    }
}

async fn webhook_endpoints_are_updated_rotated_and_deleted_in_scope_and_audited(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let (acme, other) = (
        an_org_row(state, "acme", "active").await,
        an_org_row(state, "other", "active").await,
    );
    let acme_scope = Scope::Organization(acme.clone(), None);
    let other_scope = Scope::Organization(other.clone(), None);
    let admin = user_ctx("user_admin");

    let created = endpoint(
        state,
        &acme_scope,
        "https://example.com/hooks",
        &["member.added"],
    )
    .await;
    let id = created.endpoint.id.clone();
    let secret = created.secret.expose().to_string();
    // Update.
    let updated = webhooks::update(
        state,
        &acme_scope,
        &admin,
        &id,
        EndpointPatch {
            url: Some("https://example.com/v2".into()),
            events: Some(vec!["*".into()]),
            description: Some("renamed".into()),
            enabled: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            updated.url.as_str(),
            updated.events.clone(),
            updated.description.as_str()
        ),
        ("https://example.com/v2", vec!["*".to_string()], "renamed")
    );
    let err = webhooks::update(state, &other_scope, &admin, &id, EndpointPatch::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), gatehouse::error::ErrorCode::NotFound);

    // Rotation: a new secret, shown once; the old one still signs for a while.
    let rotated = webhooks::rotate_secret(state, &acme_scope, &admin, &id)
        .await
        .unwrap();
    assert_ne!(rotated.secret.expose(), secret);

    // Delete (scoped).
    assert!(webhooks::delete(&state.db, &other_scope, &admin, &id)
        .await
        .is_err());
    webhooks::delete(&state.db, &acme_scope, &admin, &id)
        .await
        .unwrap();
    assert!(webhooks::get(&state.db, &acme_scope, &id).await.is_err());

    let mut actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events WHERE resource_id = $1")
            .bind(&id)
            .fetch_all(state.db.pool())
            .await
            .unwrap();
    actions.sort();
    assert_eq!(
        actions,
        vec![
            "webhook.created",
            "webhook.deleted",
            "webhook.secret_rotated",
            "webhook.updated"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Delivery

fn python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("GATEHOUSE_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
    path.exists().then_some(path)
}

/// Runs tests/webhooks_verify.py (the `standardwebhooks` package) over the deliveries. Skips,
/// loudly, when the venv or the package is missing — unless CI=true, where that fails.
fn verify_with_standardwebhooks(cases: &[Value]) {
    let skip = |why: &str| {
        if common::in_ci() {
            panic!("{why} and CI=true");
        }
        eprintln!(
            "\n!!! SKIPPED the independent Standard Webhooks verification: {why} \
             (python3 -m venv .venv && .venv/bin/pip install standardwebhooks) !!!\n"
        );
    };
    let Some(python) = python() else {
        return skip("no Python venv at .venv (or GATEHOUSE_TEST_PYTHON)");
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, serde_json::to_vec(cases).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks_verify.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            assert!(
                stdout.contains(&format!("verified {}", cases.len())),
                "{stdout}"
            );
            eprintln!("{}", stdout.trim());
        }
        Some(3) => skip("the standardwebhooks package is not installed"),
        _ => panic!("standardwebhooks refused the deliveries:\n{stdout}\n{stderr}"),
    }
}

fn case(secret: &str, r: &Received) -> Value {
    json!({
        "secret": secret,
        "headers": {
            "webhook-id": r.header("webhook-id"),
            "webhook-timestamp": r.header("webhook-timestamp"),
            "webhook-signature": r.header("webhook-signature"),
        },
        "body": r.body,
    })
}

async fn a_receiver_gets_correctly_signed_events(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let created = endpoint(state, &scope, &receiver.url, &["member.added"]).await;
    let secret = created.secret.expose().to_string();
    let worker = start_worker(state, fast_config(true));

    let emitted = emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    worker.wake();
    let got = receiver.next().await;
    assert_eq!(
        got.header("webhook-id"),
        emitted.event_id.as_deref().unwrap()
    );
    assert_eq!(got.header("content-type"), "application/json");
    let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
    assert!((Utc::now().timestamp() - ts).abs() < 60);
    let body: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["type"], "member.added");
    assert_eq!(body["data"], json!({ "id": "mem_1", "role": "admin" }));
    assert!(storage::parse_time(body["timestamp"].as_str().unwrap()).is_some());
    let expected = WebhookSecret::parse(&secret).unwrap().sign(
        got.header("webhook-id"),
        ts,
        got.body.as_bytes(),
    );
    assert_eq!(got.header("webhook-signature"), expected);

    // After a rotation both the new and the previous secret verify the same delivery.
    let rotated =
        webhooks::rotate_secret(state, &scope, &user_ctx("user_admin"), &created.endpoint.id)
            .await
            .unwrap();
    let test_id = webhooks::send_test(
        &state.db,
        &scope,
        &user_ctx("user_admin"),
        &created.endpoint.id,
    )
    .await
    .unwrap();
    worker.wake();
    let test = receiver.next().await;
    assert_eq!(test.header("webhook-id"), test_id);
    assert_eq!(
        serde_json::from_str::<Value>(&test.body).unwrap()["type"],
        "webhook.test"
    );
    assert_eq!(test.header("webhook-signature").split(' ').count(), 2);

    verify_with_standardwebhooks(&[
        case(&secret, &got),
        case(rotated.secret.expose(), &test),
        case(&secret, &test),
    ]);

    let scope2 = scope.clone();
    let id = created.endpoint.id.clone();
    eventually("both attempts recorded as succeeded", || {
        let (state, scope, id) = (state.clone(), scope2.clone(), id.clone());
        async move {
            let a = attempts(&state, &scope, &id).await;
            a.len() == 2 && a.iter().all(|d| d.status == status::SUCCEEDED)
        }
    })
    .await;
    let logged = attempts(state, &scope, &created.endpoint.id).await;
    assert_eq!(logged[0].response_status, Some(204));
    assert!(logged[0].latency_ms.is_some());
    assert!(logged[0].id.starts_with("del_"));
    worker.stop().await;
}

async fn a_receiver_failing_twice_gets_the_same_webhook_id_on_the_third_attempt(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|n| Reply::Status(if n < 2 { 500 } else { 200 })).await;
    let created = endpoint(state, &scope, &receiver.url, &["*"]).await;
    let worker = start_worker(state, fast_config(true));

    let emitted = emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    let event_id = emitted.event_id.unwrap();
    let tries = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    for t in &tries {
        assert_eq!(t.header("webhook-id"), event_id);
        assert_eq!(t.body, tries[0].body, "every attempt sends the same body");
    }

    let id = created.endpoint.id.clone();
    eventually("the third attempt recorded", || {
        let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
        async move {
            attempts(&state, &scope, &id)
                .await
                .iter()
                .any(|d| d.status == status::SUCCEEDED)
        }
    })
    .await;
    let log = attempts(state, &scope, &created.endpoint.id).await;
    let summary: Vec<(i64, &str, Option<i64>)> = log
        .iter()
        .map(|d| (d.attempt, d.status.as_str(), d.response_status))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "failed", Some(500)),
            (2, "failed", Some(500)),
            (3, "succeeded", Some(200))
        ]
    );
    assert!(log
        .iter()
        .all(|d| d.event_id == event_id && d.event_type == "member.added"));
    assert!(log[0].next_attempt_at.is_some() && log[2].next_attempt_at.is_none());
    assert_eq!(log[0].response_body.as_deref(), Some("receiver says hi"));
    assert_eq!(receiver.requests(), 3);
    let failing: Option<String> =
        sqlx::query_scalar("SELECT failing_since FROM webhook_endpoints WHERE id = $1")
            .bind(&created.endpoint.id)
            .fetch_one(state.db.pool())
            .await
            .unwrap();
    assert_eq!(failing, None, "a success ends the failing run");
    worker.stop().await;
    let metrics = state.metrics.render();
    assert!(
        metrics.contains(r#"gatehouse_webhook_deliveries_total{outcome="retrying"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_webhook_deliveries_total{outcome="succeeded"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_webhook_deliveries_pending 0"),
        "{metrics}"
    );
}

async fn the_schedule_gives_up_and_a_manual_retry_sends_again(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|n| Reply::Status(if n < 8 { 503 } else { 200 })).await;
    let created = endpoint(state, &scope, &receiver.url, &["*"]).await;
    let worker = start_worker(state, fast_config(true));
    let emitted = emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;

    let id = created.endpoint.id.clone();
    eventually("eight failed attempts", || {
        let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
        async move {
            let log = attempts(&state, &scope, &id).await;
            log.len() == 8 && log.iter().all(|d| d.status == status::FAILED)
        }
    })
    .await;
    let log = attempts(state, &scope, &id).await;
    assert_eq!(
        log.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(
        log[7].next_attempt_at.is_none(),
        "given up after the eighth"
    );

    let retried = deliveries::retry(&state.db, &scope, &user_ctx("user_admin"), &id, &log[7].id)
        .await
        .unwrap();
    assert_eq!(
        (retried.attempt, retried.manual, retried.status.as_str()),
        (9, true, "pending")
    );
    worker.wake();
    let mut last = receiver.next().await;
    for _ in 0..8 {
        last = receiver.next().await;
    }
    assert_eq!(
        last.header("webhook-id"),
        emitted.event_id.as_deref().unwrap()
    );
    eventually("the manual attempt succeeded", || {
        let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
        async move {
            attempts(&state, &scope, &id)
                .await
                .iter()
                .any(|d| d.status == status::SUCCEEDED)
        }
    })
    .await;
    assert!(
        deliveries::retry(&state.db, &Scope::Platform, &user_ctx("x"), &id, &log[0].id)
            .await
            .is_err(),
        "retry is scoped"
    );
    worker.stop().await;
}

async fn a_dead_workers_claim_is_delivered_after_its_lease(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let created = endpoint(state, &scope, &receiver.url, &["*"]).await;
    emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;

    // A worker claims the attempt and dies without sending it.
    let lease = Duration::from_secs(2);
    let claimed = delivery::claim(&state.db, "wkr_dead", lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let locked_until: String =
        sqlx::query_scalar("SELECT locked_until FROM webhook_deliveries WHERE id = $1")
            .bind(&claimed[0])
            .fetch_one(state.db.pool())
            .await
            .unwrap();

    // While the lease holds, nobody else takes it.
    let live = DeliveryWorker::new(state.clone(), fast_config(true)).unwrap();
    assert_eq!(live.run_once().await.unwrap(), 0);
    assert!(delivery::claim(&state.db, "wkr_other", lease, 10)
        .await
        .unwrap()
        .is_empty());

    let worker = live.spawn();
    let got = receiver.next().await;
    assert!(
        storage::format_time(got.at) >= locked_until,
        "delivered only after the lease ran out"
    );
    recorded_as_succeeded(state, &scope, &created.endpoint.id).await;
    let log = attempts(state, &scope, &created.endpoint.id).await;
    assert_eq!(log.len(), 1, "the same attempt, taken over");
    assert_eq!(log[0].id, claimed[0]);
    worker.stop().await;
}

/// The server is killed between commit and delivery (and once more mid-delivery); the event is
/// delivered by the next server on the same database.
async fn killing_the_server_between_commit_and_delivery_still_delivers(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let mut config = common::test_config(&db);
    config.allow_private_webhook_targets = true;
    // The first request hangs (the server dies while it is in flight); later ones succeed.
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;

    let first = gatehouse::server::build_state(config.clone())
        .await
        .unwrap();
    let org = an_org_row(&first, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let created = endpoint(&first, &scope, &receiver.url, &["*"]).await;
    let emitted = emit_committed(&first, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    // Killed right after the commit: nothing was sent.
    first.db.close().await;
    drop(first);

    // The second server starts delivering, and is killed mid-delivery.
    let second = gatehouse::server::build_state(config.clone())
        .await
        .unwrap();
    let short_lease = WorkerConfig {
        attempt_timeout: Duration::from_secs(60),
        lease: Duration::from_secs(1),
        ..fast_config(true)
    };
    let worker = start_worker(&second, short_lease);
    let in_flight = receiver.next().await;
    worker.abort();
    second.db.close().await;
    drop(second);

    // The third server delivers it once the dead server's lease has run out.
    let third = gatehouse::server::build_state(config).await.unwrap();
    let worker = start_worker(&third, fast_config(true));
    let delivered = receiver.next().await;
    let event_id = emitted.event_id.unwrap();
    assert_eq!(in_flight.header("webhook-id"), event_id);
    assert_eq!(
        delivered.header("webhook-id"),
        event_id,
        "the same id for de-duplication"
    );
    recorded_as_succeeded(&third, &scope, &created.endpoint.id).await;
    worker.stop().await;
}

/// Three nodes on one database, competing for the same due attempts: each event is sent once.
async fn several_nodes_deliver_each_event_exactly_once(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let created = endpoint(state, &scope, &receiver.url, &["*"]).await;
    const EVENTS: usize = 60;
    for i in 0..EVENTS {
        emit_committed(
            state,
            &user_ctx("user_1"),
            member_added(&org, &format!("mem_{i}")),
        )
        .await;
    }
    let mut nodes = vec![state.clone()];
    for _ in 0..2 {
        nodes.push(
            gatehouse::server::build_state(state.config.clone())
                .await
                .unwrap(),
        );
    }
    let small_batches = WorkerConfig {
        batch_size: 4,
        ..fast_config(true)
    };
    let workers: Vec<WorkerHandle> = nodes
        .iter()
        .map(|n| start_worker(n, small_batches.clone()))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..EVENTS {
        ids.insert(receiver.next().await.header("webhook-id").to_string());
    }
    assert_eq!(ids.len(), EVENTS, "every event arrived");
    let id = created.endpoint.id.clone();
    eventually("every attempt recorded", || {
        let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
        async move {
            let page = Page {
                limit: 100,
                ..Page::default()
            };
            let log = deliveries::list(&state.db, &scope, &id, &page)
                .await
                .unwrap();
            log.total == EVENTS as i64 && log.items.iter().all(|d| d.status == status::SUCCEEDED)
        }
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    assert_eq!(receiver.requests(), EVENTS, "no attempt was sent twice");
}

/// An attempt is bounded by its timeout, and only the first 4 KiB of an answer are kept.
async fn slow_and_verbose_receivers_are_cut_short(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let receiver = Receiver::start(|n| match n {
        0 => Reply::Hang,
        _ => Reply::Verbose(200),
    })
    .await;
    let created = endpoint(state, &scope, &receiver.url, &["*"]).await;
    let config = WorkerConfig {
        attempt_timeout: Duration::from_millis(300),
        ..fast_config(true)
    };
    let worker = start_worker(state, config);
    emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    let id = created.endpoint.id.clone();
    eventually("the second attempt recorded", || {
        let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
        async move {
            attempts(&state, &scope, &id)
                .await
                .iter()
                .any(|d| d.status == status::SUCCEEDED)
        }
    })
    .await;
    worker.stop().await;
    let log = attempts(state, &scope, &created.endpoint.id).await;
    assert_eq!(log[0].status, "failed");
    assert_eq!(log[0].error.as_deref(), Some("timed out"));
    assert!(log[0].next_attempt_at.is_some());
    assert_eq!(log[1].response_status, Some(200));
    assert_eq!(log[1].response_body.as_deref().map(str::len), Some(4096));
}

async fn an_endpoint_failing_for_five_days_is_disabled_with_an_event(backend: Backend) {
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let failing = Receiver::start(|_| Reply::Status(500)).await;
    let watcher = Receiver::start(|_| Reply::Status(200)).await;
    let created = endpoint(state, &scope, &failing.url, &["*"]).await;
    endpoint(state, &Scope::Platform, &watcher.url, &["webhook.disabled"]).await;
    // It has been failing for six days.
    let six_days_ago = storage::format_time(Utc::now() - chrono::Duration::days(6));
    sqlx::query("UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2")
        .bind(&six_days_ago)
        .bind(&created.endpoint.id)
        .execute(state.db.pool())
        .await
        .unwrap();
    let worker = start_worker(state, fast_config(true));
    emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;

    failing.next().await;
    let notice = watcher.next().await;
    let body: Value = serde_json::from_str(&notice.body).unwrap();
    assert_eq!(body["type"], "webhook.disabled");
    assert_eq!(body["data"]["id"], created.endpoint.id.as_str());
    let ep = webhooks::get(&state.db, &scope, &created.endpoint.id)
        .await
        .unwrap();
    assert!(!ep.enabled);
    assert!(ep.disabled_reason.unwrap().contains("failing"));
    let actor: String =
        sqlx::query_scalar("SELECT actor_type FROM audit_events WHERE action = 'webhook.disabled'")
            .fetch_one(state.db.pool())
            .await
            .unwrap();
    assert_eq!(actor, "system");
    // Its next attempt waits while it is disabled.
    worker.stop().await;
    assert_eq!(failing.requests(), 1);
    assert!(state
        .metrics
        .render()
        .contains("gatehouse_webhook_endpoints_disabled_total 1"));

    // Enabling it again clears the failure record and resumes delivery.
    webhooks::update(
        state,
        &scope,
        &user_ctx("user_admin"),
        &created.endpoint.id,
        EndpointPatch {
            enabled: Some(true),
            ..EndpointPatch::default()
        },
    )
    .await
    .unwrap();
    let ep = webhooks::get(&state.db, &scope, &created.endpoint.id)
        .await
        .unwrap();
    assert!(ep.enabled && ep.disabled_reason.is_none());
}

async fn private_targets_are_refused_unless_allowed(backend: Backend) {
    // Saving: refused when the configuration does not allow private targets.
    let strict = TestServer::start(backend).await;
    let org = an_org_row(&strict.state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    for url in [
        "http://127.0.0.1/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
    ] {
        let err = webhooks::create(
            &strict.state,
            &scope,
            &user_ctx("user_admin"),
            NewEndpoint {
                url: url.into(),
                events: vec!["*".into()],
                description: String::new(),
                enabled: true,
                environment: None,
            },
        )
        .await
        .unwrap_err();
        let Error::Api {
            details: Some(details),
            ..
        } = &err
        else {
            panic!("{url}: {err:?}")
        };
        assert_eq!(details[0]["field"], "url", "{url}");
        assert!(
            details[0]["message"]
                .as_str()
                .unwrap()
                .contains("non-public"),
            "{url}: {details}"
        );
    }

    // Sending: checked again at every attempt (a name may resolve elsewhere later), both for
    // literal addresses and for names, by the worker's own resolver.
    let s = server(backend).await;
    let state = &s.state;
    let org = an_org_row(state, "acme", "active").await;
    let scope = Scope::Organization(org.clone(), None);
    let literal = Receiver::start(|_| Reply::Status(200)).await;
    let named = Receiver::start_on("localhost", |_| Reply::Status(200)).await;
    let a = endpoint(state, &scope, &literal.url, &["*"])
        .await
        .endpoint
        .id;
    let b = endpoint(state, &scope, &named.url, &["*"])
        .await
        .endpoint
        .id;
    let worker = start_worker(state, fast_config(false));
    emit_committed(state, &user_ctx("user_1"), member_added(&org, "mem_1")).await;
    for id in [&a, &b] {
        let id = id.clone();
        eventually("the first attempt recorded", || {
            let (state, scope, id) = (state.clone(), scope.clone(), id.clone());
            async move {
                attempts(&state, &scope, &id)
                    .await
                    .iter()
                    .any(|d| d.status == status::FAILED)
            }
        })
        .await;
        let first = attempts(state, &scope, &id).await.remove(0);
        let error = first.error.unwrap();
        assert!(error.starts_with("refused"), "{error}");
        assert!(first.response_status.is_none());
    }
    worker.stop().await;
    assert_eq!(
        literal.requests() + named.requests(),
        0,
        "nothing reached the receivers"
    );
}

on_both_databases!(
    a_rolled_back_change_emits_nothing,
    events_reach_subscribed_endpoints_of_their_organization_and_the_platform,
    the_audit_log_lists_a_scope_newest_first_in_the_api_shape,
    the_audit_log_filters_by_action_actor_resource_and_dates,
    the_audit_log_pages_by_offset_and_by_cursor,
    the_audit_export_of_100000_events_streams_in_batches,
    a_webhook_secret_is_shown_once_and_never_stored_in_the_clear,
    webhook_endpoints_are_seen_in_their_scope_only,
    webhook_endpoint_input_is_validated_field_by_field,
    webhook_endpoints_are_updated_rotated_and_deleted_in_scope_and_audited,
    a_receiver_gets_correctly_signed_events,
    a_receiver_failing_twice_gets_the_same_webhook_id_on_the_third_attempt,
    the_schedule_gives_up_and_a_manual_retry_sends_again,
    a_dead_workers_claim_is_delivered_after_its_lease,
    killing_the_server_between_commit_and_delivery_still_delivers,
    several_nodes_deliver_each_event_exactly_once,
    slow_and_verbose_receivers_are_cut_short,
    an_endpoint_failing_for_five_days_is_disabled_with_an_event,
    private_targets_are_refused_unless_allowed,
);
