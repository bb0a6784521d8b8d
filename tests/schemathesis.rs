//! Schemathesis (PyPI) against the server's own OpenAPI document: generated requests — valid and
//! invalid, for every operation — as an organization's owner (access token), as one of its
//! secret API keys, and as a platform admin on the admin routes. Every answer must be no 5xx,
//! a documented status, of the documented media type, and match its documented schema
//! (`tests/schemathesis/gatehouse_hooks.py` signs in again when a generated case signs the
//! caller out, and aims most `{org_id}`s at the caller's organization).

mod common;

use common::{fixtures::an_org, Backend, ServerOptions, TestServer, PASSWORD};
use serde_json::json;

/// Cases per operation and generation phase; with ~240 operations and three credentials this
/// is well over 5,000 cases in all.
const MAX_EXAMPLES: &str = "5";
const AT_LEAST_CASES: u64 = 5_000;

on_both_databases!(generated_requests_get_documented_answers_and_never_a_5xx);

async fn generated_requests_get_documented_answers_and_never_a_5xx(backend: Backend) {
    let Some(python) = common::venv_python_with("schemathesis") else {
        return;
    };
    let srv = TestServer::start_with(backend, ServerOptions::without_rate_limits()).await;
    let org = an_org(&srv).await;
    let (admin_email, admin) = srv.admin_account().await;
    // The plan's own quotas out of the way too: thousands of requests within the hour.
    let limits = json!({"limits": {
        "requests_per_hour": null, "api_requests_per_month": null,
        "gateway_requests_per_month": null, "gateway_tokens_per_month": null,
        "members": null, "projects": null,
    }});
    let res = srv.patch_as("/v1/admin/plans/smb", &admin, &limits).await;
    assert_eq!(res.status, 200, "{}", res.text);

    let schemathesis = python.with_file_name("schemathesis");
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let runs = [
        ("owner's token", "owner@example.com", "token", None),
        ("API key", "owner@example.com", "key", None),
        (
            "platform admin's token",
            admin_email.as_str(),
            "token",
            Some("^/(v1|platform/api)/admin"),
        ),
    ];
    let mut cases = 0;
    for (who, email, credential, only) in runs {
        let mut cmd = std::process::Command::new(&schemathesis);
        cmd.arg("run")
            .arg(srv.url("/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                MAX_EXAMPLES,
                "--workers",
                "2",
                "--generation-deterministic",
                "--no-color",
                "--max-failures",
                "50",
            ])
            .env("SCHEMATHESIS_HOOKS", "gatehouse_hooks")
            .env("PYTHONPATH", &hooks)
            .env("GATEHOUSE_BASE", &srv.base)
            .env("GATEHOUSE_ORG", &org.id)
            .env("GATEHOUSE_EMAIL", email)
            .env("GATEHOUSE_PASSWORD", PASSWORD)
            .env("GATEHOUSE_CREDENTIAL", credential);
        if let Some(pattern) = only {
            cmd.args(["--include-path-regex", pattern]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis as the {who} found failures:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated = generated_cases(&stdout)
            .unwrap_or_else(|| panic!("no case count in schemathesis' summary:\n{stdout}"));
        eprintln!("schemathesis as the {who}: {generated} cases, no failure");
        cases += generated;
    }
    assert!(
        cases >= AT_LEAST_CASES,
        "only {cases} generated cases (at least {AT_LEAST_CASES} wanted)"
    );
}

/// The `N generated, …` count of schemathesis' summary.
fn generated_cases(summary: &str) -> Option<u64> {
    summary.lines().find_map(|l| {
        let (n, _) = l.trim().split_once(" generated, ")?;
        n.parse().ok()
    })
}
