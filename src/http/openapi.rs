//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the handlers' own types.
//!
//! Every route is registered through [`super::routes::Routes`], which records, beside the axum
//! route, how to describe it: `<H as Documented<Args>>::describe`, where `Args` are the handler's
//! argument types and its return type. Each extractor says what it adds ([`Input`]): a JSON body
//! (`Json<T>`: `T`'s JSON Schema, by `schemars`), query parameters (`Query<T>`: `T`'s fields),
//! paging (`Page`), the credentials it takes and the permission it requires (`OrgAccess<P>`,
//! `PlatformAdmin`, …), and the errors it may answer. The return type says what a success
//! looks like ([`Output`]): `Json<T>` is `200` with `T`'s schema, `(StatusCode, Json<T>)` a
//! `2XX`, and every handler's `Error` is the SPEC's error envelope for any other status.
//! Adding a route, an extractor or a body type therefore cannot leave the document behind: a
//! type that does not describe itself does not compile.

use std::collections::BTreeMap;

use axum::http::Method;
use schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Builds the schemas of one document: request bodies and query strings as they are read
/// (serde's deserialize contract), responses as they are written (the serialize contract).
pub struct Describer {
    input: SchemaGenerator,
    output: SchemaGenerator,
}

impl Default for Describer {
    fn default() -> Self {
        let settings = |contract| {
            let mut s = SchemaSettings::draft2020_12();
            s.definitions_path = "#/components/schemas/".into();
            s.meta_schema = None;
            s.contract = contract;
            s
        };
        Describer {
            input: SchemaGenerator::new(settings(schemars::generate::Contract::Deserialize)),
            output: SchemaGenerator::new(settings(schemars::generate::Contract::Serialize)),
        }
    }
}

impl Describer {
    /// The schema of a type read from a request (a reference into `components` for named types).
    pub fn input<T: JsonSchema>(&mut self) -> Value {
        self.input.subschema_for::<T>().to_value()
    }

    /// The schema of a type written in a response.
    pub fn output<T: JsonSchema>(&mut self) -> Value {
        self.output.subschema_for::<T>().to_value()
    }

    /// The root schema of `T` with its references inlined one level: a query string's fields.
    fn input_object<T: JsonSchema>(&mut self) -> Value {
        let schema = self.input.root_schema_for::<T>().to_value();
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(r).unwrap_or(schema),
            None => schema,
        }
    }

    fn resolve(&mut self, reference: &str) -> Option<Value> {
        let name = reference.strip_prefix("#/components/schemas/")?;
        self.input.definitions().get(name).cloned()
    }

    /// Every named schema both generators made. Two different schemas under one name (two types
    /// of the same name, one read and one written) would make references ambiguous: the second
    /// is kept as `<Name>Written` and an error logged; `tests/openapi.rs` fails on it, and the
    /// fix is a `#[schemars(rename = "…")]` on one of the types.
    fn components(mut self) -> Map<String, Value> {
        let mut all: Map<String, Value> = self.input.take_definitions(true);
        for (name, schema) in self.output.take_definitions(true) {
            match all.get(&name) {
                Some(existing) if existing != &schema => {
                    tracing::error!(schema = %name, "two schemas of one name in the OpenAPI document");
                    all.insert(format!("{name}Written"), schema);
                }
                _ => {
                    all.insert(name, schema);
                }
            }
        }
        all
    }
}

/// The security schemes a gateway key may use: the spellings of the providers' SDKs.
pub const GATEWAY_KEYS: &[&str] = &[
    "apiKey",
    "apiKeyHeader",
    "azureApiKey",
    "googleApiKey",
    "googleApiKeyQuery",
];

