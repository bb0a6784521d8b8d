//! The edge: what every request passes through, as **one** service around the router rather
//! than a stack of per-route layers (each `Router::layer` boxes every route once more, and each
//! box is cloned and each future boxed on every request — the gateway's hot path paid ~40
//! allocations for them).
//!
//! In order: the request id (echoed or made, on the request and the response), the request's
//! trace span, a caught panic, the maintenance switch and the other early refusals, CORS for
//! publishable keys (`keys::cors`), rate limits and quotas (`limits::middleware`), the router; on
//! the way out, the SPEC's error envelope for every failure and the HTTP metrics by route
//! template.

use std::{
    borrow::Cow,
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::{
    app::AppState,
    error::{ErrorCode, ErrorReport},
    metrics::{HttpLabels, RouteLabels},
};

pub const REQUEST_ID: &str = "x-request-id";

/// The route template a response answered, for the metrics: set by the gateway's proxy routes,
/// which know it without the router's help (other routes leave their [`MatchedPath`] on the
/// response, [`remember_route`]). It also marks a provider's answer: without an
/// [`ErrorReport`], such a response reaches the client untouched, errors included (the
/// provider's own error format).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// The whole API as one service: the edge around the router.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
}

impl App {
    pub fn new(router: Router, state: AppState) -> Self {
        App { router, state }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

fn valid_incoming_id(value: &HeaderValue) -> bool {
    let s = value.as_bytes();
    (1..=128).contains(&s.len())
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl App {
    pub(crate) async fn handle(self, mut req: Request) -> Response {
        let started = Instant::now();
        // A valid incoming `X-Request-Id` is echoed, else `req_…` is made.
        let id_value = match req.headers().get(REQUEST_ID) {
            Some(v) if valid_incoming_id(v) => v.clone(),
            _ => {
                let id = crate::ids::RequestId::generate();
                let v = HeaderValue::try_from(String::from(id)).expect("request ids are ASCII");
                req.headers_mut().insert(REQUEST_ID, v.clone());
                v
            }
        };
        // Handlers read it from the header (`RequestMeta`).
        let request_id = id_value.to_str().unwrap_or_default();
        let method = req.method().clone();
        let uri = req.uri().clone();
        // The path only: query strings may carry credentials (`?key=`).
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %method,
            path = %uri.path(),
        );
        let state = self.state.clone();
        let refused = refuse_early(&state, &req);
        let routed = async move {
            match refused {
                Some(e) => e.into_response(),
                None => self.route(req).await,
            }
        };
        let mut res = AssertUnwindSafe(routed)
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                span.in_scope(|| tracing::error!(panic = %what, "handler panicked"));
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            });
        res = span.in_scope(|| envelope(res, &method, uri.path(), request_id));
        let status = res.status();
        let elapsed = started.elapsed();
        if status.is_server_error() {
            span.in_scope(|| {
                tracing::warn!(
                    status = status.as_u16(),
                    latency_ms = elapsed.as_millis() as u64,
                    "response failed"
                )
            });
        }
        let route: Cow<'static, str> = match res.extensions().get::<RouteLabel>() {
            Some(r) => Cow::Borrowed(r.0),
            None => match res.extensions().get::<MatchedPath>() {
                Some(p) => Cow::Owned(p.as_str().to_string()),
                None => Cow::Borrowed("unmatched"),
            },
        };
        let method = method_label(&method);
        let metrics = &state.metrics;
        metrics
            .http_latency
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status: status.as_u16(),
            })
            .inc();
        res.headers_mut().insert(REQUEST_ID, id_value);
        res
    }

    /// CORS, then rate limits and quotas, then the router.
    async fn route(self, req: Request) -> Response {
        let App { router, state } = self;
        crate::keys::cors::cors(&state, req, |req| {
            crate::limits::middleware::rate_limit(&state, req, |req| async move {
                match tower::ServiceExt::oneshot(router, req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            })
        })
        .await
    }
}

/// What still answers while the platform's `maintenance_mode` is on: health and metrics, the
/// platform admin's routes (seed 001's too), and signing in (a password login — seeds 001 and
/// 002's paths too — and its MFA step, the JWKS), so that an admin can sign in and turn
/// maintenance off — from the console too, whose page and files (no data) still load.
fn open_in_maintenance(path: &str) -> bool {
    const OPEN: &[&str] = &[
        "/metrics",
        "/health",
        "/v1/auth/login",
        "/api/v1/auth/login",
        "/v1/auth/mfa/verify",
        "/.well-known/jwks.json",
        "/v1/admin",
        "/platform/api/global/auth/login",
        "/trueportai-services/health",
        "/openapi.json",
        "/docs",
    ];
    OPEN.contains(&path)
        || path.starts_with("/health/")
        || path.starts_with("/v1/admin/")
        || path.starts_with("/platform/api/admin/")
        || crate::console::is_console_path(path)
}

