//! The AI gateway's first slice: providers, the OpenAI-format route with the mock provider and
//! with an OpenAI-compatible upstream on loopback (credential injection, streaming, fallback),
//! and the usage log.

mod common;

use std::time::Duration;

use axum::{http::HeaderMap, response::IntoResponse, routing::post, Router};
use common::{
    fixtures::{a_key, a_test_key, an_org, Org},
    Backend, ServerOptions, TestServer,
};
use gatehouse::environment::Environment;
use serde_json::{json, Value};

on_both_databases!(
    test_keys_get_deterministic_mock_answers_plain_and_streamed,
    mock_calls_are_logged_with_their_tokens_and_cost_and_counted_in_metrics,
    stats_total_and_group_the_logged_calls,
    the_gateway_refuses_missing_keys_scopes_providers_and_bad_json,
    requests_fall_back_to_the_next_provider_with_its_own_credential,
    upstream_streams_pass_through_and_usage_is_logged_and_paged,
    a_disabled_provider_is_skipped_from_the_next_request,
    providers_keep_their_keys_secret,
    anthropic_and_gemini_formats_are_answered_streamed_and_logged,
    an_anthropic_provider_gets_its_credential_as_x_api_key,
    azure_deployments_are_routed_with_the_api_key_header,
    slow_providers_time_out_and_big_bodies_are_refused,
    uploads_and_the_responses_api_pass_through_with_their_usage,
    a_failing_provider_is_retried_unless_it_asks_for_a_long_wait,
    when_every_provider_fails_the_answer_is_502_listing_each_attempt,
    gemini_v1_is_served_beside_v1beta,
    gateway_limits_and_quotas_count_requests_and_tokens,
    stats_from_hourly_rollups_equal_stats_from_the_log,
    keys_and_providers_in_use_are_read_again_in_the_background,
);

async fn logs(srv: &TestServer, s: &Org, want: usize) -> Value {
    // The writer stores entries off the request path: wait for them in the table (not through
    // the analytics route, which has its own rate limit), then read them through the API.
    srv.wait_for_usage_logs(want).await;
    let res = srv
        .get_as(&format!("{}/analytics/logs", s.base), &s.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

/// Three calls to the mock provider with a test key (two plain, one streamed), each answered
/// deterministically.
async fn three_mock_calls(srv: &TestServer, test_key: &str, chat: &Value) {
    let chat = chat.clone();
    let res = srv
        .post_as("/openai/v1/chat/completions", test_key, &chat)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["object"], "chat.completion");
    assert_eq!(
        res.json["choices"][0]["message"]["content"],
        "Mock reply to: hello there gateway"
    );
    assert_eq!(res.json["usage"]["prompt_tokens"], 5);
    assert_eq!(res.json["usage"]["completion_tokens"], 6);
    // Deterministic.
    let again = srv
        .post_as("/openai/v1/chat/completions", test_key, &chat)
        .await;
    assert_eq!(again.json, res.json);

    // Streamed, with usage in the last chunk.
    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let res = srv
        .post_as("/openai/v1/chat/completions", test_key, &streaming)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        common::openai_stream_text(&res.text),
        "Mock reply to: hello there gateway"
    );
}

/// The mock provider's chat: a system prompt and a user message.
fn mock_chat() -> Value {
    json!({"model": "mock-model", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there gateway"}]})
}

/// A live gateway key, answered by the organization's providers.
async fn a_live_key(srv: &TestServer, s: &Org) -> String {
    s.key_token(srv, a_key().named("l").scopes(&["gateway:proxy"]))
        .await
}

/// Adds a provider to the organization; it is created.
async fn a_provider(srv: &TestServer, s: &Org, body: Value) -> Value {
    let res = srv
        .post_as(&format!("{}/providers", s.base), &s.owner, &body)
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    res.json
}

/// A server and an organization whose test key made `three_mock_calls`.
async fn an_org_after_three_mock_calls(backend: Backend) -> (TestServer, Org) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    let test_key = a_test_key(&srv, &s).await;
    three_mock_calls(&srv, &test_key, &mock_chat()).await;
    (srv, s)
}

async fn test_keys_get_deterministic_mock_answers_plain_and_streamed(backend: Backend) {
    an_org_after_three_mock_calls(backend).await;
}

async fn mock_calls_are_logged_with_their_tokens_and_cost_and_counted_in_metrics(backend: Backend) {
    let (srv, s) = an_org_after_three_mock_calls(backend).await;
    let logs = logs(&srv, &s, 3).await;
    let entries = logs["logs"].as_array().unwrap();
    assert!(entries
        .iter()
        .all(|e| e["provider"] == "mock" && e["status"] == 200 && e["environment"] == "test"));
    let streamed = entries.iter().find(|e| e["streamed"] == true).unwrap();
    assert_eq!(streamed["prompt_tokens"], 5);
    assert_eq!(streamed["completion_tokens"], 6);
    assert_eq!(streamed["total_tokens"], 11);
    // mock-model: $1 per million prompt tokens, $2 per million completion tokens.
    let cost = streamed["cost_usd"].as_f64().unwrap();
    assert!((cost - (5.0 + 12.0) / 1e6).abs() < 1e-12, "{cost}");
    assert!(streamed["id"].as_str().unwrap().starts_with("log_"));

    // Prometheus: requests by provider and status, tokens by kind.
    let metrics = srv.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"gatehouse_gateway_requests_total{provider="mock",status="200"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_gateway_tokens_total{provider="mock",kind="prompt"} 15"#),
        "{metrics}"
    );
    assert!(metrics.contains("gatehouse_gateway_request_duration_seconds_bucket"));
}

