//! The test harness every integration test uses: the real server, on an ephemeral port, over
//! real HTTP, against a fresh SQLite file **or** a fresh PostgreSQL database (created for the
//! test and dropped after it). `on_both_databases!(test_fn, …)` runs each body on both.
//!
//! PostgreSQL is `GATEHOUSE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! With `CI=true` an unreachable PostgreSQL fails the test; otherwise it is skipped, loudly.

#![allow(dead_code)]

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
        database_url: db.url.clone(),
        database_max_connections: 5,
        master_key: Some(gatehouse::crypto::MasterKey::generate_hex()),
        bootstrap_admin: false,
        ..Config::default()
    }
}

pub struct ServerOptions {
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub extra_routes: Router<AppState>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            configure: Box::new(|_| {}),
            extra_routes: Router::new(),
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
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
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

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        Response::from(
            self.client
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
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