/// What the edge refuses before anything else runs (no credentials checked, no body read):
/// - every request but [`open_in_maintenance`]'s while the platform is in maintenance: 503
///   `service_unavailable` with `Retry-After` (gateway routes included);
/// - a declared `Content-Length` over the route's limit (`gateway_max_body_bytes` on the
///   gateway's routes, `max_body_bytes` elsewhere): 413 at once, and the connection closes
///   (the serving loop adds `Connection: close` to an answer that leaves body unread);
/// - a NUL character (`%00`) in the path or a query parameter: 400 naming the parameter (no
///   store accepts NUL in text, PostgreSQL refuses it outright).
///
/// The gateway's hot path pays one header lookup and a scan of the path (no allocation).
fn refuse_early(state: &AppState, req: &Request) -> Option<crate::error::Error> {
    use crate::error::Error;
    let path = req.uri().path();
    if state.platform.in_maintenance() && !open_in_maintenance(path) {
        return Some(
            Error::unavailable(
                "The platform is in maintenance; try again shortly (platform admins can still sign in and use /v1/admin)",
            )
            .with_retry_after(crate::platform::MAINTENANCE_RETRY_AFTER_SECS),
        );
    }
    if let Some(declared) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        let limit = if crate::limits::middleware::is_gateway_path(path) {
            state.config.gateway_max_body_bytes
        } else {
            state.config.max_body_bytes
        };
        if declared > limit as u64 {
            return Some(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("The request body is larger than this route accepts ({limit} bytes)"),
            ));
        }
    }
    const NUL: &[u8] = b"%00";
    if memchr::memmem::find(path.as_bytes(), NUL).is_some() {
        return Some(Error::invalid_field(
            "path",
            "must not contain a NUL character (%00)",
        ));
    }
    if let Some(query) = req.uri().query() {
        if memchr::memmem::find(query.as_bytes(), NUL).is_some() {
            let field = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, v)| k.contains('\0') || v.contains('\0'))
                .map(|(k, _)| {
                    if k.contains('\0') {
                        "query".to_string()
                    } else {
                        k.into_owned()
                    }
                });
            if let Some(field) = field {
                return Some(Error::invalid_field(
                    field,
                    "must not contain a NUL character (%00)",
                ));
            }
        }
    }
    None
}

/// A method as a metric label: the standard ones by name, any other (clients may invent
/// methods, each of which would otherwise become a new series) as `other`.
fn method_label(m: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    })
}

/// Leaves the route template the router matched on the response, for the edge's metrics (a
/// per-route layer of the control plane, whose routes are not on the gateway's hot path).
pub async fn remember_route(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut res = next.run(req).await;
    if let Some(m) = matched {
        res.extensions_mut().insert(m);
    }
    res
}

/// Renders every failure as the SPEC's envelope: errors returned by handlers (an
/// [`ErrorReport`] in the response extensions) and failures made by the framework or by tower
/// layers with only a status (unknown route, wrong method, oversize body, timeout, panic).
pub(crate) fn envelope(
    mut res: Response,
    method: &Method,
    path: &str,
    request_id: &str,
) -> Response {
    let status = res.status();
    let report = match res.extensions_mut().remove::<ErrorReport>() {
        Some(report) => report,
        None if (status.is_client_error() || status.is_server_error())
            && res.extensions().get::<RouteLabel>().is_none()
            && !is_json(&res) =>
        {
            framework_report(status, method, path)
        }
        None => return res,
    };
    let (mut parts, _) = res.into_parts();
    let body = serde_json::to_vec(&report.envelope(status, request_id))
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

/// Fallback for paths no route matches.
pub async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::open_in_maintenance;

    #[test]
    fn maintenance_leaves_open_health_metrics_admin_and_sign_in_only() {
        for open in [
            "/health",
            "/health/ready",
            "/metrics",
            "/v1/admin",
            "/v1/admin/configs/maintenance_mode",
            "/v1/auth/login",
            "/api/v1/auth/login",
            "/v1/auth/mfa/verify",
            "/.well-known/jwks.json",
            "/",
            "/login",
            "/admin/configs",
            "/console/js/app.js",
        ] {
            assert!(open_in_maintenance(open), "{open}");
        }
        for closed in [
            "/healthz",
            "/v1/administrators",
            "/v1/auth/register",
            "/v1/organizations",
            "/openai/v1/chat/completions",
            "/metrics/extra",
            "/loginx",
            "/administrator",
        ] {
            assert!(!open_in_maintenance(closed), "{closed}");
        }
    }
}
