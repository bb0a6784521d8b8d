//! A mock OpenAI-compatible upstream for the gateway benchmark (`bench/gateway.sh`): answers
//! `POST /v1/chat/completions` with the gateway's own deterministic mock, over keep-alive HTTP/1.1.
//! A streamed request that names `metadata.chunks` and `metadata.interval_ms` is answered by a
//! paced stream instead: that many chunks, that far apart, each stamped with the wall-clock time
//! it was written (`sent_ns`) so that `examples/stream_probe.rs` can tell how long each chunk
//! took to reach the client.
//! Usage: `cargo run --release --features bench-tools --example mock_upstream -- 127.0.0.1:19101`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde_json::{json, Value};

fn paced(chunks: u64, interval: Duration) -> Response {
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if i > chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let sent_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let frame = if i == chunks {
            format!(
                "data: {}\n\ndata: [DONE]\n\n",
                json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [],
                       "usage": {"prompt_tokens": 2, "completion_tokens": chunks, "total_tokens": chunks + 2}, "sent_ns": sent_ns})
            )
        } else {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": null}], "sent_ns": sent_ns})
            )
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), i + 1))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

async fn chat(body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
    let meta = &json["metadata"];
    let number = |k: &str| meta[k].as_str().and_then(|v| v.parse::<u64>().ok());
    match (
        json["stream"].as_bool(),
        number("chunks"),
        number("interval_ms"),
    ) {
        (Some(true), Some(chunks), Some(ms)) => paced(chunks, Duration::from_millis(ms)),
        _ => gatehouse::gateway::mock::openai_chat(&json),
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19101".into());
    let app = Router::new().route("/v1/chat/completions", post(chat));
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind")
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("mock upstream on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
