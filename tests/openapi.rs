//! The OpenAPI 3.1 document (`GET /openapi.json`) and the reference page (`GET /docs`): the
//! document lists exactly the routes of the router, is valid OpenAPI 3.1 by an independent
//! validator (openapi-spec-validator, PyPI), and what it says about a route's credentials, body
//! and errors is what the route does.

mod common;

use std::collections::BTreeSet;

use common::{fixtures::an_org, Backend, TestServer};
use serde_json::{json, Value};

on_both_databases!(
    the_document_lists_every_route_of_the_router,
    the_document_is_valid_openapi_3_1,
    what_the_document_says_a_route_needs_is_what_it_needs,
    a_request_body_is_described_by_its_type,
    the_reference_page_is_served_from_the_binary,
);

async fn document(srv: &TestServer) -> Value {
    let res = srv.get("/openapi.json").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    res.json
}

/// `{*path}` in the router is `{path}` in the document.
fn documented_path(template: &str) -> String {
    template.replace("{*", "{")
}

async fn the_document_lists_every_route_of_the_router(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let doc = document(&srv).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = gatehouse::http::route_table()
        .iter()
        .map(|r| (r.method.to_string(), documented_path(&r.path)))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        extra.is_empty(),
        "documented routes that are no route: {extra:?}"
    );
    assert!(documented.contains(&("GET".into(), "/openapi.json".into())));
    // One schema per name (`http::openapi::Describer::components`).
    let clashes: Vec<&String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.ends_with("Written"))
        .collect();
    assert!(
        clashes.is_empty(),
        "two types share a schema name: {clashes:?}"
    );
    // Every operation has an id, a tag, a success answer and the error envelope.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["tags"][0].is_string(), "{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            assert_eq!(
                responses["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorEnvelope",
                "{method} {path}"
            );
        }
    }
    // Every success answer says what it carries: a schema, or "no body" (204, 202). Only the
    // gateway's proxy routes (`/openai/v1/…`, the seed's `/trueportai-services/openai/v1/…`, …)
    // relay the provider's answer undescribed.
    let mut undescribed = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["x-required-permission"] == "gateway:proxy" {
                continue;
            }
            for (status, answer) in op["responses"].as_object().unwrap() {
                if !status.starts_with('2') {
                    continue;
                }
                let no_body = answer["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("no body"));
                let typed = match answer["content"].as_object() {
                    None => no_body,
                    Some(content) => content.iter().all(|(media_type, c)| {
                        media_type != "application/json"
                            || !(c["schema"].is_null()
                                || c["schema"] == json!(true)
                                || c["schema"] == json!({}))
                    }),
                };
                if !typed {
                    undescribed.push(format!("{} {path} {status}", method.to_uppercase()));
                }
            }
        }
    }
    assert!(
        undescribed.is_empty(),
        "success answers without a schema (answer a type deriving JsonSchema, not Json<Value> or Response): {undescribed:#?}"
    );
    // A list says what it lists.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if name.starts_with("ListOf") {
            let items = &schema["additionalProperties"]["items"];
            assert!(
                items.is_object() && items != &json!({}),
                "{name} lists any JSON"
            );
        }
    }
    // The answers that were free JSON or built by hand, by their types.
    let success = |method: &str, path: &str, status: &str, media_type: &str| {
        operation(&doc, method, path)["responses"][status]["content"][media_type]["schema"].clone()
    };
    let named = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    assert_eq!(
        success("POST", "/v1/auth/login", "200", "application/json"),
        named("LoginAnswer")
    );
    // Seed 001's answers are described by the `/v1` answer they reshape.
    assert_eq!(
        success(
            "POST",
            "/platform/api/global/auth/login",
            "200",
            "application/json"
        ),
        named("LoginAnswer")
    );
    assert_eq!(
        success(
            "GET",
            "/platform/api/service/members",
            "200",
            "application/json"
        ),
        named("ListOfMember")
    );
    assert_eq!(
        success(
            "GET",
            "/v1/organizations/{org_id}/subscription",
            "200",
            "application/json"
        ),
        named("SubscriptionDocument")
    );
    assert_eq!(
        success(
            "GET",
            "/v1/organizations/{org_id}/usage",
            "200",
            "application/json"
        ),
        named("UsageDocument")
    );
    // The audit log: a page of events, or its CSV or NDJSON export.
    let audit =
        &operation(&doc, "GET", "/v1/organizations/{org_id}/audit")["responses"]["200"]["content"];
    assert_eq!(
        audit["application/json"]["schema"],
        named("ListOfAuditEvent")
    );
    assert!(audit["text/csv"].is_object() && audit["application/x-ndjson"].is_object());
    // The console's pages are HTML.
    assert_eq!(
        success("GET", "/login", "200", "text/html"),
        json!({"type": "string"})
    );

    // The ids are unique (code generators name functions after them).
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate operationIds");
}

