//! The audit log and webhooks through the HTTP API: changes made through other routes are
//! audited and delivered, organization and platform scopes are kept apart, exports stream.

mod common;

use std::time::Duration;

use axum::{http::HeaderMap, routing::post, Router};
use common::{
    fixtures::{a_person, an_org_of},
    Backend, ServerOptions, TestServer, PASSWORD,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

on_both_databases!(
    a_member_joining_reaches_both_endpoints_with_one_event_id,
    test_events_are_delivered_logged_and_retried_and_secrets_rotate,
    the_audit_log_holds_the_organizations_changes_for_admins_only,
    security_events_reach_the_platform_audit_log_only,
    audit_exports_stream_csv_and_ndjson,
    a_private_webhook_target_is_refused_naming_the_operator_switch,
);

async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            delivery_worker: true,
            ..Default::default()
        },
    )
    .await
}

/// A receiver on loopback that forwards (webhook-id, body) of every POST.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                assert!(headers["webhook-signature"]
                    .to_str()
                    .unwrap()
                    .starts_with("v1,"));
                let _ = tx.send((id, serde_json::from_str(&body).unwrap()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_of_type(
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
    ty: &str,
) -> (String, Value) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {ty} webhook within 15 s"))
            .unwrap();
        if got.1["type"] == ty {
            return got;
        }
    }
}

type Received = mpsc::UnboundedReceiver<(String, Value)>;

