//! Seed 000 (the platform API: organizations, members, roles, invitations, subscription, API
//! keys) replayed against a fresh server: each served endpoint of `docs/compatibility.md`'s seed
//! 000 table is called with the seed's own path, body and headers (ids and emails aside), and its
//! answer is checked field by field against the seed's documented shape. Invoices (row 14, not
//! built) and usage (row 15, Gatehouse's own quantities) are left to the billing tests.

mod common;

use common::{
    fixtures::{a_key, a_person, an_org, Org},
    shape::{
        a_list, has_shape, is_time, names_field, Kind, INVITATION_STATUS, MEMBER_STATUS, ROLE,
    },
    Backend, Response, TestServer,
};
use gatehouse::orgs::roles::Role;
use serde_json::{json, Value};

on_both_databases!(
    seed_000_organizations_are_listed_read_and_updated_in_the_seed_shape,
    seed_000_the_user_invite_flow_answers_in_the_seed_shape,
    seed_000_members_change_role_and_leave_by_the_id_the_list_shows,
    seed_000_invitations_are_listed_resent_and_revoked,
    seed_000_roles_are_the_seeds_five,
    seed_000_the_subscription_answers_in_the_seed_shape,
    seed_000_api_keys_are_created_listed_and_revoked,
    seed_000_errors_and_rate_limits_follow_the_documented_conventions,
);

const ORGANIZATION: [(&str, Kind); 6] = [
    ("id", Kind::Str),
    ("name", Kind::Str),
    ("slug", Kind::Str),
    ("created_at", Kind::Str),
    ("plan", Kind::Str),
    ("members_count", Kind::Num),
];

async fn seed_000_organizations_are_listed_read_and_updated_in_the_seed_shape(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    // List Organizations, and the seed's pagination example.
    let orgs = a_list(
        &srv.get_as("/v1/organizations", &o.owner).await,
        "organizations",
    );
    assert_eq!(orgs.len(), 1);
    has_shape(&orgs[0], &ORGANIZATION);
    assert_eq!(orgs[0]["id"], o.id.as_str());
    is_time(&orgs[0]["created_at"]);
    let page = srv
        .get_as("/v1/organizations?limit=20&offset=40", &o.owner)
        .await;
    assert!(a_list(&page, "organizations").is_empty());
    assert_eq!(
        (
            &page.json["total"],
            &page.json["limit"],
            &page.json["offset"]
        ),
        (&json!(1), &json!(20), &json!(40))
    );
    assert_eq!(page.json["has_more"], false);

    // Get Organization Details: every seed field, the settings object's too.
    let org = srv.get_as(&o.base, &o.owner).await;
    assert_eq!(org.status, 200, "{}", org.text);
    has_shape(&org.json, &ORGANIZATION);
    has_shape(
        &org.json,
        &[
            ("description", Kind::Str),
            ("website", Kind::Str),
            ("timezone", Kind::Str),
            ("settings", Kind::Obj),
        ],
    );
    has_shape(
        &org.json["settings"],
        &[
            ("sso_enabled", Kind::Bool),
            ("sso_provider", Kind::OptStr),
            ("ip_allowlist", Kind::Arr),
            ("data_residency", Kind::OptStr),
        ],
    );
    assert_eq!(org.json["members_count"], 1);

    // Update Organization with the seed's body: its allowlist leaves the caller (on loopback)
    // outside, which Gatehouse refuses naming the field unless `?force=true`.
    let seed_body = |allowlist: Value| {
        json!({"name": "Acme Corporation", "timezone": "America/Los_Angeles",
               "settings": {"ip_allowlist": allowlist}})
    };
    let seed_list = json!(["203.0.113.0/24", "198.51.100.0/24"]);
    let err = srv.patch_as(&o.base, &o.owner, &seed_body(seed_list)).await;
    names_field(&err, "settings.ip_allowlist");
    let ours = json!(["203.0.113.0/24", "198.51.100.0/24", "127.0.0.1/32"]);
    let res = srv
        .patch_as(&o.base, &o.owner, &seed_body(ours.clone()))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["name"], "Acme Corporation");
    assert_eq!(res.json["timezone"], "America/Los_Angeles");
    assert_eq!(res.json["settings"]["ip_allowlist"], ours);
    // Deep-merged: the settings the body leaves out are kept.
    assert_eq!(res.json["settings"]["sso_enabled"], false, "{}", res.text);
    assert_eq!(srv.get_as(&o.base, &o.owner).await.json, res.json);
    // A timezone outside IANA's is named.
    let err = srv
        .patch_as(&o.base, &o.owner, &json!({"timezone": "Mars/Olympus"}))
        .await;
    names_field(&err, "timezone");
}