/// One operation being described.
#[derive(Debug, Default)]
pub struct Op {
    pub summary: Option<String>,
    pub tag: Option<&'static str>,
    params: BTreeMap<(String, &'static str), Value>,
    body: Option<Value>,
    responses: BTreeMap<String, Value>,
    /// The credentials it accepts (any one of them); empty: none needed.
    security: Vec<&'static str>,
    notes: Vec<String>,
    permission: Option<&'static str>,
    /// Statuses of the error envelope this operation can answer (besides `default`).
    errors: BTreeMap<u16, &'static str>,
}

impl Op {
    /// A parameter (`in`: path, query or header); a second one of the same name and place
    /// replaces the first.
    pub fn param(&mut self, name: &str, place: &'static str, required: bool, schema: Value) {
        self.param_described(name, place, required, schema, None);
    }

    pub fn param_described(
        &mut self,
        name: &str,
        place: &'static str,
        required: bool,
        schema: Value,
        description: Option<&str>,
    ) {
        let mut p = json!({ "name": name, "in": place, "required": required, "schema": schema });
        if let Some(d) = description {
            p["description"] = d.into();
        }
        self.params.insert((name.to_string(), place), p);
    }

    /// A request body of this media type and schema.
    pub fn body(&mut self, media_type: &str, schema: Value, required: bool) {
        self.body = Some(json!({
            "required": required,
            "content": { media_type: { "schema": schema } },
        }));
    }

    /// A success answer (`status`: a code, or a range such as `2XX`), with a JSON body of this
    /// schema, or with no body.
    pub fn success(&mut self, status: &str, description: &str, body: Option<(&str, Value)>) {
        let mut r = json!({ "description": description });
        if let Some((media_type, schema)) = body {
            r["content"] = json!({ media_type: { "schema": schema } });
        }
        self.responses.insert(status.to_string(), r);
    }

    /// A success answer of one of several media types (the client's choice, or the request's).
    pub fn success_in(&mut self, status: &str, description: &str, bodies: &[(&str, Value)]) {
        let content: Map<String, Value> = bodies
            .iter()
            .map(|(media_type, schema)| (media_type.to_string(), json!({ "schema": schema })))
            .collect();
        self.responses.insert(
            status.to_string(),
            json!({ "description": description, "content": content }),
        );
    }

    /// The credentials that may call it (any one).
    pub fn accepts(&mut self, schemes: &[&'static str]) {
        for s in schemes {
            if !self.security.contains(s) {
                self.security.push(s);
            }
        }
    }

    /// The permission its caller must hold (role or key scope).
    pub fn requires(&mut self, permission: &'static str) {
        self.permission = Some(permission);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// An error status it may answer, and why.
    pub fn error(&mut self, status: u16, why: &'static str) {
        self.errors.entry(status).or_insert(why);
    }

    fn into_json(mut self, method: &Method, path: &str) -> Value {
        // Path parameters come from the template: every `{name}` (and `{*name}`) is one.
        for name in template_params(path) {
            let key = (name.to_string(), "path");
            self.params.entry(key).or_insert_with(
                || json!({ "name": name, "in": "path", "required": true, "schema": {"type": "string"} }),
            );
        }
        let listed = self.responses.get("200").is_some_and(|r| {
            r["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|s| s.contains("/ListOf"))
        });
        let mut responses = Map::new();
        for (status, r) in std::mem::take(&mut self.responses) {
            responses.insert(status, r);
        }
        for (status, why) in &self.errors {
            responses
                .entry(status.to_string())
                .or_insert_with(|| error_response(why));
        }
        responses.insert(
            "default".into(),
            error_response("An error, in the error envelope (SPEC §1)"),
        );
        let mut op = json!({
            "operationId": operation_id(method, path),
            "responses": responses,
        });
        let tag = self.tag.unwrap_or_else(|| tag_of(path));
        op["tags"] = json!([tag]);
        op["summary"] = self
            .summary
            .unwrap_or_else(|| summary_of(method, path, listed))
            .into();
        let mut description = self.notes.join("\n\n");
        if let Some(p) = self.permission {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&format!("Requires `{p}`."));
            op["x-required-permission"] = p.into();
        }
        if !description.is_empty() {
            op["description"] = description.into();
        }
        if !self.params.is_empty() {
            op["parameters"] = self.params.into_values().collect::<Vec<_>>().into();
        }
        if let Some(b) = self.body {
            op["requestBody"] = b;
        }
        // No `security` on an operation means "none needed": the document has no global one.
        if !self.security.is_empty() {
            op["security"] = self
                .security
                .iter()
                .map(|s| json!({ *s: [] }))
                .collect::<Vec<_>>()
                .into();
        }
        op
    }
}

fn error_response(why: &str) -> Value {
    json!({
        "description": why,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorEnvelope" } } },
    })
}

/// The parameter names of a path template (`/v1/organizations/{org_id}/…`, `/openai/v1/{*path}`).
pub fn template_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| {
        seg.strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .map(|s| s.trim_start_matches('*'))
    })
}

/// The template as OpenAPI writes it (`{*path}` → `{path}`).
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id.trim_end_matches('_').replace("__", "_")
}

