//! HTTP: the router (every area of the API, merged in one place), the layers every request
//! passes through, and serving with graceful shutdown.

pub mod extract;
pub mod idempotency;
pub mod middleware;
pub mod openapi;
pub mod pagination;
pub mod request_meta;
pub mod routes;
pub mod serving;

pub use serving::serve;

use axum::{extract::DefaultBodyLimit, http::StatusCode, middleware as mw, Router};
use tower_http::timeout::TimeoutLayer;

use crate::app::AppState;

/// Every route of the API. Reading this function tells you every area of the product.
pub fn router(state: AppState) -> middleware::App {
    router_with(state, Router::new())
}

/// The control plane's routes, every area, through the recording builder (tests generate
/// per-route checks from its table).
pub fn api_routes() -> routes::Routes {
    routes::Routes::new()
        .merge(crate::health::routes())
        .merge(crate::auth::routes())
        .merge(crate::admin::routes())
        .merge(crate::orgs::routes())
        .merge(crate::admin::orgs::routes())
        .merge(crate::events::routes::routes())
        .merge(crate::keys::routes())
        .merge(crate::gateway::routes())
        .merge(crate::policies::routes())
        .merge(crate::billing::routes())
        .merge(crate::compat::routes())
        .merge(crate::console::routes())
        .merge(openapi::routes())
}

/// Every route as the OpenAPI document describes it: the control plane's, then the gateway's.
pub fn documented_routes() -> Vec<openapi::DocumentedRoute> {
    let mut all = api_routes().documented().to_vec();
    all.extend_from_slice(data_plane_routes().documented());
    all
}

/// A `start`/`end` query bound: an RFC 3339 timestamp, in the stored format.
pub fn time_bound(field: &str, v: &str) -> Result<String, crate::error::Error> {
    crate::storage::parse_time(v)
        .map(crate::storage::format_time)
        .ok_or_else(|| crate::error::Error::invalid_field(field, "must be an RFC 3339 timestamp"))
}

/// A list's `start` and `end` query bounds, each optional, in the stored format.
pub type TimeRange = (Option<String>, Option<String>);

pub fn time_range(
    start: Option<String>,
    end: Option<String>,
) -> Result<TimeRange, crate::error::Error> {
    Ok((
        start.map(|v| time_bound("start", &v)).transpose()?,
        end.map(|v| time_bound("end", &v)).transpose()?,
    ))
}

/// A request body, up to `limit` bytes (413 `payload_too_large` beyond it).
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, crate::error::Error> {
    use crate::error::{Error, ErrorCode};
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Error::new(
                ErrorCode::PayloadTooLarge,
                format!("The request body is larger than this route accepts ({limit} bytes)"),
            )
        } else {
            Error::new(
                ErrorCode::InvalidRequest,
                "The request body could not be read",
            )
        }
    })
}

/// A number as a header value, in one allocation (`HeaderValue::from(u64)` takes two or three;
/// this runs for every rate-limited response).
pub fn number_header(n: u64) -> axum::http::HeaderValue {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    axum::http::HeaderValue::from_bytes(&buf[i..]).expect("digits are a valid header value")
}

/// Every route of the API with its method and path template: the control plane's, then the
/// gateway's proxy routes (recorded once per method).
pub fn route_table() -> Vec<routes::RouteInfo> {
    let mut table = api_routes().table().to_vec();
    table.extend_from_slice(data_plane_routes().table());
    table
}

/// The gateway's proxy routes, at the root and at seed 001's `/trueportai-services/…`.
fn data_plane_routes() -> routes::Routes {
    crate::gateway::proxy_routes().merge(crate::compat::seed001::proxy_routes())
}

/// The API with `extra` routes merged into the control plane, under the same layers (the test
/// harness mounts probe routes this way).
pub fn router_with(state: AppState, extra: Router<AppState>) -> middleware::App {
    let control_plane = api_routes()
        .into_router()
        .merge(extra)
        // A control-plane request that runs past the limit is abandoned with 503.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.config.request_timeout(),
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Outside the timeout: a request abandoned with 503 releases its key.
        .layer(mw::from_fn_with_state(state.clone(), idempotency::layer))
        .layer(mw::from_fn(middleware::remember_route));
    let router = control_plane
        // The data plane: no per-route layers at all (no control-plane timeout, as streams
        // last; the proxy enforces its own body limit).
        .merge(data_plane_routes().into_router())
        .fallback(middleware::not_found)
        .with_state(state.clone());
    // Request ids, trace spans, panics, CORS, rate limits and quotas, the error envelope and
    // the metrics: one service around the router (`middleware::App`).
    middleware::App::new(router, state)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_become_header_values() {
        for n in [0, 7, 10, 60, 1_000_000, u64::MAX] {
            assert_eq!(super::number_header(n).to_str().unwrap(), n.to_string());
        }
    }
}