/// Add Organization Member as `caller`: the seed's body `{email, name, role}`.
async fn add_member(srv: &TestServer, o: &Org, caller: &str, who: [&str; 3]) -> Response {
    let [email, name, role] = who;
    let body = json!({"email": email, "name": name, "role": role});
    srv.post_as(&format!("{}/members", o.base), caller, &body)
        .await
}

/// The seed's "Complete User Invite Flow", made as the seed makes it: with an API key (created
/// in the organization's settings) as the Bearer token.
async fn seed_000_the_user_invite_flow_answers_in_the_seed_shape(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let api_key = o.key_token(&srv, a_key().named("Production API Key")).await;
    // Add Organization Member, the seed's body.
    let body = json!({"email": "bob@acme.com", "name": "Bob Smith", "role": "member"});
    let res = srv
        .post_as(&format!("{}/members", o.base), &api_key, &body)
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    has_shape(
        &res.json,
        &[
            ("id", Kind::Str),
            ("email", Kind::Str),
            ("name", Kind::Str),
            ("role", ROLE),
            ("status", MEMBER_STATUS),
            ("invitation_sent_at", Kind::Str),
        ],
    );
    assert_eq!(
        (&res.json["email"], &res.json["name"], &res.json["role"]),
        (
            &json!("bob@acme.com"),
            &json!("Bob Smith"),
            &json!("member")
        )
    );
    assert_eq!(res.json["status"], "pending_invite");
    is_time(&res.json["invitation_sent_at"]);

    // The flow's step 1: invite as editor.
    let res = add_member(
        &srv,
        &o,
        &api_key,
        ["newuser@company.com", "New User", "editor"],
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let invited = res.json["id"].as_str().unwrap().to_string();
    // Step 2: the pending invitations, filtered as the seed's client does.
    let list = srv
        .get_as(&format!("{}/invitations", o.base), &api_key)
        .await;
    let pending: Vec<Value> = a_list(&list, "invitations")
        .into_iter()
        .filter(|i| i["status"] == "pending")
        .collect();
    assert_eq!(pending.len(), 2, "{}", list.text);
    assert!(pending.iter().any(|i| i["id"] == invited.as_str()));
    // Step 3: the member count, which counts what the members list does (pending invitees too).
    let org = srv.get_as(&o.base, &api_key).await;
    assert_eq!(org.json["members_count"], 3, "{}", org.text);
    let members = srv.get_as(&format!("{}/members", o.base), &api_key).await;
    assert_eq!(a_list(&members, "members").len(), 3);
    assert_eq!(members.json["total"], org.json["members_count"]);

    // Bad input is named; a viewer may not invite.
    let err = srv
        .post_as(
            &format!("{}/members", o.base),
            &api_key,
            &json!({"email": "eve@acme.com", "role": "superuser"}),
        )
        .await;
    names_field(&err, "role");
    let (viewer, _) = o.a_member(&srv, "viewer@acme.com", Role::Viewer).await;
    add_member(&srv, &o, &viewer, ["eve@acme.com", "Eve", "member"])
        .await
        .assert_error(403, "forbidden");
    // A key without members:manage is told so.
    let reader = o
        .key_token(&srv, a_key().scopes(&["organizations:read"]))
        .await;
    add_member(&srv, &o, &reader, ["eve@acme.com", "Eve", "member"])
        .await
        .assert_error(403, "forbidden");
}

const MEMBER: [(&str, Kind); 8] = [
    ("id", Kind::Str),
    ("email", Kind::Str),
    ("name", Kind::Str),
    ("role", ROLE),
    ("status", MEMBER_STATUS),
    ("created_at", Kind::Str),
    ("last_login", Kind::OptStr),
    ("mfa_enabled", Kind::Bool),
];

/// The member of `o` listed under `id`.
async fn member(srv: &TestServer, o: &Org, id: &str) -> Option<Value> {
    let list = srv
        .get_as(&format!("{}/members?limit=100", o.base), &o.owner)
        .await;
    a_list(&list, "members").into_iter().find(|m| m["id"] == id)
}

async fn seed_000_members_change_role_and_leave_by_the_id_the_list_shows(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let (_, alice) = o.a_member(&srv, "alice@acme.com", Role::Admin).await;
    let res = add_member(&srv, &o, &o.owner, ["bob@acme.com", "Bob Smith", "member"]).await;
    let bob = res.json["id"].as_str().unwrap().to_string();

    // List Organization Members: every seed field, a joined member and a pending invitee.
    let a = member(&srv, &o, &alice).await.expect("alice listed");
    has_shape(&a, &MEMBER);
    assert_eq!(
        (&a["role"], &a["status"]),
        (&json!("admin"), &json!("active"))
    );
    is_time(&a["created_at"]);
    let b = member(&srv, &o, &bob).await.expect("bob listed");
    has_shape(&b, &MEMBER);
    assert_eq!(b["status"], "pending_invite");

    // Update Member Role, the seed's body, for both by the id the list shows.
    for id in [&alice, &bob] {
        let path = format!("{}/members/{id}", o.base);
        let res = srv
            .patch_as(&path, &o.owner, &json!({"role": "editor"}))
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["id"], id.as_str());
        assert_eq!(res.json["role"], "editor");
        assert_eq!(member(&srv, &o, id).await.unwrap()["role"], "editor");
    }
    let err = srv
        .patch_as(
            &format!("{}/members/{alice}", o.base),
            &o.owner,
            &json!({"role": "superuser"}),
        )
        .await;
    names_field(&err, "role");

    // Remove Member: 204, gone from the list, then 404.
    for id in [&alice, &bob] {
        let path = format!("{}/members/{id}", o.base);
        let res = srv.delete_as(&path, &o.owner).await;
        assert_eq!(res.status, 204, "{}", res.text);
        assert!(member(&srv, &o, id).await.is_none());
    }
    srv.delete_as(&format!("{}/members/{alice}", o.base), &o.owner)
        .await
        .assert_error(404, "not_found");
}