/// Path segments that name an action rather than a resource (`POST …/rotate-secret`).
const ACTIONS: &[&str] = &[
    "test",
    "retry",
    "rotate",
    "rotate-secret",
    "rotations",
    "accept",
    "verify",
    "pay",
    "void",
    "evaluate",
    "status",
    "select-tenant",
    "switch-environment",
    "check-availability",
    "resend",
];

/// A short title for an operation that has none, from its method and path: "List api keys",
/// "Get api key", "Create project", "Update member", "Rotate secret", "Login".
fn summary_of(method: &Method, path: &str, listed: bool) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let one = segments.last().is_some_and(|s| s.starts_with('{'));
    let Some(last) = segments
        .iter()
        .rev()
        .find(|s| !s.starts_with('{') && **s != "v1")
    else {
        return "Home".into();
    };
    let words = last.replace(['-', '_', '.'], " ");
    // What an action acts on: the resource named before it (`…/webhooks/{id}/test`).
    let object = segments
        .iter()
        .rev()
        .filter(|s| !s.starts_with('{'))
        .nth(1)
        .filter(|s| {
            !matches!(
                **s,
                "v1" | "auth" | "admin" | "organizations" | "global" | "me"
            )
        })
        .map(|s| s.replace(['-', '_'], " "));
    let singular = |w: &str| -> String {
        if let Some(stem) = w.strip_suffix("ies") {
            format!("{stem}y")
        } else if w.ends_with("ss") {
            w.to_string()
        } else {
            w.strip_suffix('s').unwrap_or(w).to_string()
        }
    };
    let capitalized = |w: &str| -> String {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    };
    let action = path.starts_with("/v1/auth/")
        || path.starts_with("/api/v1/auth/")
        || path.contains("/global/auth/")
        || ACTIONS.contains(last);
    match *method {
        Method::GET if listed => format!("List {words}"),
        Method::GET if one => format!("Get {}", singular(&words)),
        Method::GET => capitalized(&words),
        Method::POST if action => match object {
            Some(o) if ACTIONS.contains(last) || path.contains("/auth/") => {
                let verb = match *last {
                    "rotations" => "Rotate".to_string(),
                    "rotate-secret" => "Rotate the secret of".to_string(),
                    _ => capitalized(&words),
                };
                format!("{verb} {}", singular(&o))
            }
            _ => capitalized(&words),
        },
        Method::POST => format!("Create {}", singular(&words)),
        Method::PATCH => format!("Update {}", singular(&words)),
        Method::PUT => format!("Set {}", singular(&words)),
        Method::DELETE => format!("Delete {}", singular(&words)),
        _ => format!("{method} {words}"),
    }
}

