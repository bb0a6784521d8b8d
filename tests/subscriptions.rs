//! Subscriptions: activating, changing and canceling a plan, the organization's plan and limits
//! following it, the billing cycle job (end at period end, renewal), permissions and the platform
//! admin's organization detail.

mod common;

use common::{fixtures::an_org, Backend, TestServer};
use gatehouse::environment::Environment;
use serde_json::{json, Value};

on_both_databases!(
    a_subscription_is_validated_field_by_field,
    a_subscription_puts_the_organization_on_its_plan,
    a_plan_change_applies_at_once_and_shows_in_the_admin_detail,
    billing_read_reads_and_only_the_owner_changes_or_cancels,
    a_canceled_subscription_ends_with_its_cycle_and_can_start_again,
    auto_renewing_subscriptions_roll_into_the_next_cycle,
);

fn field_errors(res: &common::Response) -> Vec<String> {
    res.assert_error(400, "invalid_request")["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect()
}

async fn audit_actions(srv: &TestServer, base: &str, owner: &str) -> Vec<String> {
    let res = srv
        .get_as(&format!("{base}/audit?resource_type=subscription"), owner)
        .await;
    res.json["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", res.text))
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

async fn a_subscription_is_validated_field_by_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (base, owner) = (o.base.clone(), o.owner.clone());
    let sub = format!("{base}/subscription");
    // Never 404: the implicit default-plan subscription (tests/usage.rs).
    assert_eq!(srv.get_as(&sub, &owner).await.json["plan"], "smb");

    // Validation names the field.
    assert_eq!(
        field_errors(&srv.post_as(&sub, &owner, &json!({})).await),
        ["plan"]
    );
    assert_eq!(
        field_errors(
            &srv.post_as(&sub, &owner, &json!({"plan": "platinum"}))
                .await
        ),
        ["plan"]
    );
    assert_eq!(
        field_errors(
            &srv.post_as(
                &sub,
                &owner,
                &json!({"plan": "midmarket", "billing_email": "nope"})
            )
            .await
        ),
        ["billing_email"]
    );
}