async fn seed_000_invitations_are_listed_resent_and_revoked(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let invitations = format!("{}/invitations", o.base);
    let res = add_member(
        &srv,
        &o,
        &o.owner,
        ["charlie@acme.com", "Charlie", "editor"],
    )
    .await;
    let id = res.json["id"].as_str().unwrap().to_string();

    // List Pending Invitations: the seed's fields, `sent_at` included.
    let list = srv.get_as(&invitations, &o.owner).await;
    let rows = a_list(&list, "invitations");
    assert_eq!(list.json["total"], 1);
    let inv = &rows[0];
    has_shape(
        inv,
        &[
            ("id", Kind::Str),
            ("email", Kind::Str),
            ("role", ROLE),
            ("sent_at", Kind::Str),
            ("expires_at", Kind::Str),
            ("status", INVITATION_STATUS),
        ],
    );
    assert_eq!(inv["id"], id.as_str());
    assert_eq!(
        (&inv["role"], &inv["status"]),
        (&json!("editor"), &json!("pending"))
    );
    is_time(&inv["sent_at"]);
    is_time(&inv["expires_at"]);

    // Resend Invitation (no body, as the seed sends it): the invitation, sent again.
    let res = srv
        .call(
            reqwest::Method::POST,
            &format!("{invitations}/{id}/resend"),
            Some(&o.owner),
            None,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["id"], id.as_str());
    assert_eq!(res.json["status"], "pending");
    assert!(res.json["sent_at"].as_str() >= inv["sent_at"].as_str());

    // Revoke Invitation: 204, then listed as revoked, no longer pending.
    let res = srv
        .delete_as(&format!("{invitations}/{id}"), &o.owner)
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    let pending = srv
        .get_as(&format!("{invitations}?status=pending"), &o.owner)
        .await;
    assert!(a_list(&pending, "invitations").is_empty());
    let all = srv.get_as(&invitations, &o.owner).await;
    assert_eq!(all.json["invitations"][0]["status"], "revoked");
    // Resending a revoked one is a conflict; an unknown id is not found.
    srv.post_as(&format!("{invitations}/{id}/resend"), &o.owner, &json!({}))
        .await
        .assert_error(409, "conflict");
    srv.delete_as(
        &format!("{invitations}/inv_00000000000000000000000000"),
        &o.owner,
    )
    .await
    .assert_error(404, "not_found");
}