async fn stats_total_and_group_the_logged_calls(backend: Backend) {
    let (srv, s) = an_org_after_three_mock_calls(backend).await;
    srv.wait_for_usage_logs(3).await;
    // Stats over the same calls: totals, a series by model, percentiles from the log.
    let stats = srv
        .get_as(
            &format!("{}/analytics/stats?group_by=model", s.base),
            &s.owner,
        )
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert_eq!(stats.json["totals"]["requests"], 3);
    assert_eq!(stats.json["totals"]["errors"], 0);
    assert_eq!(stats.json["totals"]["prompt_tokens"], 15);
    assert_eq!(stats.json["totals"]["total_tokens"], 33);
    assert!(stats.json["totals"]["latency_ms"]["p99"].is_i64());
    assert_eq!(stats.json["series"][0]["group"], "mock-model");
    assert_eq!(stats.json["series"][0]["requests"], 3);
    let by_hour = srv
        .get_as(
            &format!("{}/analytics/stats?group_by=hour", s.base),
            &s.owner,
        )
        .await;
    assert!(by_hour.json["series"][0]["group"]
        .as_str()
        .unwrap()
        .ends_with(":00:00Z"));
    srv.get_as(
        &format!("{}/analytics/stats?group_by=colour", s.base),
        &s.owner,
    )
    .await
    .assert_error(400, "invalid_request");
    srv.get_as(
        &format!(
            "{}/analytics/stats?start=2030-01-01T00:00:00Z&end=2029-01-01T00:00:00Z",
            s.base
        ),
        &s.owner,
    )
    .await
    .assert_error(400, "invalid_request");
    let empty = srv
        .get_as(
            &format!(
                "{}/analytics/stats?start=2020-01-01T00:00:00Z&end=2020-01-02T00:00:00Z",
                s.base
            ),
            &s.owner,
        )
        .await;
    assert_eq!(empty.json["totals"]["requests"], 0);
    assert!(empty.json["totals"]["latency_ms"]["p50"].is_null());
}

async fn the_gateway_refuses_missing_keys_scopes_providers_and_bad_json(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    let test_key = a_test_key(&srv, &s).await;
    let chat = mock_chat();
    // Refusals: no key, a key without the scope, a live key without a provider.
    srv.post_json("/openai/v1/chat/completions", &chat)
        .await
        .assert_error(401, "unauthorized");
    let no_scope = s
        .key_token(
            &srv,
            a_key()
                .named("n")
                .environment(Environment::Test)
                .scopes(&["members:read"]),
        )
        .await;
    srv.post_as("/openai/v1/chat/completions", &no_scope, &chat)
        .await
        .assert_error(403, "forbidden");
    // A live key with no provider: the error says how to add one (the route and a body).
    let live = a_live_key(&srv, &s).await;
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &chat)
        .await;
    let err = res.assert_error(400, "invalid_request");
    let path = format!("/v1/organizations/{}/providers", s.id);
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("POST {path}")) && message.contains(r#""provider":"openai""#),
        "{message}"
    );
    let add = &err["details"]["add_provider"];
    assert_eq!(add["path"], path.as_str());
    assert_eq!(add["body"]["provider"], "openai");
    // The body it shows is one the providers route takes.
    let mut body = add["body"].clone();
    body["api_key"] = json!("sk-upstream");
    a_provider(&srv, &s, body).await;
    let res = srv
        .send(
            srv.client
                .post(srv.url("/openai/v1/chat/completions"))
                .bearer_auth(&test_key)
                .header("content-type", "application/json")
                .body("{nope"),
        )
        .await;
    res.assert_error(400, "invalid_request");
}

/// A server whose providers may be on loopback (`allow_private_provider_targets`), as the local
/// upstreams of these tests are.
async fn start_with_local_providers(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.allow_private_provider_targets = true),
            ..Default::default()
        },
    )
    .await
}

/// Serves `app` on a loopback port: its base URL (`http://127.0.0.1:PORT`).
async fn serve_locally(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// An OpenAI-compatible upstream on loopback that records what it receives.
async fn upstream(
    fail: bool,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Value)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let body: Value = serde_json::from_str(&body).unwrap();
                let _ = tx.send((headers, body.clone()));
                if fail {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
                }
                if body["stream"] == true {
                    let frames = ["data: {\"model\":\"up-model\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
                                  "data: {\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}\n\n",
                                  "data: [DONE]\n\n"];
                    let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
                    return ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream)).into_response();
                }
                axum::Json(json!({"id": "x", "object": "chat.completion", "model": "up-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}))
                .into_response()
            }
        }),
    );
    let url = format!("{}/v1", serve_locally(app).await);
    (url, rx)
}

type Received = tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Value)>;

/// Two OpenAI-compatible providers on loopback: "down" (priority 0, answers 503) and "up"
/// (priority 1); returns their ids and what each receives.
async fn down_and_up_providers(srv: &TestServer, s: &Org) -> (Vec<String>, Received, Received) {
    let (bad_url, bad_rx) = upstream(true).await;
    let (good_url, good_rx) = upstream(false).await;
    let mut ids = Vec::new();
    for (name, url, priority, secret) in [
        ("down", &bad_url, 0, "sk-upstream-down"),
        ("up", &good_url, 1, "sk-upstream-secret"),
    ] {
        let res = srv
            .post_as(&format!("{}/providers", s.base), &s.owner, &json!({"provider": "openai_compatible", "name": name, "base_url": url, "api_key": secret, "priority": priority}))
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        ids.push(res.json["id"].as_str().unwrap().to_string());
    }
    (ids, bad_rx, good_rx)
}

