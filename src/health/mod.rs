//! Health and operations (SPEC §9): `/health`, `/health/ready`, `/health/live`, `/metrics`.

use axum::http::HeaderName;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde::Serialize;

use crate::{app::AppState, http::routes::Routes, metrics::ExpositionFormat};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> Routes {
    Routes::new()
        .get("/health", health)
        .get("/health/ready", ready)
        .get("/health/live", live)
        .get("/metrics", metrics)
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "HealthStatus")]
pub enum Status {
    Ok,
    Degraded,
    Down,
}

/// One dependency's state.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "HealthCheck")]
pub struct Check {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
}

impl Check {
    fn from_result<E: std::fmt::Display>(
        r: Result<Result<Duration, E>, tokio::time::error::Elapsed>,
        failed: Status,
    ) -> Check {
        match r {
            Ok(Ok(d)) => Check {
                status: Status::Ok,
                latency_ms: Some((d.as_secs_f64() * 1e5).round() / 100.0),
                error: None,
                backend: None,
            },
            Ok(Err(e)) => Check {
                status: failed,
                latency_ms: None,
                error: Some(e.to_string()),
                backend: None,
            },
            Err(_) => Check {
                status: failed,
                latency_ms: None,
                error: Some("timed out".into()),
                backend: None,
            },
        }
    }
}

async fn database_check(state: &AppState) -> Check {
    let mut check = Check::from_result(
        tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()).await,
        Status::Down,
    );
    if check.status != Status::Ok {
        // The driver's message can name hosts and users: keep it in the log, not the body.
        tracing::warn!(error = ?check.error, "database health check failed");
        check.error = Some("database unreachable".into());
    }
    check.backend = Some(state.db.backend().name());
    check
}

/// The rate limiter: `degraded` while it should share limits through Redis but cannot, and so
/// enforces them per node.
fn limits_check(state: &AppState) -> Check {
    let degraded = state.limiter.is_degraded();
    Check {
        status: if degraded {
            Status::Degraded
        } else {
            Status::Ok
        },
        latency_ms: None,
        error: degraded.then(|| {
            "redis unreachable: rate limits are node-local (enforced in this node's memory) until it answers again".into()
        }),
        backend: Some(state.limiter.backend()),
    }
}

/// `GET /health`: the node's overall state and each dependency's.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Health {
    /// `ok`, `degraded` (working, with a dependency down or node-local) or `down` (503).
    pub status: Status,
    pub version: &'static str,
    /// Seconds since this node started.
    pub uptime_s: u64,
    /// `database`, `rate_limits`, and `redis` when one is configured.
    pub checks: BTreeMap<&'static str, Check>,
}

/// `GET /health/ready`: whether this node can serve (database reachable, migrations applied).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Readiness {
    pub status: Status,
    pub checks: ReadinessChecks,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReadinessChecks {
    pub database: Check,
    pub migrations: StatusOnly,
}

/// `GET /health/live` (and the migrations' check): a state alone.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatusOnly {
    pub status: Status,
}

pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    let database = database_check(&state).await;
    let mut checks = BTreeMap::new();
    let mut overall = database.status;
    if let Some(redis) = &state.redis {
        let mut check = Check::from_result(
            tokio::time::timeout(CHECK_TIMEOUT, redis.ping(CHECK_TIMEOUT)).await,
            Status::Degraded,
        );
        if check.status != Status::Ok {
            tracing::warn!(error = ?check.error, "redis health check failed");
            check.error = Some("redis unreachable; limits and caches are node-local".into());
            if overall == Status::Ok {
                overall = Status::Degraded;
            }
        }
        checks.insert("redis", check);
    }
    let limits = limits_check(&state);
    if limits.status != Status::Ok && overall == Status::Ok {
        overall = Status::Degraded;
    }
    checks.insert("rate_limits", limits);
    checks.insert("database", database);
    let code = if overall == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(Health {
            status: overall,
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: state.started_at.elapsed().as_secs(),
            checks,
        }),
    )
}

async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let database = database_check(&state).await;
    let migrated =
        database.status == Status::Ok && state.db.migrations_applied().await.unwrap_or(false);
    let status = if migrated { Status::Ok } else { Status::Down };
    let code = if migrated {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            status,
            checks: ReadinessChecks {
                database,
                migrations: StatusOnly { status },
            },
        }),
    )
}

async fn live() -> axum::Json<StatusOnly> {
    Json(StatusOnly { status: Status::Ok })
}

/// The Prometheus text format, or OpenMetrics when `Accept` asks for it.
async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ([(HeaderName, &'static str); 2], String) {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = ExpositionFormat::negotiate(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        state.metrics.render_as(format),
    )
}
