//! Security issue #20, the gateway's items: providers may not point at internal addresses
//! (SSRF, item 3), providers are confined to the caller's environment (item 5), and gateway
//! paths cannot climb out of the provider's path (item 15).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::Request, response::IntoResponse, Router};
use common::{
    fixtures::{a_key, an_org as setup},
    Backend, ServerOptions, TestServer,
};
use gatehouse::environment::Environment;
use serde_json::{json, Value};

on_both_databases!(
    private_provider_targets_are_refused_when_saved,
    a_provider_moves_only_to_a_public_host_and_with_its_key_again,
    the_built_in_mock_needs_no_base_url,
    a_provider_saved_while_private_targets_were_allowed_is_refused_when_used,
    providers_are_confined_to_the_callers_environment,
    gateway_paths_with_dot_segments_or_encoded_slashes_are_refused,
);

/// Asserts a 400 `invalid_request` naming `field` (first of the details).
#[track_caller]
fn assert_field(res: &common::Response, field: &str) {
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], field, "{}", res.text);
}

/// An upstream on loopback answering every request with an OpenAI chat completion; it keeps
/// the path (with the query) of each request it receives.
async fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(req.uri().to_string());
            axum::Json(json!({"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
            .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

fn allow_private(allowed: bool) -> ServerOptions {
    ServerOptions {
        configure: Box::new(move |c| c.allow_private_provider_targets = allowed),
        ..Default::default()
    }
}

// ---- item 3: SSRF through a provider's base_url -------------------------------------------

async fn private_provider_targets_are_refused_when_saved(backend: Backend) {
    // The default configuration: private provider targets are not allowed.
    let srv = TestServer::start(backend).await;
    assert!(!srv.state.config.allow_private_provider_targets);
    let s = setup(&srv).await;
    let providers = format!("{}/providers", s.base);
    for url in [
        "http://127.0.0.1:8080/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:6379/",
        "http://10.0.0.1/v1",
        "http://192.168.1.10:11434/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://[::ffff:8.8.8.8]/v1",
        "http://2130706433/v1",
        "http://0.0.0.0:8000/v1",
        // A name resolving to loopback.
        "http://localhost:11434/v1",
    ] {
        let res = srv
            .post_as(
                &providers,
                &s.owner,
                &json!({"provider": "openai_compatible", "name": "x", "base_url": url, "api_key": "sk-up"}),
            )
            .await;
        assert_field(&res, "base_url");
        // Where a name resolves is not told.
        assert!(
            !res.text.contains("127.0.0.1") || url.contains("127.0.0.1"),
            "{}",
            res.text
        );
    }
    // Nothing was stored.
    let list = srv.get_as(&providers, &s.owner).await;
    assert_eq!(list.json["total"], 0, "{}", list.text);
}

async fn a_provider_moves_only_to_a_public_host_and_with_its_key_again(backend: Backend) {
    // The default configuration: private provider targets are not allowed.
    let srv = TestServer::start(backend).await;
    assert!(!srv.state.config.allow_private_provider_targets);
    let s = setup(&srv).await;
    let providers = format!("{}/providers", s.base);
    // A public address is accepted (a literal one: no DNS needed here).
    let res = srv
        .post_as(
            &providers,
            &s.owner,
            &json!({"provider": "openai_compatible", "name": "pub", "base_url": "https://93.184.216.34/v1", "api_key": "sk-up"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let one = format!("{providers}/{}", res.json["id"].as_str().unwrap());
    // Moving it to an internal address is refused too.
    let res = srv
        .patch_as(
            &one,
            &s.owner,
            &json!({"base_url": "http://169.254.169.254/", "api_key": "sk-up"}),
        )
        .await;
    assert_field(&res, "base_url");
    // Moving it to another host without giving its key again is refused: the stored key is not
    // sent to the new host.
    let res = srv
        .patch_as(&one, &s.owner, &json!({"base_url": "https://1.1.1.1/v1"}))
        .await;
    assert_field(&res, "api_key");
    let res = srv.get_as(&one, &s.owner).await;
    assert_eq!(res.json["base_url"], "https://93.184.216.34/v1");
    // With the key, it moves; the same base_url again needs no key.
    let res = srv
        .patch_as(
            &one,
            &s.owner,
            &json!({"base_url": "https://1.1.1.1/v1", "api_key": "sk-new"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["base_url"], "https://1.1.1.1/v1");
    let res = srv
        .patch_as(
            &one,
            &s.owner,
            &json!({"base_url": "https://1.1.1.1/v1", "priority": 3}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
}

async fn the_built_in_mock_needs_no_base_url(backend: Backend) {
    // The default configuration: private provider targets are not allowed.
    let srv = TestServer::start(backend).await;
    assert!(!srv.state.config.allow_private_provider_targets);
    let s = setup(&srv).await;
    let providers = format!("{}/providers", s.base);
    // The built-in mock needs no base_url and keeps answering test keys.
    let res = srv
        .post_as(
            &providers,
            &s.owner,
            &json!({"provider": "mock", "name": "mock", "environment": "test"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let test = s
        .key_token(
            &srv,
            a_key()
                .named("t")
                .environment(Environment::Test)
                .scopes(&["gateway:proxy"]),
        )
        .await;
    let res = srv
        .post_as(
            "/openai/v1/chat/completions",
            &test,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["object"], "chat.completion");
}

/// A second node on the same database with its own configuration (as an operator restarting
/// with another setting): its base URL.
async fn node_with(
    srv: &TestServer,
    configure: impl FnOnce(&mut gatehouse::config::Config),
) -> String {
    let mut config = srv.state.config.clone();
    configure(&mut config);
    let state = gatehouse::server::build_state(config)
        .await
        .expect("second node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = gatehouse::http::router(state);
    tokio::spawn(gatehouse::http::serve(
        listener,
        app,
        std::future::pending::<()>(),
        Duration::from_secs(1),
    ));
    base
}

async fn a_provider_saved_while_private_targets_were_allowed_is_refused_when_used(
    backend: Backend,
) {
    let srv = TestServer::start_with(backend, allow_private(true)).await;
    let s = setup(&srv).await;
    let (port, seen) = upstream().await;
    // One provider by a name that resolves to loopback, one by a literal loopback address.
    let mut ids = Vec::new();
    for (name, base_url, model) in [
        ("by-name", format!("http://localhost:{port}/v1"), "m-name"),
        ("by-ip", format!("http://127.0.0.1:{port}/v1"), "m-ip"),
    ] {
        let res = srv
            .post_as(
                &format!("{}/providers", s.base),
                &s.owner,
                &json!({"provider": "openai_compatible", "name": name, "base_url": base_url, "api_key": "sk-up", "models": [model]}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        ids.push(res.json["id"].as_str().unwrap().to_string());
    }
    let live = s
        .key_token(&srv, a_key().named("l").scopes(&["gateway:proxy"]))
        .await;
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    // Allowed, both reach the upstream.
    for model in ["m-name", "m-ip"] {
        let res = srv
            .post_as("/openai/v1/chat/completions", &live, &chat(model))
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert_eq!(seen.lock().unwrap().len(), 2);

    // The same database served by a node where private targets are not allowed: the gateway's
    // connector refuses to connect, with a clear 502 that tells nothing of the address.
    let strict = node_with(&srv, |c| c.allow_private_provider_targets = false).await;
    let client = reqwest::Client::new();
    for (model, id) in [("m-name", &ids[0]), ("m-ip", &ids[1])] {
        let res = common::Response::from(
            client
                .post(format!("{strict}/openai/v1/chat/completions"))
                .bearer_auth(&live)
                .json(&chat(model))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let err = res.assert_error(502, "upstream_error");
        assert_eq!(
            err["details"][0]["reason"], "non_public_address",
            "{}",
            res.text
        );
        assert_eq!(err["details"][0]["provider_id"], id.as_str());
        assert!(
            !res.text.contains("127.0.0.1") && !res.text.contains(&port.to_string()),
            "{}",
            res.text
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "nothing reached the upstream"
    );
}

// ---- item 5: providers are confined to the caller's environment ----------------------------

async fn providers_are_confined_to_the_callers_environment(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = setup(&srv).await;
    let providers = format!("{}/providers", s.base);
    let mut ids = std::collections::HashMap::new();
    for env in ["live", "test"] {
        let res = srv
            .post_as(
                &providers,
                &s.owner,
                &json!({"provider": "openai", "name": env, "api_key": "sk-up", "environment": env}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        ids.insert(env, res.json["id"].as_str().unwrap().to_string());
    }
    let manage = |env: Environment| {
        a_key()
            .named(env.as_str())
            .environment(env)
            .scopes(&["configs:manage"])
    };
    let test_key = s.key_token(&srv, manage(Environment::Test)).await;
    let live_key = s.key_token(&srv, manage(Environment::Live)).await;

    for (caller, mine, other) in [(&test_key, "test", "live"), (&live_key, "live", "test")] {
        // The list holds this environment's providers only.
        let list = srv.get_as(&providers, caller).await;
        assert_eq!(list.status, 200, "{}", list.text);
        let listed: Vec<&str> = list.json["providers"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", list.text))
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [ids[mine].as_str()], "{mine} caller: {}", list.text);
        assert_eq!(list.json["total"], 1);
        // The other environment's provider is not found, whatever is asked of it.
        let theirs = format!("{providers}/{}", ids[other]);
        srv.get_as(&theirs, caller)
            .await
            .assert_error(404, "not_found");
        srv.patch_as(&theirs, caller, &json!({"enabled": false}))
            .await
            .assert_error(404, "not_found");
        srv.delete_as(&theirs, caller)
            .await
            .assert_error(404, "not_found");
        // Its own is.
        let own = format!("{providers}/{}", ids[mine]);
        let res = srv.get_as(&own, caller).await;
        assert_eq!(res.status, 200, "{}", res.text);
        // Creating in, or moving to, the other environment is refused.
        let res = srv
            .post_as(
                &providers,
                caller,
                &json!({"provider": "openai", "name": "x", "environment": other}),
            )
            .await;
        assert_field(&res, "environment");
        let res = srv
            .patch_as(&own, caller, &json!({"environment": other}))
            .await;
        assert_field(&res, "environment");
        // Created without saying, a provider is in the caller's environment.
        let res = srv
            .post_as(
                &providers,
                caller,
                &json!({"provider": "openai", "name": "mine", "priority": 9}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        assert_eq!(res.json["environment"], mine);
    }
    // Nothing of the other environment changed; the owner's unscoped token sees both.
    let all = srv.get_as(&providers, &s.owner).await;
    assert_eq!(all.json["total"], 4, "{}", all.text);
    for env in ["live", "test"] {
        let res = srv
            .get_as(&format!("{providers}/{}", ids[env]), &s.owner)
            .await;
        assert_eq!(res.json["enabled"], true, "{}", res.text);
        assert_eq!(res.json["environment"], env);
    }
}

// ---- item 15: gateway paths cannot climb out of the provider's path ------------------------

/// Sends `method path` as written (an HTTP client would resolve the dot segments first) and
/// reads the whole answer: its status and JSON body.
async fn raw(srv: &TestServer, method: &str, path: &str, key: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let mut socket = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&text[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

async fn gateway_paths_with_dot_segments_or_encoded_slashes_are_refused(backend: Backend) {
    let srv = TestServer::start_with(backend, allow_private(true)).await;
    let s = setup(&srv).await;
    let (port, seen) = upstream().await;
    let base = format!("http://127.0.0.1:{port}/v1");
    for kind in ["openai_compatible", "anthropic", "google", "azure"] {
        let res = srv
            .post_as(
                &format!("{}/providers", s.base),
                &s.owner,
                &json!({"provider": kind, "name": kind, "base_url": base, "api_key": "sk-up"}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
    let live = s
        .key_token(&srv, a_key().named("l").scopes(&["gateway:proxy"]))
        .await;
    for path in [
        "/openai/v1/../../v1/organizations",
        "/openai/v1/chat/../../../admin",
        "/openai/v1/./chat/completions",
        "/openai/v1/%2e%2e/%2E%2e/admin",
        "/openai/v1/.%2E/admin",
        "/openai/v1/chat%2F..%2Fmodels",
        "/openai/v1/chat/..%2fmodels",
        "/openai/v1/..;/admin",
        "/anthropic/v1/../messages",
        "/google/v1beta/models/..%2f..%2fx:generateContent",
        "/azure/res/dep/../../../admin",
        // An Azure resource becomes a host name: only letters, digits and hyphens.
        "/azure/evil.example/dep/chat/completions",
    ] {
        let (status, json) = raw(&srv, "POST", path, &live).await;
        assert_eq!(status, 400, "{path}: {json}");
        assert_eq!(json["error"]["code"], "invalid_request", "{path}: {json}");
        assert_eq!(
            json["error"]["details"][0]["field"], "path",
            "{path}: {json}"
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        0,
        "forwarded: {:?}",
        seen.lock().unwrap()
    );
    // Paths with dots inside names pass, unchanged.
    for (path, upstream_path) in [
        ("/openai/v1/chat/completions", "/v1/chat/completions"),
        ("/openai/v1/models/gpt-4.1", "/v1/models/gpt-4.1"),
        (
            "/openai/v1/files/file-a.jsonl/content",
            "/v1/files/file-a.jsonl/content",
        ),
    ] {
        let (status, json) = raw(&srv, "POST", path, &live).await;
        assert_eq!(status, 200, "{path}: {json}");
        assert_eq!(seen.lock().unwrap().last().unwrap(), upstream_path);
    }
}
