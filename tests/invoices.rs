//! Invoices (SPEC §6 "Billing details"): the invoice a closed subscription period gets — its
//! base line, overage lines (and the quota that bills instead of refusing), proration of plan
//! changes to the second, the last invoice of a canceled subscription — issued once however
//! often and by however many nodes the period is closed, paid or voided by a platform admin,
//! seen only by its organization; and `gatehouse billing close-period` through the binary.
//!
//! A billing period lasts a month: tests move a subscription's cycle (and the time of its plan
//! changes) in the database, then close its periods at a chosen time, as the cycle job would
//! once that time has come.

mod common;
mod stripe_mock;

use chrono::{DateTime, TimeZone, Utc};
use common::{
    fixtures::{an_org, an_org_called, Org},
    Backend, TestServer,
};
use gatehouse::billing::invoices::{close_periods, collect::collect_open};
use serde_json::{json, Value};

on_both_databases!(
    a_closed_period_is_invoiced_its_base_price,
    usage_beyond_a_priced_limit_is_billed_not_refused,
    plan_changes_are_prorated_to_the_second,
    a_canceled_subscription_gets_its_last_invoice_and_no_more,
    a_period_is_invoiced_once_however_often_it_is_closed,
    platform_admins_pay_or_void_open_invoices_only,
    an_organization_sees_only_its_own_invoices,
    overage_prices_are_validated_against_the_plan_limits,
    the_worked_month_of_docs_billing_md,
    close_period_through_the_binary_issues_each_invoice_once,
    projects_beyond_a_priced_limit_are_allowed_and_billed,
    usage_is_counted_in_the_billing_cycle_it_happened_in,
    the_cycle_job_issues_the_invoice_of_a_period_that_ended,
    a_close_killed_midway_leaves_whole_periods_and_the_rerun_finishes_them,
    the_pdf_shows_every_amount_of_the_invoice,
    stripe_collects_an_issued_invoice_and_its_webhook_marks_it_paid,
    a_failed_stripe_payment_is_recorded_and_leaves_the_invoice_open,
    activating_a_plan_invoices_the_replaced_default_plan_cycle,
    a_replaced_free_default_plan_is_invoiced_only_for_its_overage,
    two_activations_at_once_invoice_the_replaced_cycle_once,
    a_payment_that_keeps_failing_is_given_up_after_the_configured_attempts,
);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// `amount × part / whole` rounded half away from zero (the documented rule).
fn prorated(amount: i64, part: i64, whole: i64) -> i64 {
    let n = amount as i128 * part as i128;
    let q = (n.abs() * 2 + whole as i128) / (2 * whole as i128);
    (if n < 0 { -q } else { q }) as i64
}

/// A platform admin's `PATCH /v1/admin/plans/{plan}`, which must succeed; the plan.
async fn patch_plan(srv: &TestServer, admin: &str, plan: &str, body: &Value) -> Value {
    let res = srv
        .patch_as(&format!("/v1/admin/plans/{plan}"), admin, body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

/// Subscribes the organization to `plan`; the subscription's id.
async fn subscribe(srv: &TestServer, o: &Org, plan: &str) -> String {
    let res = srv
        .post_as(
            &format!("{}/subscription", o.base),
            &o.owner,
            &json!({ "plan": plan }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    res.json["id"].as_str().unwrap().to_string()
}

/// Moves the organization's current billing cycle to `start..end`.
async fn set_cycle(srv: &TestServer, o: &Org, start: DateTime<Utc>, end: DateTime<Utc>) {
    sqlx::query(
        "UPDATE subscriptions SET billing_cycle_start = $1, billing_cycle_end = $2 \
         WHERE organization_id = $3",
    )
    .bind(gatehouse::storage::format_time(start))
    .bind(gatehouse::storage::format_time(end))
    .bind(&o.id)
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    srv.state.usage.forget_cycle(Some(&o.id));
}

/// Closes every period ended by `at`: the invoice ids issued.
async fn close(srv: &TestServer, at: DateTime<Utc>) -> Vec<String> {
    close_periods(&srv.state, at, None)
        .await
        .unwrap()
        .issued
        .into_iter()
        .map(|i| i.invoice_id.to_string())
        .collect()
}

async fn invoices(srv: &TestServer, o: &Org) -> Vec<Value> {
    let res = srv.get_as(&format!("{}/invoices", o.base), &o.owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json["invoices"].as_array().unwrap().clone()
}

fn amounts(invoice: &Value) -> Vec<(String, i64)> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn assert_sum_of_lines(invoice: &Value) {
    let sum: i64 = amounts(invoice).iter().map(|(_, a)| a).sum();
    assert_eq!(invoice["amount"].as_i64().unwrap(), sum, "{invoice:#}");
}

async fn audit_actions(srv: &TestServer, o: &Org, resource: &str) -> Vec<String> {
    let res = srv
        .get_as(
            &format!("{}/audit?resource_type={resource}", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

async fn a_closed_period_is_invoiced_its_base_price(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let sub = subscribe(&srv, &o, "midmarket").await;
    let (start, end) = (t("2026-01-15T10:00:00Z"), t("2026-02-15T10:00:00Z"));
    set_cycle(&srv, &o, start, end).await;

    // Not before the period ends.
    assert!(close(&srv, t("2026-02-15T09:59:59Z")).await.is_empty());
    assert!(invoices(&srv, &o).await.is_empty());
    let issued = close(&srv, end).await;
    assert_eq!(issued.len(), 1);

    let list = invoices(&srv, &o).await;
    assert_eq!(list.len(), 1);
    let inv = &list[0];
    assert_eq!(inv["id"], issued[0]);
    assert!(inv["id"].as_str().unwrap().starts_with("in_"));
    assert_eq!(inv["organization_id"], o.id);
    assert_eq!(inv["subscription_id"], sub);
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["amount"], 49900);
    assert_eq!(inv["currency"], "usd");
    assert_eq!(inv["date"], "2026-02-15");
    assert_eq!(inv["due_date"], "2026-03-17");
    assert_eq!(
        inv["period"],
        json!({"start": "2026-01-15T10:00:00Z", "end": "2026-02-15T10:00:00Z"})
    );
    let line = &inv["lines"][0];
    assert_eq!(inv["lines"].as_array().unwrap().len(), 1, "{inv:#}");
    assert!(line["id"].as_str().unwrap().starts_with("il_"));
    assert_eq!(line["kind"], "base");
    assert_eq!(
        (&line["quantity"], &line["unit_amount"], &line["amount"]),
        (&json!(1), &json!(49900), &json!(49900))
    );
    assert_eq!(line["period"], inv["period"]);
    assert!(line["description"].as_str().unwrap().contains("MidMarket"));
    let pdf = inv["pdf_url"].as_str().unwrap();
    assert!(
        pdf.ends_with(&format!(
            "/v1/organizations/{}/invoices/{}/pdf",
            o.id, issued[0]
        )),
        "{pdf}"
    );

    // One invoice by id is the same document; the subscription moved to its next cycle.
    let one = srv
        .get_as(&format!("{}/invoices/{}", o.base, issued[0]), &o.owner)
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(&one.json, inv);
    let s = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await
        .json;
    assert_eq!(s["billing_cycle_start"], "2026-02-15T10:00:00Z");
    assert_eq!(s["billing_cycle_end"], "2026-03-15T10:00:00Z");
    assert!(audit_actions(&srv, &o, "invoice")
        .await
        .contains(&"invoice.created".to_string()));

    // billing:read reads invoices; a member without it does not.
    let reader = o
        .a_key_token(
            &srv,
            gatehouse::environment::Environment::Live,
            &["billing:read"],
        )
        .await;
    assert_eq!(
        srv.get_as(&format!("{}/invoices", o.base), &reader)
            .await
            .status,
        200
    );
    let other = o
        .a_key_token(
            &srv,
            gatehouse::environment::Environment::Live,
            &["usage:read"],
        )
        .await;
    srv.get_as(&format!("{}/invoices", o.base), &other)
        .await
        .assert_error(403, "forbidden");
}

async fn usage_beyond_a_priced_limit_is_billed_not_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    // SMB: 3 API requests a period, then 150 per started block of 2.
    let res = patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"limits": {"api_requests_per_month": 3},
                    "overage_prices": {"api_requests_per_month": {"per": 2, "amount": 150}}}),
    )
    .await;
    assert_eq!(
        res["overage_prices"],
        json!({"api_requests_per_month": {"per": 2, "amount": 150}})
    );
    let plans = srv.get_as("/v1/plans", &admin).await.json;
    let smb = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "smb")
        .unwrap()
        .clone();
    assert_eq!(smb["overage_prices"]["api_requests_per_month"]["per"], 2);

    let o = an_org(&srv).await;
    subscribe(&srv, &o, "smb").await;
    // A cycle holding now; its counters are the ones this period's invoice reads.
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 10 * 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 20 * 86_400, 0).unwrap();
    set_cycle(&srv, &o, start, end).await;

    // Far beyond the limit of 3, and never refused: the price bills it.
    for _ in 0..6 {
        let res = srv.get_as(&o.base, &o.owner).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    let usage = srv.get_as(&format!("{}/usage", o.base), &o.owner).await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        usage.json["period"],
        json!({"start": fmt(start), "end": fmt(end)})
    );
    let used = usage.json["api_requests"]["used"].as_i64().unwrap();
    assert_eq!(usage.json["api_requests"]["limit"], 3);
    // The six reads and the usage read (the subscription and its creation came before the
    // cycle was moved here).
    assert_eq!(used, 7, "{}", usage.text);

    // Without its price the same limit refuses (and a refused request is not counted).
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"overage_prices": {"api_requests_per_month": null}}),
    )
    .await;
    let res = srv.get_as(&o.base, &o.owner).await;
    res.assert_error(429, "quota_exceeded");

    // The invoice prices overage from the catalogue when the period closes.
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"overage_prices": {"api_requests_per_month": {"per": 2, "amount": 150}}}),
    )
    .await;
    assert_eq!(close(&srv, end).await.len(), 1);
    let inv = &invoices(&srv, &o).await[0];
    assert_sum_of_lines(inv);
    let overage = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "overage")
        .unwrap_or_else(|| panic!("no overage line: {inv:#}"));
    // 4 beyond the limit of 3: 2 blocks of 2 at 150.
    assert_eq!(overage["quantity"], 2);
    assert_eq!(overage["unit_amount"], 150);
    assert_eq!(overage["amount"], 300);
    assert_eq!(inv["amount"], 4900 + 300);
    assert!(overage["description"]
        .as_str()
        .unwrap()
        .contains("API requests beyond the 3 included: 4"));
}

