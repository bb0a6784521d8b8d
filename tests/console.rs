//! The web console (`console/`, served by `src/console/`): its page and files with their types,
//! validators and security headers, the API's JSON 404 kept for unknown `/v1/…` paths, and the
//! newcomer journey in a real browser (`tests/console_e2e.py`: Playwright driving Debian's
//! chromium) checked afterwards against the API. Screenshots: `target/console-screenshots/`.

mod common;

use common::{Backend, ServerOptions, TestServer};
use serde_json::json;

on_both_databases!(
    the_page_and_its_files_are_served_with_their_headers,
    the_console_loads_in_maintenance_for_an_admin_to_end_it,
);

/// The page the application answers on each of its paths, links from the emails included.
const PAGES: &[&str] = &[
    "/",
    "/login",
    "/register",
    "/verify-email?email=a%40example.com&code=123456",
    "/forgot-password",
    "/reset-password?token=rst_x",
    "/accept-invitation?token=invt_x",
    "/account",
    "/orgs",
    "/orgs/acme/keys",
    "/admin",
    "/admin/organizations",
];

async fn the_page_and_its_files_are_served_with_their_headers(backend: Backend) {
    let srv = TestServer::start(backend).await;
    for path in PAGES {
        let res = srv.get(path).await;
        assert_eq!(res.status, 200, "{path}: {}", res.text);
        assert_eq!(
            res.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert!(res
            .text
            .contains(r#"<script type="module" src="/console/js/app.js">"#));
        // No inline script may run: the policy allows this origin's files only.
        let csp = res.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        // The pages' URLs carry reset and invitation tokens: never sent on as a Referer.
        assert_eq!(res.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(res.header("cache-control"), Some("no-cache"));
    }
    // Every script tag of the page loads a file.
    let page = srv.get("/").await.text;
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script type=\"module\" src=").count()
    );

    for (path, ty) in [
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
        ("/console/js/api.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let res = srv.get(path).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.header("content-type"), Some(ty), "{path}");
        // Revalidation: an unchanged file is a 304 without a body.
        let etag = res.header("etag").expect("an ETag").to_string();
        let again = srv
            .send(srv.client.get(srv.url(path)).header("If-None-Match", &etag))
            .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.text.is_empty());
        let other = srv
            .send(
                srv.client
                    .get(srv.url(path))
                    .header("If-None-Match", "\"other\""),
            )
            .await;
        assert_eq!(other.status, 200, "{path}");
    }

    // What is not a file or a page of the console answers the API's JSON 404.
    for path in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/v1/no-such-route",
        "/v1/organizations/acme/no-such-thing",
        "/no-such-page",
    ] {
        let res = srv.get(path).await;
        res.assert_error(404, "not_found");
        assert!(!res.text.contains("<html"), "{path}");
    }
    // A console path is still only a GET.
    let res = srv
        .call(reqwest::Method::POST, "/login", None, Some(&json!({})))
        .await;
    res.assert_error(405, "method_not_allowed");
}

/// In maintenance the API answers 503 but the console's page and files still load, so that a
/// platform admin can sign in there and turn maintenance off (login and /v1/admin stay open).
async fn the_console_loads_in_maintenance_for_an_admin_to_end_it(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let res = srv
        .put_as(
            "/v1/admin/configs/maintenance_mode",
            &admin,
            &json!({"value": true}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    srv.get("/v1/plans")
        .await
        .assert_error(503, "service_unavailable");
    for path in [
        "/",
        "/login",
        "/admin/configs",
        "/console/js/app.js",
        "/console/app.css",
    ] {
        let res = srv.get(path).await;
        assert_eq!(res.status, 200, "{path}: {}", res.text);
    }
    // Still no wider: what is not the console stays closed.
    srv.get("/no-such-page")
        .await
        .assert_error(503, "service_unavailable");
}

/// The newcomer's journey in the browser; afterwards the API shows what the pages did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_signs_up_invites_and_creates_a_key_in_the_browser() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let chromium = std::path::Path::new("/usr/bin/chromium");
    let ready = chromium.exists()
        && python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import playwright.sync_api"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        assert!(
            !common::in_ci(),
            "CI=true but chromium or .venv's playwright is missing (.ci/run installs them)"
        );
        eprintln!("\n!!! SKIPPED the browser test: apt-get install chromium; .venv/bin/pip install -r tests/requirements.txt !!!\n");
        return;
    }
    // The journey's webhook receiver listens on this machine; deliveries run as in `serve`.
    let srv = TestServer::start_with(
        Backend::Sqlite,
        ServerOptions {
            configure: Box::new(|c| c.allow_private_webhook_targets = true),
            delivery_worker: true,
            ..Default::default()
        },
    )
    .await;
    // A platform admin who signs in to the console (and whose token reads the mailbox).
    let admin_email = "root@example.com";
    gatehouse::auth::users::create(
        &srv.state.db,
        &gatehouse::events::ActorContext::system(),
        gatehouse::auth::users::NewUser::platform_admin(admin_email, "Root", common::PASSWORD),
    )
    .await
    .unwrap();
    let admin = srv.login(admin_email, common::PASSWORD).await;
    let script = root.join("tests/console_e2e.py");
    let shots = root.join("target/console-screenshots");
    let base = srv.base.clone();
    let mut journey = std::process::Command::new(&python);
    journey
        .arg(&script)
        .arg(&base)
        .arg(&admin)
        .arg(&shots)
        .args([admin_email, common::PASSWORD]);
    let summary = common::run_json_script(
        journey,
        "the browser journey failed (screenshots in target/console-screenshots/)",
    )
    .await;

    // The owner's account, verified; the organization with both members.
    let owner = srv
        .login("owner@example.com", "a-long-console-passphrase-42")
        .await;
    let me = srv.get_as("/v1/me", &owner).await;
    assert_eq!(me.json["email_verified"], true, "{}", me.text);
    let org = summary["organization_id"].as_str().unwrap();
    let members = srv
        .get_as(&format!("/v1/organizations/{org}/members"), &owner)
        .await;
    let roles: Vec<(String, String, String)> = members.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&("owner@example.com".into(), "owner".into(), "active".into())));
    assert!(roles.contains(&(
        "invitee@example.com".into(),
        "editor".into(),
        "active".into()
    )));

    // The keys as the pages left them: the rotated one in its grace period with its scopes, the
    // other revoked.
    let keys = srv
        .get_as(
            &format!("/v1/organizations/{org}/api-keys?environment=live"),
            &owner,
        )
        .await;
    let list = keys.json["api_keys"].as_array().unwrap();
    let backend_key = list.iter().find(|k| k["name"] == "backend").unwrap();
    assert_eq!(backend_key["status"], "active");
    assert_eq!(
        backend_key["scopes"],
        json!(["gateway:proxy", "members:read"])
    );
    assert!(backend_key["grace_expires_at"].is_string());
    assert_eq!(
        backend_key["key_preview"].as_str(),
        summary["key_preview"].as_str()
    );
    let temporary = list.iter().find(|k| k["name"] == "temporary").unwrap();
    assert_eq!(temporary["status"], "revoked");
    // The value the page showed after rotation works; the one before it still does (grace).
    for token in [&summary["rotated_token"], &summary["key_token"]] {
        let res = srv
            .get_as(
                &format!("/v1/organizations/{org}/members"),
                token.as_str().unwrap(),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
}
