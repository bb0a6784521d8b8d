//! The proxy routes (`/openai/v1/…`, `/anthropic/v1/…`, `/google/v1beta/…` and `/google/v1/…`,
//! `/azure/…`): authenticate the key from the cache, pick the organization's providers for that
//! format in priority order (the mock for test keys without one), forward with the provider's
//! credential injected the provider's way, fall back on connection errors, 429 and 5xx, and
//! stream the answer back chunk by chunk through the usage [`Tap`](super::usage::Tap). When no
//! provider succeeds, the answer is 502 `upstream_error` (504 after a timeout) listing every
//! attempt.

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    mock,
    providers::{upstreams, Credential, ProviderKind, Upstream},
    usage::{Format, Tap, UsageRecord},
};
use crate::policies::violations::Found;
use crate::{
    app::AppState,
    error::{Error, ErrorCode},
    http::{middleware::RouteLabel, request_meta::RequestMeta},
    keys::cache::VerifiedKey,
    orgs::roles::Permission,
};

/// Attempts per request: the organization's providers for the route in priority order, then
/// again from the first (a retry) while attempts remain.
const MAX_ATTEMPTS: usize = 3;
/// The pause before a retry: 200 ms, doubled for each further retry, with jitter.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause before a retry; a provider whose `Retry-After` asks for longer is not
/// retried (its answer is returned).
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// The pause before retry number `retry` (0 for the first), or `None` when the provider asked
/// to wait longer than the gateway does.
fn retry_pause(retry: usize, retry_after: Option<Duration>) -> Option<Duration> {
    match retry_after {
        Some(asked) if asked > MAX_RETRY_PAUSE => None,
        Some(asked) => Some(asked),
        None => {
            let full = RETRY_PAUSE
                .saturating_mul(1 << retry.min(8))
                .min(MAX_RETRY_PAUSE);
            // Between half and all of it, so that clients retrying together spread out.
            Some(full.mul_f64(rand::random::<f64>() / 2.0 + 0.5))
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the providers).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// The key as the OpenAI SDK sends it (and the other spellings the gateway accepts).
pub fn gateway_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    if let Some(k) = crate::orgs::access::presented_key_in(headers) {
        return Some(Cow::Borrowed(k));
    }
    for name in ["api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(Cow::Borrowed(v.trim()));
        }
    }
    query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v)
    })
}

static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
];
/// Removes the headers named in `sets`: one pass over the few headers a message has, rather than
/// a hash lookup for each of the names.
fn strip(headers: &mut HeaderMap, sets: &[&[HeaderName]]) {
    let named = |name: &HeaderName| sets.iter().any(|set| set.contains(name));
    let mut found: Vec<HeaderName> = headers.keys().filter(|n| named(n)).cloned().collect();
    if found.contains(&header::CONNECTION) {
        // The headers `Connection` names belong to this hop too (RFC 9110, 7.6.1).
        let listed = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        found.extend(listed);
    }
    for name in found {
        headers.remove(name);
    }
}

static CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    header::COOKIE,
];

/// What differs between the provider formats.
pub struct Spec {
    format: Format,
    /// The route template (`{*path}` is the provider's own path).
    pub route: &'static str,
    prefix: &'static str,
    kinds: &'static [ProviderKind],
    default_base: &'static str,
    /// Azure OpenAI: `/azure/{resource}/{deployment}/{path}`, key in `api-key`.
    azure: bool,
}

/// A format's [`Spec`] served under `prefix` (the route is `{prefix}/{*path}`).
macro_rules! spec {
    ($prefix:literal, $format:ident, [$($kind:ident),+], $base:literal $(, azure: $azure:literal)?) => {
        Spec {
            route: concat!($prefix, "/{*path}"),
            format: Format::$format,
            prefix: $prefix,
            kinds: &[$(ProviderKind::$kind),+],
            default_base: $base,
            azure: false $(|| $azure)?,
        }
    };
}

pub const OPENAI: Spec = spec!(
    "/openai/v1",
    OpenAi,
    [Openai, OpenaiCompatible, Mock],
    "https://api.openai.com/v1"
);
pub const ANTHROPIC: Spec = spec!(
    "/anthropic/v1",
    Anthropic,
    [Anthropic, Mock],
    "https://api.anthropic.com/v1"
);
pub const GOOGLE: Spec = spec!(
    "/google/v1beta",
    Google,
    [Google, Mock],
    "https://generativelanguage.googleapis.com/v1beta"
);
/// Gemini's stable version, the google-genai SDK's default: the same protocol as `v1beta`.
pub const GOOGLE_V1: Spec = spec!(
    "/google/v1",
    Google,
    [Google, Mock],
    "https://generativelanguage.googleapis.com/v1"
);
/// Azure OpenAI: the deployment's base is built from the path (`default_base` unused).
pub const AZURE: Spec = spec!("/azure", OpenAi, [Azure, Mock], "", azure: true);