/// The area a path belongs to (the document's tags).
fn tag_of(path: &str) -> &'static str {
    let p = path;
    let org = "/v1/organizations/{org_id}/";
    if let Some(rest) = p.strip_prefix(org) {
        let area = rest.split('/').next().unwrap_or_default();
        return match area {
            "members" | "invitations" | "roles" => "Members and invitations",
            "projects" => "Projects",
            "api-keys" => "API keys",
            "providers" | "analytics" => "Gateway",
            "policies" | "violations" => "Policies",
            "webhooks" => "Webhooks",
            "audit" | "audit-logs" => "Audit",
            "subscription" | "invoices" | "usage" | "billing" => "Billing",
            _ => "Organizations",
        };
    }
    match p {
        _ if p.starts_with("/v1/organizations") => "Organizations",
        _ if p.starts_with("/v1/auth")
            || p.starts_with("/v1/me")
            || p.starts_with("/.well-known") =>
        {
            "Identity"
        }
        _ if p.starts_with("/v1/invitations") => "Members and invitations",
        _ if p.starts_with("/v1/admin") => "Platform admin",
        _ if p.starts_with("/v1/plans") || p.starts_with("/v1/billing") => "Billing",
        _ if p.starts_with("/v1/webhooks") || p.starts_with("/v1/event") => "Webhooks",
        _ if p.starts_with("/v1/roles") || p.starts_with("/v1/scopes") => "Members and invitations",
        _ if p.starts_with("/health") || p == "/metrics" => "Operations",
        _ if p.starts_with("/openai")
            || p.starts_with("/anthropic")
            || p.starts_with("/google")
            || p.starts_with("/azure") =>
        {
            "Gateway proxy"
        }
        _ if p.starts_with("/platform/api") => "Seed 001 platform API",
        _ if p.starts_with("/trueportai-services") => "Seed 001 services",
        _ if p.starts_with("/api/v1") => "Seed 002",
        _ if p == "/openapi.json" || p == "/docs" => "Operations",
        _ => "Console",
    }
}

/// What an extractor adds to the description of the operations that use it.
pub trait Input {
    fn describe(_d: &mut Describer, _op: &mut Op) {}
}

/// What a handler's answer looks like when it succeeds.
pub trait Output {
    fn describe(d: &mut Describer, op: &mut Op);
}

/// A handler that can describe itself: every argument an [`Input`], its answer an [`Output`].
/// Implemented for every `async fn` of up to 9 such arguments.
pub trait Documented<Args> {
    fn describe(d: &mut Describer, op: &mut Op);
}

macro_rules! documented {
    ($($t:ident),*) => {
        impl<F, Fut, $($t,)*> Documented<($($t,)*)> for F
        where
            F: FnOnce($($t),*) -> Fut,
            Fut: std::future::Future,
            Fut::Output: Output,
            $($t: Input,)*
        {
            #[allow(unused_variables)]
            fn describe(d: &mut Describer, op: &mut Op) {
                $(<$t as Input>::describe(d, op);)*
                <Fut::Output as Output>::describe(d, op);
            }
        }
    };
}

documented!();
documented!(T1);
documented!(T1, T2);
documented!(T1, T2, T3);
documented!(T1, T2, T3, T4);
documented!(T1, T2, T3, T4, T5);
documented!(T1, T2, T3, T4, T5, T6);
documented!(T1, T2, T3, T4, T5, T6, T7);
documented!(T1, T2, T3, T4, T5, T6, T7, T8);
documented!(T1, T2, T3, T4, T5, T6, T7, T8, T9);

/// How one recorded route is described.
pub type Describe = fn(&mut Describer, &mut Op);

/// A route as the document lists it.
#[derive(Clone)]
pub struct DocumentedRoute {
    pub method: Method,
    pub path: String,
    pub describe: Describe,
}

