//! The proxy routes (`/openai/v1/…`, `/anthropic/v1/…`, `/google/v1beta/…`): authenticate the
//! key from the cache, pick the organization's providers for that format in priority order (the
//! mock for test keys without one), forward with the provider's credential injected the
//! provider's way, fall back on connection errors, 429 and 5xx, and stream the answer back chunk
//! by chunk through the usage [`Tap`](super::usage::Tap).

use std::time::Instant;

use axum::{
    body::{Body, Bytes},
    extract::{OriginalUri, State},
    http::{header, HeaderMap, HeaderName, Method, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    mock,
    providers::{upstreams, Upstream},
    usage::{Format, Tap, UsageRecord},
};
use crate::policies::violations::Found;
use crate::{
    app::AppState,
    error::{Error, ErrorCode},
    http::{middleware::Passthrough, request_meta::RequestMeta},
    keys::cache::VerifiedKey,
    orgs::roles::Permission,
};

/// At most this many upstreams are tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// The key as the OpenAI SDK sends it (and the other spellings the gateway accepts).
pub fn gateway_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(k) = crate::orgs::access::presented_key_in(headers) {
        return Some(k.to_string());
    }
    for name in ["api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim().to_string());
        }
    }
    query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
    })
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];
const CREDENTIALS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

fn forwardable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !CREDENTIALS.contains(&n)
}

/// What differs between the provider formats.
struct Spec {
    format: Format,
    prefix: &'static str,
    kinds: &'static [&'static str],
    default_base: &'static str,
    /// Azure OpenAI: `/azure/{resource}/{deployment}/{path}`, key in `api-key`.
    azure: bool,
}

const OPENAI: Spec = Spec {
    format: Format::OpenAi,
    prefix: "/openai/v1",
    kinds: &["openai", "openai_compatible", "mock"],
    default_base: "https://api.openai.com/v1",
    azure: false,
};
const ANTHROPIC: Spec = Spec {
    format: Format::Anthropic,
    prefix: "/anthropic/v1",
    kinds: &["anthropic", "mock"],
    default_base: "https://api.anthropic.com/v1",
    azure: false,
};
const GOOGLE: Spec = Spec {
    format: Format::Google,
    prefix: "/google/v1beta",
    kinds: &["google", "mock"],
    default_base: "https://generativelanguage.googleapis.com/v1beta",
    azure: false,
};
const AZURE: Spec = Spec {
    format: Format::OpenAi,
    prefix: "/azure",
    kinds: &["azure", "mock"],
    default_base: "",
    azure: true,
};

