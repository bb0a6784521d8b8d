//! Two `gatehouse` processes on one PostgreSQL (and, in the second test, one Redis): a key
//! revoked through one node is refused by the other within one second; a POST retried with its
//! `Idempotency-Key` on the other node is replayed, not executed again.

mod common;

use std::time::{Duration, Instant};

use common::{
    process::{gatehouse, spawn, Process},
    Backend, TestDatabase, PASSWORD,
};
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

fn node(
    dir: &std::path::Path,
    db: &TestDatabase,
    master_key: &str,
    redis: Option<&str>,
) -> Process {
    let mut cmd = gatehouse(dir);
    cmd.env("GATEHOUSE_DATABASE_URL", &db.url)
        .env("GATEHOUSE_MASTER_KEY", master_key)
        .env("GATEHOUSE_BOOTSTRAP_ADMIN", "false");
    if let Some(r) = redis {
        cmd.env("GATEHOUSE_REDIS_URL", r);
    }
    spawn(cmd)
}

/// Two nodes on one fresh PostgreSQL database (and `redis`, if given), and the access token
/// of a user registered through node A.
struct Deployment {
    a: Process,
    b: Process,
    client: reqwest::Client,
    owner: String,
    /// Held for the test's length: dropped, the database and the directory go.
    db: TestDatabase,
    dir: tempfile::TempDir,
}

async fn two_nodes(redis: Option<&str>) -> Deployment {
    let db = TestDatabase::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let master_key = gatehouse::crypto::MasterKey::generate_hex();
    // The first node migrates; the second starts on the migrated database.
    let a = node(dir.path(), &db, &master_key, redis);
    let b = node(dir.path(), &db, &master_key, redis);
    let client = reqwest::Client::new();
    let reg = post(
        &client,
        a.url("/v1/auth/register"),
        None,
        json!({"email": "o@example.com", "password": PASSWORD}),
    )
    .await;
    let owner = reg["access_token"].as_str().unwrap().to_string();
    Deployment {
        a,
        b,
        client,
        owner,
        db,
        dir,
    }
}

async fn revoked_on_one_node_refused_on_the_other(redis: Option<&str>) {
    let Deployment {
        a,
        b,
        client,
        owner,
        db: _db,
        dir: _dir,
    } = two_nodes(redis).await;
    let org = post(
        &client,
        a.url("/v1/organizations"),
        Some(&owner),
        json!({"name": "Acme", "slug": "acme"}),
    )
    .await;
    let org_path = format!("/v1/organizations/{}", org["id"].as_str().unwrap());
    let key = post(
        &client,
        a.url(&format!("{org_path}/api-keys")),
        Some(&owner),
        json!({"name": "k", "scopes": ["organizations:read"]}),
    )
    .await;
    let token = key["token"].as_str().unwrap().to_string();

    // Node B verifies (and caches) the key.
    let status = |url: String| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(b.url(&org_path)).await, 200);
    assert_eq!(status(b.url(&org_path)).await, 200);

    // Revoke through node A; node B must refuse within one second.
    let res = client
        .delete(a.url(&format!(
            "{org_path}/api-keys/{}",
            key["id"].as_str().unwrap()
        )))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let revoked_at = Instant::now();
    loop {
        let s = status(b.url(&org_path)).await;
        if s == 401 {
            break;
        }
        assert_eq!(s, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "node B still accepted the revoked key after one second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "revocation reached the other node in {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_node_over_postgres_notify() {
    if !common::postgres_available("multi-node over PostgreSQL").await {
        return;
    }
    revoked_on_one_node_refused_on_the_other(None).await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_node_over_redis_pubsub() {
    if !common::postgres_available("multi-node over Redis").await
        || !common::redis_available("multi-node over Redis").await
    {
        return;
    }
    revoked_on_one_node_refused_on_the_other(Some(&common::redis_url())).await;
}

#[tokio::test]
async fn an_idempotent_post_is_replayed_by_the_other_node() {
    if !common::postgres_available("idempotency across nodes").await {
        return;
    }
    let Deployment {
        a,
        b,
        client,
        owner,
        db: _db,
        dir: _dir,
    } = two_nodes(None).await;
    let create = |url: String| {
        let (client, owner) = (client.clone(), owner.clone());
        async move {
            let res = client
                .post(url)
                .bearer_auth(owner)
                .header("Idempotency-Key", "create-acme")
                .json(&json!({"name": "Acme", "slug": "acme"}))
                .send()
                .await
                .unwrap();
            let replayed = res.headers().get("idempotent-replayed").is_some();
            (res.status().as_u16(), replayed, res.text().await.unwrap())
        }
    };
    let first = create(a.url("/v1/organizations")).await;
    assert_eq!((first.0, first.1), (201, false), "{}", first.2);
    let retry = create(b.url("/v1/organizations")).await;
    assert_eq!((retry.0, retry.1), (201, true), "{}", retry.2);
    assert_eq!(retry.2, first.2);
    let list: Value = client
        .get(b.url("/v1/organizations"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
}