impl Spec {
    /// The same provider format served at another route whose `prefix` precedes the provider's
    /// path (seed 001's `/trueportai-services/openai/v1/{*path}`, `src/compat/`).
    pub const fn mounted_at(self, route: &'static str, prefix: &'static str) -> Spec {
        Spec {
            route,
            prefix,
            ..self
        }
    }
}

/// A proxy route's answer for `spec`.
pub async fn serve(spec: &'static Spec, state: AppState, req: Request) -> Proxied {
    let mut res = handle(spec, state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    res.extensions_mut().insert(RouteLabel(spec.route));
    Proxied(res)
}

macro_rules! route {
    ($name:ident, $spec:expr) => {
        pub async fn $name(State(state): State<AppState>, req: Request) -> Proxied {
            serve(&$spec, state, req).await
        }
    };
}

/// A proxy route's answer: the provider's, relayed (JSON, a stream of server-sent events, a
/// file), or the gateway's error. Its type says how the route is described in the OpenAPI
/// document — the key it takes, in any of the providers' SDKs' spellings — since the proxy
/// reads the key itself rather than through an extractor (nothing added to the request path).
pub struct Proxied(pub Response);

impl IntoResponse for Proxied {
    fn into_response(self) -> Response {
        self.0
    }
}

impl crate::http::openapi::Output for Proxied {
    fn describe(_d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        op.accepts(crate::http::openapi::GATEWAY_KEYS);
        op.requires("gateway:proxy");
        op.note(
            "Relayed to the organization's provider for this route (or the built-in mock for a \
             test key): the request and answer are the provider's own API. An API key with the \
             `gateway:proxy` scope, as `Authorization: Bearer`, `x-api-key`, `api-key`, \
             `x-goog-api-key` or `?key=`.",
        );
        op.success("2XX", "The provider's answer, relayed", None);
        op.error(401, "Unauthorized: no valid API key");
        op.error(
            403,
            "Forbidden: the key lacks gateway:proxy, or a policy blocked the request",
        );
        op.error(429, "Rate limit or quota exceeded");
        op.error(
            502,
            "Every provider tried failed (each attempt in `details`)",
        );
        op.error(504, "The provider did not answer in time");
    }
}

route!(openai, OPENAI);
route!(anthropic, ANTHROPIC);
route!(google, GOOGLE);
route!(google_v1, GOOGLE_V1);
route!(azure, AZURE);

/// Why the provider's path (what follows the route's prefix) is refused, if it is: it would be
/// forwarded as it is, and a provider (or a proxy in front of it) that resolves dot segments
/// would serve another path than the route names — `../../admin`, or out of a base URL's path.
/// Refused, in one pass over the bytes without allocating: a `.` or `..` segment, also
/// percent-encoded (`%2e%2E`) or followed by `;parameters` (`..;`); an encoded `/` or `\`
/// (`%2F`, `%5c`); a `\`. Dots inside a name (`gpt-4.1`, `file.jsonl`, `...`) are fine.
fn refused_path(path: &str) -> Option<&'static str> {
    fn hex(b: Option<&u8>) -> Option<u8> {
        (*b? as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = path.as_bytes();
    // The current segment: its dots, whether it has anything else, whether `;` was passed.
    let (mut dots, mut other, mut params) = (0u8, false, false);
    let mut i = 0;
    while i <= bytes.len() {
        // The end closes the last segment as a `/` would.
        let mut byte = bytes.get(i).copied().unwrap_or(b'/');
        let mut step = 1;
        if byte == b'%' {
            if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                byte = high << 4 | low;
                step = 3;
                if byte == b'/' || byte == b'\\' {
                    return Some("must not contain an encoded / or \\ (%2F, %5C)");
                }
            }
        }
        match byte {
            b'\\' => return Some("must not contain \\"),
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
                    return Some("must not contain . or .. segments (also encoded as %2e)");
                }
                (dots, other, params) = (0, false, false);
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots = dots.saturating_add(1),
            _ => other = true,
        }
        i += step;
    }
    None
}