/// A live gateway key, and a chat sent with it through the "down" and "up" providers: the first
/// answers 503, the request goes on to the second with that provider's own credential, the
/// caller's other headers and body, and never the gateway key.
async fn a_chat_that_falls_back(srv: &TestServer, s: &Org) -> (String, Value) {
    let (_, mut bad_rx, mut good_rx) = down_and_up_providers(srv, s).await;
    let live = a_live_key(srv, s).await;
    let chat = json!({"model": "up-model", "messages": [{"role": "user", "content": "hi"}]});
    let res = srv
        .send(
            srv.client
                .post(srv.url("/openai/v1/chat/completions"))
                .bearer_auth(&live)
                .header("x-custom", "kept")
                .json(&chat),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json["choices"][0]["message"]["content"],
        "from upstream"
    );
    // The first provider answered 503: the request went on to the next one.
    let (bad_headers, _) = bad_rx.recv().await.unwrap();
    assert_eq!(bad_headers["authorization"], "Bearer sk-upstream-down");
    let (headers, body) = good_rx.recv().await.unwrap();
    assert_eq!(headers["authorization"], "Bearer sk-upstream-secret");
    assert_eq!(headers["x-custom"], "kept");
    assert!(
        !format!("{headers:?}").contains(&live),
        "the gateway key leaked upstream"
    );
    assert_eq!(body, chat);
    (live, chat)
}

async fn requests_fall_back_to_the_next_provider_with_its_own_credential(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    a_chat_that_falls_back(&srv, &s).await;
}

async fn upstream_streams_pass_through_and_usage_is_logged_and_paged(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let (live, chat) = a_chat_that_falls_back(&srv, &s).await;

    // Streaming passes the upstream's events through.
    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &streaming)
        .await;
    assert_eq!(res.status, 200);
    assert!(
        res.text.contains("\"Hi\"") && res.text.trim_end().ends_with("data: [DONE]"),
        "{}",
        res.text
    );

    let logs = logs(&srv, &s, 2).await;
    let entries = logs["logs"].as_array().unwrap();
    let plain = entries.iter().find(|e| e["streamed"] == false).unwrap();
    assert_eq!(
        (
            plain["prompt_tokens"].as_i64(),
            plain["completion_tokens"].as_i64()
        ),
        (Some(9), Some(3))
    );
    assert_eq!(plain["provider"], "openai_compatible");
    let streamed = entries.iter().find(|e| e["streamed"] == true).unwrap();
    assert_eq!(
        (
            streamed["prompt_tokens"].as_i64(),
            streamed["completion_tokens"].as_i64()
        ),
        (Some(7), Some(1))
    );
    // Filters and cursor paging.
    let res = srv
        .get_as(&format!("{}/analytics/logs?limit=1", s.base), &s.owner)
        .await;
    let cursor = res.json["next_cursor"].as_str().unwrap();
    let next = srv
        .get_as(
            &format!("{}/analytics/logs?limit=1&cursor={cursor}", s.base),
            &s.owner,
        )
        .await;
    assert_ne!(next.json["logs"][0]["id"], res.json["logs"][0]["id"]);
    let res = srv
        .get_as(
            &format!("{}/analytics/logs?start=yesterday", s.base),
            &s.owner,
        )
        .await;
    res.assert_error(400, "invalid_request");
}

async fn a_disabled_provider_is_skipped_from_the_next_request(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let (ids, _bad_rx, _good_rx) = down_and_up_providers(&srv, &s).await;
    let live = a_live_key(&srv, &s).await;
    let chat = json!({"model": "up-model", "messages": [{"role": "user", "content": "hi"}]});
    // Disabling the healthy provider takes effect on the next request (the cached provider list
    // is dropped): only the failing one is left, and every attempt goes to it.
    srv.patch_as(
        &format!("{}/providers/{}", s.base, ids[1]),
        &s.owner,
        &json!({"enabled": false}),
    )
    .await;
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &chat)
        .await;
    let err = res.assert_error(502, "upstream_error");
    let tried: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["provider_id"].as_str().unwrap())
        .collect();
    assert_eq!(tried, [ids[0].as_str(); 3], "{}", res.text);
}

async fn providers_keep_their_keys_secret(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    let res = srv
        .post_as(
            &format!("{}/providers", s.base),
            &s.owner,
            &json!({"provider": "openai", "name": "OpenAI", "api_key": "sk-very-secret-upstream"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["api_key_set"], true);
    assert!(!res.text.contains("very-secret"));
    let id = res.json["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("prov_"));
    let stored: String = sqlx::query_scalar("SELECT api_key FROM providers WHERE id = $1")
        .bind(&id)
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert!(!stored.contains("very-secret"));
    let list = srv.get_as(&format!("{}/providers", s.base), &s.owner).await;
    assert_eq!(list.json["total"], 1);
    assert!(!list.text.contains("very-secret"));
    for (body, field) in [
        (json!({"provider": "skynet", "name": "x"}), "provider"),
        (
            json!({"provider": "openai_compatible", "name": "x"}),
            "base_url",
        ),
        (json!({"provider": "openai", "name": ""}), "name"),
        (
            json!({"provider": "openai", "name": "x", "priority": -1}),
            "priority",
        ),
    ] {
        let res = srv
            .post_as(&format!("{}/providers", s.base), &s.owner, &body)
            .await;
        assert_eq!(
            res.assert_error(400, "invalid_request")["details"][0]["field"],
            field,
            "{}",
            res.text
        );
    }
    let res = srv
        .patch_as(
            &format!("{}/providers/{id}", s.base),
            &s.owner,
            &json!({"enabled": false, "priority": 5}),
        )
        .await;
    assert_eq!(res.json["enabled"], false);
    srv.patch_as(
        &format!("{}/providers/{id}", s.base),
        &s.owner,
        &json!({"provider": "mock"}),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_eq!(
        srv.delete_as(&format!("{}/providers/{id}", s.base), &s.owner)
            .await
            .status,
        204
    );
    srv.get_as(&format!("{}/providers/{id}", s.base), &s.owner)
        .await
        .assert_error(404, "not_found");
}

/// A Gemini request the mock answers "Mock reply to: hello gemini".
fn gemini_hello() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]})
}

