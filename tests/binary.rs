//! The `gatehouse` binary as an operator runs it: first start, configuration layering, the
//! `migrate` and `admin create` commands, `--help`, and SIGTERM.

mod common;

use std::process::Command;

use common::{Backend, TestDatabase};
use serde_json::json;

use common::process::{gatehouse, spawn, Process, BIN};

async fn health(p: &Process) -> serde_json::Value {
    reqwest::get(p.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn first_start_creates_the_key_and_an_admin_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(gatehouse(dir.path()));
    let h = health(&p).await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["checks"]["database"]["status"], "ok");
    assert_eq!(h["checks"]["database"]["backend"], "sqlite");

    // The SQLite file and the master key file are beside each other; the key is private.
    assert!(dir.path().join("gatehouse.db").exists());
    let key_path = dir.path().join("gatehouse.db.master.key");
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(key.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, logs, stdout) = p.terminate();
    assert!(status.success(), "exit status {status:?}; logs: {logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("SIGTERM received")),
        "{logs:#?}"
    );

    // The bootstrap admin's password is printed once, to stdout, never to the log.
    let password_line = stdout
        .iter()
        .find(|l| l.trim_start().starts_with("password:"))
        .unwrap_or_else(|| panic!("no password printed: {stdout:?}"));
    let password = password_line.split(':').nth(1).unwrap().trim().to_string();
    assert!(password.len() >= 20);
    assert!(
        !logs.iter().any(|l| l.contains(&password)),
        "password leaked to the log"
    );

    // A second start reuses the key and creates no second admin.
    let p = spawn(gatehouse(dir.path()));
    assert_eq!(health(&p).await["status"], "ok");
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
    let (status, _, stdout) = p.terminate();
    assert!(status.success());
    assert!(stdout.is_empty(), "{stdout:?}");
}

#[tokio::test]
async fn the_same_binary_serves_postgres() {
    if !common::postgres_available("the_same_binary_serves_postgres").await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.env("GATEHOUSE_DATABASE_URL", &db.url);
    let p = spawn(cmd);
    let h = health(&p).await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["checks"]["database"]["backend"], "postgres");
    let ready = reqwest::get(p.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let (status, _, _) = p.terminate();
    assert!(status.success());
    // Without a database beside it, the master key file goes to the working directory.
    assert!(dir.path().join("gatehouse.master.key").exists());
}

#[tokio::test]
async fn redis_is_reported_in_health_when_configured() {
    if !common::redis_available("redis_is_reported_in_health_when_configured").await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.env("GATEHOUSE_REDIS_URL", common::redis_url());
    let p = spawn(cmd);
    let h = health(&p).await;
    assert_eq!(h["checks"]["redis"]["status"], "ok", "{h}");
    assert_eq!(h["status"], "ok");
    drop(p);

    // An unreachable Redis degrades the node; it does not take it down.
    let mut cmd = gatehouse(dir.path());
    cmd.env("GATEHOUSE_REDIS_URL", "redis://127.0.0.1:1");
    let p = spawn(cmd);
    let res = reqwest::get(p.url("/health")).await.unwrap();
    assert_eq!(res.status(), 200);
    let h: serde_json::Value = res.json().await.unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["checks"]["redis"]["status"], "degraded");
}

#[test]
fn migrate_and_admin_create_script_the_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = gatehouse(dir.path()).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));

    let create = |email: &str, password: &str| {
        gatehouse(dir.path())
            .args(["admin", "create", "--email", email, "--password", password])
            .output()
            .unwrap()
    };
    let out = create("Ops@Example.com", "a-long-and-unusual-passphrase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ops@example.com"));

    // The same email (in any case) again is refused, as is a weak password.
    let out = create("OPS@example.com", "another-unusual-passphrase");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = create("other@example.com", "password123");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("common"));
}

#[test]
fn help_documents_every_command_and_configuration_key() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "migrate", "admin", "billing", "--config"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
    for (key, _, _) in gatehouse::config::REFERENCE {
        assert!(help.contains(key), "help lacks configuration key {key}");
    }
    let out = Command::new(BIN)
        .args(["admin", "create", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--email") && help.contains("--password"));
    let out = Command::new(BIN)
        .args(["billing", "close-period", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--org") && help.contains("--at") && help.contains("RFC 3339"));
}

#[test]
fn environment_wins_over_the_file_and_bad_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(&file, "database_url = \"sqlite://from-file.db\"\n").unwrap();
    let out = gatehouse(dir.path())
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("from-file.db").exists());

    let out = gatehouse(dir.path())
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .env("GATEHOUSE_DATABASE_URL", "sqlite://from-env.db")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("from-env.db").exists());

    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = gatehouse(dir.path())
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));

    let out = gatehouse(dir.path())
        .arg("migrate")
        .env("GATEHOUSE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// SIGTERM while a request is in flight: the server stops accepting, but the request that had
/// begun (its body still arriving) is finished and answered before the process exits.
#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(gatehouse(dir.path()));
    let body = br#"{"email": "nobody@example.com", "password": "not-the-password"}"#;
    let mut conn = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
    let head = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    // Give the server a moment to read the head and start the handler (which then waits for
    // the body). Were the head unread at SIGTERM, the connection would be closed unanswered
    // and this test would fail — it cannot pass wrongly.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let pid = p.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // New connections are refused once the shutdown has begun.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reqwest::get(p.url("/health/live")).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The in-flight request completes.
    conn.write_all(&body[10..]).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("\"unauthorized\""), "{text}");
    let (status, logs, _) = p.terminate_wait();
    assert!(status.success(), "{logs:#?}");
}

/// The reset link mailed to the bootstrap admin by a server started as `p`.
async fn reset_link(p: &Process) -> String {
    use reqwest::Method;
    const ADMIN: &str = "admin@gatehouse.local";
    let login = json!({"email": ADMIN, "password": p.bootstrap_password()});
    let (_, login) = p
        .call(Method::POST, "/v1/auth/login", None, Some(&login))
        .await;
    let token = login["access_token"].as_str().expect("signed in");
    let forgot = json!({"email": ADMIN});
    let (asked, _) = p
        .call(
            Method::POST,
            "/v1/auth/forgot-password",
            None,
            Some(&forgot),
        )
        .await;
    assert_eq!(asked, 202);
    // The mail is written off the request path: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mailbox = format!("/v1/admin/mailbox?to={ADMIN}");
        let (_, mailbox) = p.call(Method::GET, &mailbox, Some(token), None).await;
        if let Some(body) = mailbox["messages"][0]["body"].as_str() {
            return body
                .split_whitespace()
                .find(|w| w.contains("/reset-password?token="))
                .expect("a link in the reset mail")
                .to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no reset mail");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Without `public_url`, links in emails point at the address the server actually listens on
/// (here a random port), not at a default port it may not use; a configured one wins.
#[tokio::test]
async fn mail_links_point_at_the_listened_on_address_unless_public_url_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(gatehouse(dir.path()));
    assert!(!p.addr.ends_with(":8080"), "{}", p.addr);
    let link = reset_link(&p).await;
    assert!(
        link.starts_with(&format!("http://{}/reset-password?token=rst_", p.addr)),
        "{link}"
    );
    // The link opens on this server.
    assert!(reqwest::get(&link).await.is_ok());
    p.terminate();

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.env("GATEHOUSE_PUBLIC_URL", "https://gatehouse.example.com/");
    let p = spawn(cmd);
    let link = reset_link(&p).await;
    assert!(
        link.starts_with("https://gatehouse.example.com/reset-password?token=rst_"),
        "{link}"
    );
    p.terminate();
}
