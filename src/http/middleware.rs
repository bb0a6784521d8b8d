//! Middleware shared by every route: request ids, the error envelope and HTTP metrics.

use std::time::Instant;

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    app::AppState,
    error::{ErrorCode, ErrorReport},
    metrics::{HttpLabels, RouteLabels},
};

pub const REQUEST_ID: &str = "x-request-id";

/// The request's id, in the request extensions for handlers that need it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Marks a response whose error body must reach the client untouched (a provider's own error
/// format on gateway routes).
#[derive(Debug, Clone, Copy)]
pub struct Passthrough;

fn valid_incoming_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_string())
}

/// Echoes a valid incoming `X-Request-Id`, else generates `req_…`; sets it on the request (for
/// the trace span and handlers) and on every response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(valid_incoming_id)
        .unwrap_or_else(|| crate::ids::new_id("req"));
    let value = HeaderValue::from_str(&id).expect("request ids are ASCII");
    req.headers_mut().insert(REQUEST_ID, value.clone());
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    res.headers_mut().insert(REQUEST_ID, value);
    res
}

/// Renders every failure as the SPEC's envelope: errors returned by handlers (an
/// [`ErrorReport`] in the response extensions) and failures made by the framework or by tower
/// layers with only a status (unknown route, wrong method, oversize body, timeout, panic).
pub async fn error_envelope(req: Request, next: Next) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut res = next.run(req).await;
    let status = res.status();
    let report = match res.extensions_mut().remove::<ErrorReport>() {
        Some(report) => report,
        None if (status.is_client_error() || status.is_server_error())
            && res.extensions().get::<Passthrough>().is_none()
            && !is_json(&res) =>
        {
            framework_report(status, &method, &path)
        }
        None => return res,
    };
    let (mut parts, _) = res.into_parts();
    let body = serde_json::to_vec(&report.envelope(status, &request_id))
        .expect("an envelope always serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

fn is_json(res: &Response) -> bool {
    crate::http::extract::is_json_content_type(res.headers().get(header::CONTENT_TYPE))
}

fn framework_report(status: StatusCode, method: &Method, path: &str) -> ErrorReport {
    let code = ErrorCode::from_status(status);
    let message = match code {
        ErrorCode::NotFound => format!("No route for {method} {path}"),
        ErrorCode::MethodNotAllowed => format!("{method} is not allowed on {path}"),
        ErrorCode::PayloadTooLarge => "The request body is larger than this route accepts".into(),
        ErrorCode::UnsupportedMediaType => "Unsupported content type".into(),
        ErrorCode::ServiceUnavailable if status == StatusCode::REQUEST_TIMEOUT => {
            "The request took too long and was abandoned".into()
        }
        ErrorCode::ServiceUnavailable => "The service is unavailable; try again shortly".into(),
        ErrorCode::InternalError => {
            tracing::error!(%status, "request failed without an error report (panic?)");
            "An internal error occurred".into()
        }
        _ => status
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_string(),
    };
    ErrorReport {
        code,
        message: message.into(),
        details: None,
    }
}

/// Counts requests and records latency by route template (never by raw path, which would
/// carry ids and explode cardinality).
pub async fn http_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let res = next.run(req).await;
    let elapsed = start.elapsed().as_secs_f64();
    state
        .metrics
        .http_latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed);
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// Fallback for paths no route matches.
pub async fn not_found() -> impl IntoResponse {
    StatusCode::NOT_FOUND
}
