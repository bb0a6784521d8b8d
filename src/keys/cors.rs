//! CORS for publishable keys: a browser's preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered for origins that an active publishable key
//! allows, and refused for every other origin; an actual request from an allowed origin that
//! presents a publishable key gets `Access-Control-Allow-Origin` on its response.

use std::future::Future;

use axum::{
    extract::Request,
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{app::AppState, error::Error};

const ALLOWED_HEADERS: &str =
    "authorization, content-type, x-api-key, api-key, x-goog-api-key, anthropic-version, x-request-id, idempotency-key";

/// True when an active publishable key lists `origin` among its allowed origins.
async fn origin_allowed(state: &AppState, origin: &str) -> Result<bool, Error> {
    if origin.len() > 2048 || origin.contains('"') || origin.contains('\\') {
        return Ok(false);
    }
    // JSON arrays of origins: match the quoted element exactly.
    let pattern = format!("%\"{}\"%", crate::admin::escape_like(origin));
    Ok(super::store::publishable_key_allows(&state.db, &pattern).await?)
}

/// Answers preflights and grants allowed origins; every other request goes on to `next`.
pub async fn cors<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return next(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return match origin_allowed(state, &origin).await {
            Ok(true) => {
                let mut res = StatusCode::NO_CONTENT.into_response();
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&origin) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                }
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
                res
            }
            Ok(false) => Error::forbidden("This origin is not allowed").into_response(),
            Err(e) => e.into_response(),
        };
    }
    let publishable =
        crate::orgs::access::presented_key_in(req.headers()).is_some_and(|k| k.starts_with("pk_"));
    let mut res = next(req).await;
    // The key check (origin in the key's list) already ran; a refused request gets no grant.
    if publishable && res.status().as_u16() != 401 && res.status().as_u16() != 403 {
        if let Ok(v) = HeaderValue::from_str(&origin) {
            res.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            res.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    res
}
