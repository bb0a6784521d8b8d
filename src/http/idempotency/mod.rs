//! `Idempotency-Key` (SPEC §1): a control-plane `POST` carrying the header is executed once
//! per (caller, key) for 24 hours; a retry gets the stored answer again.
//!
//! - The caller is who presented the request, as the edge verified it
//!   (`limits::middleware`, from the key cache and the token signature): an API key by its id,
//!   an access token by the user it names (with the organization and environment of a
//!   tenant-scoped token). Anonymous requests (login, register, …) are not stored: the key is
//!   only checked for its form.
//! - The first request claims the (caller, key) row (its insert succeeds on exactly one node),
//!   runs to its end even if the client goes away, and keeps its answer: status, the
//!   resource's headers (not `Set-Cookie`, rate-limit, `Retry-After` or hop-by-hop ones) and
//!   the body sealed with the master key, up to [`MAX_KEPT_BODY`].
//! - A retry with the same method, path (and `X-Tenant-Slug`, seed 001's tenant) and body replays that answer with
//!   `Idempotent-Replayed: true` (an access token's session and account are checked first, as
//!   a route would); another method, path or body is 409 `conflict`; a duplicate
//!   while the first is running is 409 `conflict` too (retry it).
//! - 5xx answers, 401 (the credential failed, not the request) and 429 are not kept: the row is
//!   released so a retry runs again. Other 4xx answers are kept, as Stripe does.
//! - Rows expire after [`TTL`]; an expired row is replaced by the next request and deleted by
//!   [`spawn_cleanup`]. A row still in progress after twice the request timeout belongs to a
//!   node that stopped before answering, and is replaced too.
//!
//! The gateway's proxy routes are outside this layer: streamed model answers are not stored.

pub mod store;

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use self::store::{Answer, Entry, Slot};
use crate::{app::AppState, error::Error, storage::format_time};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// A larger answer is not kept: a retry is refused with 409 (the request ran once already).
pub const MAX_KEPT_BODY: usize = 1024 * 1024;
/// How often expired rows are deleted.
pub const CLEANUP_EVERY: Duration = Duration::from_secs(10 * 60);
const MAX_KEY_LEN: usize = 255;

/// Who presented a request, as the edge verified it: `key:<id>`, `user:<id>` or, for a
/// tenant-scoped token, `user:<id>/<organization>/<environment>`. Put on the request by the
/// limits middleware for `POST`s that carry an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct Caller(Arc<str>);

impl Caller {
    pub fn key(id: &str) -> Caller {
        Caller(format!("key:{id}").into())
    }

    pub fn user(id: &str, tenant: Option<&str>, environment: Option<&str>) -> Caller {
        Caller(
            match tenant {
                Some(org) => format!("user:{id}/{org}/{}", environment.unwrap_or("")),
                None => format!("user:{id}"),
            }
            .into(),
        )
    }

    /// An access token's user (the edge checked its signature only).
    fn is_user(&self) -> bool {
        self.0.starts_with("user:")
    }

    /// Whether `req` is one whose caller this layer needs.
    pub fn wanted(req: &axum::http::request::Parts) -> bool {
        req.method == Method::POST && req.headers.contains_key(HEADER)
    }
}

/// The layer: see the module docs.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match handle(state, req, next).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: AppState, req: Request, next: Next) -> Result<Response, Error> {
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    let key = parse_key(value)?;
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        // Anonymous: nothing to key the request by.
        return Ok(next.run(req).await);
    };
    let (mut parts, body) = req.into_parts();
    let body = super::read_body(body, state.config.max_body_bytes).await?;
    let tenant = parts.headers.get(TENANT_HEADER).map(|v| v.as_bytes());
    let fingerprint = fingerprint(&parts.method, &parts.uri, tenant, &body);
    let slot = Slot {
        caller: &caller.0,
        key: &key,
    };
    let created_at = match claim(&state, slot, &fingerprint).await? {
        Claim::Run { created_at } => created_at,
        Claim::Replay(entry) => {
            // No route runs to check the session and the account: a token whose session
            // ended, or of a suspended user, gets no replay.
            if caller.is_user() {
                crate::auth::extract::AuthUser::from_request_parts(&mut parts, &state).await?;
            }
            return replay(&state, slot, entry);
        }
    };
    let exchange = Exchange {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        request_id: parts
            .headers
            .get(super::middleware::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    let req = Request::from_parts(parts, Body::from(body));
    // Spawned: the request runs, and its answer is kept, even if the client goes away.
    let run = {
        let state = state.clone();
        async move {
            let slot = Slot {
                caller: &caller.0,
                key: &key,
            };
            match AssertUnwindSafe(next.run(req)).catch_unwind().await {
                Ok(res) => keep(&state, slot, &created_at, res, &exchange).await,
                Err(panic) => {
                    release(&state, slot, &created_at).await;
                    std::panic::resume_unwind(panic)
                }
            }
        }
    };
    match tokio::spawn(run.instrument(tracing::Span::current())).await {
        Ok(res) => Ok(res),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("idempotent request task failed: {e}").into()),
    }
}

