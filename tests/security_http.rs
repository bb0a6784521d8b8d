//! Security issue #20, the HTTP layer: slow headers and declared oversize bodies (8), NUL
//! characters (9), an unavailable database (10), bounded metric labels (11), the envelope on
//! the HTTP parser's own refusals and `Connection: close` on early answers (14).
//!
//! The connection-level tests speak raw HTTP/1.1 over a TCP socket: what they check (a closed
//! connection, a response head written by the parser) is invisible to an HTTP client.

mod common;

use std::time::Duration;

use common::{Backend, ServerOptions, TestServer, PASSWORD};
use gatehouse::environment::Environment;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

on_both_databases!(
    nul_characters_are_refused_naming_the_field,
    nul_characters_in_a_gateway_model_do_not_break_the_usage_log,
    an_unavailable_database_answers_503,
);

/// A bound for every wait on the server (a guard, not a measurement).
const GUARD: Duration = Duration::from_secs(15);

/// One raw response: status, lower-cased headers, body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The SPEC's envelope with this status and code, its request id in the header too.
    #[track_caller]
    fn assert_envelope(&self, status: u16, code: &str) {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{self:?} {text}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let err = &self.json()["error"];
        assert_eq!(err["code"], code, "{text}");
        assert_eq!(err["status"], status, "{text}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        let id = err["request_id"].as_str().expect("request_id");
        assert_eq!(self.header("x-request-id"), Some(id));
    }
}

/// Reads one response (head, then `content-length` bytes of body) from `tcp`.
async fn read_response(tcp: &mut TcpStream) -> Raw {
    tokio::time::timeout(GUARD, async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before a response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside a body");
            body.extend_from_slice(&chunk[..n]);
        }
        Raw {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("no response within the guard")
}

/// Whether the server closes `tcp` (reads return end-of-file or a reset) within the guard;
/// anything the server sends before is discarded.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    tokio::time::timeout(GUARD, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

async fn sqlite_server(
    configure: impl FnOnce(&mut gatehouse::config::Config) + Send + 'static,
) -> TestServer {
    TestServer::start_with(
        Backend::Sqlite,
        ServerOptions {
            configure: Box::new(configure),
            ..Default::default()
        },
    )
    .await
}

// ---- 8: slow headers, declared oversize bodies -------------------------------------------

/// A connection that does not finish its request head within `header_read_timeout_secs` is
/// closed: a half-sent head, a connection that sends nothing, and one stuck on the first bytes
/// of the HTTP/2 preface (before the protocol is known). Complete requests are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    let srv = sqlite_server(|c| c.header_read_timeout_secs = 1).await;
    let mut half = TcpStream::connect(srv.addr).await.unwrap();
    half.write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\nx-slow: 1\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut preface = TcpStream::connect(srv.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2").await.unwrap();
    // A kept-alive connection: its first request is answered, then it goes quiet mid-head.
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.status, 200);
    kept.write_all(b"GET /health/live HTTP/1.1\r\n")
        .await
        .unwrap();

    assert!(
        closed_by_server(&mut half).await,
        "half-sent head kept open"
    );
    assert!(
        closed_by_server(&mut silent).await,
        "silent connection kept open"
    );
    assert!(
        closed_by_server(&mut preface).await,
        "partial preface kept open"
    );
    assert!(
        closed_by_server(&mut kept).await,
        "kept-alive half head kept open"
    );
    // Meanwhile, and after, whole requests are answered.
    let res = srv.get("/health/live").await;
    assert_eq!(res.status, 200);
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HTTP/2 (prior knowledge) connection: the preface and an empty SETTINGS frame.
async fn h2_connection(srv: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    tcp.write_all(&hello).await.unwrap();
    tcp
}

/// HTTP/2 connections are watched like HTTP/1 ones: one that has answered its request and
/// then stays idle, one that never starts a request, and one that trickles a header block
/// (HEADERS without END_HEADERS, then a CONTINUATION now and then) are all closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_http2_connections_are_closed() {
    let srv = sqlite_server(|c| c.header_read_timeout_secs = 1).await;
    // GET /health/live (HPACK: :method GET, :scheme http, :path literal, :authority literal).
    let mut block = vec![0x82, 0x86, 0x04, 12];
    block.extend_from_slice(b"/health/live");
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    let mut served = h2_connection(&srv).await;
    served
        .write_all(&h2_frame(0x1, 0x4 | 0x1, 1, &block))
        .await
        .unwrap();
    // The answer arrives (a HEADERS frame on stream 1 among the server's frames)…
    let mut seen = Vec::new();
    tokio::time::timeout(GUARD, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = served.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering");
            seen.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while at + 9 <= seen.len() {
                let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
                let stream = u32::from_be_bytes(seen[at + 5..at + 9].try_into().unwrap());
                if seen[at + 3] == 0x1 && stream == 1 {
                    return;
                }
                at += 9 + len;
            }
        }
    })
    .await
    .expect("no answer on stream 1");
    let mut silent = h2_connection(&srv).await;
    let mut trickling = h2_connection(&srv).await;
    trickling
        .write_all(&h2_frame(0x1, 0x1, 1, &[0x82, 0x86]))
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // A CONTINUATION frame (one byte of the block) every 200 ms, until the server hangs up.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if trickling
                .write_all(&h2_frame(0x9, 0, 1, &[0x84]))
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    });

    assert!(
        closed_by_server(&mut served).await,
        "idle HTTP/2 connection kept open after its answer"
    );
    assert!(
        closed_by_server(&mut silent).await,
        "HTTP/2 connection without a request kept open"
    );
    assert!(
        trickle.await.unwrap(),
        "trickled HTTP/2 header block kept open for 20 s"
    );
}