/// An Azure OpenAI resource name, which becomes the host `{resource}.openai.azure.com`: 2 to 64
/// letters, digits and hyphens (so that nothing in it can change the host).
fn is_azure_resource(r: &str) -> bool {
    (2..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What the proxy itself reads of a request body: the model and whether the answer streams.
/// Deserialized without building the whole document (the rest is skipped, though still checked
/// to be JSON); only the mock provider, which answers the body, parses all of it.
#[derive(Debug, Default, serde::Deserialize)]
struct Peek {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// The `model` and `stream` fields of a request body: from JSON (the providers' usual body; a
/// body that is not JSON is refused with 400 `invalid_json`), or from the fields of a
/// `multipart/form-data` upload (OpenAI's audio transcriptions and translations, image edits).
/// Bodies of any other declared type are forwarded as they are.
fn peek(content_type: Option<&header::HeaderValue>, body: &[u8]) -> Result<Peek, Error> {
    let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Ok(Peek::default());
    }
    if mime.eq_ignore_ascii_case("multipart/form-data") {
        let Some(boundary) = multipart_boundary(content_type) else {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "A multipart/form-data body needs a boundary in its Content-Type",
            ));
        };
        let field = |name: &str| form_field(body, boundary, name);
        return Ok(Peek {
            model: field("model"),
            stream: field("stream").map(|s| serde_json::Value::Bool(s.trim() == "true")),
        });
    }
    let json = mime.is_empty()
        || mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json");
    if !json {
        return Ok(Peek::default());
    }
    match serde_json::from_slice(body) {
        Ok(peek) => Ok(peek),
        // JSON of another shape (an array, a non-string model): nothing to read, forwarded as is.
        Err(e) if e.is_data() => Ok(Peek::default()),
        Err(_) => {
            crate::http::extract::parse_json::<serde_json::Value>(body).map(|_| Peek::default())
        }
    }
}

/// The `boundary` parameter of a multipart Content-Type (quoted or not; at most 70 characters).
fn multipart_boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        let value = value.trim().trim_matches('"');
        (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty() && value.len() <= 70)
            .then_some(value)
    })
}

/// The value of the first part named `name` of a multipart body, if it is short UTF-8 text
/// (files and long values are not read).
fn form_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    const MAX_VALUE: usize = 256;
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    starts.windows(2).find_map(|w| {
        let part = body.get(w[0] + delimiter.len()..w[1])?;
        let part = part.strip_prefix(b"\r\n")?.strip_suffix(b"\r\n")?;
        let split = memchr::memmem::find(part, b"\r\n\r\n")?;
        let (head, value) = (&part[..split], &part[split + 4..]);
        let head = std::str::from_utf8(head).ok()?;
        let named = head.lines().any(|line| {
            let Some((h, v)) = line.split_once(':') else {
                return false;
            };
            h.trim().eq_ignore_ascii_case("content-disposition")
                && v.split(';').skip(1).any(|p| {
                    p.split_once('=').is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("name") && v.trim().trim_matches('"') == name
                    })
                })
        });
        (named && value.len() <= MAX_VALUE)
            .then(|| std::str::from_utf8(value).ok().map(str::to_string))
            .flatten()
    })
}

/// The model and whether the answer streams: from the body, or (Gemini) from the path
/// `models/{model}:{generateContent|streamGenerateContent}`.
fn model_and_stream(spec: &Spec, path: &str, peek: &Peek) -> (String, bool) {
    match spec.format {
        Format::Google => {
            let action = path.strip_prefix("models/").unwrap_or_default();
            let (model, method) = action.split_once(':').unwrap_or((action, ""));
            (model.to_string(), method == "streamGenerateContent")
        }
        _ => (
            peek.model.clone().unwrap_or_default(),
            peek.stream.as_ref().and_then(|s| s.as_bool()) == Some(true),
        ),
    }
}

fn mock_answer(
    spec: &Spec,
    method: &Method,
    path: &str,
    model: &str,
    stream: bool,
    json: &serde_json::Value,
) -> Response {
    let post = method == Method::POST;
    match spec.format {
        Format::OpenAi if post && path == "chat/completions" => mock::openai_chat(json),
        Format::Anthropic if post && path == "messages" => mock::anthropic_messages(json),
        Format::Google if post && path.starts_with("models/") && path.contains(':') => {
            mock::google_generate(model, stream, json)
        }
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": {"message": format!("The mock provider does not serve {path}"), "type": "not_found_error"}})),
        )
            .into_response(),
    }
}