/// 1–255 printable ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<String, Error> {
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_KEY_LEN
        || !bytes.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(Error::invalid_field(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The header that names the tenant of seed 001's routes (`src/compat/seed001`) instead of the
/// path: part of the request, so the same key sent to another tenant is another request.
const TENANT_HEADER: &str = "x-tenant-slug";

/// SHA-256 of the method, the path with its query, the tenant header if any, and the body.
fn fingerprint(
    method: &Method,
    uri: &axum::http::Uri,
    tenant: Option<&[u8]>,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    h.update(b"\n");
    if let Some(tenant) = tenant {
        h.update(b"tenant:");
        h.update(tenant);
        h.update(b"\n");
    }
    h.update(body);
    hex::encode(h.finalize())
}

enum Claim {
    /// This request claimed the slot at `created_at`: it runs.
    Run { created_at: String },
    /// Answered before: replay it.
    Replay(Entry),
}

/// Claims the slot, replacing an expired or abandoned row; refuses a duplicate in progress or
/// a different request under the same key.
async fn claim(state: &AppState, slot: Slot<'_>, fingerprint: &str) -> Result<Claim, Error> {
    let abandoned_after = chrono::Duration::from_std(state.config.request_timeout() * 2)
        .unwrap_or(chrono::Duration::MAX);
    // Each round either claims, decides, or removes one stale row; a third round means other
    // requests keep replacing it.
    for _ in 0..3 {
        let now = chrono::Utc::now();
        let created_at = format_time(now);
        let expires_at = format_time(now + chrono::Duration::from_std(TTL).unwrap_or_default());
        if store::claim(&state.db, slot, fingerprint, &created_at, &expires_at).await? {
            return Ok(Claim::Run { created_at });
        }
        let Some(entry) = store::find(&state.db, slot).await? else {
            continue;
        };
        let abandoned = entry.state == store::State::InProgress
            && entry.created_at < format_time(now - abandoned_after);
        if entry.expires_at <= created_at || abandoned {
            store::remove(&state.db, slot, &entry.created_at).await?;
            continue;
        }
        if entry.fingerprint != fingerprint {
            return Err(Error::conflict(
                "This Idempotency-Key was used for a different request (method, path or body); \
                 use a new key for a new request",
            ));
        }
        return match entry.state {
            store::State::InProgress => Err(Error::conflict(
                "A request with this Idempotency-Key is in progress; retry",
            )),
            store::State::Done => Ok(Claim::Replay(entry)),
        };
    }
    Err(Error::conflict(
        "A request with this Idempotency-Key is in progress; retry",
    ))
}

/// Whether an answer is kept for replay: not 5xx (the service failed), not 401 (the
/// credential failed, not the request) and not 429 (refused for now).
fn kept(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::TOO_MANY_REQUESTS)
}

/// Headers that belong to this one exchange, never replayed.
fn replayable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(matches!(
        n,
        "set-cookie"
            | "retry-after"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "date"
            | REPLAYED
            | super::middleware::REQUEST_ID
    ) || n.starts_with("x-ratelimit-"))
}

/// What the error envelope of a kept answer names.
struct Exchange {
    method: Method,
    path: String,
    request_id: String,
}

/// Keeps the answer (or releases the slot when it is not kept) and returns it.
async fn keep(
    state: &AppState,
    slot: Slot<'_>,
    created_at: &str,
    res: Response,
    exchange: &Exchange,
) -> Response {
    let status = res.status();
    if !kept(status) {
        release(state, slot, created_at).await;
        return res;
    }
    // Errors are rendered now, so that the replay is the envelope the client saw.
    let res =
        super::middleware::envelope(res, &exchange.method, &exchange.path, &exchange.request_id);
    let (parts, body) = res.into_parts();
    // Control-plane answers are built in memory; this only joins their frames.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading an answer to keep failed");
            release(state, slot, created_at).await;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(n, _)| replayable(n))
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let headers = serde_json::to_string(&headers).expect("strings serialize");
    let sealed = (body.len() <= MAX_KEPT_BODY).then(|| seal(state, slot, &body));
    let answer = Answer {
        status: i64::from(status.as_u16()),
        headers: &headers,
        sealed_body: sealed.as_deref(),
    };
    match store::complete(&state.db, slot, created_at, answer).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("an idempotent request's claim was replaced before it ended"),
        // The row stays in progress: retries are refused until it counts as abandoned.
        Err(e) => tracing::error!(error = %e, "keeping an idempotent answer failed"),
    }
    Response::from_parts(parts, Body::from(body))
}