/// A connection serving a request is not cut off by the watchdog, however long the request
/// takes: here a body uploaded slowly, over more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_progress_is_not_cut_off() {
    let srv = sqlite_server(|c| c.header_read_timeout_secs = 1).await;
    let body = br#"{"email":"slow@example.com","password":"not-the-password"}"#;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /v1/auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Four pieces, 700 ms apart: 2.1 s of upload, over the 1 s limit (and its 1¼ s bound).
    for piece in body.chunks(body.len().div_ceil(4)) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tcp.write_all(piece).await.unwrap();
    }
    let res = read_response(&mut tcp).await;
    res.assert_envelope(401, "unauthorized");
}

/// A declared `Content-Length` over the limit is refused at once, before any byte of the body
/// (and before credentials are looked at), on the control plane and on the gateway, and the
/// connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversize_bodies_are_refused_before_the_body() {
    let srv = sqlite_server(|c| {
        c.max_body_bytes = 1024;
        c.gateway_max_body_bytes = 4096;
    })
    .await;
    for (path, declared) in [
        ("/v1/auth/register", 2048),
        ("/openai/v1/chat/completions", 8192),
    ] {
        let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {declared}\r\n\r\n{{\"model\":"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The rest of the body is never sent: the answer must not wait for it.
        let res = read_response(&mut tcp).await;
        res.assert_envelope(413, "payload_too_large");
        assert_eq!(res.header("connection"), Some("close"), "{path}");
        assert!(
            closed_by_server(&mut tcp).await,
            "{path}: connection kept open"
        );
    }
    // Within the limit, the gateway still asks for a key (nothing refused early).
    let res = srv
        .send(
            srv.client
                .post(srv.url("/openai/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(format!("{{\"model\":\"{}\"}}", "m".repeat(2000))),
        )
        .await;
    res.assert_error(401, "unauthorized");
}

// ---- 14: the parser's own refusals, early answers -----------------------------------------

/// Requests the HTTP parser refuses (a malformed request line, a URI over 64 KiB, too many
/// headers) are answered with the SPEC's envelope, not a bare status line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_refusals_answer_the_envelope() {
    let srv = sqlite_server(|_| {}).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: test\r\n\r\n", "a".repeat(70_000));
    let many_headers = format!(
        "GET /health/live HTTP/1.1\r\nhost: test\r\n{}\r\n",
        (0..150)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    for (request, status) in [
        ("this is not http\r\n\r\n".to_string(), 400),
        (
            "GET /health/live HTTP/1.1\r\nbad header line\r\n\r\n".to_string(),
            400,
        ),
        (long_uri, 414),
        (many_headers, 431),
    ] {
        let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let res = read_response(&mut tcp).await;
        res.assert_envelope(status, "invalid_request");
        assert_eq!(res.header("connection"), Some("close"));
        assert!(res.json()["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_"));
    }
    // The server is still serving.
    assert_eq!(srv.get("/health/live").await.status, 200);
}

/// An answer given before the request body is read (here 401: no credentials) says
/// `Connection: close` and closes, rather than leaving the client to send a body the server
/// will not read on a connection it believes is still usable. An answer after the body was
/// read keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_to_requests_with_a_body_close_the_connection() {
    let srv = sqlite_server(|_| {}).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/organizations HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
          content-length: 5000\r\n\r\n{\"name\": \"Acme\", \"pad\": \"",
    )
    .await
    .unwrap();
    let res = read_response(&mut tcp).await;
    res.assert_envelope(401, "unauthorized");
    assert_eq!(res.header("connection"), Some("close"));
    assert!(closed_by_server(&mut tcp).await, "connection kept open");

    // The body read (a login that fails): the connection stays usable.
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let body = json!({"email": "nobody@example.com", "password": "wrong-password"}).to_string();
    let request = format!(
        "POST /v1/auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let res = read_response(&mut tcp).await;
    res.assert_envelope(401, "unauthorized");
    assert_eq!(res.header("connection"), None);
    tcp.write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut tcp).await.status, 200);
}

// ---- 11: metric labels ------------------------------------------------------------------

/// Invented methods do not become label values: they are counted as `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_share_one_metric_label() {
    let srv = sqlite_server(|_| {}).await;
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let res = srv
            .send(srv.client.request(method, srv.url("/health")))
            .await;
        assert_eq!(res.status, 405, "{}", res.text);
    }
    let res = srv.get("/metrics").await;
    assert_eq!(res.status, 200);
    assert!(!res.text.contains("INVENTED"), "{}", res.text);
    let other: f64 = res
        .text
        .lines()
        .filter(|l| {
            l.starts_with("gatehouse_http_requests_total{") && l.contains(r#"method="other""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(other, 5.0, "{}", res.text);
}

// ---- 9: NUL characters --------------------------------------------------------------------

async fn nul_characters_are_refused_naming_the_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // Unauthenticated JSON bodies.
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "nul@example.com", "password": PASSWORD, "name": "a\u{0}b"}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "name", "{}", res.text);
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "nul\u{0}@example.com", "password": PASSWORD}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "email", "{}", res.text);

    // Nothing was stored; the same registration without the NUL works.
    let reg = srv.register("nul@example.com").await;
    let token = reg["access_token"].as_str().unwrap().to_string();
    let org = srv
        .post_as(
            "/v1/organizations",
            &token,
            &json!({"name": "Acme", "slug": "acme"}),
        )
        .await;
    assert_eq!(org.status, 201, "{}", org.text);
    // A nested field, authenticated.
    let res = srv
        .patch_as("/v1/me", &token, &json!({"metadata": {"team": "x\u{0}"}}))
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "metadata.team", "{}", res.text);

    // Query parameters, named.
    let res = srv
        .get_as(
            "/v1/organizations/acme/analytics/logs?limit=5&model=gpt%00x",
            &token,
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "model", "{}", res.text);
    // Path parameters.
    let res = srv.get_as("/v1/organizations/acme%00", &token).await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "path", "{}", res.text);
    // Unauthenticated too (before credentials are looked at).
    let res = srv.get("/v1/organizations/acme%00x").await;
    res.assert_error(400, "invalid_request");

    // The server is unharmed.
    let res = srv.get_as("/v1/organizations/acme", &token).await;
    assert_eq!(res.status, 200, "{}", res.text);
}

