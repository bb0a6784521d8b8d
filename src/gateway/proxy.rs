//! The OpenAI-format proxy route (`/openai/v1/{path}`): authenticate the key from the cache,
//! pick the organization's providers in priority order (the mock for test keys without one),
//! forward with the provider's credential, fall back on connection errors, 429 and 5xx, and
//! stream the answer back chunk by chunk through the usage [`Tap`](super::usage::Tap).

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
    usage::{Tap, UsageRecord},
};
use crate::{
    app::AppState,
    error::{Error, ErrorCode},
    http::{middleware::Passthrough, request_meta::RequestMeta},
    orgs::roles::Permission,
};

/// At most this many upstreams are tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// The key as the OpenAI SDK sends it (and the other spellings the gateway accepts).
fn gateway_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
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

pub async fn openai(
    State(state): State<AppState>,
    meta: RequestMeta,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let started = Instant::now();
    let token = gateway_key(&headers, uri.query())
        .ok_or_else(|| Error::unauthorized("Send a gateway API key: Authorization: Bearer sk_…"))?;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let key = match state
        .api_keys
        .authenticate(&state.db, &token, origin, meta.ip)
        .await
    {
        Ok(k) => k,
        Err(e) => {
            crate::keys::routes::record_refusal(&state, &meta, &token, &e);
            return Err(e);
        }
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
    let path = uri
        .path()
        .trim_start_matches("/openai/v1")
        .trim_start_matches('/')
        .to_string();
    let json: Option<serde_json::Value> = if body.is_empty() {
        None
    } else {
        Some(crate::http::extract::parse_json(&body)?)
    };
    let model = json
        .as_ref()
        .and_then(|j| j["model"].as_str())
        .unwrap_or_default()
        .to_string();
    let streamed = json
        .as_ref()
        .is_some_and(|j| j["stream"].as_bool() == Some(true));

    let mut candidates: Vec<Upstream> = upstreams(&state, &key.organization_id, &key.environment)
        .await?
        .into_iter()
        .filter(|u| matches!(u.provider.as_str(), "openai" | "openai_compatible" | "mock"))
        .filter(|u| u.serves(&model))
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
            if method == Method::POST && path == "chat/completions" {
                mock::openai_chat(json.as_ref().unwrap_or(&serde_json::Value::Null))
            } else {
                (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": {"message": format!("The mock provider does not serve {path}"), "type": "invalid_request_error"}}))).into_response()
            }
        } else {
            match forward(
                &state,
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

    let record = UsageRecord {
        organization_id: key.organization_id.clone(),
        key_id: key.id.clone(),
        environment: key.environment.clone(),
        provider: upstream.provider.clone(),
        model,
        path: format!("/openai/v1/{path}"),
        status: res.status().as_u16(),
        streamed,
        ..Default::default()
    };
    let (mut parts, body) = res.into_parts();
    let tapped = Tap::new(
        body.into_data_stream(),
        record,
        started,
        state.gateway.clone(),
    );
    parts.extensions.insert(Passthrough);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from_stream(tapped)))
}

async fn forward(
    state: &AppState,
    upstream: &Upstream,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let base = upstream
        .base_url
        .clone()
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    let mut url = format!("{}/{path}", base.trim_end_matches('/'));
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
    if let Some(k) = &upstream.api_key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.map_err(|e| {
        let code = if e.is_timeout() {
            ErrorCode::UpstreamTimeout
        } else {
            ErrorCode::UpstreamError
        };
        Error::new(code, "The provider could not be reached").with_details(
            serde_json::json!({"provider": upstream.provider, "provider_id": upstream.id}),
        )
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