async fn a_subscription_puts_the_organization_on_its_plan(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (base, org_id, owner) = (o.base.clone(), o.id.clone(), o.owner.clone());
    let sub = format!("{base}/subscription");
    let res = srv
        .post_as(
            &sub,
            &owner,
            &json!({"plan": "midmarket", "billing_email": "Billing@Acme.test"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let s = res.json.clone();
    assert!(s["id"].as_str().unwrap().starts_with("sub_"));
    assert_eq!(s["organization_id"], org_id);
    assert_eq!(s["plan"], "midmarket");
    assert_eq!(s["status"], "active");
    assert_eq!(s["amount"], 49900);
    assert_eq!(s["currency"], "usd");
    assert_eq!(s["billing_email"], "billing@acme.test");
    assert_eq!(s["auto_renew"], true);
    assert!(s["features"].is_object());
    let start =
        chrono::DateTime::parse_from_rfc3339(s["billing_cycle_start"].as_str().unwrap()).unwrap();
    let end =
        chrono::DateTime::parse_from_rfc3339(s["billing_cycle_end"].as_str().unwrap()).unwrap();
    let days = (end - start).num_days();
    assert!((28..=31).contains(&days), "a monthly cycle of {days} days");
    assert_eq!(srv.get_as(&sub, &owner).await.json, s);

    // The organization is on the plan: its limits are the plan's.
    let plans = srv.get_as("/v1/plans", &owner).await.json;
    let limit = |plan: &str, name: &str| -> Value {
        plans["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == plan)
            .unwrap()["limits"][name]
            .clone()
    };
    let usage = srv.get_as(&format!("{base}/usage"), &owner).await.json;
    assert_eq!(usage["plan"], "midmarket");
    assert_eq!(usage["members"]["limit"], limit("midmarket", "members"));

    // One active subscription per organization.
    srv.post_as(&sub, &owner, &json!({"plan": "smb"}))
        .await
        .assert_error(409, "conflict");
}

async fn a_plan_change_applies_at_once_and_shows_in_the_admin_detail(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (base, org_id, owner) = (o.base.clone(), o.id.clone(), o.owner.clone());
    let sub = format!("{base}/subscription");
    let s = srv
        .post_as(&sub, &owner, &json!({"plan": "midmarket"}))
        .await
        .json;
    // A plan change applies at once.
    let res = srv
        .patch_as(&sub, &owner, &json!({"plan": "enterprise"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["plan"], "enterprise");
    assert_eq!(res.json["amount"], 199900);
    assert_eq!(res.json["billing_cycle_end"], s["billing_cycle_end"]);
    let usage = srv.get_as(&format!("{base}/usage"), &owner).await.json;
    assert_eq!(usage["plan"], "enterprise");
    assert_eq!(
        field_errors(&srv.patch_as(&sub, &owner, &json!({"plan": "gold"})).await),
        ["plan"]
    );

    // The platform admin sees it in the organization's detail.
    let admin = srv.admin_token().await;
    let detail = srv
        .get_as(&format!("/v1/admin/organizations/{org_id}"), &admin)
        .await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(detail.json["subscription"]["plan"], "enterprise");
    assert_eq!(detail.json["members"][0]["role"], "owner");
    assert_eq!(detail.json["usage"]["plan"], "enterprise");
}

async fn billing_read_reads_and_only_the_owner_changes_or_cancels(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (base, owner) = (o.base.clone(), o.owner.clone());
    let sub = format!("{base}/subscription");
    let res = srv
        .post_as(&sub, &owner, &json!({"plan": "midmarket"}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    // Scopes: billing:read reads, billing:manage changes, only the owner cancels.
    let reader = o
        .a_key_token(&srv, Environment::Live, &["billing:read"])
        .await;
    assert_eq!(srv.get_as(&sub, &reader).await.status, 200);
    srv.patch_as(&sub, &reader, &json!({"auto_renew": false}))
        .await
        .assert_error(403, "forbidden");
    srv.delete_as(&sub, &reader)
        .await
        .assert_error(403, "forbidden");
}

/// An organization subscribed to midmarket: its base, owner token, subscription URL and answer.
async fn a_midmarket_subscription(backend: Backend) -> (TestServer, String, String, String, Value) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (base, owner) = (o.base.clone(), o.owner.clone());
    let sub = format!("{base}/subscription");
    let s = srv
        .post_as(&sub, &owner, &json!({"plan": "midmarket"}))
        .await
        .json;
    (srv, base, owner, sub, s)
}

async fn a_canceled_subscription_ends_with_its_cycle_and_can_start_again(backend: Backend) {
    let (srv, base, owner, sub, s) = a_midmarket_subscription(backend).await;
    let res = srv
        .patch_as(&sub, &owner, &json!({"plan": "enterprise"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Canceling keeps the plan to the end of the cycle…
    let res = srv.delete_as(&sub, &owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "active");
    assert_eq!(res.json["cancel_at_period_end"], true);
    assert_eq!(res.json["auto_renew"], false);
    assert!(res.json["canceled_at"].is_string());
    let job = gatehouse::billing::subscriptions::close_due;
    assert_eq!(job(&srv.state, chrono::Utc::now()).await.unwrap(), 0);
    assert_eq!(srv.get_as(&sub, &owner).await.json["plan"], "enterprise");

    // …then the cycle job ends it and the organization is back on the default plan.
    let after = chrono::Utc::now() + chrono::Duration::days(40);
    assert_eq!(job(&srv.state, after).await.unwrap(), 1);
    assert_eq!(job(&srv.state, after).await.unwrap(), 0, "once");
    let ended = srv.get_as(&sub, &owner).await.json;
    assert_eq!(ended["status"], "canceled");
    let usage = srv.get_as(&format!("{base}/usage"), &owner).await.json;
    assert_eq!(usage["plan"], "smb");
    srv.patch_as(&sub, &owner, &json!({"plan": "midmarket"}))
        .await
        .assert_error(404, "not_found");

    // A new subscription can start after one ended.
    let again = srv
        .post_as(&sub, &owner, &json!({"plan": "midmarket"}))
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_ne!(again.json["id"], s["id"]);

    let actions = audit_actions(&srv, &base, &owner).await;
    for a in [
        "subscription.created",
        "subscription.updated",
        "subscription.canceled",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
}

async fn auto_renewing_subscriptions_roll_into_the_next_cycle(backend: Backend) {
    let (srv, _, owner, sub, s) = a_midmarket_subscription(backend).await;
    let end = chrono::DateTime::parse_from_rfc3339(s["billing_cycle_end"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    // Three cycles later (the job was away): whole cycles from the last end.
    let later = end + chrono::Duration::days(70);
    assert_eq!(
        gatehouse::billing::subscriptions::close_due(&srv.state, later)
            .await
            .unwrap(),
        1
    );
    let renewed = srv.get_as(&sub, &owner).await.json;
    assert_eq!(renewed["status"], "active");
    assert_eq!(renewed["plan"], "midmarket");
    let start =
        chrono::DateTime::parse_from_rfc3339(renewed["billing_cycle_start"].as_str().unwrap())
            .unwrap();
    let new_end =
        chrono::DateTime::parse_from_rfc3339(renewed["billing_cycle_end"].as_str().unwrap())
            .unwrap();
    assert!(
        start <= later && later < new_end,
        "{start} .. {new_end} holds {later}"
    );
    assert!(start > end);
    // Turning renewal off ends it at the end of the cycle.
    srv.patch_as(&sub, &owner, &json!({"auto_renew": false}))
        .await;
    assert_eq!(
        gatehouse::billing::subscriptions::close_due(
            &srv.state,
            new_end.with_timezone(&chrono::Utc)
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(srv.get_as(&sub, &owner).await.json["status"], "canceled");
}