/// Alice's endpoint for member and test events, and a platform endpoint for everything; returns
/// the organization endpoint's id and both receivers.
async fn two_endpoints(
    srv: &TestServer,
    admin: &str,
    a: &str,
    base: &str,
) -> (String, Received, Received) {
    let (admin, a) = (admin.to_string(), a.to_string());
    // An organization endpoint for member events, and a platform endpoint for everything.
    let (org_url, org_rx) = receiver().await;
    let (platform_url, platform_rx) = receiver().await;
    let hook = srv
        .post_as(
            &format!("{base}/webhooks"),
            &a,
            &json!({"url": org_url, "events": ["member.added", "webhook.test"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text);
    assert!(
        hook.json["secret"].as_str().unwrap().starts_with("whsec_"),
        "{}",
        hook.text
    );
    let hook_id = hook.json["id"].as_str().unwrap().to_string();
    let shown = srv.get_as(&format!("{base}/webhooks/{hook_id}"), &a).await;
    assert!(
        !shown.text.contains("whsec_"),
        "secret shown twice: {}",
        shown.text
    );
    assert_eq!(
        srv.get_as(&format!("{base}/webhooks"), &a).await.json["total"],
        1
    );
    let res = srv
        .post_as(
            "/v1/admin/webhooks",
            &admin,
            &json!({"url": platform_url, "events": ["*"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    srv.post_as(
        "/v1/admin/webhooks",
        &a,
        &json!({"url": platform_url, "events": ["*"]}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.post_as(
        &format!("{base}/webhooks"),
        &a,
        &json!({"url": org_url, "events": ["no.such"]}),
    )
    .await
    .assert_error(400, "invalid_request");

    (hook_id, org_rx, platform_rx)
}

/// Bob joins alice's organization as a viewer through an invitation; returns his access token.
async fn bob_joins(srv: &TestServer, admin: &str, a: &str, base: &str) -> String {
    // A member joins through an invitation: both endpoints hear of it, with the same event id.
    srv.post_as(
        &format!("{base}/invitations"),
        a,
        &json!({"email": "bob@example.com", "role": "viewer"}),
    )
    .await;
    let mail = srv.mail(admin, "bob@example.com", "invited").await;
    let token = mail
        .split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .unwrap()
        .to_string();
    let bob = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "bob@example.com", "password": PASSWORD, "invitation_token": token}),
        )
        .await;
    assert_eq!(bob.status, 201, "{}", bob.text);
    bob.json["access_token"].as_str().unwrap().to_string()
}

async fn a_member_joining_reaches_both_endpoints_with_one_event_id(backend: Backend) {
    let srv = start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await;
    let (a, base) = (alice.token.clone(), org.base.clone());

    let (_, mut org_rx, mut platform_rx) = two_endpoints(&srv, &admin, &a, &base).await;
    bob_joins(&srv, &admin, &a, &base).await;
    let (org_id_header, org_event) = next_of_type(&mut org_rx, "member.added").await;
    let (platform_id_header, _) = next_of_type(&mut platform_rx, "member.added").await;
    assert_eq!(org_id_header, platform_id_header);
    assert_eq!(org_event["data"]["role"], "viewer");
}

async fn test_events_are_delivered_logged_and_retried_and_secrets_rotate(backend: Backend) {
    let srv = start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await;
    let (a, base) = (alice.token.clone(), org.base.clone());

    let (hook_id, mut org_rx, _platform_rx) = two_endpoints(&srv, &admin, &a, &base).await;
    bob_joins(&srv, &admin, &a, &base).await;
    next_of_type(&mut org_rx, "member.added").await;
    // The test event and the delivery log.
    let res = srv
        .post_as(&format!("{base}/webhooks/{hook_id}/test"), &a, &json!({}))
        .await;
    assert_eq!(res.status, 202, "{}", res.text);
    next_of_type(&mut org_rx, "webhook.test").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let deliveries = loop {
        let d = srv
            .get_as(&format!("{base}/webhooks/{hook_id}/deliveries"), &a)
            .await;
        if d.json["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "succeeded")
            .count()
            >= 2
            || std::time::Instant::now() > deadline
        {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = &deliveries.json["deliveries"][0];
    assert_eq!(first["response_status"], 200, "{}", deliveries.text);
    let retry = srv
        .post_as(
            &format!(
                "{base}/webhooks/{hook_id}/deliveries/{}/retry",
                first["id"].as_str().unwrap()
            ),
            &a,
            &json!({}),
        )
        .await;
    assert_eq!(retry.status, 202, "{}", retry.text);
    let rotated = srv
        .post_as(
            &format!("{base}/webhooks/{hook_id}/rotate-secret"),
            &a,
            &json!({}),
        )
        .await;
    assert!(
        rotated.json["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_"),
        "{}",
        rotated.text
    );
}

async fn the_audit_log_holds_the_organizations_changes_for_admins_only(backend: Backend) {
    let srv = start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await;
    let (a, base) = (alice.token.clone(), org.base.clone());

    let (_hook_id, _org_rx, _platform_rx) = two_endpoints(&srv, &admin, &a, &base).await;
    let bob = bob_joins(&srv, &admin, &a, &base).await;
    // Viewers read neither webhooks nor the audit log.
    let b = bob.as_str();
    srv.get_as(&format!("{base}/webhooks"), b)
        .await
        .assert_error(403, "forbidden");
    srv.get_as(&format!("{base}/audit"), b)
        .await
        .assert_error(403, "forbidden");

    // The organization's audit log holds its changes, with actors and request ids.
    let audit = srv.get_as(&format!("{base}/audit?limit=100"), &a).await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let actions: Vec<&str> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "organization.created",
        "member.added",
        "invitation.created",
        "invitation.accepted",
        "webhook.created",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    let created = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "organization.created")
        .unwrap();
    assert_eq!(created["actor_type"], "user");
    assert_eq!(created["actor_id"], alice.id);
    assert!(created["request_id"].as_str().unwrap().starts_with("req_"));
    let filtered = srv
        .get_as(&format!("{base}/audit?action=member.added"), &a)
        .await;
    assert_eq!(filtered.json["total"], 2);
    srv.get_as(&format!("{base}/audit?color=red"), &a)
        .await
        .assert_error(400, "invalid_request");
}

async fn security_events_reach_the_platform_audit_log_only(backend: Backend) {
    let srv = start(backend).await;
    let admin = srv.admin_token().await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await;
    let (a, base) = (alice.token.clone(), org.base.clone());

    let (hook_id, _org_rx, _platform_rx) = two_endpoints(&srv, &admin, &a, &base).await;
    // Security events reach the platform audit log only.
    srv.post_json(
        "/v1/auth/login",
        &json!({"email": "alice@example.com", "password": "wrong-password!"}),
    )
    .await;
    let platform = srv
        .get_as("/v1/admin/audit?action=user.login_failed", &admin)
        .await;
    assert_eq!(platform.json["total"], 1, "{}", platform.text);
    srv.get_as("/v1/admin/audit", &a)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        srv.get_as(&format!("{base}/audit?action=user.login_failed"), &a)
            .await
            .json["total"],
        0
    );

    assert_eq!(
        srv.delete_as(&format!("{base}/webhooks/{hook_id}"), &a)
            .await
            .status,
        204
    );
    srv.get_as(&format!("{base}/webhooks/{hook_id}"), &a)
        .await
        .assert_error(404, "not_found");
}

async fn audit_exports_stream_csv_and_ndjson(backend: Backend) {
    let srv = start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let org = an_org_of(&srv, &alice, "Acme", "acme").await;
    let (a, base) = (alice.token.clone(), org.base.clone());
    for i in 0..5 {
        srv.put_as(&format!("{base}/configs/k{i}"), &a, &json!({"value": i}))
            .await;
        srv.patch_as(&base, &a, &json!({"description": format!("v{i}")}))
            .await;
    }
    let csv = srv.get_as(&format!("{base}/audit?format=csv"), &a).await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(csv
        .header("content-disposition")
        .unwrap()
        .contains("audit.csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert!(lines[0].starts_with("id,"), "{}", lines[0]);
    // Header, organization.created, member.added, subscription.created, 5 × config.updated,
    // 5 × organization.updated.
    assert_eq!(lines.len(), 1 + 3 + 5 + 5, "{}", csv.text);
    let nd = srv
        .get_as(
            &format!("{base}/audit?format=ndjson&action=organization.updated"),
            &a,
        )
        .await;
    let rows: Vec<Value> = nd
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["action"] == "organization.updated"));
    srv.get_as(&format!("{base}/audit?format=xml"), &a)
        .await
        .assert_error(400, "invalid_request");
}

async fn a_private_webhook_target_is_refused_naming_the_operator_switch(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let alice = a_person(&srv, "alice@example.com").await;
    let base = an_org_of(&srv, &alice, "Acme", "acme").await.base;
    let res = srv
        .post_as(
            &format!("{base}/webhooks"),
            &alice.token,
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["field"], "url", "{}", res.text);
    let message = err["details"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("non-public")
            && message.contains("allow_private_webhook_targets")
            && message.contains("GATEHOUSE_ALLOW_PRIVATE_WEBHOOK_TARGETS"),
        "{message}"
    );
    // Other refusals say only what is wrong with the URL.
    let res = srv
        .post_as(
            &format!("{base}/webhooks"),
            &alice.token,
            &json!({"url": "ftp://example.com/hook", "events": ["*"]}),
        )
        .await;
    let err = res.assert_error(400, "invalid_request");
    assert_eq!(err["details"][0]["message"], "must be an http or https URL");
}
