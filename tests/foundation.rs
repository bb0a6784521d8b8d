//! The foundation: health, request ids, the error envelope for every kind of failure, body
//! limits, timeouts and graceful shutdown — on SQLite and PostgreSQL.
//!
//! The envelope tests mount small probe routes (through `http::router_with`) under the real
//! middleware stack, so that each framework failure can be provoked on demand.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    routing::{get, post},
    Router,
};
use common::{Backend, ServerOptions, TestServer};
use gatehouse::{
    app::AppState,
    error::Error,
    http::extract::{Json, Query},
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoInput {
    name: String,
    #[serde(default)]
    settings: Option<EchoSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoSettings {
    retention_days: u32,
}

#[derive(Debug, Deserialize)]
struct SleepQuery {
    ms: u64,
}

fn probe_routes(started: Arc<Notify>) -> Router<AppState> {
    Router::new()
        .route(
            "/probe/echo",
            post(|Json(input): Json<EchoInput>| async move {
                axum::Json(json!({ "name": input.name, "retention_days": input.settings.map(|s| s.retention_days) }))
            }),
        )
        .route(
            "/probe/sleep",
            get(|Query(q): Query<SleepQuery>| async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(q.ms)).await;
                axum::Json(json!({ "slept_ms": q.ms }))
            }),
        )
        .route(
            "/probe/thread",
            get(|| async { std::thread::current().name().unwrap_or("?").to_string() }),
        )
        .route(
            "/probe/internal",
            get(|| async {
                Err::<(), Error>(anyhow::anyhow!("SELECT secret FROM vault failed at 10.0.0.7").into())
            }),
        )
        .route(
            "/probe/panic",
            get(|| async {
                if true {
                    panic!("boom with a secret inside");
                }
            }),
        )
        .route(
            "/probe/db",
            get(|State(state): State<AppState>| async move {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
                    .fetch_one(state.db.pool())
                    .await?;
                Ok::<_, Error>(axum::Json(json!({ "organizations": n })))
            }),
        )
}

async fn start(backend: Backend) -> TestServer {
    start_notifying(backend, Arc::new(Notify::new())).await
}

/// `started` is notified whenever `/probe/sleep` begins handling a request.
async fn start_notifying(backend: Backend, started: Arc<Notify>) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| {
                c.max_body_bytes = 1024;
                c.request_timeout_secs = 1;
            }),
            extra_routes: probe_routes(started),
            ..Default::default()
        },
    )
    .await
}

on_both_databases!(
    health_reports_the_database,
    readiness_and_liveness_answer,
    health_is_503_when_the_database_is_down,
    request_ids_are_echoed_or_generated,
    unknown_routes_and_wrong_methods_answer_the_envelope,
    json_bodies_are_validated_with_the_envelope,
    oversize_bodies_are_refused_with_413,
    internal_errors_and_panics_are_not_leaked,
    slow_requests_time_out_with_503,
    in_flight_requests_finish_during_shutdown,
    connections_are_spread_over_the_serving_threads,
    metrics_are_exposed_for_prometheus,
);

async fn health_reports_the_database(backend: Backend) {
    let srv = start(backend).await;
    let res = srv.get("/health").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "ok");
    assert_eq!(res.json["checks"]["database"]["status"], "ok");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(res.json["checks"]["database"]["backend"], expected);
    assert!(res.json["checks"]["database"]["latency_ms"].is_number());
    assert_eq!(res.json["version"], env!("CARGO_PKG_VERSION"));
    assert!(res.json["uptime_s"].is_u64());
    // Migrations ran: the schema is there.
    let res = srv.get("/probe/db").await;
    assert_eq!(res.json["organizations"], 0);
}

async fn readiness_and_liveness_answer(backend: Backend) {
    let srv = start(backend).await;
    let ready = srv.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["checks"]["migrations"]["status"], "ok");
    let live = srv.get("/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json["status"], "ok");
}

