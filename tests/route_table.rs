//! Checks generated from the route table (`gatehouse::http::route_table()`), which every area of
//! the API registers its routes through: a new route is covered by these tests the moment it
//! exists. (The organization-isolation walk over every `{org_id}` route is in
//! tests/organizations.rs.)
//!
//! - Every route asks for credentials, except the few listed in `PUBLIC` on purpose.
//! - Every `/v1/admin/…` (and seed 001's `/platform/api/admin/…`) route refuses everyone but platform admins: a signed-in user, an
//!   organization owner, an organization-scoped token and an all-scopes API key.

mod common;

use common::{fixtures::an_org, Backend, ServerOptions, TestServer};
use serde_json::{json, Value};

on_both_databases!(
    every_route_asks_for_credentials_unless_public,
    admin_routes_refuse_everyone_but_platform_admins,
    the_openapi_document_names_the_same_public_routes,
);

/// The routes anyone may call, by method and path template.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/live"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/v1/roles"),
    ("GET", "/v1/organizations/check-availability"),
    ("POST", "/v1/auth/register"),
    ("POST", "/v1/auth/verify-email"),
    ("POST", "/v1/auth/login"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/v1/auth/mfa/verify"),
    ("POST", "/v1/auth/otp/request"),
    ("POST", "/v1/auth/otp/verify"),
    ("POST", "/v1/auth/forgot-password"),
    ("POST", "/v1/auth/reset-password"),
    ("POST", "/v1/billing/stripe/webhook"),
    // Seed 001's public routes (`src/compat/seed001`).
    ("POST", "/platform/api/global/auth/register"),
    ("POST", "/platform/api/global/auth/login"),
    ("POST", "/platform/api/global/auth/otp/request"),
    ("POST", "/platform/api/global/auth/otp/verify"),
    ("POST", "/platform/api/global/auth/forgot-password"),
    ("POST", "/platform/api/global/auth/reset-password"),
    ("GET", "/platform/api/global/tenants/check-availability"),
    ("GET", "/trueportai-services/health"),
    // The web console's page (every path it answers) and its files: no data, no credentials.
    ("GET", "/"),
    ("GET", "/login"),
    ("GET", "/register"),
    ("GET", "/verify-email"),
    ("GET", "/forgot-password"),
    ("GET", "/reset-password"),
    ("GET", "/accept-invitation"),
    ("GET", "/account"),
    ("GET", "/orgs"),
    ("GET", "/orgs/{*page}"),
    ("GET", "/admin"),
    ("GET", "/admin/{*page}"),
    ("GET", "/console/{*path}"),
    // The API's own description and its reference page.
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

/// A path of the table with every parameter filled with a well-formed id that exists nowhere.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("closed parameter") + open;
        out.push_str(match &rest[open + 1..close] {
            "org_id" => "org_01aaaaaaaaaaaaaaaaaaaaaaaa",
            "user_id" => "usr_01aaaaaaaaaaaaaaaaaaaaaaaa",
            "key_id" => "key_01aaaaaaaaaaaaaaaaaaaaaaaa",
            "delivery_id" => "del_01aaaaaaaaaaaaaaaaaaaaaaaa",
            "key" => "some-key",
            // Gateway catch-alls (`{*path}`) and resource ids.
            _ => "x_01aaaaaaaaaaaaaaaaaaaaaaaa",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A server whose rate limits stay out of the way: every route is called several times.
async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, ServerOptions::without_rate_limits()).await
}

/// A body every write route can parse far enough to reach its credential check.
fn body() -> Value {
    json!({"name": "n", "role": "owner", "email": "m@example.com", "value": 1})
}

async fn every_route_asks_for_credentials_unless_public(backend: Backend) {
    let srv = server(backend).await;
    let table = gatehouse::http::route_table();
    assert!(table.len() >= 80, "only {} routes?", table.len());
    // The list of public routes holds only routes that exist.
    for (method, path) in PUBLIC {
        assert!(
            table
                .iter()
                .any(|r| r.method.as_str() == *method && r.path == *path),
            "{method} {path} is listed as public but is no route"
        );
    }
    let mut checked = 0;
    for route in &table {
        let public = PUBLIC
            .iter()
            .any(|(m, p)| route.method.as_str() == *m && route.path == *p);
        if public {
            continue;
        }
        let path = concrete(&route.path);
        let res = srv
            .call(route.method.clone(), &path, None, Some(&body()))
            .await;
        assert_eq!(
            res.status, 401,
            "{} {} answered without credentials: {}",
            route.method, route.path, res.text
        );
        // And with credentials that are not valid.
        let res = srv
            .call(
                route.method.clone(),
                &path,
                Some("sk_live_not-a-real-key"),
                Some(&body()),
            )
            .await;
        assert_eq!(
            res.status, 401,
            "{} {} answered an invalid key: {}",
            route.method, route.path, res.text
        );
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} routes checked");
}

async fn admin_routes_refuse_everyone_but_platform_admins(backend: Backend) {
    let srv = server(backend).await;
    let org = an_org(&srv).await;
    let user = srv.register("someone@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let scoped = srv
        .post_as(
            "/v1/auth/select-tenant",
            &org.owner,
            &json!({"organization_id": org.id}),
        )
        .await;
    assert_eq!(scoped.status, 200, "{}", scoped.text);
    let scoped = scoped.json["access_token"].as_str().unwrap().to_string();
    let key = org.a_key(&srv, &org.owner, json!({"name": "all"})).await;
    let key = common::fixtures::token(&key);
    let admin = srv.admin_token().await;

    let table = gatehouse::http::route_table();
    let admin_routes: Vec<_> = table
        .iter()
        .filter(|r| r.path.starts_with("/v1/admin/") || r.path.starts_with("/platform/api/admin/"))
        .collect();
    assert!(
        admin_routes.len() >= 15,
        "only {} admin routes?",
        admin_routes.len()
    );
    // Among them, the project writes whose authority is not an organization role (seed 004
    // rows 5 and 9: a key made for a member, the platform's signing-key rotation).
    for path in [
        "/v1/admin/projects/{id}/api-keys",
        "/v1/admin/projects/{id}/signing-keys/rotate",
    ] {
        assert!(
            admin_routes
                .iter()
                .any(|r| r.method.as_str() == "POST" && r.path == path),
            "POST {path} is not in the route table"
        );
    }
    for route in &admin_routes {
        let path = concrete(&route.path);
        for (who, token) in [
            ("a signed-in user", &user),
            ("an organization owner", &org.owner),
            ("an organization-scoped token", &scoped),
            ("an all-scopes API key", &key),
        ] {
            let res = srv
                .call(route.method.clone(), &path, Some(token), Some(&body()))
                .await;
            assert!(
                res.status == 403 || res.status == 401,
                "{} {} answered {} to {who}: {}",
                route.method,
                route.path,
                res.status,
                res.text
            );
        }
        // The platform admin gets past the check (the ids exist nowhere: 404, or a refused body).
        let res = srv
            .call(route.method.clone(), &path, Some(&admin), Some(&body()))
            .await;
        assert!(
            res.status != 401 && res.status != 403,
            "{} {} refused the platform admin: {}",
            route.method,
            route.path,
            res.text
        );
    }
    // Nothing changed for the organization.
    let res = srv.get_as(&org.base, &org.owner).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["name"], "Acme");
}

/// The OpenAPI document (`GET /openapi.json`) derives each operation's `security` from its
/// handler's extractors; the routes it lists without any are exactly the public ones here.
async fn the_openapi_document_names_the_same_public_routes(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let doc = srv.get("/openapi.json").await.json;
    let mut open_in_document = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["security"].is_null() {
                open_in_document.push((method.to_uppercase(), path.replace('{', "{*")));
            }
        }
    }
    let is_public = |m: &str, p: &str| {
        PUBLIC
            .iter()
            .any(|(pm, pp)| *pm == m && (pp.replace("{*", "{") == p.replace("{*", "{")))
    };
    for (method, path) in &open_in_document {
        assert!(
            is_public(method, path),
            "{method} {path} needs no credentials in the document, but is not a public route"
        );
    }
    for (method, path) in PUBLIC {
        let documented_open = open_in_document
            .iter()
            .any(|(m, p)| m == method && p.replace("{*", "{") == path.replace("{*", "{"));
        assert!(
            documented_open,
            "{method} {path} is public, but the document asks for credentials"
        );
    }
}