/// `generateContent` through `/google/{version}/…` with the key in `x-goog-api-key`, answered
/// (by the mock, for a test key).
async fn gemini_generate(srv: &TestServer, version: &str, key: &str) -> common::Response {
    let url = format!("/google/{version}/models/gemini-2.0-flash:generateContent");
    let res = srv
        .send(
            srv.client
                .post(srv.url(&url))
                .header("x-goog-api-key", key)
                .json(&gemini_hello()),
        )
        .await;
    assert_eq!(res.status, 200, "{version}: {}", res.text);
    assert_eq!(
        res.json["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply to: hello gemini"
    );
    res
}

async fn anthropic_and_gemini_formats_are_answered_streamed_and_logged(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let test_key = a_test_key(&srv, &s).await;

    // Anthropic Messages, with the key in x-api-key as the Anthropic SDK sends it.
    let msg = json!({"model": "claude-3-5-haiku", "max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hello claude"}]});
    let res = srv
        .send(
            srv.client
                .post(srv.url("/anthropic/v1/messages"))
                .header("x-api-key", &test_key)
                .header("anthropic-version", "2023-06-01")
                .json(&msg),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["type"], "message");
    assert_eq!(
        res.json["content"][0]["text"],
        "Mock reply to: hello claude"
    );
    assert_eq!(
        res.json["usage"],
        json!({"input_tokens": 4, "output_tokens": 5})
    );
    let mut streaming = msg.clone();
    streaming["stream"] = json!(true);
    let res = srv
        .send(
            srv.client
                .post(srv.url("/anthropic/v1/messages"))
                .header("x-api-key", &test_key)
                .json(&streaming),
        )
        .await;
    assert!(res.text.starts_with("event: message_start"), "{}", res.text);
    assert!(res.text.contains("event: message_stop"));

    // Gemini generateContent, with x-goog-api-key and with ?key=.
    let gen = gemini_hello();
    let res = gemini_generate(&srv, "v1beta", &test_key).await;
    assert_eq!(res.json["usageMetadata"]["promptTokenCount"], 2);
    let res = srv
        .send(srv.client.post(srv.url(&format!("/google/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={test_key}"))).json(&gen))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.text.contains("usageMetadata"));

    let logs = logs(&srv, &s, 4).await;
    let entries = logs["logs"].as_array().unwrap();
    let streamed_claude = entries
        .iter()
        .find(|e| e["path"] == "/anthropic/v1/messages" && e["streamed"] == true)
        .unwrap();
    assert_eq!(
        (
            streamed_claude["prompt_tokens"].as_i64(),
            streamed_claude["completion_tokens"].as_i64()
        ),
        (Some(4), Some(5))
    );
    let streamed_gemini = entries
        .iter()
        .find(|e| e["model"] == "gemini-2.0-flash" && e["streamed"] == true)
        .unwrap();
    assert_eq!(
        (
            streamed_gemini["prompt_tokens"].as_i64(),
            streamed_gemini["completion_tokens"].as_i64()
        ),
        (Some(2), Some(5))
    );
    assert!(streamed_gemini["cost_usd"].as_f64().unwrap() > 0.0);
    // The key in the query string is not logged as part of the path.
    assert!(!logs.to_string().contains(&test_key));
}

async fn an_anthropic_provider_gets_its_credential_as_x_api_key(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let msg = json!({"model": "claude-3-5-haiku", "max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hello claude"}]});
    // An Anthropic provider gets its credential as x-api-key, with a default anthropic-version.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/messages",
        post(move |headers: HeaderMap| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(headers);
                axum::Json(json!({"type": "message", "model": "claude-x", "content": [], "usage": {"input_tokens": 1, "output_tokens": 2}}))
            }
        }),
    );
    let base = format!("{}/v1", serve_locally(app).await);
    srv.post_as(&format!("{}/providers", s.base), &s.owner, &json!({"provider": "anthropic", "name": "a", "base_url": base, "api_key": "sk-ant-upstream"}))
        .await;
    let live = a_live_key(&srv, &s).await;
    let res = srv
        .send(
            srv.client
                .post(srv.url("/anthropic/v1/messages"))
                .header("x-api-key", &live)
                .json(&msg),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let headers = rx.recv().await.unwrap();
    assert_eq!(headers["x-api-key"], "sk-ant-upstream");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(headers.get("authorization").is_none());
}

