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
    let mut frames: Vec<String> = events
        .into_iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect();
    frames.push("data: [DONE]\n\n".into());
    sse(frames)
}

fn sse(frames: Vec<String>) -> Response {
    let frames: Vec<Result<bytes::Bytes, std::io::Error>> = frames
        .into_iter()
        .map(|f| Ok(bytes::Bytes::from(f)))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(futures_util::stream::iter(frames)))
        .unwrap_or_default()
}

fn reply_to(last: &str) -> String {
    format!(
        "Mock reply to: {}",
        last.chars().take(200).collect::<String>()
    )
}

/// Anthropic Messages API (`POST messages`), plain or streamed.
pub fn anthropic_messages(body: &Value) -> Response {
    let Some(messages) = body["messages"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: Field required"}})),
        )
            .into_response();
    };
    let model = body["model"].as_str().unwrap_or("mock-model").to_string();
    let mut prompt: Vec<String> = vec![text_of(&body["system"])];
    prompt.extend(messages.iter().map(|m| text_of(&m["content"])));
    let last = messages
        .last()
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let reply = reply_to(&last);
    let input: i64 = prompt.iter().map(|p| words(p)).sum();
    let output = words(&reply);
    let id = format!("msg_mock{}", input * 7919 + output);
    if body["stream"].as_bool() != Some(true) {
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for (i, w) in reply.split(' ').enumerate() {
        let piece = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        frames.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
    }
    frames.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    sse(frames)
}

/// Gemini `models/{model}:generateContent` and `:streamGenerateContent` (SSE with `alt=sse`).
pub fn google_generate(model: &str, stream: bool, body: &Value) -> Response {
    let Some(contents) = body["contents"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "message": "contents is required", "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    };
    let parts_text = |c: &Value| text_of(&c["parts"]);
    let mut prompt: Vec<String> = vec![parts_text(&body["systemInstruction"])];
    prompt.extend(contents.iter().map(parts_text));
    let last = contents.last().map(parts_text).unwrap_or_default();
    let reply = reply_to(&last);
    let input: i64 = prompt.iter().map(|p| words(p)).sum();
    let output = words(&reply);
    let usage = json!({"promptTokenCount": input, "candidatesTokenCount": output, "totalTokenCount": input + output});
    let response = |text: &str, finish: Option<&str>, usage: Option<&Value>| {
        let mut r = json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
            "modelVersion": model,
        });
        if let Some(f) = finish {
            r["candidates"][0]["finishReason"] = json!(f);
        }
        if let Some(u) = usage {
            r["usageMetadata"] = u.clone();
        }
        r
    };
    if !stream {
        return axum::Json(response(&reply, Some("STOP"), Some(&usage))).into_response();
    }
    let words: Vec<&str> = reply.split(' ').collect();
    let n = words.len();
    let frames = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let piece = if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            };
            let last = i + 1 == n;
            format!(
                "data: {}\r\n\r\n",
                response(&piece, last.then_some("STOP"), last.then_some(&usage))
            )
        })
        .collect();
    sse(frames)
}
