//! Usage (SPEC §6 "Billing details", issue #23): every organization's implicit default-plan
//! subscription (new ones from their creation, older ones from the start-up backfill), `GET
//! …/usage` with every metered quantity after gateway calls (tokens and cost included), and the
//! 80 % / 100 % threshold warnings — once per period and quantity, again the next period, with
//! their event, webhook and email — kept to their organization.

mod common;

use chrono::{DateTime, Utc};
use common::{
    fixtures::{a_test_key, an_org, an_org_called, Org},
    Backend, ServerOptions, TestServer,
};
use serde_json::{json, Value};

on_both_databases!(
    a_new_organization_has_a_default_plan_subscription,
    an_older_organization_gets_one_at_start_up,
    usage_counts_gateway_requests_tokens_and_cost,
    thresholds_warn_once_at_80_and_100_percent_and_again_next_period,
    projects_warn_at_80_and_100_percent_of_the_plan,
);

/// A chat whose user message is `words` words long (the mock counts a token per word).
fn chat(model: &str, words: usize) -> Value {
    let text = vec!["word"; words].join(" ");
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn call(srv: &TestServer, key: &str, body: &Value) -> common::Response {
    srv.post_as("/openai/v1/chat/completions", key, body).await
}

async fn usage(srv: &TestServer, o: &Org) -> Value {
    let res = srv.get_as(&format!("{}/usage", o.base), &o.owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

/// The organization's `usage.threshold_reached` events, oldest first: (quantity, percent).
async fn warnings(srv: &TestServer, o: &Org) -> Vec<(String, u64, Value)> {
    let res = srv
        .get_as(
            &format!("{}/audit?action=usage.threshold_reached&limit=100", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let mut v: Vec<(String, u64, Value)> = res.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let m = &e["metadata"];
            (
                m["quantity"].as_str().unwrap().to_string(),
                m["threshold_percent"].as_u64().unwrap(),
                m.clone(),
            )
        })
        .collect();
    v.reverse();
    v
}

/// Flushes the meter and runs the threshold check for the organization (the job does the same
/// every second; whichever runs first emits, once).
async fn check_thresholds(srv: &TestServer, o: &Org) {
    srv.state.usage.flush().await.unwrap();
    gatehouse::billing::thresholds::check(&srv.state, &o.id)
        .await
        .unwrap();
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn a_new_organization_has_a_default_plan_subscription(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let before = Utc::now() - chrono::Duration::seconds(1);
    let o = an_org(&srv).await;
    let res = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let s = &res.json;
    assert!(s["id"].as_str().unwrap().starts_with("sub_"), "{s}");
    assert_eq!(s["organization_id"], o.id.as_str());
    assert_eq!(s["plan"], "smb");
    assert_eq!(s["status"], "active");
    assert_eq!(s["amount"], 4900);
    assert_eq!(s["currency"], "usd");
    assert_eq!(s["auto_renew"], true);
    assert_eq!(s["billing_email"], "owner@example.com");
    assert!(s["features"].is_object() && !s["features"].as_object().unwrap().is_empty());
    let start: DateTime<Utc> = s["billing_cycle_start"].as_str().unwrap().parse().unwrap();
    let end: DateTime<Utc> = s["billing_cycle_end"].as_str().unwrap().parse().unwrap();
    assert!(start >= before && start <= Utc::now(), "{s}");
    assert_eq!(end, gatehouse::limits::usage::add_months(start, 1));
    // The usage period is that billing cycle.
    let u = usage(&srv, &o).await;
    assert_eq!(u["period"], json!({"start": secs(start), "end": secs(end)}));
    // Created with the organization: audited as its creation.
    let audit = srv
        .get_as(
            &format!("{}/audit?action=subscription.created", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(
        audit.json["events"].as_array().unwrap().len(),
        1,
        "{}",
        audit.text
    );

    // Activating a plan replaces the implicit subscription, keeping its billing email.
    let res = srv
        .post_as(
            &format!("{}/subscription", o.base),
            &o.owner,
            &json!({"plan": "midmarket"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["plan"], "midmarket");
    assert_eq!(res.json["billing_email"], "owner@example.com");
    // A second activation is a plan change: PATCH it.
    srv.post_as(
        &format!("{}/subscription", o.base),
        &o.owner,
        &json!({"plan": "smb"}),
    )
    .await
    .assert_error(409, "conflict");
}

async fn an_older_organization_gets_one_at_start_up(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let other = an_org_called(&srv, "beta").await;
    // As before subscriptions were implicit: no row, and the start-up step not yet run.
    sqlx::query("DELETE FROM subscriptions WHERE organization_id = $1")
        .bind(&o.id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM data_steps WHERE name = 'implicit_subscriptions'")
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    let kept = srv
        .get_as(&format!("{}/subscription", other.base), &other.owner)
        .await
        .json;
    let before = Utc::now() - chrono::Duration::seconds(1);
    srv.state.db.migrate().await.unwrap();
    srv.state.usage.forget_cycle(None);

    let res = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["plan"], "smb");
    assert_eq!(res.json["status"], "active");
    assert_eq!(res.json["billing_email"], "owner@example.com");
    assert!(res.json["features"].is_object());
    let start: DateTime<Utc> = res.json["billing_cycle_start"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(start >= before, "the first cycle starts at the backfill");
    assert_eq!(usage(&srv, &o).await["period"]["start"], secs(start));
    // An organization that had one keeps it as it was.
    let again = srv
        .get_as(&format!("{}/subscription", other.base), &other.owner)
        .await
        .json;
    assert_eq!(again, kept);
    // Run again: nothing more.
    srv.state.db.migrate().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subscriptions")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
}

async fn usage_counts_gateway_requests_tokens_and_cost(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let b = an_org_called(&srv, "beta").await;
    let key = a_test_key(&srv, &o).await;
    let empty = usage(&srv, &o).await;
    for q in [
        "api_requests",
        "gateway_requests",
        "gateway_tokens",
        "gateway_cost",
        "members",
        "projects",
    ] {
        assert!(empty[q]["used"].is_u64(), "{q}: {empty}");
        assert!(empty[q].get("limit").is_some(), "{q}: {empty}");
    }
    assert_eq!(empty["gateway_cost"], json!({"limit": null, "used": 0}));
    assert_eq!(empty["gateway_requests"]["used"], 0);

    // gpt-4.1: $2 per million prompt tokens, $8 per million completion tokens.
    let body = chat("gpt-4.1", 10_000);
    let mut tokens = 0;
    for _ in 0..3 {
        let res = call(&srv, &key, &body).await;
        assert_eq!(res.status, 200, "{}", res.text);
        tokens += res.json["usage"]["total_tokens"].as_u64().unwrap();
    }
    srv.wait_for_usage_logs(3).await;
    srv.state.usage.flush().await.unwrap();
    let logs = srv
        .get_as(&format!("{}/analytics/logs", o.base), &o.owner)
        .await;
    let micros: u64 = logs.json["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", logs.text))
        .iter()
        .map(|l| (l["cost_usd"].as_f64().unwrap() * 1e6).round() as u64)
        .sum();
    assert!(micros > 50_000, "a few cents: {micros}");
    let u = usage(&srv, &o).await;
    assert_eq!(u["gateway_requests"]["used"], 3, "{u}");
    assert_eq!(u["gateway_tokens"]["used"], tokens, "{u}");
    assert_eq!(
        u["gateway_cost"],
        json!({"limit": null, "used": (micros + 5_000) / 10_000}),
        "{u}"
    );
    assert_eq!(u["members"]["used"], 1);
    assert_eq!(u["gateway_requests"]["limit"], json!(50000));

    // Nothing of it in another organization.
    let other = usage(&srv, &b).await;
    for q in ["gateway_requests", "gateway_tokens", "gateway_cost"] {
        assert_eq!(other[q]["used"], 0, "{q}: {other}");
    }
}

async fn thresholds_warn_once_at_80_and_100_percent_and_again_next_period(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            ..Default::default()
        },
    )
    .await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    let b = an_org_called(&srv, "beta").await;
    let res = srv
        .patch_as(
            "/v1/admin/plans/smb",
            &admin,
            &json!({"limits": {"gateway_requests_per_month": 5}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // A webhook for the event (its deliveries are not the point: the outbox row is).
    let hook = srv
        .post_as(
            &format!("{}/webhooks", o.base),
            &o.owner,
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["usage.threshold_reached"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text);
    let key = a_test_key(&srv, &o).await;
    let b_key = a_test_key(&srv, &b).await;
    let body = chat("mock-model", 3);

    // 3 of 5: nothing yet. B's calls count for B alone.
    for _ in 0..3 {
        assert_eq!(call(&srv, &key, &body).await.status, 200);
        assert_eq!(call(&srv, &b_key, &body).await.status, 200);
    }
    check_thresholds(&srv, &o).await;
    assert!(warnings(&srv, &o).await.is_empty());
    // 4 of 5 = 80 %.
    assert_eq!(call(&srv, &key, &body).await.status, 200);
    check_thresholds(&srv, &o).await;
    check_thresholds(&srv, &o).await;
    let w = warnings(&srv, &o).await;
    assert_eq!(w.len(), 1, "{w:?}");
    let period = usage(&srv, &o).await["period"].clone();
    assert_eq!(
        w[0].2,
        json!({"quantity": "gateway_requests", "threshold_percent": 80, "used": 4, "limit": 5,
               "period": period})
    );
    let mail = srv.mail(&admin, "owner@example.com", "80%").await;
    assert!(mail.contains("4 of the 5 gateway requests"), "{mail}");
    // 5 of 5 = 100 %; then refused, and no more warnings however often it is checked.
    assert_eq!(call(&srv, &key, &body).await.status, 200);
    check_thresholds(&srv, &o).await;
    call(&srv, &key, &body)
        .await
        .assert_error(429, "quota_exceeded");
    check_thresholds(&srv, &o).await;
    let w = warnings(&srv, &o).await;
    let got: Vec<(&str, u64)> = w.iter().map(|(q, p, _)| (q.as_str(), *p)).collect();
    assert_eq!(got, [("gateway_requests", 80), ("gateway_requests", 100)]);
    assert_eq!(w[1].2["used"], 5);
    srv.mail(&admin, "owner@example.com", "100%").await;
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM webhook_events WHERE event_type = $1")
            .bind("usage.threshold_reached")
            .fetch_all(srv.state.db.pool())
            .await
            .unwrap();
    assert_eq!(payloads.len(), 2, "one webhook event per warning");
    let stored: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM usage_threshold_notices WHERE organization_id = $1",
    )
    .bind(&o.id)
    .fetch_one(srv.state.db.pool())
    .await
    .unwrap();
    assert_eq!(stored, 2);

    // B (3 of 5) was never warned, and sees none of A's warnings.
    check_thresholds(&srv, &b).await;
    assert!(warnings(&srv, &b).await.is_empty());
    let b_mail = srv
        .get_as("/v1/admin/mailbox?to=owner-beta@example.com", &admin)
        .await;
    assert!(
        !b_mail.json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("% of its")),
        "{}",
        b_mail.text
    );

    // The next period starts from zero and warns again.
    let now = Utc::now();
    let start = now - chrono::Duration::seconds(10);
    sqlx::query(
        "UPDATE subscriptions SET billing_cycle_start = $1, billing_cycle_end = $2 \
         WHERE organization_id = $3",
    )
    .bind(gatehouse::storage::format_time(start))
    .bind(gatehouse::storage::format_time(
        gatehouse::limits::usage::add_months(start, 1),
    ))
    .bind(&o.id)
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    srv.state.usage.forget_cycle(Some(&o.id));
    assert_eq!(usage(&srv, &o).await["gateway_requests"]["used"], 0);
    for _ in 0..4 {
        assert_eq!(call(&srv, &key, &body).await.status, 200);
    }
    check_thresholds(&srv, &o).await;
    let w = warnings(&srv, &o).await;
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!((w[2].0.as_str(), w[2].1), ("gateway_requests", 80));
    assert_eq!(w[2].2["period"]["start"], secs(start));
}

async fn projects_warn_at_80_and_100_percent_of_the_plan(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    // SMB allows 5 projects: the 4th is 80 %, the 5th 100 %.
    for i in 0..5 {
        let res = srv
            .post_as(
                &format!("{}/projects", o.base),
                &o.owner,
                &json!({"name": format!("P{i}")}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        // Several checks at once (nodes sharing the database): one warning each.
        let check = || gatehouse::billing::thresholds::check(&srv.state, &o.id);
        let (a, b, c) = tokio::join!(check(), check(), check());
        assert!(a.unwrap() + b.unwrap() + c.unwrap() <= 2);
        let got: Vec<u64> = warnings(&srv, &o)
            .await
            .iter()
            .filter(|(q, _, _)| q == "projects")
            .map(|(_, p, _)| *p)
            .collect();
        let want: &[u64] = match i {
            0..=2 => &[],
            3 => &[80],
            _ => &[80, 100],
        };
        assert_eq!(got, want, "after project {}", i + 1);
    }
    let mail = srv
        .mail(&admin, "owner@example.com", "100% of its projects")
        .await;
    assert!(mail.contains("5 of the 5 projects"), "{mail}");
}