/// The official SDKs (openai, anthropic, google-genai) work by changing only base URL and key;
/// the usage and cost of each call are recorded. Needs `.venv` with `tests/requirements.txt`.
#[tokio::test]
async fn official_python_sdks_work_through_the_gateway() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ready = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import openai, anthropic, google.genai"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        assert!(
            !common::in_ci(),
            "CI=true but .venv lacks the provider SDKs (.ci/run installs them)"
        );
        eprintln!(
            "\n!!! SKIPPED the SDK test: .venv/bin/pip install -r tests/requirements.txt !!!\n"
        );
        return;
    }
    let srv = TestServer::start(Backend::Sqlite).await;
    let s = an_org(&srv).await;
    let test_key = s
        .key_token(
            &srv,
            a_key()
                .named("sdk")
                .environment(Environment::Test)
                .scopes(&["gateway:proxy"]),
        )
        .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_clients.py");
    let base = srv.base.clone();
    let mut sdks = std::process::Command::new(&python);
    sdks.arg(&script).args([&base, &test_key]);
    let summary = common::run_json_script(sdks, "SDK script failed").await;
    assert_eq!(summary.as_object().unwrap().len(), 6, "{summary}");

    let logs = logs(&srv, &s, 6).await;
    let entries = logs["logs"].as_array().unwrap();
    for (path_part, model, prompt, completion) in [
        ("/openai/v1/chat/completions", "gpt-4o-mini", 2, 5),
        ("/anthropic/v1/messages", "claude-3-5-haiku", 2, 5),
        (
            "/google/v1beta/models/gemini-2.0-flash",
            "gemini-2.0-flash",
            2,
            5,
        ),
    ] {
        let calls: Vec<&Value> = entries
            .iter()
            .filter(|e| e["path"].as_str().unwrap().starts_with(path_part))
            .collect();
        assert_eq!(calls.len(), 2, "{path_part}: {logs}");
        assert!(
            calls.iter().any(|e| e["streamed"] == true)
                && calls.iter().any(|e| e["streamed"] == false)
        );
        for e in calls {
            assert_eq!(e["model"], model);
            assert_eq!(
                (e["prompt_tokens"].as_i64(), e["completion_tokens"].as_i64()),
                (Some(prompt), Some(completion)),
                "{e}"
            );
            let expected = srv.state.gateway.prices().cost(model, prompt, completion);
            assert!(expected > 0.0);
            assert!(
                (e["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
                "{e}"
            );
        }
    }
}

async fn azure_deployments_are_routed_with_the_api_key_header(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let test_key = a_test_key(&srv, &s).await;
    let chat = json!({"messages": [{"role": "user", "content": "hello azure"}]});
    let url = "/azure/my-resource/my-deployment/chat/completions?api-version=2024-06-01";
    let res = srv
        .send(
            srv.client
                .post(srv.url(url))
                .header("api-key", &test_key)
                .json(&chat),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json["choices"][0]["message"]["content"],
        "Mock reply to: hello azure"
    );
    srv.send(
        srv.client
            .post(srv.url("/azure/only-resource"))
            .header("api-key", &test_key)
            .json(&chat),
    )
    .await
    .assert_error(404, "not_found");

    // An Azure provider: the deployment URL, the api-version kept, the key in api-key.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/openai/deployments/{deployment}/chat/completions",
        post(move |axum::extract::Path(dep): axum::extract::Path<String>, uri: axum::http::Uri, headers: HeaderMap| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((dep, uri.query().unwrap_or_default().to_string(), headers));
                axum::Json(json!({"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}))
            }
        }),
    );
    let base = serve_locally(app).await;
    a_provider(
        &srv,
        &s,
        json!({"provider": "azure", "name": "az", "base_url": base, "api_key": "azure-secret"}),
    )
    .await;
    let live = a_live_key(&srv, &s).await;
    let res = srv
        .send(
            srv.client
                .post(srv.url(url))
                .header("api-key", &live)
                .json(&chat),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let (dep, query, headers) = rx.recv().await.unwrap();
    assert_eq!(dep, "my-deployment");
    assert_eq!(query, "api-version=2024-06-01");
    assert_eq!(headers["api-key"], "azure-secret");
    let logs = logs(&srv, &s, 2).await;
    let az = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == "azure")
        .unwrap()
        .clone();
    assert_eq!(az["model"], "my-deployment");
    assert_eq!(az["prompt_tokens"], 2);
}

async fn slow_providers_time_out_and_big_bodies_are_refused(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| {
                c.allow_private_provider_targets = true;
                c.gateway_first_byte_timeout_secs = 1;
                c.gateway_idle_timeout_secs = 1;
                c.gateway_max_body_bytes = 4096;
            }),
            ..Default::default()
        },
    )
    .await;
    let s = an_org(&srv).await;
    // A provider that never starts answering.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async { std::future::pending::<&str>().await }),
    );
    let base = format!("{}/v1", serve_locally(app).await);
    srv.post_as(
        &format!("{}/providers", s.base),
        &s.owner,
        &json!({"provider": "openai_compatible", "name": "slow", "base_url": base, "models": ["m"]}),
    )
    .await;
    let live = a_live_key(&srv, &s).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &chat)
        .await;
    let err = res.assert_error(504, "upstream_timeout");
    assert_eq!(err["details"][0]["provider"], "openai_compatible");
    assert_eq!(err["details"][0]["name"], "slow");
    assert_eq!(err["details"][0]["status"], Value::Null);
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    srv.post_as("/openai/v1/chat/completions", &live, &big)
        .await
        .assert_error(413, "payload_too_large");

    // A provider that starts a stream and then goes silent: the gateway cuts the answer after
    // the idle timeout (the client sees the first event, then the body fails), and the request
    // is still logged.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            use futures_util::StreamExt;
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
                    b"data: {\"model\":\"silent\",\"choices\":[]}\n\n",
                ))
            });
            let body = axum::body::Body::from_stream(first.chain(futures_util::stream::pending()));
            ([("content-type", "text/event-stream")], body)
        }),
    );
    let base = format!("{}/v1", serve_locally(app).await);
    a_provider(&srv, &s, json!({"provider": "openai_compatible", "name": "silent", "base_url": base, "models": ["silent"]})).await;
    let stream =
        json!({"model": "silent", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut res = srv
        .client
        .post(srv.url("/openai/v1/chat/completions"))
        .bearer_auth(&live)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("silent"));
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match res.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the gateway cut the silent stream");
    assert!(
        rest.is_err(),
        "a cut stream ends with an error, not a clean end"
    );
    // Both logged: the request that timed out (as the gateway answered it) and the cut stream.
    let logs = logs(&srv, &s, 2).await;
    let entries = logs["logs"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["model"] == "m" && e["status"] == 504 && e["provider"] == "openai_compatible"));
    assert!(entries
        .iter()
        .any(|e| e["model"] == "silent" && e["streamed"] == true));
}