/// The whole document for these routes.
pub fn document(routes: &[DocumentedRoute], server_url: Option<&str>) -> Value {
    let mut d = Describer::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in routes {
        let mut op = Op::default();
        (r.describe)(&mut d, &mut op);
        let entry = paths.entry(openapi_path(&r.path)).or_default();
        entry.insert(
            r.method.as_str().to_ascii_lowercase(),
            op.into_json(&r.method, &r.path),
        );
    }
    let mut schemas = d.components();
    schemas.insert("ErrorEnvelope".into(), error_envelope_schema());
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gatehouse",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Identity, organizations, API keys, limits, billing, webhooks, audit and an AI gateway, in one server. Every error answers the envelope `{\"error\": {code, message, status, request_id, details}}`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "accessToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A user's access token (`POST /v1/auth/login`), `Authorization: Bearer <token>`.",
                },
                "apiKey": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "API key",
                    "description": "An organization's secret API key (`sk_live_…`, `sk_test_…`), `Authorization: Bearer <key>`; its scopes bound what it may do.",
                },
                "apiKeyHeader": gateway_key("header", "x-api-key", "as the Anthropic SDK sends it"),
                "azureApiKey": gateway_key("header", "api-key", "as the Azure OpenAI SDK sends it"),
                "googleApiKey": gateway_key("header", "x-goog-api-key", "as the google-genai SDK sends it"),
                "googleApiKeyQuery": gateway_key("query", "key", "in the query string, as Gemini's REST examples pass it"),
                "adminToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A platform administrator's access token.",
                },
            },
        },
    });
    if let Some(url) = server_url {
        doc["servers"] = json!([{ "url": url }]);
    }
    doc
}

/// A security scheme of the gateway's routes: an API key where an SDK sends it (a header or the
/// query string) instead of `Authorization: Bearer`.
fn gateway_key(place: &str, name: &str, how: &str) -> Value {
    json!({
        "type": "apiKey", "in": place, "name": name,
        "description": format!("An API key {how} (gateway routes)."),
    })
}

fn error_envelope_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": { "type": "string", "description": "A stable, machine-readable code (`invalid_request`, `not_found`, …)." },
                    "message": { "type": "string" },
                    "status": { "type": "integer" },
                    "request_id": { "type": "string" },
                    "details": {},
                },
            },
        },
    })
}

// ---- the HTTP layer's own extractors and answers ----

use super::{
    extract::{Json, Path, Query},
    pagination::Page,
    request_meta::RequestMeta,
};
use axum::{
    body::{Body, Bytes},
    extract::{OriginalUri, Request, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{Html, Response},
};

impl<T> Input for State<T> {}
impl Input for RequestMeta {}
impl Input for HeaderMap {}
impl Input for Uri {}
impl Input for OriginalUri {}
impl Input for Method {}
impl<T> Input for Path<T> {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.error(404, "Not found: no such resource here");
    }
}

impl<T: JsonSchema> Input for Json<T> {
    fn describe(d: &mut Describer, op: &mut Op) {
        let schema = d.input::<T>();
        op.body("application/json", schema, true);
        op.error(
            400,
            "Invalid request: a malformed body, a bad or unknown field (named in `details`)",
        );
        op.error(413, "Payload too large");
        op.error(
            415,
            "Unsupported media type: the body must be application/json",
        );
    }
}

impl<T: JsonSchema> Input for Query<T> {
    fn describe(d: &mut Describer, op: &mut Op) {
        let schema = d.input_object::<T>();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                let mut s = s.clone();
                let description = s
                    .as_object_mut()
                    .and_then(|o| o.remove("description"))
                    .and_then(|v| v.as_str().map(str::to_string));
                op.param_described(
                    name,
                    "query",
                    required.contains(&name.as_str()),
                    s,
                    description.as_deref(),
                );
            }
        }
        op.error(
            400,
            "Invalid request: a bad query parameter (named in `details`)",
        );
    }
}

impl Input for Page {
    fn describe(_d: &mut Describer, op: &mut Op) {
        let max = super::pagination::MAX_LIMIT;
        op.param_described(
            "limit",
            "query",
            false,
            json!({"type": "integer", "minimum": 1, "maximum": max, "default": super::pagination::DEFAULT_LIMIT}),
            Some("Items per page"),
        );
        op.param_described(
            "offset",
            "query",
            false,
            json!({"type": "integer", "minimum": 0}),
            Some("Items to skip (not with `page` or `cursor`)"),
        );
        op.param_described(
            "page",
            "query",
            false,
            json!({"type": "integer", "minimum": 1, "maximum": 1_000_000}),
            Some("1-based page number: offset = (page − 1) × limit"),
        );
        op.param_described(
            "cursor",
            "query",
            false,
            json!({"type": "string"}),
            Some("The `next_cursor` of the previous page"),
        );
        op.error(400, "Invalid request: a bad paging parameter");
    }
}

