//! Seed 004 (the admin control plane) replayed against a fresh server: each endpoint
//! `docs/compatibility.md`'s seed 004 table marks served is called at the seed's own path with a
//! platform admin's token, and its answer is checked field by field; a signed-in non-admin is
//! refused (403) and an anonymous caller asked for credentials (401).

mod common;

use std::time::Duration;

use axum::{routing::post, Router};
use common::{
    fixtures::{a_person, an_org, Person},
    shape::{a_list, has_shape, is_time, names_field, Kind, MEMBER_STATUS, ROLE, STANDING},
    Backend, ServerOptions, TestServer,
};
use serde_json::{json, Value};

on_both_databases!(
    seed_004_an_admin_manages_any_organizations_projects_and_their_keys,
    seed_004_an_admin_lists_reads_changes_and_deletes_users,
    seed_004_an_admin_creates_reads_updates_and_deletes_organizations,
    seed_004_an_admin_manages_any_organizations_members_and_invitations,
    seed_004_platform_webhooks_are_created_listed_tested_and_logged,
    seed_004_the_audit_log_answers_the_seeds_query,
    seed_004_health_probes_answer,
);

/// A fresh server, a platform admin's token and a non-admin user (who must be refused).
async fn admin_and_stranger(srv: &TestServer) -> (String, Person) {
    (
        srv.admin_token().await,
        a_person(srv, "stranger@example.com").await,
    )
}

/// Every path in `paths` refuses a non-admin (403) and the anonymous (401) on GET.
async fn admins_only(srv: &TestServer, stranger: &Person, paths: &[&str]) {
    for path in paths {
        srv.get_as(path, &stranger.token)
            .await
            .assert_error(403, "forbidden");
        srv.get(path).await.assert_error(401, "unauthorized");
    }
}

/// Every path in `paths` refuses a non-admin (403) and the anonymous (401) on POST with `body`.
async fn admins_only_post(srv: &TestServer, stranger: &Person, paths: &[&str], body: &Value) {
    for path in paths {
        srv.post_as(path, &stranger.token, body)
            .await
            .assert_error(403, "forbidden");
        srv.post_json(path, body)
            .await
            .assert_error(401, "unauthorized");
    }
}

const PROJECT: [(&str, Kind); 7] = [
    ("id", Kind::Str),
    ("organization_id", Kind::Str),
    ("name", Kind::Str),
    ("settings", Kind::Obj),
    ("allowed_origins", Kind::Arr),
    ("redirect_urls", Kind::Arr),
    ("created_at", Kind::Str),
];