async fn health_is_503_when_the_database_is_down(backend: Backend) {
    let srv = start(backend).await;
    srv.state.db.close().await;
    let res = srv.get("/health").await;
    assert_eq!(res.status, 503, "{}", res.text);
    assert_eq!(res.json["status"], "down");
    assert_eq!(res.json["checks"]["database"]["status"], "down");
    // The driver's error (hosts, users) stays in the log.
    assert_eq!(
        res.json["checks"]["database"]["error"],
        "database unreachable"
    );
    let ready = srv.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    // Liveness is about the process, not its dependencies.
    assert_eq!(srv.get("/health/live").await.status, 200);
    // A route that needs the database fails with the envelope, not a hang or a leak.
    let res = srv.get("/probe/db").await;
    assert!(res.status >= 500, "{}", res.text);
    assert!(!res.text.to_lowercase().contains("pool"), "{}", res.text);
}

async fn request_ids_are_echoed_or_generated(backend: Backend) {
    let srv = start(backend).await;
    let res = srv.get("/health/live").await;
    let generated = res.header("x-request-id").unwrap().to_string();
    assert!(generated.starts_with("req_"), "{generated}");
    let res = srv
        .send(
            srv.client
                .get(srv.url("/health/live"))
                .header("x-request-id", "trace-abc.123"),
        )
        .await;
    assert_eq!(res.header("x-request-id"), Some("trace-abc.123"));
    // An invalid incoming id (too long, or with odd characters) is replaced.
    let res = srv
        .send(
            srv.client
                .get(srv.url("/nope"))
                .header("x-request-id", "x".repeat(300)),
        )
        .await;
    let err = res.assert_error(404, "not_found");
    assert!(err["request_id"].as_str().unwrap().starts_with("req_"));
    let res = srv
        .send(
            srv.client
                .get(srv.url("/health/live"))
                .header("x-request-id", "a b<script>"),
        )
        .await;
    assert!(res.header("x-request-id").unwrap().starts_with("req_"));
}

async fn unknown_routes_and_wrong_methods_answer_the_envelope(backend: Backend) {
    let srv = start(backend).await;
    let err = srv.get("/v1/does-not-exist").await;
    let body = err.assert_error(404, "not_found");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("/v1/does-not-exist"));
    let res = srv.send(srv.client.delete(srv.url("/health"))).await;
    res.assert_error(405, "method_not_allowed");
    assert!(res.header("allow").unwrap().contains("GET"));
    let res = srv.send(srv.client.get(srv.url("/probe/echo"))).await;
    res.assert_error(405, "method_not_allowed");
}