/// A raw body (the gateway's proxy, the payment provider's webhook).
impl Input for Bytes {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.body("application/json", json!({}), false);
    }
}
impl Input for Body {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.body("application/json", json!({}), false);
    }
}
impl Input for Request {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.body("application/json", json!({}), false);
    }
}

impl<T: Output> Output for Result<T, crate::error::Error> {
    fn describe(d: &mut Describer, op: &mut Op) {
        T::describe(d, op);
    }
}

impl<T: JsonSchema> Output for axum::Json<T> {
    fn describe(d: &mut Describer, op: &mut Op) {
        let schema = d.output::<T>();
        op.success("200", "OK", Some(("application/json", schema)));
    }
}

/// A status chosen at run time with a JSON body (`201 Created`, or `200` when nothing was new).
impl<T: JsonSchema> Output for (StatusCode, axum::Json<T>) {
    fn describe(d: &mut Describer, op: &mut Op) {
        let schema = d.output::<T>();
        op.success("2XX", "Success", Some(("application/json", schema)));
    }
}

/// A status without a body (`204 No Content`, `202 Accepted`).
impl Output for StatusCode {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success("2XX", "Success, no body", None);
    }
}

impl Output for () {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success("200", "OK, no body", None);
    }
}

/// An answer the handler builds itself, undescribed (`tests/openapi.rs` refuses it outside the
/// gateway's proxy routes): answer a newtype that describes itself instead (`Pdf`,
/// `console::Page`, `events::routes::AuditLog`, `compat::seed001::Reshaped`).
impl Output for Response {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success("2XX", "Success", None);
    }
}

impl<T> Output for Html<T> {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success(
            "200",
            "An HTML page",
            Some(("text/html", json!({"type": "string"}))),
        );
    }
}

/// Plain text (the metrics exposition).
impl Output for String {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success("200", "OK", Some(("text/plain", json!({"type": "string"}))));
    }
}

/// Headers set beside the body (caching, content negotiation) do not change its description.
impl<V, B: Output, const N: usize> Output for ([(axum::http::HeaderName, V); N], B) {
    fn describe(d: &mut Describer, op: &mut Op) {
        B::describe(d, op);
    }
}

/// The path of an axum route taken as is (the console's asset files).
impl<T> Input for axum::extract::Path<T> {}

/// A PDF file, shown inline under its file name.
pub struct Pdf {
    pub filename: String,
    pub bytes: Vec<u8>,
}

impl axum::response::IntoResponse for Pdf {
    fn into_response(self) -> Response {
        use axum::http::header;
        (
            [
                (header::CONTENT_TYPE, "application/pdf".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"{}\"", self.filename),
                ),
            ],
            self.bytes,
        )
            .into_response()
    }
}

impl Output for Pdf {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success(
            "200",
            "The PDF document",
            Some((
                "application/pdf",
                json!({"type": "string", "contentMediaType": "application/pdf"}),
            )),
        );
    }
}

/// `GET /openapi.json` (public).
pub fn routes() -> super::routes::Routes {
    super::routes::Routes::new().get("/openapi.json", openapi_json)
}

/// The document, made once per process (the routes do not change while it runs).
pub struct OpenApiJson(Bytes);

static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();

async fn openapi_json(State(state): State<crate::app::AppState>) -> OpenApiJson {
    let bytes = DOCUMENT.get_or_init(|| {
        let doc = document(&super::documented_routes(), Some(&state.config.link("")));
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
    });
    OpenApiJson(bytes.clone())
}

impl axum::response::IntoResponse for OpenApiJson {
    fn into_response(self) -> Response {
        use axum::http::header;
        (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            self.0,
        )
            .into_response()
    }
}

impl Output for OpenApiJson {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.summary = Some("This document: OpenAPI 3.1".into());
        op.success(
            "200",
            "The OpenAPI 3.1 document of every route",
            Some((
                "application/json",
                json!({"type": "object", "required": ["openapi", "paths"]}),
            )),
        );
    }
}