async fn the_document_is_valid_openapi_3_1(backend: Backend) {
    let Some(python) = common::venv_python_with("openapi_spec_validator") else {
        return;
    };
    let srv = TestServer::start(backend).await;
    let doc = document(&srv).await;
    let path = std::env::temp_dir().join(format!("gatehouse-openapi-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let script = r#"
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
doc = json.load(open(sys.argv[1]))
try:
    validate(doc)
    print(json.dumps({"valid": True}))
except OpenAPIValidationError as e:
    print(json.dumps({"valid": False, "error": str(e)[:2000]}))
"#;
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(script).arg(&path);
    let out = common::run_json_script(cmd, "openapi-spec-validator").await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(out["valid"], true, "{}", out["error"]);
}

/// The operation of `method path` in the document.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

async fn what_the_document_says_a_route_needs_is_what_it_needs(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let doc = document(&srv).await;
    // An organization route: a token or a key, the permission, the organization's errors.
    let op = operation(&doc, "POST", "/v1/organizations/{org_id}/api-keys");
    assert_eq!(
        op["security"],
        json!([{ "accessToken": [] }, { "apiKey": [] }])
    );
    assert_eq!(op["x-required-permission"], "api_keys:manage");
    for status in ["400", "401", "403", "404", "413", "415"] {
        assert!(op["responses"][status].is_object(), "no {status}");
    }
    assert!(op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "org_id" && p["in"] == "path" && p["required"] == true));
    // A platform admin's route takes an admin's token only.
    let op = operation(&doc, "GET", "/v1/admin/users");
    assert_eq!(op["security"], json!([{ "adminToken": [] }]));
    // A list takes the paging parameters and its filters.
    let names: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["limit", "offset", "page", "cursor", "q", "status"] {
        assert!(names.contains(&p), "{p} missing from {names:?}");
    }
    // A public route has no security requirement.
    assert!(operation(&doc, "POST", "/v1/auth/login")["security"].is_null());

    // And the routes do what the document says: anonymous callers are refused where it asks
    // for credentials, and not where it does not.
    let org = an_org(&srv).await;
    let path = format!("/v1/organizations/{}/api-keys", org.id);
    let anonymous = srv
        .call(
            reqwest::Method::POST,
            &path,
            None,
            Some(&json!({"name": "k"})),
        )
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    let member = srv
        .call(
            reqwest::Method::POST,
            &path,
            Some(&org.owner),
            Some(&json!({"name": "k"})),
        )
        .await;
    assert_eq!(member.status, 201, "{}", member.text);
    let login = srv
        .call(
            reqwest::Method::POST,
            "/v1/auth/login",
            None,
            Some(&json!({"email": "nobody@example.com", "password": "wrong-password-1"})),
        )
        .await;
    assert_ne!(login.status, 403, "{}", login.text);
}

async fn a_request_body_is_described_by_its_type(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let doc = document(&srv).await;
    let op = operation(&doc, "POST", "/v1/organizations/{org_id}/api-keys");
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let name = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("a named body schema");
    let body = &doc["components"]["schemas"][name];
    assert_eq!(body["required"], json!(["name"]));
    // `deny_unknown_fields`: the document says unknown fields are refused, and they are.
    assert_eq!(body["additionalProperties"], false);
    for field in [
        "name",
        "type",
        "environment",
        "scopes",
        "expires_in_days",
        "project_id",
    ] {
        assert!(body["properties"][field].is_object(), "{field}");
    }
    let org = an_org(&srv).await;
    let res = srv
        .call(
            reqwest::Method::POST,
            &format!("/v1/organizations/{}/api-keys", org.id),
            Some(&org.owner),
            Some(&json!({"name": "k", "colour": "blue"})),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text);
    // A response is described by its type too: the key as the API writes it.
    let created = &op["responses"]["2XX"]["content"]["application/json"]["schema"];
    assert_eq!(created["$ref"], "#/components/schemas/CreatedKey", "{op}");
    let created = &doc["components"]["schemas"]["CreatedKey"];
    for field in ["id", "name", "scopes", "token", "revealed_key"] {
        assert!(
            created["properties"][field].is_object(),
            "{field}: {created}"
        );
    }
    let listed = operation(&doc, "GET", "/v1/organizations/{org_id}/api-keys");
    let page = &listed["responses"]["200"]["content"]["application/json"]["schema"];
    let page_name = page["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let page_schema = &doc["components"]["schemas"][page_name];
    assert_eq!(
        page_schema["required"],
        json!(["total", "limit", "offset", "has_more"])
    );
    assert!(page_schema["additionalProperties"]["items"]["$ref"]
        .as_str()
        .unwrap()
        .ends_with("/ApiKey"));
}

async fn the_reference_page_is_served_from_the_binary(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let page = srv.get("/docs").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(page
        .text
        .contains("/console/vendor/redoc-2.5.4/redoc.standalone.js"));
    assert!(page.text.contains("/console/js/docs.js"));
    let script = srv
        .get("/console/vendor/redoc-2.5.4/redoc.standalone.js")
        .await;
    assert_eq!(script.status, 200);
    assert!(script.text.len() > 500_000, "the vendored Redoc bundle");
    let boot = srv.get("/console/js/docs.js").await;
    assert_eq!(boot.status, 200);
    assert!(boot.text.contains("'/openapi.json'"));
}