macro_rules! route {
    ($name:ident, $spec:expr) => {
        pub async fn $name(
            State(state): State<AppState>,
            meta: RequestMeta,
            method: Method,
            OriginalUri(uri): OriginalUri,
            verified: Option<axum::Extension<VerifiedKey>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Response, Error> {
            let verified = verified.map(|axum::Extension(v)| v.0);
            handle(&$spec, state, meta, method, uri, verified, headers, body).await
        }
    };
}

route!(openai, OPENAI);
route!(anthropic, ANTHROPIC);
route!(google, GOOGLE);
route!(azure, AZURE);

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

#[allow(clippy::too_many_arguments)]
async fn handle(
    spec: &Spec,
    state: AppState,
    meta: RequestMeta,
    method: Method,
    uri: axum::http::Uri,
    verified: Option<std::sync::Arc<crate::keys::cache::CachedKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let started = Instant::now();
    let token = gateway_key(&headers, uri.query())
        .ok_or_else(|| Error::unauthorized("Send a gateway API key: Authorization: Bearer sk_…"))?;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    // Verified once per request: by the rate-limit middleware when it ran, else here.
    let key = match verified {
        Some(k) => k,
        None => match state
            .api_keys
            .authenticate(&state.db, &token, origin, meta.ip)
            .await
        {
            Ok(k) => k,
            Err(e) => {
                crate::keys::routes::record_refusal(&state, &meta, &token, &e);
                return Err(e);
            }
        },
    };
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
    // Azure: the resource and deployment come first in the path.
    let mut deployment: Option<(String, String)> = None;
    if spec.azure {
        let mut parts = path.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(r), Some(d), Some(rest)) if !r.is_empty() && !d.is_empty() => {
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
    let peek: Peek = match serde_json::from_slice(&body) {
        _ if body.is_empty() => Peek::default(),
        Ok(peek) => peek,
        // JSON of another shape (an array, a non-string model): nothing to read, forwarded as is.
        Err(e) if e.is_data() => Peek::default(),
        Err(_) => {
            crate::http::extract::parse_json::<serde_json::Value>(&body).map(|_| Peek::default())?
        }
    };
    let (mut model, streamed) = model_and_stream(spec, &path, &peek);
    if let (true, Some((_, d))) = (model.is_empty(), &deployment) {
        model = d.clone();
    }
    let entry = UsageRecord {
        id: crate::ids::new_id("log"),
        organization_id: key.organization_id.clone(),
        key_id: key.id.clone(),
        environment: key.environment.clone(),
        model: model.clone(),
        path: uri.path().to_string(),
        streamed,
        tokens_per_minute: key
            .rate_limit
            .as_ref()
            .and_then(|r| r.get("tokens_per_minute"))
            .and_then(|v| v.as_u64()),
        ..Default::default()
    };

    // The organization's policies, compiled once per organization (cached on every node).
    let policies = state.policies.get(&state.db, &key.organization_id).await?;
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

    let mut candidates: Vec<Upstream> = upstreams(&state, &key.organization_id, &key.environment)
        .await?
        .iter()
        .filter(|u| spec.kinds.contains(&u.provider.as_str()) && u.serves(&model))
        .cloned()
        .collect();
    if candidates.is_empty() && key.environment == "test" {
        candidates.push(Upstream {
            id: "mock".into(),
            provider: "mock".into(),
            base_url: None,
            api_key: None,
            models: vec![],
        });
    }
    if candidates.is_empty() {
        return Err(Error::new(
            ErrorCode::UpstreamError,
            "No provider of this organization serves this request; add one at /v1/organizations/{org_id}/providers",
        )
        .with_details(serde_json::json!({"model": model})));
    }

    let mut last_error: Option<Error> = None;
    let mut response = None;
    for upstream in candidates.iter().take(MAX_ATTEMPTS) {
        let res = if upstream.provider == "mock" {
            mock_answer(
                spec,
                &method,
                &path,
                &model,
                streamed,
                &serde_json::from_slice(&body).unwrap_or_default(),
            )
        } else {
            match forward(
                &state,
                spec,
                deployment.as_ref(),
                upstream,
                &method,
                &path,
                uri.query(),
                &headers,
                body.clone(),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(provider = %upstream.id, error = %e, "upstream failed; trying the next provider");
                    state
                        .metrics
                        .gateway
                        .upstream_errors
                        .get_or_create(&crate::metrics::ProviderLabels {
                            provider: upstream.provider.clone(),
                        })
                        .inc();
                    last_error = Some(e);
                    continue;
                }
            }
        };
        let status = res.status();
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        response = Some((upstream.clone(), res));
        if !retryable {
            break;
        }
    }
    let Some((upstream, res)) = response else {
        return Err(last_error
            .unwrap_or_else(|| Error::new(ErrorCode::UpstreamError, "The upstream failed")));
    };

    let mut record = UsageRecord {
        provider: upstream.provider.clone(),
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
        body.into_data_stream(),
        record,
        spec.format,
        events,
        started,
        state.gateway.clone(),
    );
    if streamed && policies.has_response_rules() {
        tapped = tapped.with_stream_policies(policies.clone());
    }
    parts.extensions.insert(Passthrough);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from_stream(tapped)))
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

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &AppState,
    spec: &Spec,
    deployment: Option<&(String, String)>,
    upstream: &Upstream,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let mut url = match deployment {
        Some((resource, deployment)) => {
            let base = upstream
                .base_url
                .clone()
                .unwrap_or_else(|| format!("https://{resource}.openai.azure.com"));
            format!(
                "{}/openai/deployments/{deployment}/{path}",
                base.trim_end_matches('/')
            )
        }
        None => {
            let base = upstream
                .base_url
                .clone()
                .unwrap_or_else(|| spec.default_base.into());
            format!("{}/{path}", base.trim_end_matches('/'))
        }
    };
    let query: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "key")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    if !query.is_empty() {
        url.push('?');
        url.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish(),
        );
    }
    let mut req = state
        .gateway_client
        .request(method.clone(), &url)
        .body(body);
    for (name, value) in headers {
        if forwardable(name) {
            req = req.header(name, value);
        }
    }
    // Each provider's own way of taking a credential.
    if let Some(k) = &upstream.api_key {
        req = match spec.format {
            Format::OpenAi if spec.azure => req.header("api-key", k),
            Format::OpenAi => req.bearer_auth(k),
            Format::Anthropic => req.header("x-api-key", k),
            Format::Google => req.header("x-goog-api-key", k),
        };
    }
    if spec.format == Format::Anthropic && !headers.contains_key("anthropic-version") {
        req = req.header("anthropic-version", "2023-06-01");
    }
    let details = serde_json::json!({"provider": upstream.provider, "provider_id": upstream.id});
    let first_byte = std::time::Duration::from_secs(state.config.gateway_first_byte_timeout_secs);
    let sent = tokio::time::timeout(first_byte, req.send())
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::UpstreamTimeout,
                "The provider did not start answering in time",
            )
            .with_details(details.clone())
        })?;
    let res = sent.map_err(|e| {
        let code = if e.is_timeout() {
            ErrorCode::UpstreamTimeout
        } else {
            ErrorCode::UpstreamError
        };
        Error::new(code, "The provider could not be reached").with_details(details)
    })?;
    let mut out = Response::builder().status(res.status().as_u16());
    for (name, value) in res.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    out.body(Body::from_stream(res.bytes_stream()))
        .map_err(|e| anyhow::anyhow!("building the proxied response: {e}").into())
}