async fn handle(spec: &Spec, state: AppState, req: Request) -> Result<Response, Error> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let verified = parts.extensions.remove::<VerifiedKey>().map(|v| v.0);
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let token = gateway_key(headers, uri.query())
        .ok_or_else(|| Error::unauthorized("Send a gateway API key: Authorization: Bearer sk_…"))?;
    // Verified once per request: by the rate-limit middleware when it ran, else here.
    let key = match verified {
        Some(k) => k,
        None => {
            let meta = RequestMeta::of(&parts, &state);
            let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
            match state
                .api_keys
                .authenticate(&state.db, &token, origin, meta.ip)
                .await
            {
                Ok(k) => k,
                Err(e) => {
                    crate::keys::routes::record_refusal(&state, &meta, &token, &e);
                    return Err(e);
                }
            }
        }
    };
    let body = crate::http::read_body(body, state.config.gateway_max_body_bytes).await?;
    if !key.allows("gateway:proxy")
        || !key
            .creator_role
            .is_some_and(|r| r.can(Permission::GatewayProxy))
    {
        return Err(Error::forbidden(
            "This API key lacks the gateway:proxy scope",
        ));
    }
    let mut path = uri
        .path()
        .trim_start_matches(spec.prefix)
        .trim_start_matches('/')
        .to_string();
    if let Some(why) = refused_path(&path) {
        return Err(Error::invalid_field("path", why));
    }
    // Azure: the resource and deployment come first in the path.
    let mut deployment: Option<(String, String)> = None;
    if spec.azure {
        let mut parts = path.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(r), Some(d), Some(rest)) if !r.is_empty() && !d.is_empty() => {
                if !is_azure_resource(r) {
                    return Err(Error::invalid_field(
                        "path",
                        "the Azure resource name must be 2 to 64 letters, digits and hyphens",
                    ));
                }
                deployment = Some((r.to_string(), d.to_string()));
                path = rest.to_string();
            }
            _ => {
                return Err(Error::not_found(
                    "Use /azure/{resource}/{deployment}/{path}",
                ))
            }
        }
    }
    let mut body = body;
    let peek = peek(parts.headers.get(header::CONTENT_TYPE), &body)?;
    let (mut model, streamed) = model_and_stream(spec, &path, &peek);
    if let (true, Some((_, d))) = (model.is_empty(), &deployment) {
        model = d.clone();
    }
    let mut entry = UsageRecord {
        id: crate::ids::LogId::generate().into(),
        organization_id: key.organization_id.clone(),
        key_id: key.id.clone(),
        environment: key.environment.clone(),
        model: model.clone(),
        path: uri.path().to_string(),
        streamed,
        tokens_per_minute: key.rate_limit_of("tokens_per_minute"),
        ..Default::default()
    };

    // The organization's policies, compiled once per organization (cached on every node).
    let policies = state.policies.get(&state.db, &key.organization_id).await?;
    if !policies.is_empty() {
        // Who sent it, for the audit rows of its violations (only when there can be some).
        entry.request = Some(std::sync::Arc::new(
            (&RequestMeta::of(&parts, &state)).into(),
        ));
    }
    let mut violations = Vec::new();
    if policies.has_request_rules() {
        let outcome = policies.check_request(spec.format, Some(&model), &body);
        let blocked = outcome.blocked();
        violations.extend(outcome.hits.into_iter().map(|h| Found::new("request", h)));
        if blocked {
            return Err(refuse(&state, entry, violations, started, None));
        }
        if let Some(redacted) = outcome.redacted {
            body = Bytes::from(redacted);
        }
    }

    let configured = upstreams(&state, &key.organization_id, &key.environment).await?;
    let mut candidates: Vec<&Upstream> = configured
        .iter()
        .filter(|u| spec.kinds.contains(&u.provider) && u.serves(&model))
        .take(MAX_ATTEMPTS)
        .collect();
    if candidates.is_empty() && &*key.environment == "test" {
        candidates.push(&MOCK);
    }
    if candidates.is_empty() {
        return Err(no_provider(
            spec,
            &key.organization_id,
            &key.environment,
            &model,
        ));
    }

    // The last attempt's failure, and every failed attempt as the final error lists them (not
    // allocated while the first provider answers).
    let mut last_error: Option<Error> = None;
    let mut failures: Vec<serde_json::Value> = Vec::new();
    let mut response = None;
    let mut tried: Option<&Upstream> = None;
    let mut headers = Some(parts.headers);
    // Per provider: whether it may be asked again (not after a timeout, whose wait would
    // repeat, nor after its address was refused), and the pause its last answer asked for
    // (`Retry-After`).
    let mut not_again = vec![false; candidates.len()];
    let mut asked_pause: Vec<Option<Duration>> = vec![None; candidates.len()];
    for attempt in 0..MAX_ATTEMPTS {
        let i = attempt % candidates.len();
        let upstream = candidates[i];
        if attempt >= candidates.len() {
            if not_again[i] {
                continue;
            }
            let Some(pause) = retry_pause(attempt - candidates.len(), asked_pause[i].take()) else {
                break;
            };
            tracing::debug!(provider = %upstream.id, pause_ms = pause.as_millis() as u64, "retrying the provider");
            tokio::time::sleep(pause).await;
        }
        tried = Some(upstream);
        let last = attempt + 1 == MAX_ATTEMPTS;
        let res = if upstream.provider == ProviderKind::Mock {
            mock_answer(
                spec,
                method,
                &path,
                &model,
                streamed,
                &serde_json::from_slice(&body).unwrap_or_default(),
            )
        } else {
            // The last attempt takes the request's headers; earlier ones a copy.
            let headers = match (last, &mut headers) {
                (true, h) => h.take().unwrap_or_default(),
                (false, h) => h.clone().unwrap_or_default(),
            };
            match forward(
                &state,
                spec,
                deployment.as_ref(),
                upstream,
                &parts.method,
                &path,
                parts.uri.query(),
                headers,
                body.clone(),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(provider = %upstream.id, error = %e, "upstream failed");
                    not_again[i] = self::not_again(&e);
                    state
                        .metrics
                        .gateway
                        .upstream_errors
                        .get_or_create(&crate::metrics::ProviderLabels {
                            provider: crate::metrics::provider_label(upstream.provider),
                        })
                        .inc();
                    failures.push(failed_attempt(upstream, None, None, Some(&e)));
                    (response, last_error) = (None, Some(e));
                    continue;
                }
            }
        };
        let status = res.status();
        if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
            response = Some((upstream, res));
            break;
        }
        asked_pause[i] = retry_after(res.headers());
        last_error = None;
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Passed through if it is the last answer: the caller can wait as it asks.
            failures.push(failed_attempt(upstream, Some(status), None, None));
            response = Some((upstream, res));
        } else {
            let error = provider_error(res.into_body()).await;
            failures.push(failed_attempt(upstream, Some(status), error, None));
            response = None;
        }
    }
    let Some((upstream, res)) = response else {
        let error = every_provider_failed(last_error, failures);
        let latency_ms = started.elapsed().as_millis() as i64;
        state.gateway.record(UsageRecord {
            provider: tried.map_or("", |u| u.provider.as_str()),
            status: error.code().status().as_u16(),
            latency_ms,
            ttfb_ms: latency_ms,
            violations,
            ..entry
        });
        return Err(error);
    };

    let mut record = UsageRecord {
        provider: upstream.provider.as_str(),
        status: res.status().as_u16(),
        violations,
        ..entry
    };
    let (mut parts, mut body) = res.into_parts();
    // Response rules: a whole (non-streamed) answer is checked before it leaves — blocked or
    // redacted —; a streamed one is checked when it ends (flag only).
    if policies.has_response_rules() && !streamed && parts.status.is_success() {
        match buffer(body, RESPONSE_INSPECT_LIMIT).await {
            Ok(whole) => {
                let outcome = policies.check_response(spec.format, Some(&record.model), &whole);
                let blocked = outcome.blocked();
                record
                    .violations
                    .extend(outcome.hits.into_iter().map(|h| Found::new("response", h)));
                if blocked {
                    return Err(refuse(
                        &state,
                        record,
                        Vec::new(),
                        started,
                        Some((spec.format, &whole)),
                    ));
                }
                body = Body::from(outcome.redacted.map(Bytes::from).unwrap_or(whole));
            }
            Err(unread) => {
                tracing::warn!(
                    limit = RESPONSE_INSPECT_LIMIT,
                    "response too large for the response policies; passed through unchecked"
                );
                body = unread;
            }
        }
    }
    let events = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut tapped = Tap::new(
        body,
        record,
        spec.format,
        events,
        started,
        state.gateway.clone(),
    );
    if streamed && policies.has_response_rules() {
        tapped = tapped.with_stream_policies(policies.clone());
    }
    // The server sets the length from the body's (exact when the provider's was), or streams.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::new(tapped)))
}

