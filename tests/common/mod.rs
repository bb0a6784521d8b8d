//! The test harness every integration test uses: the real server, on an ephemeral port, over
//! real HTTP, against a fresh SQLite file **or** a fresh PostgreSQL database (created for the
//! test and dropped after it). `on_both_databases!(test_fn, …)` runs each body on both.
//!
//! PostgreSQL is `GATEHOUSE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! With `CI=true` an unreachable PostgreSQL fails the test; otherwise it is skipped, loudly.

#![allow(dead_code)]

pub mod fixtures;
pub mod process;
pub mod shape;

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use gatehouse::{app::AppState, config::Config};
use serde_json::Value;
use sqlx::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod <test> { sqlite, postgres }` running `<test>(Backend)` on each database.
#[macro_export]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::postgres_available(stringify!($test)).await {
                    super::$test($crate::common::Backend::Postgres).await
                }
            }
        }
    )*};
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn postgres_admin_url() -> String {
    std::env::var("GATEHOUSE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// True when PostgreSQL answers. In CI its absence fails the run; elsewhere it is reported.
pub async fn postgres_available(test: &str) -> bool {
    sqlx::any::install_default_drivers();
    let ok = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::AnyConnection::connect(&postgres_admin_url()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !ok {
        if in_ci() {
            panic!(
                "PostgreSQL at {} is unreachable and CI=true",
                postgres_admin_url()
            );
        }
        eprintln!(
            "\n!!! SKIPPED {test} on PostgreSQL: {} is unreachable (start it, or run with CI=true to fail) !!!\n",
            postgres_admin_url()
        );
    }
    ok
}

/// True when Redis answers (same CI rule as PostgreSQL).
pub async fn redis_available(test: &str) -> bool {
    let ok = match gatehouse::redis::Redis::new(&redis_url()) {
        Ok(r) => r.ping(Duration::from_secs(3)).await.is_ok(),
        Err(_) => false,
    };
    if !ok {
        if in_ci() {
            panic!("Redis at {} is unreachable and CI=true", redis_url());
        }
        eprintln!(
            "\n!!! SKIPPED {test} on Redis: {} is unreachable !!!\n",
            redis_url()
        );
    }
    ok
}

/// A fresh database for one test: an SQLite file in a temporary directory, or a new
/// PostgreSQL database dropped when this value is.
pub struct TestDatabase {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => TestDatabase {
                url: format!("sqlite://{}", dir.path().join("gatehouse.db").display()),
                dir,
                pg_name: None,
            },
            Backend::Postgres => {
                sqlx::any::install_default_drivers();
                let name = format!(
                    "gh_test_{}",
                    gatehouse::crypto::random_base62(12).to_lowercase()
                );
                let mut conn = sqlx::AnyConnection::connect(&postgres_admin_url())
                    .await
                    .expect("PostgreSQL connection");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                let mut url = url::Url::parse(&postgres_admin_url()).unwrap();
                url.set_path(&name);
                TestDatabase {
                    url: url.to_string(),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Dropping runs outside the test's runtime, which may be shutting down.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::AnyConnection::connect(&postgres_admin_url()).await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// The configuration a test server starts from: fast, quiet, self-contained.
pub fn test_config(db: &TestDatabase) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.as_str().into(),
        database_max_connections: 5,
        master_key: Some(gatehouse::crypto::MasterKey::generate_hex().into()),
        bootstrap_admin: false,
        ..Config::default()
    }
}

pub struct ServerOptions {
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub extra_routes: Router<AppState>,
    /// Run the webhook delivery worker beside the server (as `gatehouse serve` does).
    pub delivery_worker: bool,
}

impl ServerOptions {
    /// Rate limits out of the way (every per-minute limit at 100,000): for tests that call many
    /// routes many times (the route table's walk, the API fuzzing).
    pub fn without_rate_limits() -> ServerOptions {
        ServerOptions {
            configure: Box::new(|c| {
                let l = &mut c.rate_limits;
                l.unauthenticated_per_minute = 100_000;
                l.analytics_per_minute = 100_000;
                l.management_per_minute = 100_000;
                l.api_key_per_minute = 100_000;
                l.gateway_key_per_minute = 100_000;
                l.user_per_minute = 100_000;
                l.login_attempts = 100_000;
            }),
            ..Default::default()
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            configure: Box::new(|_| {}),
            extra_routes: Router::new(),
            delivery_worker: false,
        }
    }
}

/// A running server. Stops (gracefully) and drops its database when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    worker: Option<gatehouse::events::delivery::WorkerHandle>,
    pub db: TestDatabase,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, ServerOptions::default()).await
    }

    pub async fn start_with(backend: Backend, options: ServerOptions) -> TestServer {
        let db = TestDatabase::create(backend).await;
        let mut config = test_config(&db);
        (options.configure)(&mut config);
        let state = gatehouse::server::build_state(config)
            .await
            .expect("server state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let worker = options
            .delivery_worker
            .then(|| gatehouse::events::delivery::spawn(state.clone()).expect("delivery worker"));
        let app = gatehouse::http::router_with(state.clone(), options.extra_routes);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(gatehouse::http::serve(
            listener,
            app,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(10),
        ));
        TestServer {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            state,
            shutdown: Some(tx),
            handle: Some(handle),
            worker,
            db,
        }
    }

    /// A server whose [`second_node`](Self::second_node)s hear its invalidations: over
    /// PostgreSQL's `NOTIFY`, or over Redis on SQLite (`None`, reported, when Redis is
    /// unreachable).
    pub async fn start_with_a_bus(backend: Backend, test: &str) -> Option<TestServer> {
        if backend == Backend::Sqlite && !redis_available(test).await {
            return None;
        }
        let options = ServerOptions {
            configure: Box::new(move |c| {
                if backend == Backend::Sqlite {
                    c.redis_url = Some(redis_url().into());
                }
            }),
            ..Default::default()
        };
        Some(Self::start_with(backend, options).await)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits (up to 10 s) until the gateway's batching writer has stored `n` usage-log entries:
    /// it writes off the request path.
    pub async fn wait_for_usage_logs(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_logs")
                .fetch_one(self.state.db.pool())
                .await
                .unwrap();
            if stored as usize >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {stored} usage logs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A second node of the same deployment (same configuration, database and Redis) on its
    /// own port: its base URL and its task (abort it to stop the node).
    pub async fn second_node(&self) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>) {
        self.second_node_with(|_| {}).await
    }

    /// A second node whose configuration differs from this one's by `change` (the same
    /// database: an operator changing a setting and restarting).
    pub async fn second_node_with(
        &self,
        change: impl FnOnce(&mut Config),
    ) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let mut config = self.state.config.clone();
        change(&mut config);
        let state = gatehouse::server::build_state(config)
            .await
            .expect("second node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = gatehouse::http::router(state);
        let handle = tokio::spawn(gatehouse::http::serve(
            listener,
            app,
            std::future::pending::<()>(),
            Duration::from_secs(1),
        ));
        (base, handle)
    }

    /// Begins graceful shutdown (what SIGTERM does in the binary).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        Response::from(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// The body is serialized at once, so the future borrows only the server.
    pub fn post_json<'a>(
        &'a self,
        path: &str,
        body: &Value,
    ) -> impl std::future::Future<Output = Response> + use<'a> {
        let req = self.client.post(self.url(path)).json(body);
        self.send(req)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Response {
        Response::from(req.send().await.unwrap()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }
}

/// A response read whole: status, headers and JSON body (Null when not JSON).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Response {
    pub async fn from(res: reqwest::Response) -> Response {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the SPEC's error envelope with this status and code, and returns the error.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let err = &self.json["error"];
        assert_eq!(err["code"], code, "unexpected code; body: {}", self.text);
        assert_eq!(
            err["status"], status,
            "envelope status; body: {}",
            self.text
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "envelope message; body: {}",
            self.text
        );
        let rid = err["request_id"].as_str().expect("envelope request_id");
        assert_eq!(
            Some(rid),
            self.header("x-request-id"),
            "request id in body and header"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        err
    }
}

pub const PASSWORD: &str = "correct-horse-battery-staple";

/// Calls with a bearer token, and the identity helpers most tests start from.
impl TestServer {
    pub fn call<'a>(
        &'a self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> impl std::future::Future<Output = Response> + use<'a> {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req)
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn put_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn delete_as(&self, path: &str, token: &str) -> Response {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Asserts that the list at `path` (its rows under `key`, `total` of them, named by `id`
    /// or, for configs, `key`) pages by `limit`/`offset` as SPEC §1 says: `limit=1` gives one
    /// row with the full `total` and `has_more` until the last, the offsets walk every row once
    /// in the unpaged list's order, and an offset past the end gives none.
    pub async fn assert_pages(&self, path: &str, token: &str, key: &str, total: usize) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let name = |row: &Value| {
            row.get("id")
                .or_else(|| row.get("key"))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let mut walked = Vec::new();
        for offset in 0..=total {
            let page = self
                .get_as(&format!("{path}{sep}limit=1&offset={offset}"), token)
                .await;
            assert_eq!(page.status, 200, "{path}: {}", page.text);
            let rows = page.json[key].as_array().expect("the list's rows");
            assert_eq!(
                rows.len(),
                usize::from(offset < total),
                "{path}: {}",
                page.text
            );
            assert_eq!(page.json["total"], total, "{path}: {}", page.text);
            assert_eq!(page.json["limit"], 1, "{path}: {}", page.text);
            assert_eq!(page.json["offset"], offset, "{path}: {}", page.text);
            assert_eq!(
                page.json["has_more"],
                offset + 1 < total,
                "{path}: {}",
                page.text
            );
            walked.extend(rows.iter().map(name));
        }
        let all = self.get_as(path, token).await;
        let unpaged: Vec<Value> = all.json[key].as_array().unwrap().iter().map(name).collect();
        assert_eq!(
            walked, unpaged,
            "{path}: the pages walk the list once, in order"
        );
        assert!(walked.iter().all(|n| !n.is_null()), "{path}: {}", all.text);
    }

    /// Creates a platform admin (directly, as `gatehouse admin create` does) and signs it in.
    pub async fn admin_token(&self) -> String {
        self.admin_account().await.1
    }

    /// A new platform admin's email (its password is [`PASSWORD`]) and access token.
    pub async fn admin_account(&self) -> (String, String) {
        let email = format!(
            "admin-{}@example.com",
            gatehouse::crypto::random_base62(6).to_lowercase()
        );
        gatehouse::auth::users::create(
            &self.state.db,
            &gatehouse::events::ActorContext::system(),
            gatehouse::auth::users::NewUser::platform_admin(&email, "Admin", PASSWORD),
        )
        .await
        .expect("admin user");
        let token = self.login(&email, PASSWORD).await;
        (email, token)
    }

    /// Registers a user with [`PASSWORD`]; returns the registration body (user + tokens).
    pub async fn register(&self, email: &str) -> Value {
        let res = self
            .post_json(
                "/v1/auth/register",
                &serde_json::json!({"email": email, "password": PASSWORD, "name": "Test User"}),
            )
            .await;
        assert_eq!(res.status, 201, "register: {}", res.text);
        res.json
    }

    /// Signs in with a password; returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let res = self
            .post_json(
                "/v1/auth/login",
                &serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(res.status, 200, "login: {}", res.text);
        res.json["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// The newest message to `to` whose subject contains `subject`, waiting for the
    /// background delivery (bounded).
    pub async fn mail(&self, admin: &str, to: &str, subject: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let res = self
                .get_as(&format!("/v1/admin/mailbox?to={to}"), admin)
                .await;
            assert_eq!(res.status, 200, "{}", res.text);
            if let Some(m) = res.json["messages"].as_array().and_then(|ms| {
                ms.iter()
                    .find(|m| m["subject"].as_str().unwrap_or("").contains(subject))
            }) {
                return m["body"].as_str().unwrap().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no mail '{subject}' to {to}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The whole reset flow a mailbox owner goes through: forgot-password, the reset mail's
    /// token, reset-password with `new_password` (asserted accepted).
    pub async fn reset_password(&self, admin: &str, email: &str, new_password: &str) {
        self.post_json(
            "/v1/auth/forgot-password",
            &serde_json::json!({"email": email}),
        )
        .await;
        let mail = self.mail(admin, email, "Reset").await;
        let reset = mail
            .split_whitespace()
            .find(|w| w.starts_with("rst_"))
            .expect("a reset token in the mail");
        let res = self
            .post_json(
                "/v1/auth/reset-password",
                &serde_json::json!({"token": reset, "new_password": new_password}),
            )
            .await;
        assert_eq!(res.status, 204, "{}", res.text);
    }

    /// Number of messages to `to` (for tests that a mail was *not* sent).
    pub async fn mail_count(&self, admin: &str, to: &str) -> u64 {
        let res = self
            .get_as(&format!("/v1/admin/mailbox?to={to}"), admin)
            .await;
        res.json["total"].as_u64().unwrap()
    }
}

/// The text an OpenAI chat-completions stream (server-sent events, as sent) spells out: its
/// chunks' `delta.content`, after asserting that it ends with `data: [DONE]`. An event may
/// follow other output on its line (curl prints an answer without a final newline).
#[track_caller]
pub fn openai_stream_text(sse: &str) -> String {
    let data: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.split_once("data: ").map(|(_, d)| d))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{sse}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("a JSON event"))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// The first run of `digits` consecutive ASCII digits in `text`.
pub fn find_code(text: &str, digits: usize) -> String {
    let bytes = text.as_bytes();
    (0..bytes.len())
        .find_map(|i| {
            let run = &text[i..];
            let n = run.bytes().take_while(u8::is_ascii_digit).count();
            (n == digits && (i == 0 || !bytes[i - 1].is_ascii_digit()))
                .then(|| run[..digits].to_string())
        })
        .expect("a code in the mail")
}

/// Runs `cmd` (a Python script of the suite) off the async runtime, fails the test with its
/// output (`what` failed, and where to look) unless it succeeds, and returns its standard output
/// read as the JSON summary the script prints.
pub async fn run_json_script(mut cmd: std::process::Command, what: &str) -> Value {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The project's `.venv` Python when `module` imports there (`tests/requirements.txt`, installed by
/// `.ci/run`); otherwise `None` after a loud skip notice — and under `CI=true`, a failure.
pub fn venv_python_with(module: &str) -> Option<std::path::PathBuf> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ready = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Some(python);
    }
    assert!(
        !in_ci(),
        "CI=true but .venv lacks {module} (.ci/run installs tests/requirements.txt)"
    );
    eprintln!(
        "\n!!! SKIPPED: .venv lacks {module}: python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt !!!\n"
    );
    None
}