async fn plan_changes_are_prorated_to_the_second(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let sub = subscribe(&srv, &o, "smb").await;
    let patch = |plan: &'static str| {
        let (srv, o) = (&srv, &o);
        async move {
            let res = srv
                .patch_as(
                    &format!("{}/subscription", o.base),
                    &o.owner,
                    &json!({ "plan": plan }),
                )
                .await;
            assert_eq!(res.status, 200, "{}", res.text);
        }
    };
    // An upgrade a quarter in, a downgrade three quarters in (at odd seconds).
    patch("enterprise").await;
    patch("midmarket").await;
    // A change that is no change is not logged.
    patch("midmarket").await;
    let (start, end) = (t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z"));
    let (t1, t2) = (t("2026-03-08T18:00:07Z"), t("2026-03-24T06:00:01Z"));
    set_cycle(&srv, &o, start, end).await;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM subscription_changes WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(&sub)
    .fetch_all(srv.state.db.pool())
    .await
    .unwrap();
    assert_eq!(ids.len(), 2);
    for (id, at) in ids.iter().zip([t1, t2]) {
        sqlx::query("UPDATE subscription_changes SET changed_at = $1 WHERE id = $2")
            .bind(gatehouse::storage::format_time(at))
            .bind(id)
            .execute(srv.state.db.pool())
            .await
            .unwrap();
    }

    assert_eq!(close(&srv, end).await.len(), 1);
    let inv = &invoices(&srv, &o).await[0];
    let whole = (end - start).num_seconds();
    let (r1, r2) = ((end - t1).num_seconds(), (end - t2).num_seconds());
    assert_eq!(
        amounts(inv),
        [
            ("base".to_string(), 4900),
            ("proration_credit".to_string(), -prorated(4900, r1, whole)),
            ("proration_charge".to_string(), prorated(199_900, r1, whole)),
            (
                "proration_credit".to_string(),
                -prorated(199_900, r2, whole)
            ),
            ("proration_charge".to_string(), prorated(49_900, r2, whole)),
        ]
    );
    assert_sum_of_lines(inv);
    assert_eq!(inv["plan"], "midmarket");
    let lines = inv["lines"].as_array().unwrap();
    assert_eq!(
        lines[1]["period"],
        json!({"start": "2026-03-08T18:00:07Z", "end": "2026-04-01T00:00:00Z"})
    );
    assert_eq!(lines[1]["quantity"], 1);
    assert_eq!(lines[1]["unit_amount"], lines[1]["amount"]);
    // The next period starts on the plan it ended with, without proration.
    assert_eq!(close(&srv, t("2026-05-01T00:00:00Z")).await.len(), 1);
    let next = &invoices(&srv, &o).await[0];
    assert_eq!(amounts(next), [("base".to_string(), 49_900)]);

    // A downgrade at exactly half of a 30-day cycle: half of each price.
    let b = an_org_called(&srv, "beta").await;
    subscribe(&srv, &b, "enterprise").await;
    let res = srv
        .patch_as(
            &format!("{}/subscription", b.base),
            &b.owner,
            &json!({"plan": "smb"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let (start, end) = (t("2026-04-01T00:00:00Z"), t("2026-05-01T00:00:00Z"));
    set_cycle(&srv, &b, start, end).await;
    sqlx::query(
        "UPDATE subscription_changes SET changed_at = $1 WHERE subscription_id = \
         (SELECT id FROM subscriptions WHERE organization_id = $2)",
    )
    .bind(gatehouse::storage::format_time(t(
        "2026-04-16T00:00:00.999999Z",
    )))
    .bind(&b.id)
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    close(&srv, end).await;
    let inv = &invoices(&srv, &b).await[0];
    assert_eq!(
        amounts(inv),
        [
            ("base".to_string(), 199_900),
            ("proration_credit".to_string(), -99_950),
            ("proration_charge".to_string(), 2_450),
        ]
    );
    assert_eq!(inv["amount"], 199_900 - 99_950 + 2_450);
}

async fn a_canceled_subscription_gets_its_last_invoice_and_no_more(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    subscribe(&srv, &o, "midmarket").await;
    let res = srv
        .delete_as(&format!("{}/subscription", o.base), &o.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let (start, end) = (t("2026-01-01T00:00:00Z"), t("2026-02-01T00:00:00Z"));
    set_cycle(&srv, &o, start, end).await;

    assert_eq!(close(&srv, end).await.len(), 1);
    let list = invoices(&srv, &o).await;
    assert_eq!(list.len(), 1);
    assert_eq!(amounts(&list[0]), [("base".to_string(), 49_900)]);
    let s = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await
        .json;
    assert_eq!(s["status"], "canceled");
    let usage = srv
        .get_as(&format!("{}/usage", o.base), &o.owner)
        .await
        .json;
    assert_eq!(usage["plan"], "smb");
    // Nothing more, however late.
    assert!(close(&srv, t("2027-06-01T00:00:00Z")).await.is_empty());
    assert_eq!(invoices(&srv, &o).await.len(), 1);
}

async fn a_period_is_invoiced_once_however_often_it_is_closed(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    subscribe(&srv, &o, "smb").await;
    // The job was away for three cycles: each period gets its own invoice.
    set_cycle(
        &srv,
        &o,
        t("2026-01-31T00:00:00Z"),
        t("2026-02-28T00:00:00Z"),
    )
    .await;
    let at = t("2026-05-01T00:00:00Z");
    assert_eq!(close(&srv, at).await.len(), 3);
    let periods: Vec<Value> = invoices(&srv, &o)
        .await
        .iter()
        .map(|i| i["period"].clone())
        .collect();
    assert_eq!(
        periods,
        [
            json!({"start": "2026-03-28T00:00:00Z", "end": "2026-04-28T00:00:00Z"}),
            json!({"start": "2026-02-28T00:00:00Z", "end": "2026-03-28T00:00:00Z"}),
            json!({"start": "2026-01-31T00:00:00Z", "end": "2026-02-28T00:00:00Z"}),
        ]
    );
    // Twice in a row: nothing new.
    assert!(close(&srv, at).await.is_empty());
    // The job's own entry point does the same.
    assert_eq!(
        gatehouse::billing::subscriptions::close_due(&srv.state, at)
            .await
            .unwrap(),
        0
    );

    // Two nodes closing the next period at the same moment: one invoice.
    let other = gatehouse::server::build_state(srv.state.config.clone())
        .await
        .unwrap();
    let at = t("2026-06-01T00:00:00Z");
    let (a, b) = tokio::join!(
        close_periods(&srv.state, at, None),
        close_periods(&other, at, None)
    );
    let issued = a.unwrap().issued.len() + b.unwrap().issued.len();
    assert_eq!(issued, 1);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM invoices WHERE organization_id = $1")
        .bind(&o.id)
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 4);
    let created = audit_actions(&srv, &o, "invoice")
        .await
        .iter()
        .filter(|a| *a == "invoice.created")
        .count();
    assert_eq!(created, 4);
}

async fn platform_admins_pay_or_void_open_invoices_only(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    subscribe(&srv, &o, "smb").await;
    set_cycle(
        &srv,
        &o,
        t("2026-01-01T00:00:00Z"),
        t("2026-02-01T00:00:00Z"),
    )
    .await;
    let ids = close(&srv, t("2026-03-01T00:00:00Z")).await;
    assert_eq!(ids.len(), 2);
    let (first, second) = (&ids[0], &ids[1]);
    let server = &srv;
    let act = move |action: &'static str, id: &str, token: &str| {
        let path = format!("/v1/admin/invoices/{id}/{action}");
        let token = token.to_string();
        async move { server.post_as(&path, &token, &json!({})).await }
    };

    // Only a platform admin.
    act("pay", first, &o.owner)
        .await
        .assert_error(403, "forbidden");
    // From `open` only: each settles once, then both actions conflict.
    for (id, action, status, at) in [
        (first, "pay", "paid", "paid_at"),
        (second, "void", "void", "voided_at"),
    ] {
        let res = act(action, id, &admin).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["status"], status);
        assert!(res.json[at].is_string(), "{}", res.text);
        for again in ["pay", "void"] {
            act(again, id, &admin).await.assert_error(409, "conflict");
        }
    }
    act("pay", "in_01aaaaaaaaaaaaaaaaaaaaaaaa", &admin)
        .await
        .assert_error(404, "not_found");

    let statuses: Vec<Value> = invoices(&srv, &o)
        .await
        .iter()
        .map(|i| i["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("void"), json!("paid")]);
    let actions = audit_actions(&srv, &o, "invoice").await;
    for a in ["invoice.created", "invoice.paid", "invoice.voided"] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
}

async fn an_organization_sees_only_its_own_invoices(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let a = an_org(&srv).await;
    let b = an_org_called(&srv, "beta").await;
    subscribe(&srv, &a, "smb").await;
    set_cycle(
        &srv,
        &a,
        t("2026-01-01T00:00:00Z"),
        t("2026-02-01T00:00:00Z"),
    )
    .await;
    let ids = close(&srv, t("2026-02-01T00:00:00Z")).await;
    let id = &ids[0];
    // B's owner asks for A's invoice through B: not found; through A: not a member.
    srv.get_as(&format!("{}/invoices/{id}", b.base), &b.owner)
        .await
        .assert_error(404, "not_found");
    assert!(invoices(&srv, &b).await.is_empty());
    let res = srv
        .get_as(&format!("{}/invoices/{id}", a.base), &b.owner)
        .await;
    assert!(
        res.status == 403 || res.status == 404,
        "{} {}",
        res.status,
        res.text
    );
    // Paging like every list.
    let page = srv
        .get_as(&format!("{}/invoices?limit=1", a.base), &a.owner)
        .await
        .json;
    assert_eq!(page["total"], 1);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["has_more"], false);
}

async fn overage_prices_are_validated_against_the_plan_limits(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let fields = |res: &common::Response| -> Vec<String> {
        res.assert_error(400, "invalid_request")["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect()
    };
    let res = srv
        .patch_as(
            "/v1/admin/plans/smb",
            &admin,
            &json!({"overage_prices": {
                "requests_per_hour": {"per": 1, "amount": 1},
                "gateway_tokens_per_month": {"per": 0, "amount": 2},
                "storage_gb": {"per": 1, "amount": 1},
            }}),
        )
        .await;
    let mut got = fields(&res);
    got.sort();
    assert_eq!(
        got,
        [
            "overage_prices.gateway_tokens_per_month",
            "overage_prices.requests_per_hour",
            "overage_prices.storage_gb",
        ]
    );
    // A limit that is unlimited has nothing to bill beyond.
    let metered = |prices: Value| {
        json!({"id": "metered", "name": "Metered", "amount": 0, "currency": "usd",
               "interval": "month",
               "limits": {"requests_per_hour": null, "api_requests_per_month": null,
                          "gateway_requests_per_month": 100, "gateway_tokens_per_month": 1000,
                          "members": null, "projects": null},
               "overage_prices": prices})
    };
    let res = srv
        .post_as(
            "/v1/admin/plans",
            &admin,
            &metered(json!({"api_requests_per_month": {"per": 1000, "amount": 5}})),
        )
        .await;
    assert_eq!(fields(&res), ["overage_prices.api_requests_per_month"]);
    let res = srv
        .post_as(
            "/v1/admin/plans",
            &admin,
            &metered(json!({"gateway_tokens_per_month": {"per": 1000, "amount": 2}})),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(
        res.json["overage_prices"]["gateway_tokens_per_month"],
        json!({"per": 1000, "amount": 2})
    );
}

async fn the_worked_month_of_docs_billing_md(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    patch_plan(
        &srv,
        &admin,
        "midmarket",
        &json!({"overage_prices": {"gateway_tokens_per_month": {"per": 1000, "amount": 2}}}),
    )
    .await;
    let o = an_org(&srv).await;
    let sub = subscribe(&srv, &o, "smb").await;
    let res = srv
        .patch_as(
            &format!("{}/subscription", o.base),
            &o.owner,
            &json!({"plan": "midmarket"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let (start, end) = (t("2026-01-01T00:00:00Z"), t("2026-02-01T00:00:00Z"));
    set_cycle(&srv, &o, start, end).await;
    sqlx::query("UPDATE subscription_changes SET changed_at = $1 WHERE subscription_id = $2")
        .bind(gatehouse::storage::format_time(t("2026-01-21T00:00:00Z")))
        .bind(&sub)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    // January's gateway tokens, in the cycle's counter.
    srv.state.usage.record_in(
        gatehouse::limits::usage::Counter::new(&o.id, "gateway_tokens", "2026-01-01T00:00:00Z"),
        100_250_500,
    );

    assert_eq!(close(&srv, end).await.len(), 1);
    let inv = &invoices(&srv, &o).await[0];
    let lines: Vec<(String, String, i64, i64, i64)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["description"].as_str().unwrap().to_string(),
                l["quantity"].as_i64().unwrap(),
                l["unit_amount"].as_i64().unwrap(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    let line = |k: &str, d: &str, q: i64, u: i64, a: i64| (k.to_string(), d.to_string(), q, u, a);
    assert_eq!(
        lines,
        [
            line(
                "base",
                "SMB plan, 2026-01-01T00:00:00Z to 2026-02-01T00:00:00Z",
                1,
                4900,
                4900
            ),
            line(
                "proration_credit",
                "Unused time on SMB from 2026-01-21T00:00:00Z (950400 of 2678400 s)",
                1,
                -1739,
                -1739
            ),
            line(
                "proration_charge",
                "Remaining time on MidMarket from 2026-01-21T00:00:00Z (950400 of 2678400 s)",
                1,
                17706,
                17706
            ),
            line(
                "overage",
                "Gateway tokens beyond the 100,000,000 included: 250,500 (251 × 1,000)",
                251,
                2,
                502
            ),
        ]
    );
    assert_eq!(inv["amount"], 21_369);
    assert_eq!(inv["date"], "2026-02-01");
    assert_eq!(inv["due_date"], "2026-03-03");
    assert_eq!(inv["plan"], "midmarket");
    let s = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await
        .json;
    assert_eq!(s["billing_cycle_end"], "2026-03-01T00:00:00Z");
    assert_eq!(s["plan"], "midmarket");
}

async fn close_period_through_the_binary_issues_each_invoice_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let a = an_org(&srv).await;
    let b = an_org_called(&srv, "beta").await;
    for o in [&a, &b] {
        subscribe(&srv, o, "smb").await;
        set_cycle(
            &srv,
            o,
            t("2026-01-01T00:00:00Z"),
            t("2026-02-01T00:00:00Z"),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let master_key = srv
        .state
        .config
        .master_key
        .as_ref()
        .unwrap()
        .expose()
        .to_string();
    let run = |args: &[&str]| {
        let out = common::process::gatehouse(dir.path())
            .env("GATEHOUSE_DATABASE_URL", &srv.db.url)
            .env("GATEHOUSE_MASTER_KEY", &master_key)
            .args(["billing", "close-period"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // One organization (by slug), at a time.
    let (status, stdout, stderr) = run(&["--org", "acme", "--at", "2026-02-01T00:00:00Z"]);
    assert!(status.success(), "{stderr}");
    let issued: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("issued in_"))
        .collect();
    assert_eq!(issued.len(), 1, "{stdout}");
    assert!(issued[0].contains(&a.id), "{stdout}");
    assert!(
        issued[0].ends_with("(2026-01-01T00:00:00Z to 2026-02-01T00:00:00Z): 4900 usd"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 invoice(s) issued for periods ended by 2026-02-01T00:00:00Z"),
        "{stdout}"
    );
    let list = invoices(&srv, &a).await;
    assert_eq!(list.len(), 1);
    assert!(issued[0].contains(list[0]["id"].as_str().unwrap()));
    assert!(invoices(&srv, &b).await.is_empty());

    // Again: nothing new. Then every organization: only beta's period is left.
    let (status, stdout, _) = run(&["--org", "acme", "--at", "2026-02-01T00:00:00Z"]);
    assert!(status.success());
    assert!(stdout.contains("0 invoice(s) issued"), "{stdout}");
    let (status, stdout, _) = run(&["--at", "2026-02-01T00:00:00Z"]);
    assert!(status.success());
    assert!(stdout.contains("1 invoice(s) issued"), "{stdout}");
    assert!(stdout.contains(&b.id), "{stdout}");
    assert_eq!(invoices(&srv, &b).await.len(), 1);
    assert_eq!(invoices(&srv, &a).await.len(), 1);

    // Bad input is refused before anything runs.
    let (status, _, stderr) = run(&["--at", "yesterday"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    let (status, _, stderr) = run(&["--org", "nobody"]);
    assert!(!status.success());
    assert!(stderr.contains("nobody"), "{stderr}");
}

async fn projects_beyond_a_priced_limit_are_allowed_and_billed(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"limits": {"projects": 1},
                    "overage_prices": {"projects": {"per": 1, "amount": 500}}}),
    )
    .await;
    let o = an_org(&srv).await;
    subscribe(&srv, &o, "smb").await;
    for name in ["Web", "Mobile", "Batch"] {
        let res = srv
            .post_as(
                &format!("{}/projects", o.base),
                &o.owner,
                &json!({ "name": name }),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
    set_cycle(
        &srv,
        &o,
        t("2026-01-01T00:00:00Z"),
        t("2026-02-01T00:00:00Z"),
    )
    .await;
    close(&srv, t("2026-02-01T00:00:00Z")).await;
    let inv = &invoices(&srv, &o).await[0];
    let overage = &inv["lines"][1];
    assert_eq!(overage["kind"], "overage", "{inv:#}");
    assert_eq!(
        overage["description"],
        "Projects beyond the 1 included: 2 (2 × 1)"
    );
    assert_eq!(
        (
            &overage["quantity"],
            &overage["unit_amount"],
            &overage["amount"]
        ),
        (&json!(2), &json!(500), &json!(1000))
    );
    assert_eq!(inv["amount"], 4900 + 1000);

    // Without the price, the limit refuses again.
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"overage_prices": {"projects": null}}),
    )
    .await;
    srv.post_as(
        &format!("{}/projects", o.base),
        &o.owner,
        &json!({"name": "More"}),
    )
    .await
    .assert_error(429, "quota_exceeded");
}

async fn usage_is_counted_in_the_billing_cycle_it_happened_in(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    // From its creation: the implicit subscription's cycle, as times.
    let usage = srv
        .get_as(&format!("{}/usage", o.base), &o.owner)
        .await
        .json;
    let sub = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await
        .json;
    assert_eq!(usage["period"]["start"], sub["billing_cycle_start"]);

    subscribe(&srv, &o, "smb").await;
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 29 * 86_400, 0).unwrap();
    set_cycle(&srv, &o, start, end).await;
    // Tokens recorded while the organization's cycle is not in memory keep their time and land
    // in that cycle's counter at the flush.
    srv.state.usage.forget_cycle(Some(&o.id));
    srv.state.usage.record(&o.id, "gateway_tokens", 1234);
    srv.state.usage.flush().await.unwrap();
    let key = gatehouse::limits::usage::cycle_key(start);
    let stored: i64 = sqlx::query_scalar(
        "SELECT value FROM usage_counters WHERE organization_id = $1 AND metric = $2 AND period = $3",
    )
    .bind(&o.id)
    .bind("gateway_tokens")
    .bind(&key)
    .fetch_one(srv.state.db.pool())
    .await
    .unwrap();
    assert_eq!(stored, 1234);
    let usage = srv
        .get_as(&format!("{}/usage", o.base), &o.owner)
        .await
        .json;
    assert_eq!(usage["gateway_tokens"]["used"], 1234);
    assert_eq!(
        usage["period"]["start"],
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    // With the cycle in memory, a count is in `…/usage` at once (before any flush).
    srv.state.usage.record(&o.id, "gateway_tokens", 66);
    let usage = srv
        .get_as(&format!("{}/usage", o.base), &o.owner)
        .await
        .json;
    assert_eq!(usage["gateway_tokens"]["used"], 1300);

    // The cycle's invoice reads the same counter: beyond a priced limit of 1,000 tokens, 300.
    let admin = srv.admin_token().await;
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"limits": {"gateway_tokens_per_month": 1000},
                    "overage_prices": {"gateway_tokens_per_month": {"per": 100, "amount": 3}}}),
    )
    .await;
    close(&srv, end).await;
    let inv = &invoices(&srv, &o).await[0];
    assert_eq!(inv["lines"][1]["quantity"], 3, "{inv:#}");
    assert_eq!(inv["lines"][1]["amount"], 9);
}

async fn the_cycle_job_issues_the_invoice_of_a_period_that_ended(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    subscribe(&srv, &o, "smb").await;
    set_cycle(
        &srv,
        &o,
        t("2026-01-01T00:00:00Z"),
        t("2026-02-01T00:00:00Z"),
    )
    .await;
    // The job as `gatehouse serve` runs it (its first run is at once, then every minute).
    gatehouse::billing::subscriptions::spawn_cycle_job(srv.state.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let list = loop {
        let list = invoices(&srv, &o).await;
        if !list.is_empty() || std::time::Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Every period up to now: January's first.
    let first = list
        .last()
        .unwrap_or_else(|| panic!("no invoice issued by the job"));
    assert_eq!(first["period"]["start"], "2026-01-01T00:00:00Z");
    assert_sum_of_lines(first);
}

async fn a_close_killed_midway_leaves_whole_periods_and_the_rerun_finishes_them(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // 20 organizations a year behind: 240 periods to close, one transaction each.
    let mut orgs = Vec::new();
    for i in 0..20 {
        let o = an_org_called(&srv, &format!("org-{i}")).await;
        subscribe(&srv, &o, "smb").await;
        set_cycle(
            &srv,
            &o,
            t("2026-01-01T00:00:00Z"),
            t("2026-02-01T00:00:00Z"),
        )
        .await;
        orgs.push(o);
    }
    let dir = tempfile::tempdir().unwrap();
    let master_key = srv
        .state
        .config
        .master_key
        .as_ref()
        .unwrap()
        .expose()
        .to_string();
    let command = || {
        let mut cmd = common::process::gatehouse(dir.path());
        cmd.env("GATEHOUSE_DATABASE_URL", &srv.db.url)
            .env("GATEHOUSE_MASTER_KEY", &master_key)
            .args(["billing", "close-period", "--at", "2027-01-01T00:00:00Z"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let count = |sql: &'static str| {
        let pool = srv.state.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // SIGKILL as soon as the first invoices are committed.
    let mut child = command().spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count("SELECT COUNT(*) FROM invoices").await == 0 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Whatever was committed is whole: every invoice has its lines and their sum, and every
    // subscription stands right after its last invoiced period.
    let check = || async {
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM invoices i WHERE amount <> \
                 (SELECT COALESCE(SUM(l.amount), -1) FROM invoice_lines l WHERE l.invoice_id = i.id) \
                 OR status <> 'open'"
            )
            .await,
            0
        );
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM subscriptions s WHERE billing_cycle_start <> \
                 COALESCE((SELECT MAX(period_end) FROM invoices i WHERE i.subscription_id = s.id), \
                 '2026-01-01T00:00:00.000000Z')"
            )
            .await,
            0
        );
    };
    check().await;
    let after_kill = count("SELECT COUNT(*) FROM invoices").await;
    assert!(after_kill >= 1);
    eprintln!("invoices committed before the kill: {after_kill} of 240");

    // The rerun closes what is left, once.
    let status = command().status().unwrap();
    assert!(status.success());
    check().await;
    assert_eq!(count("SELECT COUNT(*) FROM invoices").await, 240);
    assert_eq!(
        count("SELECT COUNT(DISTINCT subscription_id || period_start) FROM invoices").await,
        240
    );
    for o in &orgs {
        let s = srv
            .get_as(&format!("{}/subscription", o.base), &o.owner)
            .await
            .json;
        assert_eq!(s["billing_cycle_start"], "2027-01-01T00:00:00Z");
    }
}

/// An organization on SMB (3 API requests included, then 150 per started block of 2) after a
/// downgrade from MidMarket a third into a cycle that holds now, 6 requests made: its closed
/// period's invoice has a base line, a proration credit and charge, and an overage line.
async fn an_invoice_of_every_line_kind(srv: &TestServer, o: &Org) -> Value {
    let admin = srv.admin_token().await;
    patch_plan(
        srv,
        &admin,
        "smb",
        &json!({"limits": {"api_requests_per_month": 3},
                "overage_prices": {"api_requests_per_month": {"per": 2, "amount": 150}}}),
    )
    .await;
    subscribe(srv, o, "midmarket").await;
    let res = srv
        .patch_as(
            &format!("{}/subscription", o.base),
            &o.owner,
            &json!({"plan": "smb", "billing_email": "accounts@acme.example"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 10 * 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 20 * 86_400, 0).unwrap();
    set_cycle(srv, o, start, end).await;
    sqlx::query(
        "UPDATE subscription_changes SET changed_at = $1 WHERE subscription_id = \
         (SELECT id FROM subscriptions WHERE organization_id = $2)",
    )
    .bind(gatehouse::storage::format_time(
        start + chrono::Duration::days(10),
    ))
    .bind(&o.id)
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    for _ in 0..6 {
        let res = srv.get_as(&o.base, &o.owner).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert_eq!(close(srv, end).await.len(), 1);
    let inv = invoices(srv, o).await[0].clone();
    let kinds: Vec<String> = amounts(&inv).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["base", "proration_credit", "proration_charge", "overage"],
        "{inv:#}"
    );
    assert_sum_of_lines(&inv);
    inv
}

/// The raw answer to a GET with a bearer token.
async fn fetch_raw(srv: &TestServer, path: &str, token: &str) -> reqwest::Response {
    srv.client
        .get(srv.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `pdftotext -layout` of a PDF (None, reported, when poppler-utils is missing outside CI).
fn pdf_text(pdf: &[u8], test: &str) -> Option<String> {
    let found = std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_ok();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        found || !in_ci,
        "pdftotext is not installed (poppler-utils)"
    );
    if !found {
        eprintln!("SKIPPED {test}: pdftotext not installed (apt-get install poppler-utils)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invoice.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-layout", path.to_str().unwrap(), "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

async fn the_pdf_shows_every_amount_of_the_invoice(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        common::ServerOptions {
            configure: Box::new(|c| {
                c.billing_seller_name = "Gatehouse Billing Ltd".into();
                c.billing_seller_address = vec!["1 Harbour Street".into(), "Leith".into()];
                c.billing_seller_email = "invoices@gatehouse.example".into();
            }),
            ..Default::default()
        },
    )
    .await;
    let o = an_org(&srv).await;
    let inv = an_invoice_of_every_line_kind(&srv, &o).await;
    let id = inv["id"].as_str().unwrap();
    let path = format!("{}/invoices/{id}/pdf", o.base);
    assert!(inv["pdf_url"].as_str().unwrap().ends_with(&path));

    let res = fetch_raw(&srv, &path, &o.owner).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    assert_eq!(
        res.headers()["content-disposition"],
        format!("inline; filename=\"{id}.pdf\"").as_str()
    );
    let pdf = res.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-1."));

    // Another organization's invoice is not found; a viewer (no billing:read) is refused.
    let other = an_org_called(&srv, "other").await;
    let res = srv
        .get_as(&format!("{}/invoices/{id}/pdf", other.base), &other.owner)
        .await;
    res.assert_error(404, "not_found");
    let (viewer, _) = o
        .a_member(
            &srv,
            "viewer@example.com",
            gatehouse::orgs::roles::Role::Viewer,
        )
        .await;
    let res = srv.get_as(&path, &viewer).await;
    assert_eq!(res.status, 403, "{}", res.text);

    let Some(text) = pdf_text(&pdf, "the_pdf_shows_every_amount_of_the_invoice") else {
        return;
    };
    let money = |a: i64| gatehouse::billing::pdf::format_money(a, "usd");
    for needle in [
        "Gatehouse Billing Ltd",
        "1 Harbour Street",
        "invoices@gatehouse.example",
        id,
        "accounts@acme.example",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let org_name = srv.get_as(&o.base, &o.owner).await.json["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains(&org_name), "{org_name:?} missing:\n{text}");
    // Each line's amount and unit price on one row of the table, in the JSON's order.
    let mut from = 0;
    for line in inv["lines"].as_array().unwrap() {
        let amount = money(line["amount"].as_i64().unwrap());
        let unit = money(line["unit_amount"].as_i64().unwrap());
        let (at, row) = text
            .lines()
            .enumerate()
            .skip(from)
            .find(|(_, r)| r.trim_end().ends_with(&format!(" {amount}")))
            .unwrap_or_else(|| panic!("no row ends with {amount} after row {from}:\n{text}"));
        assert!(
            row.contains(&unit),
            "row {row:?} lacks the unit price {unit}"
        );
        from = at + 1;
    }
    let total = money(inv["amount"].as_i64().unwrap());
    for label in ["Subtotal", "Total"] {
        let row = text
            .lines()
            .find(|r| r.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"));
        assert!(row.trim_end().ends_with(&total), "{row:?} is not {total}");
    }
}

const STRIPE_KEY: &str = "sk_test_51GatehouseInvoiceKey";
const STRIPE_WHSEC: &str = "whsec_gatehouse_invoice_signing";

async fn with_stripe(backend: Backend, mock: &stripe_mock::StripeMock) -> TestServer {
    let base_url = mock.base_url();
    TestServer::start_with(
        backend,
        common::ServerOptions {
            configure: Box::new(move |c| {
                c.stripe_secret_key = Some(STRIPE_KEY.into());
                c.stripe_webhook_secret = Some(STRIPE_WHSEC.into());
                c.stripe_base_url = base_url;
                c.allow_private_stripe_target = true;
                c.allow_private_webhook_targets = true;
            }),
            ..Default::default()
        },
    )
    .await
}

/// Subscribes a webhook endpoint of the organization to every event (nothing delivers to it: the
/// tests read the outbox).
async fn a_webhook_endpoint(srv: &TestServer, o: &Org) {
    let res = srv
        .post_as(
            &format!("{}/webhooks", o.base),
            &o.owner,
            &json!({"url": "http://127.0.0.1:9/hooks", "events": ["*"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
}

/// The organization's webhook events of a type in the outbox.
async fn webhook_events(srv: &TestServer, event_type: &str) -> Vec<Value> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM webhook_events WHERE event_type = $1 ORDER BY created_at",
    )
    .bind(event_type)
    .fetch_all(srv.state.db.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

async fn invoice(srv: &TestServer, o: &Org, id: &str) -> Value {
    let res = srv
        .get_as(&format!("{}/invoices/{id}", o.base), &o.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

async fn stripe_collects_an_issued_invoice_and_its_webhook_marks_it_paid(backend: Backend) {
    let mock = stripe_mock::StripeMock::start(STRIPE_KEY).await;
    let srv = with_stripe(backend, &mock).await;
    let o = an_org(&srv).await;
    a_webhook_endpoint(&srv, &o).await;
    subscribe(&srv, &o, "midmarket").await;
    let (start, end) = (t("2026-01-15T10:00:00Z"), t("2026-02-15T10:00:00Z"));
    set_cycle(&srv, &o, start, end).await;

    // The first try fails at Stripe: the invoice is issued all the same, and the next run
    // creates its payment.
    mock.fail_next(
        500,
        r#"{"error": {"type": "api_error", "message": "try again"}}"#,
    );
    let issued = close(&srv, end).await;
    assert_eq!(issued.len(), 1);
    let id = issued[0].clone();
    assert_eq!(invoice(&srv, &o, &id).await["status"], "open");
    assert_eq!(mock.created(), (0, 0));
    // Not again within the minute after a failure; once it has passed, it is.
    assert!(close(&srv, end).await.is_empty());
    assert_eq!(mock.created(), (0, 0));
    sqlx::query("UPDATE invoice_payments SET updated_at = $1 WHERE invoice_id = $2")
        .bind(gatehouse::storage::format_time(
            Utc::now() - chrono::Duration::seconds(61),
        ))
        .bind(&id)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    assert!(close(&srv, end).await.is_empty());
    assert_eq!(mock.created(), (1, 1));
    // A later run creates nothing more.
    close(&srv, end).await;
    assert_eq!(mock.created(), (1, 1));
    let intent = mock
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/payment_intents")
        .unwrap();
    assert_eq!(intent.field("amount"), Some("49900"));
    assert_eq!(intent.field("currency"), Some("usd"));
    assert_eq!(intent.field("metadata[invoice_id]"), Some(id.as_str()));
    assert_eq!(
        intent.field("metadata[organization_id]"),
        Some(o.id.as_str())
    );
    assert_eq!(intent.idempotency_key.as_deref(), Some(id.as_str()));
    let customer = intent.field("customer").unwrap().to_string();
    assert!(customer.starts_with("cus_"), "{customer}");

    // Stripe delivers the payment's success, signed: the invoice is paid.
    let url = srv.url("/v1/billing/stripe/webhook");
    let body = stripe_mock::payment_intent_event(
        "evt_paid_1",
        "payment_intent.succeeded",
        json!({"id": "pi_1", "object": "payment_intent", "amount": 49900, "currency": "usd",
               "status": "succeeded", "metadata": {"invoice_id": id, "organization_id": o.id}}),
    );
    let now = Utc::now().timestamp();
    // A bad signature first: refused, nothing changes.
    let res = stripe_mock::deliver(&url, "whsec_someone_else", now, body.clone()).await;
    assert_eq!(res.status(), 400);
    assert_eq!(invoice(&srv, &o, &id).await["status"], "open");

    let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, body.clone()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let paid = invoice(&srv, &o, &id).await;
    assert_eq!(paid["status"], "paid");
    assert!(paid["paid_at"].is_string());
    let events = webhook_events(&srv, "invoice.paid").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["id"], id);
    assert_eq!(events[0]["data"]["amount"], 49900);
    let audit = srv
        .get_as(&format!("{}/audit?action=invoice.paid", o.base), &o.owner)
        .await;
    assert_eq!(
        audit.json["events"][0]["actor_type"], "system",
        "{}",
        audit.text
    );

    // A replay, and another event about the paid invoice, change nothing.
    let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, body).await;
    assert_eq!(res.status(), 200);
    let failed = stripe_mock::payment_intent_event(
        "evt_failed_late",
        "payment_intent.payment_failed",
        json!({"id": "pi_1", "object": "payment_intent", "metadata": {"invoice_id": id},
               "last_payment_error": {"message": "Your card was declined."}}),
    );
    let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, failed).await;
    assert_eq!(res.status(), 200);
    assert_eq!(invoice(&srv, &o, &id).await, paid);
    assert_eq!(webhook_events(&srv, "invoice.paid").await.len(), 1);
    assert!(webhook_events(&srv, "invoice.payment_failed")
        .await
        .is_empty());
}

async fn a_failed_stripe_payment_is_recorded_and_leaves_the_invoice_open(backend: Backend) {
    let mock = stripe_mock::StripeMock::start(STRIPE_KEY).await;
    let srv = with_stripe(backend, &mock).await;
    let o = an_org(&srv).await;
    a_webhook_endpoint(&srv, &o).await;
    subscribe(&srv, &o, "smb").await;
    let (start, end) = (t("2026-01-15T10:00:00Z"), t("2026-02-15T10:00:00Z"));
    set_cycle(&srv, &o, start, end).await;
    let id = close(&srv, end).await.remove(0);
    assert_eq!(mock.created(), (1, 1));

    let url = srv.url("/v1/billing/stripe/webhook");
    let failed = stripe_mock::payment_intent_event(
        "evt_failed_1",
        "payment_intent.payment_failed",
        json!({"id": "pi_1", "object": "payment_intent", "metadata": {"invoice_id": id},
               "last_payment_error": {"message": "Your card was declined."}}),
    );
    let now = Utc::now().timestamp();
    for _ in 0..2 {
        let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, failed.clone()).await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(invoice(&srv, &o, &id).await["status"], "open");
    let events = webhook_events(&srv, "invoice.payment_failed").await;
    assert_eq!(events.len(), 1, "a replay is applied once");
    assert_eq!(events[0]["data"]["reason"], "Your card was declined.");
    assert_eq!(events[0]["data"]["status"], "open");
    // The payment is not made again by the next run: the customer retries the same one.
    close(&srv, end).await;
    assert_eq!(mock.created(), (1, 1));
    // A success for another amount than the invoice's does not settle it.
    let short = stripe_mock::payment_intent_event(
        "evt_short",
        "payment_intent.succeeded",
        json!({"id": "pi_1", "object": "payment_intent", "amount": 100,
               "amount_received": 100, "currency": "usd", "metadata": {"invoice_id": id}}),
    );
    let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, short).await;
    assert_eq!(res.status(), 200);
    assert_eq!(invoice(&srv, &o, &id).await["status"], "open");
    assert!(webhook_events(&srv, "invoice.paid").await.is_empty());
    // An event about an invoice that is not here is acknowledged and ignored.
    let stranger = stripe_mock::payment_intent_event(
        "evt_other",
        "payment_intent.succeeded",
        json!({"id": "pi_2", "object": "payment_intent",
               "metadata": {"invoice_id": "in_01JH6Q2W8Z4XK3M5N7P9R0ST"}}),
    );
    let res = stripe_mock::deliver(&url, STRIPE_WHSEC, now, stranger).await;
    assert_eq!(res.status(), 200);
}

/// The organization's subscription document.
async fn subscription(srv: &TestServer, o: &Org) -> Value {
    let res = srv
        .get_as(&format!("{}/subscription", o.base), &o.owner)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The organization's API requests counted so far in its current period (the read included).
async fn api_requests_used(srv: &TestServer, o: &Org) -> i64 {
    let res = srv.get_as(&format!("{}/usage", o.base), &o.owner).await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json["api_requests"]["used"].as_i64().unwrap()
}

async fn activating_a_plan_invoices_the_replaced_default_plan_cycle(backend: Backend) {
    let srv = TestServer::start_with(
        backend,
        common::ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            ..Default::default()
        },
    )
    .await;
    let admin = srv.admin_token().await;
    // SMB, the default plan (4,900 a month): 3 API requests a period, then 150 per started
    // block of 2. MidMarket prices them too, beyond 15: the old cycle's usage alone exceeds it,
    // so the new subscription's first invoice shows whether that usage leaked into it.
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"limits": {"api_requests_per_month": 3},
                "overage_prices": {"api_requests_per_month": {"per": 2, "amount": 150}}}),
    )
    .await;
    patch_plan(
        &srv,
        &admin,
        "midmarket",
        &json!({"limits": {"api_requests_per_month": 15},
                "overage_prices": {"api_requests_per_month": {"per": 1, "amount": 1000}}}),
    )
    .await;
    let o = an_org(&srv).await;
    a_webhook_endpoint(&srv, &o).await;
    let implicit = subscription(&srv, &o).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The implicit subscription's cycle began 10 days ago (a 30-day cycle).
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 10 * 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 20 * 86_400, 0).unwrap();
    set_cycle(&srv, &o, start, end).await;
    for _ in 0..16 {
        let res = srv.get_as(&o.base, &o.owner).await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    // The activation itself is the cycle's last request.
    let used = api_requests_used(&srv, &o).await + 1;
    assert!(used > 15, "{used}");

    let sub = subscribe(&srv, &o, "midmarket").await;
    assert_ne!(sub, implicit, "a new subscription");
    let s = subscription(&srv, &o).await;
    let activated = t(s["billing_cycle_start"].as_str().unwrap());
    assert!(activated > start && activated < end);

    // One invoice: the replaced cycle, closed at the activation.
    let list = invoices(&srv, &o).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    let inv = &list[0];
    assert_eq!(inv["subscription_id"], implicit);
    assert_eq!(inv["plan"], "smb");
    assert_eq!(inv["status"], "open");
    assert_eq!(
        inv["period"],
        json!({"start": secs(start), "end": secs(activated)})
    );
    assert_eq!(inv["date"], activated.date_naive().to_string());
    let whole = (end - start).num_seconds();
    let part = (activated - start).num_seconds();
    let beyond = used - 3;
    let blocks = (beyond + 1) / 2;
    assert_eq!(
        amounts(inv),
        [
            ("base".to_string(), prorated(4900, part, whole)),
            ("overage".to_string(), blocks * 150),
        ]
    );
    assert_sum_of_lines(inv);
    let base = &inv["lines"][0];
    assert_eq!(base["unit_amount"], base["amount"]);
    assert_eq!(base["period"], inv["period"]);
    assert!(
        base["description"]
            .as_str()
            .unwrap()
            .contains(&format!("({part} of {whole} s)")),
        "{base}"
    );
    assert!(
        inv["lines"][1]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("API requests beyond the 3 included: {beyond}")),
        "{inv:#}"
    );
    // Issued with the activation: its events, the member's doing.
    let created = webhook_events(&srv, "invoice.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["id"], inv["id"]);
    assert_eq!(created[0]["data"]["amount"], inv["amount"]);
    let audit = srv
        .get_as(
            &format!("{}/audit?action=invoice.created", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(
        audit.json["events"][0]["actor_type"], "user",
        "{}",
        audit.text
    );

    // Exactly once: activating again is refused (PATCH changes plans), a retry with the same
    // Idempotency-Key replays the answer, closing the old cycle's end issues nothing.
    srv.post_as(
        &format!("{}/subscription", o.base),
        &o.owner,
        &json!({"plan": "enterprise"}),
    )
    .await
    .assert_error(409, "conflict");
    assert!(close(&srv, end).await.is_empty());
    assert_eq!(invoices(&srv, &o).await.len(), 1);

    // The new cycle counts from zero: its first invoice is MidMarket's base price alone (the
    // few requests since are within its 15; the old cycle's would not be).
    let new_used = api_requests_used(&srv, &o).await;
    assert!(new_used < 15, "{new_used}");
    let next_end = t(s["billing_cycle_end"].as_str().unwrap());
    let issued = close(&srv, next_end).await;
    assert_eq!(issued.len(), 1);
    let first = invoice(&srv, &o, &issued[0]).await;
    assert_eq!(first["subscription_id"], sub);
    assert_eq!(
        first["period"],
        json!({"start": secs(activated), "end": secs(next_end)})
    );
    assert_eq!(amounts(&first), [("base".to_string(), 49_900)]);
    assert_eq!(invoices(&srv, &o).await.len(), 2);
    assert_eq!(webhook_events(&srv, "invoice.created").await.len(), 2);
}

async fn a_replaced_free_default_plan_is_invoiced_only_for_its_overage(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    // A free default plan, with API requests beyond 3 priced.
    patch_plan(
        &srv,
        &admin,
        "smb",
        &json!({"amount": 0, "limits": {"api_requests_per_month": 3},
                "overage_prices": {"api_requests_per_month": {"per": 1, "amount": 25}}}),
    )
    .await;
    let quiet = an_org_called(&srv, "quiet").await;
    let busy = an_org_called(&srv, "busy").await;
    assert_eq!(subscription(&srv, &quiet).await["amount"], 0);
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 5 * 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 25 * 86_400, 0).unwrap();
    for o in [&quiet, &busy] {
        set_cycle(&srv, o, start, end).await;
    }
    // Within the free plan: nothing to bill, no invoice (not even one of 0).
    subscribe(&srv, &quiet, "midmarket").await;
    assert!(invoices(&srv, &quiet).await.is_empty());
    // Beyond it: an invoice of the overage, with the base line at 0.
    for _ in 0..4 {
        srv.get_as(&busy.base, &busy.owner).await;
    }
    let used = api_requests_used(&srv, &busy).await + 1;
    subscribe(&srv, &busy, "midmarket").await;
    let list = invoices(&srv, &busy).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        amounts(&list[0]),
        [
            ("base".to_string(), 0),
            ("overage".to_string(), (used - 3) * 25)
        ]
    );
    assert_sum_of_lines(&list[0]);
    // Closing the replaced cycles' ends issues nothing for them.
    assert!(close(&srv, end).await.is_empty());
    assert!(invoices(&srv, &quiet).await.is_empty());
    assert_eq!(invoices(&srv, &busy).await.len(), 1);
}

async fn two_activations_at_once_invoice_the_replaced_cycle_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let implicit = subscription(&srv, &o).await["id"].clone();
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 15 * 86_400, 0).unwrap();
    let end = Utc.timestamp_opt(now + 15 * 86_400, 0).unwrap();
    set_cycle(&srv, &o, start, end).await;
    let path = format!("{}/subscription", o.base);
    let (mid, ent) = (json!({"plan": "midmarket"}), json!({"plan": "enterprise"}));
    let (a, b) = tokio::join!(
        srv.post_as(&path, &o.owner, &mid),
        srv.post_as(&path, &o.owner, &ent)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} / {}", a.text, b.text);
    let list = invoices(&srv, &o).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["subscription_id"], implicit);
    // About half of SMB's 4,900 (the cycle's midpoint, to the second).
    let base = list[0]["amount"].as_i64().unwrap();
    assert!((2400..=2500).contains(&base), "{base}");
    let winner = if a.status == 201 { &a } else { &b };
    assert_eq!(subscription(&srv, &o).await["id"], winner.json["id"]);
}

async fn a_payment_that_keeps_failing_is_given_up_after_the_configured_attempts(backend: Backend) {
    let mock = stripe_mock::StripeMock::start(STRIPE_KEY).await;
    let base_url = mock.base_url();
    let srv = TestServer::start_with(
        backend,
        common::ServerOptions {
            configure: Box::new(move |c| {
                c.stripe_secret_key = Some(STRIPE_KEY.into());
                c.stripe_webhook_secret = Some(STRIPE_WHSEC.into());
                c.stripe_base_url = base_url;
                c.allow_private_stripe_target = true;
                c.allow_private_webhook_targets = true;
                c.billing_payment_max_attempts = 4;
            }),
            ..Default::default()
        },
    )
    .await;
    let admin = srv.admin_token().await;
    let o = an_org(&srv).await;
    a_webhook_endpoint(&srv, &o).await;
    subscribe(&srv, &o, "midmarket").await;
    let (start, end) = (t("2026-01-15T10:00:00Z"), t("2026-02-15T10:00:00Z"));
    set_cycle(&srv, &o, start, end).await;

    // Stripe fails every request. The close run makes the first attempt.
    mock.fail_every(
        500,
        r#"{"error": {"type": "api_error", "message": "Stripe is having a bad day"}}"#,
    );
    let id = close(&srv, end).await.remove(0);
    assert_eq!(mock.requests().len(), 1);
    let t0 = Utc::now();
    let hours = |h: i64| t0 + chrono::Duration::hours(h);
    // Not again within the wait after a failure.
    assert_eq!(
        collect_open(&srv.state, None, t0 + chrono::Duration::seconds(30)).await,
        0
    );
    assert_eq!(mock.requests().len(), 1);
    // Attempts 2, 3 and 4, each after the longest wait (6 h).
    for (n, at) in [(2, 7), (3, 14), (4, 21)] {
        assert_eq!(collect_open(&srv.state, None, hours(at)).await, 0);
        assert_eq!(mock.requests().len(), n, "attempt {n}");
        assert!(webhook_events(&srv, "invoice.payment_failed").await.len() <= 1);
    }
    // The 4th failure gives it up: recorded as final, one event, the invoice still open.
    let payment = gatehouse::billing::invoices::payment_store::payment_of(
        &srv.state.db,
        &gatehouse::ids::InvoiceId::parse(&id).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(payment.0, None);
    assert_eq!(payment.1, "abandoned");
    assert!(payment.2.unwrap().contains("Stripe is having a bad day"));
    let events = webhook_events(&srv, "invoice.payment_failed").await;
    assert_eq!(events.len(), 1);
    let data = &events[0]["data"];
    assert_eq!(data["id"], id);
    assert_eq!(data["final"], true);
    assert_eq!(data["attempts"], 4);
    assert_eq!(data["status"], "open");
    assert_eq!(data["amount"], 49_900);
    assert_eq!(data["provider"], "stripe");
    assert!(data["reason"]
        .as_str()
        .unwrap()
        .contains("Stripe is having a bad day"));
    assert_eq!(invoice(&srv, &o, &id).await["status"], "open");
    let audit = srv
        .get_as(
            &format!("{}/audit?action=invoice.payment_failed", o.base),
            &o.owner,
        )
        .await;
    assert_eq!(
        audit.json["events"][0]["actor_type"], "system",
        "{}",
        audit.text
    );

    // One email to the billing email.
    let mail = srv
        .mail(&admin, "owner@example.com", "could not collect")
        .await;
    assert!(mail.contains(&id) && mail.contains("4 times"), "{mail}");

    // Never tried again, however late, even once Stripe answers again.
    mock.stop_failing();
    assert_eq!(collect_open(&srv.state, None, hours(24 * 30)).await, 0);
    close(&srv, end).await;
    assert_eq!(mock.requests().len(), 4);
    assert_eq!(mock.created(), (0, 0));
    assert_eq!(
        webhook_events(&srv, "invoice.payment_failed").await.len(),
        1
    );
    let box_ = srv
        .get_as("/v1/admin/mailbox?to=owner@example.com", &admin)
        .await;
    let given_up_mails = box_.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["subject"]
                .as_str()
                .unwrap_or("")
                .contains("could not collect")
        })
        .count();
    assert_eq!(given_up_mails, 1);

    // A platform admin can still settle it.
    let res = srv
        .post_as(&format!("/v1/admin/invoices/{id}/pay"), &admin, &json!({}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(invoice(&srv, &o, &id).await["status"], "paid");

    // Out of attempts without having been given up (a crash after the last one was recorded,
    // or a maximum lowered since): the next run gives it up without trying again.
    let b = an_org_called(&srv, "beta").await;
    a_webhook_endpoint(&srv, &b).await;
    subscribe(&srv, &b, "smb").await;
    set_cycle(&srv, &b, start, end).await;
    mock.fail_every(
        500,
        r#"{"error": {"type": "api_error", "message": "down"}}"#,
    );
    close_periods(&srv.state, end, Some(&b.id)).await.unwrap();
    assert_eq!(collect_open(&srv.state, Some(&b.id), hours(7)).await, 0);
    assert_eq!(mock.requests().len(), 6);
    // Another node, configured with a maximum of 2.
    let mut config = srv.state.config.clone();
    config.billing_payment_max_attempts = 2;
    let lowered = gatehouse::server::build_state(config).await.unwrap();
    assert_eq!(collect_open(&lowered, Some(&b.id), hours(14)).await, 0);
    assert_eq!(mock.requests().len(), 6, "no further attempt");
    let events = webhook_events(&srv, "invoice.payment_failed").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["data"]["attempts"], 2);
    srv.mail(&admin, "owner-beta@example.com", "could not collect")
        .await;
}
