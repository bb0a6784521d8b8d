//! A mock OpenAI-compatible upstream for the gateway benchmark (`bench/gateway.sh`): answers
//! `POST /v1/chat/completions` with the gateway's own deterministic mock, over keep-alive HTTP/1.1.
//! Usage: `cargo run --release --features bench-tools --example mock_upstream -- 127.0.0.1:19101`

use axum::{body::Bytes, routing::post, Router};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19101".into());
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|body: Bytes| async move {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            gatehouse::gateway::mock::openai_chat(&json)
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("mock upstream on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