/// Answers bodies up to this size are held back for the response policies.
const RESPONSE_INSPECT_LIMIT: usize = 4 * 1024 * 1024;

/// The whole body, or — when it is larger than `limit` — a body that still yields all of it.
async fn buffer(body: Body, limit: usize) -> Result<Bytes, Body> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0;
    while let Some(next) = stream.next().await {
        match next {
            Ok(chunk) => {
                size += chunk.len();
                chunks.push(chunk);
                if size > limit {
                    let head = futures_util::stream::iter(chunks.into_iter().map(Ok));
                    return Err(Body::from_stream(head.chain(stream)));
                }
            }
            Err(e) => {
                let head = futures_util::stream::iter(chunks.into_iter().map(Ok));
                let failed = futures_util::stream::once(async move { Err(e) });
                return Err(Body::from_stream(head.chain(failed)));
            }
        }
    }
    let mut whole = bytes::BytesMut::with_capacity(size);
    chunks.iter().for_each(|c| whole.extend_from_slice(c));
    Ok(whole.freeze())
}

/// Refuses a request (or its answer) that a `block` rule matched: the log entry and every
/// violation are recorded, and the error names the rules.
fn refuse(
    state: &AppState,
    mut record: UsageRecord,
    mut found: Vec<Found>,
    started: Instant,
    answer: Option<(Format, &Bytes)>,
) -> Error {
    record.violations.append(&mut found);
    let blocking: Vec<&Found> = record
        .violations
        .iter()
        .filter(|f| f.hit.action == crate::policies::rules::Action::Block)
        .collect();
    let names: Vec<&str> = blocking
        .iter()
        .map(|f| f.hit.policy_name.as_str())
        .collect();
    let error = Error::new(
        ErrorCode::PolicyViolation,
        format!("Refused by policy: {}", names.join(", ")),
    )
    .with_details(serde_json::json!({
        "stage": blocking.first().map(|f| f.stage).unwrap_or("request"),
        "policies": blocking.iter().map(|f| serde_json::json!({
            "id": f.hit.policy_id,
            "name": f.hit.policy_name,
            "type": f.hit.kind.as_str(),
            "severity": f.hit.severity.as_str(),
        })).collect::<Vec<_>>(),
        "violation_ids": blocking.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        "log_id": record.id,
    }));
    if let Some((format, body)) = answer {
        let (p, c, _) = super::usage::parse_usage(format, body);
        record.prompt_tokens = p;
        record.completion_tokens = c;
    }
    record.status = StatusCode::FORBIDDEN.as_u16();
    record.latency_ms = started.elapsed().as_millis() as i64;
    record.ttfb_ms = record.latency_ms;
    state.gateway.record(record);
    error
}