async fn json_bodies_are_validated_with_the_envelope(backend: Backend) {
    let srv = start(backend).await;
    let ok = srv
        .post_json(
            "/probe/echo",
            &json!({"name": "a", "settings": {"retention_days": 7}}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["retention_days"], 7);

    // Malformed JSON.
    let res = srv
        .send(
            srv.client
                .post(srv.url("/probe/echo"))
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await;
    res.assert_error(400, "invalid_request");

    // Unknown fields, top-level and nested, are named.
    let res = srv
        .post_json("/probe/echo", &json!({"name": "a", "nmae": "b"}))
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "nmae");
    let res = srv
        .post_json(
            "/probe/echo",
            &json!({"name": "a", "settings": {"retention_days": 1, "x": 1}}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "settings.x"
    );

    // Wrong type and missing field.
    let res = srv
        .post_json(
            "/probe/echo",
            &json!({"name": "a", "settings": {"retention_days": "many"}}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "settings.retention_days"
    );
    let res = srv.post_json("/probe/echo", &json!({})).await;
    let err = res.assert_error(400, "invalid_request");
    assert!(err["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("name"));

    // Wrong or missing content type.
    let res = srv
        .send(
            srv.client
                .post(srv.url("/probe/echo"))
                .header("content-type", "text/plain")
                .body("{\"name\":\"a\"}"),
        )
        .await;
    res.assert_error(415, "unsupported_media_type");
    let res = srv
        .send(
            srv.client
                .post(srv.url("/probe/echo"))
                .body("{\"name\":\"a\"}"),
        )
        .await;
    res.assert_error(415, "unsupported_media_type");

    // Empty body.
    let res = srv
        .send(
            srv.client
                .post(srv.url("/probe/echo"))
                .header("content-type", "application/json"),
        )
        .await;
    res.assert_error(400, "invalid_request");

    // Bad query strings answer the envelope too.
    let res = srv.get("/probe/sleep?ms=soon").await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "ms"
    );
}

async fn oversize_bodies_are_refused_with_413(backend: Backend) {
    let srv = start(backend).await;
    let big = json!({ "name": "x".repeat(4096) });
    let res = srv.post_json("/probe/echo", &big).await;
    res.assert_error(413, "payload_too_large");
    // Also when the client streams the body without announcing its length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = srv
        .send(
            srv.client
                .post(srv.url("/probe/echo"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    res.assert_error(413, "payload_too_large");
}

async fn internal_errors_and_panics_are_not_leaked(backend: Backend) {
    let srv = start(backend).await;
    let res = srv.get("/probe/internal").await;
    let err = res.assert_error(500, "internal_error");
    assert!(
        !res.text.contains("vault") && !res.text.contains("10.0.0.7"),
        "{}",
        res.text
    );
    assert!(err.get("details").is_none());
    let res = srv.get("/probe/panic").await;
    res.assert_error(500, "internal_error");
    assert!(!res.text.contains("secret"), "{}", res.text);
    // The server is still serving.
    assert_eq!(srv.get("/health/live").await.status, 200);
}

async fn slow_requests_time_out_with_503(backend: Backend) {
    let srv = start(backend).await;
    // The configured limit is 1 s; this handler would take 20 s.
    let res = srv.get("/probe/sleep?ms=20000").await;
    res.assert_error(503, "service_unavailable");
}

async fn in_flight_requests_finish_during_shutdown(backend: Backend) {
    let started = Arc::new(Notify::new());
    let mut srv = start_notifying(backend, started.clone()).await;
    let client = srv.client.clone();
    let url = srv.url("/probe/sleep?ms=600");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    // Shut down only once the handler is running.
    started.notified().await;
    srv.begin_shutdown();
    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["slept_ms"], 600);
    // The server task ends cleanly, and new connections are refused.
    let handle = srv.handle.take().unwrap();
    handle.await.unwrap().unwrap();
    assert!(srv
        .client
        .get(srv.url("/health/live"))
        .send()
        .await
        .is_err());
}

/// Each new connection goes to the serving thread with the fewest open connections, and all
/// of its requests are served there.
async fn connections_are_spread_over_the_serving_threads(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.serve_threads = 3),
            extra_routes: probe_routes(Arc::new(Notify::new())),
            ..Default::default()
        },
    )
    .await;
    // Six kept-alive connections, opened one after the other (raw HTTP/1.1, so that each
    // request surely goes over its own connection).
    let mut served_by = std::collections::BTreeMap::<String, usize>::new();
    let mut connections = Vec::new();
    for _ in 0..6 {
        let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        let thread = thread_of(&mut tcp).await;
        for _ in 0..3 {
            assert_eq!(
                thread_of(&mut tcp).await,
                thread,
                "a connection changed threads"
            );
        }
        *served_by.entry(thread).or_default() += 1;
        connections.push(tcp);
    }
    let expected: std::collections::BTreeMap<String, usize> = (0..3)
        .map(|i| (format!("gatehouse-serve-{i}"), 2))
        .collect();
    assert_eq!(served_by, expected);
}

/// `GET /probe/thread` over an open connection: the name of the thread that served it.
async fn thread_of(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    tcp.write_all(b"GET /probe/thread HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

async fn metrics_are_exposed_for_prometheus(backend: Backend) {
    let srv = start(backend).await;
    srv.get("/health").await;
    srv.get("/nope").await;
    // A plain GET (curl, a browser, a scraper that does not negotiate): the Prometheus text
    // format, which every Prometheus-compatible scraper reads.
    let res = srv.get("/metrics").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!res.text.contains("# EOF"), "{}", res.text);
    assert!(res
        .text
        .contains("# TYPE gatehouse_http_requests_total counter"));
    // OpenMetrics when asked for, as Prometheus asks.
    let open = srv
        .send(srv.client.get(srv.url("/metrics")).header(
            "accept",
            "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ))
        .await;
    assert_eq!(open.status, 200);
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.text.ends_with("# EOF\n"), "{}", open.text);
    assert!(open.text.contains("# TYPE gatehouse_http_requests counter"));
    assert!(
        res.text.contains(
            r#"gatehouse_http_requests_total{method="GET",route="/health",status="200"} 1"#
        ),
        "{}",
        res.text
    );
    assert!(res.text.contains(r#"route="unmatched",status="404""#));
    assert!(res
        .text
        .contains("gatehouse_http_request_duration_seconds_bucket"));
}