async fn release(state: &AppState, slot: Slot<'_>, created_at: &str) {
    if let Err(e) = store::remove(&state.db, slot, created_at).await {
        tracing::error!(error = %e, "releasing an idempotency key failed");
    }
}

/// The sealed body is bound to its slot: it cannot be replayed under another caller or key.
fn aad(slot: Slot<'_>) -> Vec<u8> {
    [slot.caller.as_bytes(), b"\0", slot.key.as_bytes()].concat()
}

fn seal(state: &AppState, slot: Slot<'_>, body: &[u8]) -> String {
    state.master_key.encrypt(body, &aad(slot))
}

/// The stored answer again, with `Idempotent-Replayed: true`.
fn replay(state: &AppState, slot: Slot<'_>, entry: Entry) -> Result<Response, Error> {
    let status = entry
        .status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| anyhow::anyhow!("a kept idempotent answer has no valid status"))?;
    let Some(sealed) = entry.sealed_body else {
        return Err(Error::conflict(format!(
            "A request with this Idempotency-Key was executed already (status {}), but its \
             answer was larger than {MAX_KEPT_BODY} bytes and was not kept; it is not executed \
             again",
            status.as_u16()
        )));
    };
    let body = state
        .master_key
        .decrypt(&sealed, &aad(slot))
        .map_err(|_| anyhow::anyhow!("a kept idempotent answer cannot be unsealed"))?;
    let headers: Vec<(String, String)> =
        serde_json::from_str(entry.headers.as_deref().unwrap_or("[]"))
            .map_err(|e| anyhow::anyhow!("kept idempotent headers are not valid: {e}"))?;
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let map: &mut HeaderMap = res.headers_mut();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            map.append(n, v);
        }
    }
    map.insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(res)
}

/// Deletes expired rows every [`CLEANUP_EVERY`] (on every node; a delete of rows another node
/// deleted already deletes nothing).
pub fn spawn_cleanup(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CLEANUP_EVERY);
        loop {
            tick.tick().await;
            match store::delete_expired(&state.db, &crate::storage::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired idempotency keys deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting expired idempotency keys failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        for ok in ["a", "order-42 retry", &"x".repeat(255), "~!@#$%^&*()"] {
            assert!(
                parse_key(&HeaderValue::from_str(ok).unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_str(&"x".repeat(256)).unwrap(),
            HeaderValue::from_bytes(b"tab\there").unwrap(),
            HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        ] {
            assert!(parse_key(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_are_kept_unless_the_service_or_the_credential_failed() {
        for status in [200, 201, 202, 204, 400, 403, 404, 409, 422] {
            assert!(kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [401, 429, 500, 502, 503, 504] {
            assert!(!kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    #[test]
    fn exchange_headers_are_not_replayed() {
        for name in ["content-type", "location", "cache-control"] {
            assert!(replayable(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "set-cookie",
            "x-ratelimit-remaining",
            "retry-after",
            "x-request-id",
            "content-length",
        ] {
            assert!(!replayable(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn the_fingerprint_covers_method_path_tenant_and_body() {
        let uri: axum::http::Uri = "/v1/a?x=1".parse().unwrap();
        let other: axum::http::Uri = "/v1/a?x=2".parse().unwrap();
        let a = fingerprint(&Method::POST, &uri, None, b"{}");
        assert_eq!(a, fingerprint(&Method::POST, &uri, None, b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, &uri, None, b"{ }"));
        assert_ne!(a, fingerprint(&Method::POST, &other, None, b"{}"));
        assert_ne!(a, fingerprint(&Method::PUT, &uri, None, b"{}"));
        let acme = fingerprint(&Method::POST, &uri, Some(b"acme"), b"{}");
        assert_ne!(a, acme);
        assert_ne!(acme, fingerprint(&Method::POST, &uri, Some(b"beta"), b"{}"));
    }
}