/// The answer to a request no provider of the organization can serve (test keys always have the
/// mock): how to add one, with the route and a minimal body.
fn no_provider(spec: &Spec, org_id: &str, environment: &str, model: &str) -> Error {
    let kind = spec.kinds[0];
    let path = format!("/v1/organizations/{org_id}/providers");
    let mut body = serde_json::json!({"provider": kind, "name": kind.as_str(), "api_key": "<the provider's API key>"});
    if spec.azure {
        body["base_url"] = "https://<resource>.openai.azure.com".into();
    }
    let model_note = if model.is_empty() {
        String::new()
    } else {
        format!(" (or whose `models` include {model})")
    };
    // 400, not a 5xx: the request cannot succeed until an admin adds a provider, and the
    // providers' SDKs retry a 5xx (openai and anthropic: twice) but never a 400.
    Error::new(
        ErrorCode::InvalidRequest,
        format!(
            "This organization has no enabled {kind} provider for {environment} keys{model_note}. \
             Add one with POST {path} and a body such as {body} (an organization admin's token), \
             or call with a test key (sk_test_…), which the built-in mock provider answers"
        ),
    )
    .with_details(serde_json::json!({
        "model": model,
        "environment": environment,
        "add_provider": {"method": "POST", "path": path, "body": body},
    }))
}

/// One failed attempt, as the error that ends the request lists it: the provider (id, name,
/// kind), the status it answered (none when it was not reached) and its own error object when
/// it sent JSON, or the gateway's reason.
fn failed_attempt(
    upstream: &Upstream,
    status: Option<StatusCode>,
    error: Option<serde_json::Value>,
    failure: Option<&Error>,
) -> serde_json::Value {
    let mut entry = serde_json::json!({
        "provider_id": upstream.id,
        "name": upstream.name,
        "provider": upstream.provider,
        "status": status.map(|s| s.as_u16()),
    });
    if let Some(error) = error {
        entry["error"] = error;
    }
    if let Some(Error::Api {
        message, details, ..
    }) = failure
    {
        entry["message"] = message.as_ref().into();
        if let Some(reason) = details.as_ref().and_then(|d| d.get("reason")) {
            entry["reason"] = reason.clone();
        }
    }
    entry
}

/// The largest error body of a failed provider that is read for the final error's details, and
/// the longest wait for it (the next provider is not kept waiting for a slow error body).
const PROVIDER_ERROR_LIMIT: usize = 64 * 1024;
const PROVIDER_ERROR_WAIT: Duration = Duration::from_secs(2);

/// A failed provider's own error: the `error` object of its JSON body (OpenAI, Anthropic and
/// Gemini all send one), or the whole JSON body; nothing when it is not JSON, larger than
/// [`PROVIDER_ERROR_LIMIT`] or slower than [`PROVIDER_ERROR_WAIT`].
async fn provider_error(body: Body) -> Option<serde_json::Value> {
    let read = tokio::time::timeout(PROVIDER_ERROR_WAIT, buffer(body, PROVIDER_ERROR_LIMIT));
    let whole = read.await.ok()?.ok()?;
    let mut json: serde_json::Value = serde_json::from_slice(&whole).ok()?;
    match json.get_mut("error") {
        Some(error) if error.is_object() => Some(error.take()),
        _ => Some(json),
    }
}

/// The answer when no provider succeeded: 502 `upstream_error` (504 `upstream_timeout` when the
/// last attempt timed out), `details` listing every attempt in order.
fn every_provider_failed(last: Option<Error>, failures: Vec<serde_json::Value>) -> Error {
    let (code, message) = match last {
        Some(Error::Api { code, message, .. }) => (code, message),
        _ => {
            let status = failures
                .last()
                .and_then(|f| f["status"].as_u64())
                .unwrap_or_default();
            (
                ErrorCode::UpstreamError,
                format!("The provider answered {status}: every provider tried failed (details lists each attempt)").into(),
            )
        }
    };
    Error::new(code, message).with_details(serde_json::Value::Array(failures))
}

