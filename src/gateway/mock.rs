//! The `mock` provider: deterministic OpenAI-format chat completions, plain or streamed as
//! server-sent events, so that test keys and a fresh server can call the gateway with no
//! upstream. Token counts are whitespace-separated words (deterministic, not a tokenizer).

use axum::{
    body::Body,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Value};

fn words(s: &str) -> i64 {
    s.split_whitespace().count() as i64
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The reply to an OpenAI chat-completions request body.
pub fn openai_chat(body: &Value) -> Response {
    let Some(messages) = body["messages"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "messages is required", "type": "invalid_request_error", "param": "messages", "code": null}})),
        )
            .into_response();
    };
    let model = body["model"].as_str().unwrap_or("mock-model").to_string();
    let prompt: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
    let last = prompt.last().cloned().unwrap_or_default();
    let reply = format!(
        "Mock reply to: {}",
        last.chars().take(200).collect::<String>()
    );
    let prompt_tokens: i64 = prompt.iter().map(|p| words(p)).sum();
    let completion_tokens = words(&reply);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-mock{}", prompt_tokens * 7919 + completion_tokens);
    let created = 1_700_000_000;
    if body["stream"].as_bool() != Some(true) {
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut events = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    events.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for (i, w) in reply.split(' ').enumerate() {
        let piece = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}));
    }
    let mut frames: Vec<Result<bytes::Bytes, std::io::Error>> = events
        .into_iter()
        .map(|e| Ok(bytes::Bytes::from(format!("data: {e}\n\n"))))
        .collect();
    frames.push(Ok(bytes::Bytes::from_static(b"data: [DONE]\n\n")));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(futures_util::stream::iter(frames)))
        .unwrap_or_default()
}