async fn gateway_limits_and_quotas_count_requests_and_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    let chat = mock_chat();
    // Gateway routes default to 60 requests per minute per key.
    let plain = s
        .key_token(
            &srv,
            a_key()
                .named("p")
                .environment(Environment::Test)
                .scopes(&["gateway:proxy"]),
        )
        .await;
    let res = srv
        .post_as("/openai/v1/chat/completions", &plain, &chat)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.header("x-ratelimit-limit"), Some("60"));
    // The Gemini SDK's ?key= is the same key for the limiter.
    let res = srv
        .send(
            srv.client
                .post(srv.url(&format!(
                    "/google/v1beta/models/gemini-2.0-flash:generateContent?key={plain}"
                )))
                .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]})),
        )
        .await;
    assert_eq!(
        res.header("x-ratelimit-limit"),
        Some("60"),
        "{:?}",
        res.headers
    );

    // Tokens per minute: one request of 11 tokens uses up a limit of 10; the next is refused.
    let tpm = s
        .key_token(
            &srv,
            a_key()
                .named("t")
                .environment(Environment::Test)
                .scopes(&["gateway:proxy"])
                .with(
                    "rate_limit",
                    json!({"requests_per_minute": 100, "tokens_per_minute": 10}),
                ),
        )
        .await;
    assert_eq!(
        srv.post_as("/openai/v1/chat/completions", &tpm, &chat)
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = srv
            .post_as("/openai/v1/chat/completions", &tpm, &chat)
            .await;
        if res.status == 429 {
            res.assert_error(429, "rate_limit_exceeded");
            assert!(res.header("retry-after").is_some());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tokens per minute never applied"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Gateway requests and tokens are metered for the monthly quotas.
    // (Three answered: 11 + 5 + 11 tokens; refused requests reach no provider.)
    logs(&srv, &s, 3).await;
    srv.state.usage.flush().await.unwrap();
    let usage = srv.get_as(&format!("{}/usage", s.base), &s.owner).await;
    assert!(
        usage.json["gateway_requests"]["used"].as_u64().unwrap() >= 3,
        "{}",
        usage.text
    );
    assert_eq!(usage.json["gateway_tokens"]["used"], 27, "{}", usage.text);
}

/// Five requests with a test key: four answered (two mock-model, gpt-4o-mini, gpt-4o) and one
/// refused.
async fn four_models_and_a_refusal(srv: &TestServer, s: &Org) {
    let test_key = s
        .key_token(
            srv,
            a_key()
                .named("t")
                .environment(Environment::Test)
                .scopes(&["gateway:proxy"]),
        )
        .await;
    for (i, model) in ["mock-model", "mock-model", "gpt-4o-mini", "gpt-4o"]
        .iter()
        .enumerate()
    {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "word ".repeat(i + 1)}]});
        let res = srv
            .post_as("/openai/v1/chat/completions", &test_key, &body)
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    // A refused request (no messages) is an error in the stats.
    srv.post_as(
        "/openai/v1/chat/completions",
        &test_key,
        &json!({"model": "mock-model"}),
    )
    .await;
}