/// The mock provider, for test keys of an organization without a provider of that format.
static MOCK: std::sync::LazyLock<Upstream> = std::sync::LazyLock::new(|| Upstream {
    id: "mock".into(),
    provider: ProviderKind::Mock,
    name: "Built-in mock".into(),
    base_url: None,
    credential: None,
    models: vec![],
});

/// The provider's URL for `path` (and the query, without a `key=` credential).
fn upstream_uri(
    spec: &Spec,
    deployment: Option<&(String, String)>,
    upstream: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<axum::http::Uri, Error> {
    let base = match (&upstream.base_url, deployment) {
        (Some(b), _) => Cow::Borrowed(b.trim_end_matches('/')),
        (None, Some((resource, _))) => Cow::Owned(format!("https://{resource}.openai.azure.com")),
        (None, None) => Cow::Borrowed(spec.default_base),
    };
    let mut url = match deployment {
        Some((_, deployment)) => format!("{base}/openai/deployments/{deployment}/{path}"),
        None => format!("{base}/{path}"),
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let has_key = url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "key");
        if has_key {
            let kept = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k != "key"))
                .finish();
            if !kept.is_empty() {
                url.push('?');
                url.push_str(&kept);
            }
        } else {
            url.push('?');
            url.push_str(q);
        }
    }
    axum::http::Uri::try_from(url).map_err(|e| {
        Error::new(
            ErrorCode::UpstreamError,
            format!("The provider's URL is not valid: {e}"),
        )
    })
}

/// The answer when the provider's address is not public and the operator has not allowed
/// private provider targets.
const REFUSED_TARGET: &str = "The provider's address is not public: the gateway does not connect \
     to private, loopback, link-local or other internal addresses (allow_private_provider_targets)";