/// A model name with a NUL (from a client's body) is stored cleaned, not lost with the batch.
async fn nul_characters_in_a_gateway_model_do_not_break_the_usage_log(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = common::fixtures::an_org(&srv).await;
    let (base, owner) = (&o.base, &o.owner);
    let key = o
        .a_key_token(&srv, Environment::Test, &["gateway:proxy"])
        .await;
    let chat = json!({"model": "mock\u{0}model", "messages": [{"role": "user", "content": "hi"}]});
    let res = srv
        .post_as("/openai/v1/chat/completions", &key, &chat)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.wait_for_usage_logs(1).await;
    let res = srv.get_as(&format!("{base}/analytics/logs"), owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json["logs"][0]["model"], "mock\u{FFFD}model",
        "{}",
        res.text
    );
}

// ---- 10: the database unavailable ---------------------------------------------------------

/// The database becomes unusable under a running server: PostgreSQL loses the database (its
/// connections terminated, the database renamed away); the SQLite file is locked by another
/// process. Requests that need it answer 503 `service_unavailable` with `Retry-After`, and the
/// server recovers when the database is back.
async fn an_unavailable_database_answers_503(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("before@example.com").await;
    let register = json!({"email": "during@example.com", "password": PASSWORD, "name": "D"});
    match backend {
        Backend::Postgres => {
            let name = url::Url::parse(&srv.db.url).unwrap().path()[1..].to_string();
            let mut admin = sqlx::AnyConnection::connect(&common::postgres_admin_url())
                .await
                .unwrap();
            for sql in [
                format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
                format!("ALTER DATABASE {name} RENAME TO {name}_gone"),
            ] {
                sqlx::query(&sql).execute(&mut admin).await.unwrap();
            }
            let res = srv.post_json("/v1/auth/register", &register).await;
            res.assert_error(503, "service_unavailable");
            assert_eq!(res.header("retry-after"), Some("5"));
            assert!(!res.text.contains(&name), "{}", res.text);
            for sql in [
                format!("ALTER DATABASE {name}_gone RENAME TO {name}"),
                format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
            ] {
                sqlx::query(&sql).execute(&mut admin).await.unwrap();
            }
        }
        Backend::Sqlite => {
            let mut other = sqlx::AnyConnection::connect(&srv.db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut other)
                .await
                .unwrap();
            // The server waits out its busy timeout, then answers.
            let res = srv.post_json("/v1/auth/register", &register).await;
            res.assert_error(503, "service_unavailable");
            assert_eq!(res.header("retry-after"), Some("5"));
            sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        }
    }
    // Back: the server serves again without a restart.
    let res = srv.post_json("/v1/auth/register", &register).await;
    assert_eq!(res.status, 201, "{}", res.text);
}