async fn stats_from_hourly_rollups_equal_stats_from_the_log(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    four_models_and_a_refusal(&srv, &s).await;
    logs(&srv, &s, 5).await;

    // The rollups were written with the entries: they sum to the log.
    let (requests, prompt): (i64, i64) = {
        let row = sqlx::query(
            "SELECT CAST(SUM(requests) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT) FROM usage_hourly",
        )
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
        use sqlx::Row;
        (row.get(0), row.get(1))
    };
    assert_eq!(requests, 5);
    let (first, last): (String, String) = {
        use sqlx::Row;
        let row = sqlx::query("SELECT MIN(created_at), MAX(created_at) FROM usage_logs")
            .fetch_one(srv.state.db.pool())
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let logged: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(prompt_tokens) AS BIGINT) FROM usage_logs")
            .fetch_one(srv.state.db.pool())
            .await
            .unwrap();
    assert_eq!(prompt, logged);

    let stats = |start: String, end: String| {
        let (srv, base, owner) = (&srv, s.base.clone(), s.owner.clone());
        async move {
            let res = srv
                .get_as(
                    &format!("{base}/analytics/stats?group_by=model&start={start}&end={end}"),
                    &owner,
                )
                .await;
            assert_eq!(res.status, 200, "{}", res.text);
            res.json
        }
    };
    // Whole hours around the entries: read from the rollups only.
    let hour = |t: &str| format!("{}:00:00Z", &t[..13]);
    let start = gatehouse::storage::parse_time(&hour(&first)).unwrap();
    let end = gatehouse::storage::parse_time(&hour(&last)).unwrap() + chrono::Duration::hours(1);
    let from_rollups = stats(
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
    .await;
    assert_eq!(from_rollups["totals"]["requests"], 5);
    assert_eq!(from_rollups["totals"]["errors"], 1);
    assert_eq!(from_rollups["series"].as_array().unwrap().len(), 3);
    // Half an hour wider on each side: the edges come from the log (empty there), the same result.
    let wider = stats(
        (start - chrono::Duration::minutes(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (end + chrono::Duration::minutes(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
    .await;
    assert_eq!(wider["totals"], from_rollups["totals"]);
    assert_eq!(wider["series"], from_rollups["series"]);
    // Inside one hour (no whole hour): read from the log only — and equal.
    if first[..13] == last[..13] {
        let first_t = gatehouse::storage::parse_time(&first).unwrap();
        let last_t = gatehouse::storage::parse_time(&last).unwrap();
        let from_log = stats(
            first_t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            (last_t + chrono::Duration::microseconds(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )
        .await;
        assert_eq!(from_log["totals"], from_rollups["totals"]);
        assert_eq!(from_log["series"], from_rollups["series"]);
    }
}

/// Multipart uploads (audio transcriptions) are forwarded byte for byte, their model read from
/// the form; the Responses API's `input_tokens`/`output_tokens` are logged.
/// An upstream on loopback for `/v1/audio/transcriptions` (it keeps the headers and raw body it
/// receives) and `/v1/responses` (1M input and 0.5M output tokens); its base URL.
async fn transcriptions_and_responses_upstream() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, axum::body::Bytes)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/audio/transcriptions",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((headers, body));
                    axum::Json(json!({"text": "hello", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3}}))
                }
            }),
        )
        .route(
            "/v1/responses",
            post(|| async {
                axum::Json(json!({"id": "resp_1", "object": "response", "model": "gpt-4.1",
                    "usage": {"input_tokens": 1000000, "output_tokens": 500000, "total_tokens": 1500000}}))
            }),
        );
    (format!("{}/v1", serve_locally(app).await), rx)
}

async fn uploads_and_the_responses_api_pass_through_with_their_usage(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let (base, mut rx) = transcriptions_and_responses_upstream().await;
    a_provider(
        &srv,
        &s,
        json!({"provider": "openai_compatible", "name": "local", "base_url": base}),
    )
    .await;
    let live = a_live_key(&srv, &s).await;

    let mut upload =
        b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"hi.wav\"\r\n\
                       Content-Type: audio/wav\r\n\r\nRIFF\x00\xff\xfe{not json\r\n"
            .to_vec();
    upload.extend_from_slice(
        b"--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--b0undary--\r\n",
    );
    let content_type = "multipart/form-data; boundary=b0undary";
    let res = srv
        .send(
            srv.client
                .post(srv.url("/openai/v1/audio/transcriptions"))
                .bearer_auth(&live)
                .header("content-type", content_type)
                .body(upload.clone()),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["text"], "hello");
    let (headers, body) = rx.recv().await.unwrap();
    assert_eq!(headers["content-type"], content_type);
    assert_eq!(
        &body[..],
        &upload[..],
        "the upload was not forwarded as sent"
    );
    // A body of a declared type other than JSON is not parsed either.
    let res = srv
        .send(
            srv.client
                .post(srv.url("/openai/v1/audio/transcriptions"))
                .bearer_auth(&live)
                .header("content-type", "application/octet-stream")
                .body(b"\x00{raw".to_vec()),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let res = srv
        .post_as(
            "/openai/v1/responses",
            &live,
            &json!({"model": "gpt-4.1", "input": "hi"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // A whole answer keeps its length on the way to the client (no chunked re-encoding).
    assert_eq!(
        res.header("content-length"),
        Some(res.text.len().to_string().as_str()),
        "{:?}",
        res.headers
    );

    let logs = logs(&srv, &s, 3).await;
    let entries = logs["logs"].as_array().unwrap();
    let upload = entries
        .iter()
        .find(|e| e["model"] == "gpt-4o-transcribe")
        .unwrap_or_else(|| panic!("no log entry names the form's model: {logs}"));
    assert_eq!(
        (
            upload["prompt_tokens"].as_i64(),
            upload["completion_tokens"].as_i64()
        ),
        (Some(14), Some(3))
    );
    let responses = entries.iter().find(|e| e["model"] == "gpt-4.1").unwrap();
    assert_eq!(responses["total_tokens"], 1_500_000);
    // gpt-4.1 in data/prices.json: 1M input and 0.5M output tokens.
    let prices: Value = serde_json::from_str(include_str!("../data/prices.json")).unwrap();
    let p = &prices["models"]["gpt-4.1"];
    let want = p["input"].as_f64().unwrap() + 0.5 * p["output"].as_f64().unwrap();
    assert!(
        (responses["cost_usd"].as_f64().unwrap() - want).abs() < 1e-9,
        "{responses}"
    );
}

/// A provider that answers 503 once is asked again after a pause; one that answers 429 with a
/// `Retry-After` longer than the gateway waits is not, and its answer reaches the client.
async fn a_failing_provider_is_retried_unless_it_asks_for_a_long_wait(backend: Backend) {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let busy_hits = Arc::new(AtomicUsize::new(0));
    let (flaky, busy) = (flaky_hits.clone(), busy_hits.clone());
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move || {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response();
                    }
                    axum::Json(json!({"model": "m", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
                        .into_response()
                }
            }),
        )
        .route(
            "/v1/embeddings",
            post(move || {
                busy.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "30")],
                        "slow down",
                    )
                }
            }),
        );
    let base = format!("{}/v1", serve_locally(app).await);
    a_provider(
        &srv,
        &s,
        json!({"provider": "openai_compatible", "name": "flaky", "base_url": base}),
    )
    .await;
    let live = a_live_key(&srv, &s).await;

    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &chat)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(flaky_hits.load(Ordering::SeqCst), 2);

    let res = srv
        .post_as(
            "/openai/v1/embeddings",
            &live,
            &json!({"model": "m", "input": "hi"}),
        )
        .await;
    assert_eq!(res.status, 429, "{}", res.text);
    assert_eq!(res.text, "slow down");
    assert_eq!(res.header("retry-after"), Some("30"));
    assert_eq!(
        busy_hits.load(Ordering::SeqCst),
        1,
        "a long Retry-After was not honoured"
    );
}