/// Whether asking the provider again is pointless: it timed out (the wait would repeat) or its
/// address was refused (it would be refused again).
fn not_again(e: &Error) -> bool {
    match e {
        Error::Api {
            code: ErrorCode::UpstreamTimeout,
            ..
        } => true,
        Error::Api {
            details: Some(d), ..
        } => d.get("reason").is_some_and(|r| r == "non_public_address"),
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &AppState,
    spec: &Spec,
    deployment: Option<&(String, String)>,
    upstream: &Upstream,
    method: &Method,
    path: &str,
    query: Option<&str>,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let uri = upstream_uri(spec, deployment, upstream, path, query)?;
    // The client's headers, but for hop-by-hop headers and the client's own credentials.
    strip(&mut headers, &[&HOP_BY_HOP, &CREDENTIALS]);
    // Each provider's own way of taking a credential.
    match &upstream.credential {
        Some(Credential::Header(name, value)) => {
            headers.insert(name.clone(), value.clone());
        }
        Some(Credential::Invalid) => {
            return Err(Error::new(
                ErrorCode::UpstreamError,
                "The provider's API key is not a valid header value",
            ))
        }
        None => {}
    }
    if spec.format == Format::Anthropic && !headers.contains_key("anthropic-version") {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static("2023-06-01"),
        );
    }
    let mut req = axum::http::Request::new(http_body_util::Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let failed = |code: ErrorCode, message: &'static str| {
        Error::new(code, message).with_details(
            serde_json::json!({"provider": upstream.provider, "provider_id": upstream.id}),
        )
    };
    let first_byte = Duration::from_secs(state.config.gateway_first_byte_timeout_secs);
    let idle = Duration::from_secs(state.config.gateway_idle_timeout_secs);
    let res = match tokio::time::timeout(first_byte, state.gateway_client.send(req, idle)).await {
        Err(_) => {
            return Err(failed(
                ErrorCode::UpstreamTimeout,
                "The provider did not start answering in time",
            ))
        }
        Ok(Err(e)) if super::client::refused_target(&*e) => {
            // Nothing of the address is told (the caller may not learn where names resolve).
            return Err(
                Error::new(ErrorCode::UpstreamError, REFUSED_TARGET).with_details(
                    serde_json::json!({
                        "provider": upstream.provider,
                        "provider_id": upstream.id,
                        "reason": "non_public_address",
                    }),
                ),
            );
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "provider request failed");
            let timed_out =
                std::iter::successors(Some(&*e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| {
                    e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                });
            return Err(if timed_out {
                failed(
                    ErrorCode::UpstreamTimeout,
                    "The provider could not be reached in time",
                )
            } else {
                failed(
                    ErrorCode::UpstreamError,
                    "The provider could not be reached",
                )
            });
        }
        Ok(Ok(res)) => res,
    };
    let (mut parts, answer) = res.into_parts();
    strip(&mut parts.headers, &[&HOP_BY_HOP]);
    Ok(Response::from_parts(parts, Body::new(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(v: &'static str) -> header::HeaderValue {
        header::HeaderValue::from_static(v)
    }

    #[test]
    fn hop_by_hop_headers_and_credentials_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer gh_x"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-api-key", HeaderValue::from_static("secret"));
        headers.insert(header::HOST, HeaderValue::from_static("gateway"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert("openai-beta", HeaderValue::from_static("assistants=v2"));
        strip(&mut headers, &[&HOP_BY_HOP, &CREDENTIALS]);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "openai-beta"]);
        assert_eq!(headers.len(), 2);
        // Only the named sets: credentials stay when only hop-by-hop headers are stripped.
        let mut answer = HeaderMap::new();
        answer.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Hop-Trace"),
        );
        answer.insert("x-hop-trace", HeaderValue::from_static("1"));
        answer.insert(header::AUTHORIZATION, HeaderValue::from_static("x"));
        strip(&mut answer, &[&HOP_BY_HOP]);
        assert_eq!(answer.keys().collect::<Vec<_>>(), [header::AUTHORIZATION]);
    }

    #[test]
    fn dot_segments_and_encoded_slashes_are_refused() {
        for path in [
            "..",
            ".",
            "../admin",
            "chat/../../v1/organizations",
            "chat/./completions",
            "chat/..",
            "%2e%2e/secret",
            "%2E%2e/secret",
            ".%2e/x",
            "%2e/x",
            "..;/x",
            ".;jsessionid=1/x",
            "chat%2F..%2Fmodels",
            "chat/..%2fmodels",
            "chat%5c..%5cx",
            "chat\\..\\x",
            "a//../b",
        ] {
            assert!(refused_path(path).is_some(), "{path} should be refused");
        }
        for path in [
            "",
            "chat/completions",
            "models/gpt-4.1",
            "files/file-abc.jsonl/content",
            "models/gemini-1.5-pro:streamGenerateContent",
            ".well-known/x",
            ".../x",
            "a..b/..c/c..",
            "x;y/z",
            "%2e%2e%2e/x",
            "100%25/x",
            "bad%zz/x",
            "trailing/",
        ] {
            assert_eq!(refused_path(path), None, "{path} should pass");
        }
        assert!(is_azure_resource("my-resource-1"));
        for r in ["x", "evil.com", "a@b", "res:443", "res%2e"] {
            assert!(!is_azure_resource(r), "{r}");
        }
    }

    #[test]
    fn retries_pause_longer_each_time_and_honour_short_retry_afters() {
        for _ in 0..50 {
            let first = retry_pause(0, None).unwrap();
            assert!(
                first >= RETRY_PAUSE / 2 && first <= RETRY_PAUSE,
                "{first:?}"
            );
            let later = retry_pause(20, None).unwrap();
            assert!(
                later >= MAX_RETRY_PAUSE / 2 && later <= MAX_RETRY_PAUSE,
                "{later:?}"
            );
        }
        let asked = Duration::from_secs(1);
        assert_eq!(retry_pause(0, Some(asked)), Some(asked));
        assert_eq!(retry_pause(0, Some(Duration::from_secs(30))), None);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn the_model_is_read_from_json_and_multipart_bodies() {
        let json = br#"{"model":"gpt-4o","stream":true}"#;
        let p = peek(Some(&content_type("application/json")), json).unwrap();
        assert_eq!(
            (p.model.as_deref(), p.stream),
            (Some("gpt-4o"), Some(true.into()))
        );
        // No declared type: read as JSON; JSON that does not parse is refused.
        assert_eq!(peek(None, json).unwrap().model.as_deref(), Some("gpt-4o"));
        assert!(peek(None, b"{not json").is_err());
        // Another shape of JSON is forwarded untouched.
        assert_eq!(peek(None, b"[1,2]").unwrap().model, None);

        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
                     Content-Type: audio/wav\r\n\r\nRIFF\x00\x01binary\r\n\
                     --XyZ\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
                     --XyZ\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--XyZ--\r\n";
        let p = peek(
            Some(&content_type("multipart/form-data; boundary=\"XyZ\"")),
            body,
        )
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("whisper-1"));
        assert_eq!(p.stream, Some(true.into()));
        // A field that is not there, a multipart body without a boundary, other types.
        assert_eq!(form_field(body, "XyZ", "language"), None);
        assert!(peek(Some(&content_type("multipart/form-data")), body).is_err());
        let p = peek(Some(&content_type("application/octet-stream")), b"\x00\x01").unwrap();
        assert_eq!(p.model, None);
    }
}