async fn seed_000_roles_are_the_seeds_five(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let p = a_person(&srv, "alice@acme.com").await;
    let roles = a_list(&srv.get_as("/v1/roles", &p.token).await, "roles");
    let ids: Vec<&str> = roles.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["owner", "admin", "editor", "member", "viewer"]);
    for r in &roles {
        has_shape(
            r,
            &[
                ("name", Kind::Str),
                ("description", Kind::Str),
                ("permissions", Kind::Arr),
            ],
        );
    }
    // Each role holds what the ones below it hold (the seed's table reads top-down).
    for pair in roles.windows(2) {
        let above = pair[0]["permissions"].as_array().unwrap();
        for p in pair[1]["permissions"].as_array().unwrap() {
            assert!(above.contains(p), "{} lacks {p}", pair[0]["id"]);
        }
    }
}

/// Subscription (rows 12–13): read after a plan is activated, then the seed's update. The plan
/// catalogue is Gatehouse's (`smb`, `midmarket`, `enterprise`), so the seed's `business` is
/// refused naming the field.
async fn seed_000_the_subscription_answers_in_the_seed_shape(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let sub = format!("{}/subscription", o.base);
    let res = srv
        .post_as(
            &sub,
            &o.owner,
            &json!({"plan": "midmarket", "billing_email": "billing@acme.com"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);

    // Get Subscription: every seed field, with its type.
    let s = srv.get_as(&sub, &o.owner).await;
    assert_eq!(s.status, 200, "{}", s.text);
    has_shape(
        &s.json,
        &[
            ("id", Kind::Str),
            ("organization_id", Kind::Str),
            ("plan", Kind::Str),
            ("status", Kind::OneOf(&["active", "canceled"])),
            ("billing_cycle_start", Kind::Str),
            ("billing_cycle_end", Kind::Str),
            ("amount", Kind::Num),
            ("currency", Kind::Str),
            ("billing_email", Kind::Str),
            ("auto_renew", Kind::Bool),
            ("features", Kind::Obj),
        ],
    );
    assert_eq!(s.json["organization_id"], o.id.as_str());
    assert_eq!(
        (&s.json["plan"], &s.json["status"]),
        (&json!("midmarket"), &json!("active"))
    );
    assert_eq!(s.json["currency"], "usd");
    is_time(&s.json["billing_cycle_start"]);
    is_time(&s.json["billing_cycle_end"]);

    // Update Subscription: the seed's body verbatim, then with a plan of this catalogue.
    let err = srv
        .patch_as(
            &sub,
            &o.owner,
            &json!({"plan": "business", "auto_renew": true}),
        )
        .await;
    names_field(&err, "plan");
    let res = srv
        .patch_as(
            &sub,
            &o.owner,
            &json!({"plan": "enterprise", "auto_renew": false}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        (&res.json["plan"], &res.json["auto_renew"]),
        (&json!("enterprise"), &json!(false))
    );
    assert_eq!(srv.get_as(&sub, &o.owner).await.json["plan"], "enterprise");
    // Billing is the owner's and admins': a member gets 403.
    let (member, _) = o.a_member(&srv, "bob@acme.com", Role::Member).await;
    srv.get_as(&sub, &member)
        .await
        .assert_error(403, "forbidden");
}

async fn seed_000_api_keys_are_created_listed_and_revoked(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let keys = format!("{}/api-keys", o.base);
    // Create API Key, the seed's body: the token once, and an expiry a year out.
    let res = srv
        .post_as(
            &keys,
            &o.owner,
            &json!({"name": "Staging API Key", "expires_in_days": 365}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let created = res.json;
    has_shape(
        &created,
        &[
            ("id", Kind::Str),
            ("name", Kind::Str),
            ("token", Kind::Str),
            ("expires_at", Kind::Str),
        ],
    );
    assert_eq!(created["name"], "Staging API Key");
    let expires =
        chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() / 24;
    assert!((364..=365).contains(&days), "expires in {days} days");
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );

    // List API Keys: the seed's fields under SPEC's names (`key_preview`, `last_used_at`).
    let list = srv.get_as(&keys, &o.owner).await;
    let rows = a_list(&list, "api_keys");
    assert_eq!(list.json["total"], 1);
    has_shape(
        &rows[0],
        &[
            ("id", Kind::Str),
            ("name", Kind::Str),
            ("key_preview", Kind::Str),
            ("created_at", Kind::Str),
            ("last_used_at", Kind::OptStr),
            ("expires_at", Kind::OptStr),
        ],
    );
    assert_eq!(rows[0]["id"], id);
    assert!(!list.text.contains(token), "the token is shown only once");
    // The token works as the seed's Bearer credential.
    assert_eq!(srv.get_as(&keys, token).await.status, 200);

    // Revoke API Key: 204, the key refused from then on, then 404.
    let res = srv.delete_as(&format!("{keys}/{id}"), &o.owner).await;
    assert_eq!(res.status, 204, "{}", res.text);
    srv.get_as(&keys, token)
        .await
        .assert_error(401, "unauthorized");
    srv.delete_as(&format!("{keys}/key_00000000000000000000000000"), &o.owner)
        .await
        .assert_error(404, "not_found");
    // Bad input is named.
    for (body, field) in [
        (json!({"name": "", "expires_in_days": 365}), "name"),
        (
            json!({"name": "x", "expires_in_days": 0}),
            "expires_in_days",
        ),
    ] {
        names_field(&srv.post_as(&keys, &o.owner, &body).await, field);
    }
}

/// The seed's error codes (400, 401, 403, 404, 429) under SPEC's envelope, and its rate-limit
/// headers: 100 requests a minute per API key.
async fn seed_000_errors_and_rate_limits_follow_the_documented_conventions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let o = an_org(&srv).await;
    let missing = "/v1/organizations/org_00000000000000000000000000";
    let body = srv
        .get_as(missing, &o.owner)
        .await
        .assert_error(404, "not_found")
        .clone();
    assert!(
        body["message"].as_str().unwrap().contains("Organization"),
        "{body}"
    );
    srv.get(&o.base).await.assert_error(401, "unauthorized");
    srv.get_as(&o.base, "token_abc123")
        .await
        .assert_error(401, "unauthorized");
    let (viewer, _) = o.a_member(&srv, "viewer@acme.com", Role::Viewer).await;
    srv.patch_as(&o.base, &viewer, &json!({"name": "x"}))
        .await
        .assert_error(403, "forbidden");
    names_field(
        &srv.patch_as(&o.base, &o.owner, &json!({"colour": "red"}))
            .await,
        "colour",
    );

    // X-RateLimit-* on an API key's answer: 100 a minute, counting down, reset in the future.
    let key = o.key_token(&srv, a_key().named("Production API Key")).await;
    let first = srv.get_as(&o.base, &key).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-ratelimit-limit"), Some("100"));
    let remaining =
        |r: &Response| -> u64 { r.header("x-ratelimit-remaining").unwrap().parse().unwrap() };
    let reset: i64 = first.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset >= chrono::Utc::now().timestamp(), "reset {reset}");
    let second = srv.get_as(&o.base, &key).await;
    assert!(
        (97..=99).contains(&remaining(&second)),
        "{:?}",
        second.headers
    );
    // The allowance refills continuously (100 a minute), so a slow machine may get a few more
    // than 100 in before the refusal; never fewer, and never unboundedly many.
    let mut answered = 2;
    let limited = loop {
        let res = srv.get_as(&o.base, &key).await;
        if res.status == 429 {
            break res;
        }
        assert_eq!(res.status, 200, "{}", res.text);
        answered += 1;
        assert!(answered <= 150, "no refusal after {answered} requests");
    };
    assert!(answered >= 100, "refused after only {answered} requests");
    limited.assert_error(429, "rate_limit_exceeded");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}