async fn seed_004_an_admin_manages_any_organizations_projects_and_their_keys(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    let acme = an_org(&srv).await;
    // Create project (row 1), in an organization the admin is no member of.
    let res = srv
        .post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": acme.id, "name": "Storefront"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    has_shape(&res.json, &PROJECT);
    assert_eq!(res.json["organization_id"], acme.id.as_str());
    let id = res.json["id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/projects/{id}");
    names_field(
        &srv.post_as(
            "/v1/admin/projects",
            &admin,
            &json!({"organization_id": acme.id}),
        )
        .await,
        "name",
    );

    // List projects, paginated (row 2); get one (row 3).
    let list = srv
        .get_as("/v1/admin/projects?page=1&limit=50", &admin)
        .await;
    let rows = a_list(&list, "projects");
    assert_eq!((rows.len(), &list.json["limit"]), (1, &json!(50)));
    has_shape(&rows[0], &PROJECT);
    let one = srv.get_as(&path, &admin).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json, res.json);

    // Update settings, origins, redirects (row 4).
    let patch = json!({"settings": {"theme": "dark"},
                       "allowed_origins": ["https://shop.example.com"],
                       "redirect_urls": ["https://shop.example.com/callback"]});
    let res = srv.patch_as(&path, &admin, &patch).await;
    assert_eq!(res.status, 200, "{}", res.text);
    for field in ["settings", "allowed_origins", "redirect_urls"] {
        assert_eq!(res.json[field], patch[field], "{field}: {}", res.text);
    }
    names_field(
        &srv.patch_as(&path, &admin, &json!({"allowed_origins": ["not a url"]}))
            .await,
        "allowed_origins",
    );

    // Create an API key (row 5): the token shown once; it answers to the organization's
    // owner (or the member `on_behalf_of` names) and works on the organization's API.
    let keys = format!("{path}/api-keys");
    let res = srv
        .post_as(
            &keys,
            &admin,
            &json!({"name": "shop", "scopes": ["organizations:read"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    has_shape(
        &res.json,
        &[
            ("id", Kind::Str),
            ("name", Kind::Str),
            ("token", Kind::Str),
            ("revealed_key", Kind::Str),
            ("key_preview", Kind::Str),
            ("scopes", Kind::Arr),
            ("project_id", Kind::Str),
            ("created_by", Kind::Str),
            ("created_at", Kind::Str),
        ],
    );
    assert_eq!(res.json["project_id"], id.as_str());
    assert_eq!(res.json["created_by"], acme.owner_id.as_str());
    let key = res.json;
    assert_eq!(
        srv.get_as(&acme.base, key["token"].as_str().unwrap())
            .await
            .status,
        200
    );
    names_field(
        &srv.post_as(
            &keys,
            &admin,
            &json!({"name": "k", "on_behalf_of": stranger.id}),
        )
        .await,
        "on_behalf_of",
    );

    // The project's API keys (rows 6, 7): listed without their secret, revoked by the admin.
    let list = srv.get_as(&keys, &admin).await;
    let rows = a_list(&list, "api_keys");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], key["id"]);
    assert!(rows[0].get("token").is_none(), "{}", list.text);
    let res = srv
        .delete_as(&format!("{keys}/{}", key["id"].as_str().unwrap()), &admin)
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    let token = key["token"].as_str().unwrap();
    srv.get_as(&acme.base, token)
        .await
        .assert_error(401, "unauthorized");

    // Signing keys (row 8): the platform's, public parts only.
    let list = srv.get_as(&format!("{path}/signing-keys"), &admin).await;
    let rows = a_list(&list, "signing_keys");
    assert!(!rows.is_empty());
    has_shape(
        &rows[0],
        &[
            ("id", Kind::Str),
            ("algorithm", Kind::Str),
            ("status", Kind::OneOf(&["active", "retired"])),
            ("public_jwk", Kind::Obj),
            ("created_at", Kind::Str),
        ],
    );
    assert!(rows[0]["public_jwk"].get("d").is_none(), "{}", list.text);

    // Rotate the signing key (row 9): the platform's key, which every project shares.
    let rotate = format!("{path}/signing-keys/rotate");
    let res = srv.post_as(&rotate, &admin, &json!({})).await;
    assert_eq!(res.status, 201, "{}", res.text);
    has_shape(
        &res.json,
        &[
            ("id", Kind::Str),
            ("algorithm", Kind::Str),
            ("status", Kind::OneOf(&["active"])),
            ("public_jwk", Kind::Obj),
            ("created_at", Kind::Str),
            ("scope", Kind::OneOf(&["platform"])),
        ],
    );
    let list = srv.get_as(&format!("{path}/signing-keys"), &admin).await;
    assert_eq!(a_list(&list, "signing_keys")[0]["id"], res.json["id"]);

    srv.get_as("/v1/admin/projects/proj_00000000000000000000000000", &admin)
        .await
        .assert_error(404, "not_found");
    admins_only(&srv, &stranger, &["/v1/admin/projects", &path, &keys]).await;
    admins_only_post(&srv, &stranger, &[&keys, &rotate], &json!({"name": "mine"})).await;
}

const USER: [(&str, Kind); 10] = [
    ("id", Kind::Str),
    ("email", Kind::Str),
    ("name", Kind::Str),
    ("status", STANDING),
    ("email_verified", Kind::Bool),
    ("mfa_enabled", Kind::Bool),
    ("is_platform_admin", Kind::Bool),
    ("metadata", Kind::Obj),
    ("created_at", Kind::Str),
    ("last_login", Kind::OptStr),
];

async fn seed_004_an_admin_lists_reads_changes_and_deletes_users(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    let acme = an_org(&srv).await;
    let alice = a_person(&srv, "alice@example.com").await;

    // List users, paginated and searchable (row 10).
    let list = srv
        .get_as("/v1/admin/users?q=alice&page=1&limit=20", &admin)
        .await;
    let rows = a_list(&list, "users");
    assert_eq!(rows.len(), 1, "{}", list.text);
    has_shape(&rows[0], &USER);
    assert_eq!(rows[0]["id"], alice.id.as_str());
    let all = srv.get_as("/v1/admin/users", &admin).await;
    assert_eq!(all.json["total"], 4, "{}", all.text);

    // Get user with sessions and organizations (row 11).
    let path = format!("/v1/admin/users/{}", acme.owner_id);
    let one = srv.get_as(&path, &admin).await;
    assert_eq!(one.status, 200, "{}", one.text);
    has_shape(&one.json, &USER);
    has_shape(
        &one.json,
        &[("sessions", Kind::Arr), ("organizations", Kind::Arr)],
    );
    assert_eq!(
        one.json["sessions"].as_array().unwrap().len(),
        1,
        "{}",
        one.text
    );
    assert_eq!(
        one.json["organizations"][0]["id"],
        acme.id.as_str(),
        "{}",
        one.text
    );

    // Update status or metadata (row 12): a suspended user is refused at once.
    let alice_path = format!("/v1/admin/users/{}", alice.id);
    let res = srv
        .patch_as(
            &alice_path,
            &admin,
            &json!({"status": "suspended", "metadata": {"crm_id": "c-42"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "suspended");
    assert_eq!(res.json["metadata"]["crm_id"], "c-42");
    let err = srv.get_as("/v1/me", &alice.token).await;
    let body = err.assert_error(403, "forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("suspended"),
        "{}",
        err.text
    );
    names_field(
        &srv.patch_as(&alice_path, &admin, &json!({"status": "banned"}))
            .await,
        "status",
    );

    // Delete user (row 13): gone, then 404.
    let res = srv.delete_as(&alice_path, &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);
    srv.get_as(&alice_path, &admin)
        .await
        .assert_error(404, "not_found");
    // The only owner of an organization cannot be deleted.
    srv.delete_as(&path, &admin)
        .await
        .assert_error(409, "conflict");
    admins_only(&srv, &stranger, &["/v1/admin/users", &path]).await;
}

async fn seed_004_an_admin_creates_reads_updates_and_deletes_organizations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    let ann = a_person(&srv, "ann@example.com").await;
    // Create organization (row 14), for an existing owner.
    let res = srv
        .post_as(
            "/v1/admin/organizations",
            &admin,
            &json!({"name": "Ann's Shop", "slug": "anns-shop", "owner_email": "ann@example.com"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let fields = [
        ("id", Kind::Str),
        ("name", Kind::Str),
        ("slug", Kind::Str),
        ("status", STANDING),
        ("plan", Kind::Str),
        ("settings", Kind::Obj),
        ("members_count", Kind::Num),
        ("created_at", Kind::Str),
    ];
    has_shape(&res.json, &fields);
    let org = format!(
        "/v1/admin/organizations/{}",
        res.json["id"].as_str().unwrap()
    );
    names_field(
        &srv.post_as(
            "/v1/admin/organizations",
            &admin,
            &json!({"name": "Ghost", "owner_email": "ghost@example.com"}),
        )
        .await,
        "owner_email",
    );

    // List (row 15), get with members, subscription, usage (row 16), update (row 17).
    let list = srv.get_as("/v1/admin/organizations?q=anns", &admin).await;
    has_shape(&a_list(&list, "organizations")[0], &fields);
    let one = srv.get_as(&org, &admin).await;
    assert_eq!(one.status, 200, "{}", one.text);
    has_shape(&one.json, &fields);
    has_shape(&one.json, &[("members", Kind::Arr), ("usage", Kind::Obj)]);
    assert!(one.json.get("subscription").is_some(), "{}", one.text);
    assert_eq!(one.json["members"][0]["id"], ann.id.as_str());
    let res = srv
        .patch_as(&org, &admin, &json!({"name": "Ann's Store"}))
        .await;
    assert_eq!(
        (res.status, &res.json["name"]),
        (200, &json!("Ann's Store")),
        "{}",
        res.text
    );

    admins_only(&srv, &stranger, &["/v1/admin/organizations", &org]).await;
    // Delete organization (row 18): gone for the admin and its owner.
    assert_eq!(srv.delete_as(&org, &admin).await.status, 204);
    srv.get_as(&org, &admin)
        .await
        .assert_error(404, "not_found");
    let mine = srv.get_as("/v1/organizations", &ann.token).await;
    assert_eq!(mine.json["total"], 0, "{}", mine.text);
}

async fn seed_004_an_admin_manages_any_organizations_members_and_invitations(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    let acme = an_org(&srv).await;
    let org = format!("/v1/admin/organizations/{}", acme.id);
    // Members (rows 19–22): add (an invitation), list, change the role, remove.
    let members = format!("{org}/members");
    let res = srv
        .post_as(
            &members,
            &admin,
            &json!({"email": "bob@example.com", "name": "Bob", "role": "member"}),
        )
        .await;
    assert_eq!(
        (res.status, &res.json["status"]),
        (201, &json!("pending_invite")),
        "{}",
        res.text
    );
    let bob = format!("{members}/{}", res.json["id"].as_str().unwrap());
    assert_eq!(
        a_list(&srv.get_as(&members, &admin).await, "members").len(),
        2
    );
    let res = srv.patch_as(&bob, &admin, &json!({"role": "editor"})).await;
    assert_eq!(
        (res.status, &res.json["role"]),
        (200, &json!("editor")),
        "{}",
        res.text
    );
    assert_eq!(srv.delete_as(&bob, &admin).await.status, 204);
    let rows = a_list(&srv.get_as(&members, &admin).await, "members");
    assert_eq!(rows.len(), 1);
    has_shape(
        &rows[0],
        &[
            ("id", Kind::Str),
            ("email", Kind::Str),
            ("role", ROLE),
            ("status", MEMBER_STATUS),
            ("created_at", Kind::Str),
        ],
    );
    // The organization's own rules hold for the admin: its last owner stays an owner.
    let owner = format!("{members}/{}", acme.owner_id);
    names_field(
        &srv.patch_as(&owner, &admin, &json!({"role": "admin"}))
            .await,
        "role",
    );

    // Invitations (rows 23–25): create, list, revoke.
    let invitations = format!("{org}/invitations");
    let res = srv
        .post_as(
            &invitations,
            &admin,
            &json!({"email": "cara@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let inv = res.json["id"].as_str().unwrap().to_string();
    let rows = a_list(&srv.get_as(&invitations, &admin).await, "invitations");
    assert!(rows
        .iter()
        .any(|i| i["id"] == inv.as_str() && i["status"] == "pending"));
    let res = srv.delete_as(&format!("{invitations}/{inv}"), &admin).await;
    assert_eq!(res.status, 204, "{}", res.text);

    admins_only(&srv, &stranger, &[&members, &invitations]).await;
}

/// A loopback receiver that answers 200 to every POST.
async fn receiver() -> String {
    let app = Router::new().route("/hook", post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn seed_004_platform_webhooks_are_created_listed_tested_and_logged(backend: Backend) {
    let options = ServerOptions {
        configure: Box::new(|c| c.allow_private_webhook_targets = true),
        delivery_worker: true,
        ..Default::default()
    };
    let srv = TestServer::start_with(backend, options).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    // Create webhook (row 26): the secret shown once.
    let res = srv
        .post_as(
            "/v1/admin/webhooks",
            &admin,
            &json!({"url": receiver().await, "events": ["*"], "description": "platform"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let endpoint = [
        ("id", Kind::Str),
        ("url", Kind::Str),
        ("description", Kind::Str),
        ("events", Kind::Arr),
        ("enabled", Kind::Bool),
        ("created_at", Kind::Str),
    ];
    has_shape(&res.json, &endpoint);
    assert!(res.json["secret"].as_str().unwrap().starts_with("whsec_"));
    let hook = format!("/v1/admin/webhooks/{}", res.json["id"].as_str().unwrap());
    names_field(
        &srv.post_as(
            "/v1/admin/webhooks",
            &admin,
            &json!({"url": "ftp://x", "events": ["*"]}),
        )
        .await,
        "url",
    );

    // List webhooks (row 27), without the secret.
    let list = srv.get_as("/v1/admin/webhooks", &admin).await;
    has_shape(&a_list(&list, "webhooks")[0], &endpoint);
    assert!(!list.text.contains("whsec_"), "{}", list.text);

    // Send test event (row 29), then list deliveries (row 28) until it is delivered.
    let res = srv
        .post_as(&format!("{hook}/test"), &admin, &json!({}))
        .await;
    assert_eq!(res.status, 202, "{}", res.text);
    let deliveries = format!("{hook}/deliveries");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let delivered = loop {
        let list = srv.get_as(&deliveries, &admin).await;
        let rows = a_list(&list, "deliveries");
        if let Some(d) = rows
            .iter()
            .find(|d| d["event_type"] == "webhook.test" && d["status"] == "succeeded")
        {
            break d.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {}",
            list.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    has_shape(
        &delivered,
        &[
            ("id", Kind::Str),
            ("event_id", Kind::Str),
            ("event_type", Kind::Str),
            (
                "status",
                Kind::OneOf(&["pending", "delivering", "succeeded", "failed"]),
            ),
            ("response_status", Kind::Num),
            ("attempt", Kind::Num),
            ("latency_ms", Kind::Num),
            ("created_at", Kind::Str),
        ],
    );
    assert_eq!(delivered["response_status"], 200);
    admins_only(&srv, &stranger, &["/v1/admin/webhooks", &deliveries]).await;
}

async fn seed_004_the_audit_log_answers_the_seeds_query(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (admin, stranger) = admin_and_stranger(&srv).await;
    a_person(&srv, "alice@example.com").await;
    let today = chrono::Utc::now().date_naive();
    let (start, end) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let query = format!(
        "/v1/admin/audit?start_date={start}&end_date={end}&action=user.created&page=1&limit=50"
    );
    let res = srv.get_as(&query, &admin).await;
    let events = a_list(&res, "events");
    // The admin, the stranger and alice were created; the seed's fields on each.
    assert_eq!(events.len(), 3, "{}", res.text);
    for e in &events {
        has_shape(
            e,
            &[
                ("id", Kind::Str),
                ("actor_type", Kind::OneOf(&["user", "api_key", "system"])),
                ("action", Kind::Str),
                ("resource_type", Kind::Str),
                ("ip_address", Kind::OptStr),
                ("created_at", Kind::Str),
            ],
        );
        assert_eq!(
            (&e["action"], &e["resource_type"]),
            (&json!("user.created"), &json!("user"))
        );
        is_time(&e["created_at"]);
    }
    // Seed 004's `pagination {page, limit, total}` is SPEC's flat page (docs/compatibility.md).
    assert_eq!(
        (&res.json["limit"], &res.json["offset"]),
        (&json!(50), &json!(0))
    );
    // A window that ended before today holds none; a bad date is named.
    let old = srv
        .get_as(
            "/v1/admin/audit?start_date=2020-01-01&end_date=2020-01-31",
            &admin,
        )
        .await;
    assert!(a_list(&old, "events").is_empty());
    names_field(
        &srv.get_as("/v1/admin/audit?start_date=yesterday", &admin)
            .await,
        "start_date",
    );
    admins_only(&srv, &stranger, &["/v1/admin/audit"]).await;
}

async fn seed_004_health_probes_answer(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // Full health with the database check (row 31), public.
    let res = srv.get("/health").await;
    assert_eq!(res.status, 200, "{}", res.text);
    has_shape(
        &res.json,
        &[
            ("status", Kind::OneOf(&["ok", "degraded", "down"])),
            ("version", Kind::Str),
            ("uptime_s", Kind::Num),
            ("checks", Kind::Obj),
        ],
    );
    assert_eq!(res.json["status"], "ok", "{}", res.text);
    let database: &Value = &res.json["checks"]["database"];
    has_shape(
        database,
        &[
            ("status", Kind::OneOf(&["ok", "degraded", "down"])),
            ("latency_ms", Kind::Num),
        ],
    );
    // Readiness (row 32) and liveness (row 33).
    for path in ["/health/ready", "/health/live"] {
        let res = srv.get(path).await;
        assert_eq!(
            (res.status, &res.json["status"]),
            (200, &json!("ok")),
            "{path}: {}",
            res.text
        );
    }
}