/// A key and a provider list in use are re-read before they expire, without a request waiting:
/// changes made behind the cache's back (no invalidation message) are served until the re-read
/// lands, then picked up.
async fn keys_and_providers_in_use_are_read_again_in_the_background(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let org_id = s.base.rsplit('/').next().unwrap().to_string();
    let (url, _rx) = upstream(false).await;
    a_provider(
        &srv,
        &s,
        json!({"provider": "openai_compatible", "name": "up", "base_url": url, "api_key": "sk-up"}),
    )
    .await;
    let live = a_live_key(&srv, &s).await;
    let chat = json!({"model": "up-model", "messages": [{"role": "user", "content": "hi"}]});
    let call = || async {
        srv.send(
            srv.client
                .post(srv.url("/openai/v1/chat/completions"))
                .bearer_auth(&live)
                .json(&chat),
        )
        .await
    };
    let until = |want: u16| async move {
        for _ in 0..500 {
            let res = call().await;
            if res.status == want {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never answered {want}");
    };
    assert_eq!(call().await.status, 200);
    let sql = |q: &'static str| {
        let (db, org_id) = (srv.state.db.clone(), org_id.clone());
        async move {
            sqlx::query(q)
                .bind(org_id)
                .execute(db.pool())
                .await
                .unwrap();
        }
    };

    // The provider is removed behind the cache's back: still used while the list is young…
    sql("DELETE FROM providers WHERE organization_id = $1").await;
    assert_eq!(call().await.status, 200, "cached list, not re-read yet");
    // …and while its re-read runs; then the re-read list (no provider) is used.
    srv.state.api_keys.age_entries(Duration::from_secs(46));
    let res = call().await;
    assert_eq!(
        res.status, 200,
        "served from the cache while it is read again"
    );
    assert_eq!(
        res.json["choices"][0]["message"]["content"],
        "from upstream"
    );
    // No provider left: a live key is told how to add one (400, not a 5xx SDKs would retry).
    until(400).await.assert_error(400, "invalid_request");
    // The key was aged too: let its own re-read land before changing it behind the cache's back
    // (bounded wait on the condition, not on time).
    for _ in 0..500 {
        if !srv.state.api_keys.rereads_in_flight() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !srv.state.api_keys.rereads_in_flight(),
        "re-reads never landed"
    );

    // The same for the key itself.
    sql("UPDATE api_keys SET status = 'revoked' WHERE organization_id = $1").await;
    assert_eq!(call().await.status, 400, "the cached key still works");
    srv.state.api_keys.age_entries(Duration::from_secs(46));
    assert_eq!(call().await.status, 400, "served while it is read again");
    until(401).await.assert_error(401, "unauthorized");
}

/// Two providers that both fail (500 with the provider's JSON error, 503 with plain text): the
/// caller gets SPEC §10's 502 `upstream_error`, not the last provider's answer, and `details`
/// lists each attempt in order with the provider's id, name, kind, status and its own error.
async fn when_every_provider_fails_the_answer_is_502_listing_each_attempt(backend: Backend) {
    let srv = start_with_local_providers(backend).await;
    let s = an_org(&srv).await;
    let broken = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"message": "model crashed", "type": "server_error"}})),
            )
        }),
    );
    let overloaded = Router::new().route(
        "/v1/chat/completions",
        post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded") }),
    );
    let mut ids = Vec::new();
    for (name, app, priority) in [("broken", broken, 0), ("overloaded", overloaded, 1)] {
        let base = format!("{}/v1", serve_locally(app).await);
        let p = a_provider(
            &srv,
            &s,
            json!({"provider": "openai_compatible", "name": name, "base_url": base, "priority": priority}),
        )
        .await;
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let live = a_live_key(&srv, &s).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let res = srv
        .post_as("/openai/v1/chat/completions", &live, &chat)
        .await;
    let err = res.assert_error(502, "upstream_error");
    let attempts = err["details"]
        .as_array()
        .expect("details lists the attempts");
    let broken = json!({
        "provider_id": ids[0], "name": "broken", "provider": "openai_compatible", "status": 500,
        "error": {"message": "model crashed", "type": "server_error"},
    });
    let overloaded = json!({
        "provider_id": ids[1], "name": "overloaded", "provider": "openai_compatible", "status": 503,
    });
    // Both in priority order, then the first again (the retry).
    assert_eq!(
        attempts,
        &[broken.clone(), overloaded, broken],
        "{}",
        res.text
    );
    // The failed request is logged as the gateway answered it.
    let logs = logs(&srv, &s, 1).await;
    assert_eq!(logs["logs"][0]["status"], 502, "{logs}");
}

/// The google-genai SDK's default API version (`v1`) is served like `v1beta`, plain and
/// streamed.
async fn gemini_v1_is_served_beside_v1beta(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = an_org(&srv).await;
    let test_key = a_test_key(&srv, &s).await;
    let gen = gemini_hello();
    for version in ["v1", "v1beta"] {
        gemini_generate(&srv, version, &test_key).await;
    }
    let res = srv
        .send(
            srv.client
                .post(srv.url(&format!(
            "/google/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={test_key}"
        )))
                .json(&gen),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.text.starts_with("data: "), "{}", res.text);
    assert!(res.text.contains("usageMetadata"));
    let logs = logs(&srv, &s, 3).await;
    assert!(
        logs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/google/v1/models/gemini-2.0-flash:streamGenerateContent"),
        "{logs}"
    );
}
