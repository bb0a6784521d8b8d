//! `/trueportai-services/…`: the four proxies (the same proxy code as `/openai/v1/…` etc.,
//! mounted at the seed's paths), the tenant's API keys (`{"key": …}` on creation, `enabled`
//! beside `status`, `PATCH {"enabled": false}` disabling), analytics, policies and health.

use axum::{
    body::Bytes,
    extract::{Request, State},
};
use serde_json::{Map, Value};

use super::{alias, in_tenant, items, reshape, Reshaped, TenantAccess};
use crate::http::openapi::Output;
use crate::{
    app::AppState,
    error::Error,
    gateway::{self, analytics, proxy, stats},
    health,
    http::{
        extract::{parse_json, Json, Path, Query},
        pagination::Page,
        routes::Routes,
    },
    keys::routes::{self as keys, CreateKey, KeyFilter},
    orgs::roles::perm,
    policies::{self, routes::PolicyInput, violations},
};

const T: &str = "/trueportai-services";

pub fn routes() -> Routes {
    const KEYS: &str = "/trueportai-services/api/v1/keys";
    const KEY: &str = "/trueportai-services/api/v1/keys/{id}";
    const POLICIES: &str = "/trueportai-services/api/v1/policies";
    const POLICY: &str = "/trueportai-services/api/v1/policies/{id}";
    const A: &str = "/trueportai-services/api/v1/analytics";
    Routes::new()
        .post(KEYS, create_key)
        .get(KEYS, list_keys)
        .patch(KEY, update_key)
        .delete(KEY, delete_key)
        .get(&format!("{A}/logs"), logs)
        .get(&format!("{A}/stats"), usage_stats)
        .get(&format!("{A}/violations"), list_violations)
        .get(&format!("{A}/violations/{{id}}"), violation)
        .get(POLICIES, list_policies)
        .post(POLICIES, create_policy)
        .put(POLICY, replace_policy)
        .delete(POLICY, delete_policy)
        .get(&format!("{T}/health"), health)
}

/// Each format's proxy [`proxy::Spec`] mounted under the seed's prefix too
/// (`{prefix}/{*path}`).
macro_rules! mounted {
    ($($name:ident = $spec:path => $prefix:literal;)*) => {
        $(static $name: proxy::Spec = $spec.mounted_at(concat!($prefix, "/{*path}"), $prefix);)*
    };
}

mounted! {
    OPENAI = proxy::OPENAI => "/trueportai-services/openai/v1";
    ANTHROPIC = proxy::ANTHROPIC => "/trueportai-services/anthropic/v1";
    GOOGLE = proxy::GOOGLE => "/trueportai-services/google/v1beta";
    AZURE = proxy::AZURE => "/trueportai-services/azure";
}

pub fn proxy_routes() -> Routes {
    Routes::new()
        .any(OPENAI.route, |s: State<AppState>, r: Request| {
            proxy::serve(&OPENAI, s.0, r)
        })
        .any(ANTHROPIC.route, |s: State<AppState>, r: Request| {
            proxy::serve(&ANTHROPIC, s.0, r)
        })
        .any(GOOGLE.route, |s: State<AppState>, r: Request| {
            proxy::serve(&GOOGLE, s.0, r)
        })
        .any(AZURE.route, |s: State<AppState>, r: Request| {
            proxy::serve(&AZURE, s.0, r)
        })
}

/// `enabled` beside a key's `status`: only an active key is enabled.
fn enabled(key: &mut Value) {
    if let Some(status) = key.get("status").and_then(Value::as_str) {
        key["enabled"] = Value::Bool(status == "active");
    }
}

async fn create_key(
    state: State<AppState>,
    access: TenantAccess<perm::ApiKeysManage>,
    body: Json<CreateKey>,
) -> Reshaped<impl Output> {
    reshape(keys::create(state, access.0, body).await, |key| {
        alias("token", "key")(key);
        enabled(key);
    })
    .await
}

async fn list_keys(
    state: State<AppState>,
    access: TenantAccess<perm::ApiKeysRead>,
    page: Page,
    filter: Query<KeyFilter>,
) -> Reshaped<impl Output> {
    reshape(keys::list(state, access.0, page, filter).await, |list| {
        items("api_keys")(list);
        if let Some(keys) = list["items"].as_array_mut() {
            keys.iter_mut().for_each(enabled);
        }
    })
    .await
}

/// The `/v1` update's body, with the seed's `enabled` (a boolean) as `status`.
async fn update_key(
    state: State<AppState>,
    access: TenantAccess<perm::ApiKeysManage>,
    Path(id): Path<String>,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<Reshaped<impl Output>, Error> {
    if let Some(on) = body.remove("enabled") {
        let Some(on) = on.as_bool() else {
            return Err(Error::invalid_field("enabled", "must be true or false"));
        };
        let status = if on { "active" } else { "disabled" };
        if body.get("status").is_some_and(|s| s != status) {
            return Err(Error::invalid_field(
                "enabled",
                "disagrees with status; send one of them",
            ));
        }
        body.insert("status".into(), status.into());
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).map_err(anyhow::Error::from)?);
    let body = Json(parse_json(&bytes)?);
    let path = access.path(id);
    Ok(reshape(keys::update(state, access.0, path, body).await, enabled).await)
}

/// The gateway's health: one process serves both planes, so this is `/health`'s answer.
async fn health(state: State<AppState>) -> (axum::http::StatusCode, axum::Json<health::Health>) {
    health::health(state).await
}

// Revokes the key (as `DELETE /v1/…/api-keys/{key_id}`).
in_tenant!(delete_key, ApiKeysManage, keys::revoke, path String, ());
in_tenant!(logs, AnalyticsRead, gateway::logs, items "logs",
    (page: Page, filter: Query<analytics::LogFilter>));
in_tenant!(usage_stats, AnalyticsRead, stats::stats, (query: Query<stats::StatsQuery>));
in_tenant!(list_violations, AnalyticsRead, violations::list, items "violations",
    (page: Page, filter: Query<violations::store::Filter>));
in_tenant!(violation, AnalyticsRead, violations::get, path String, ());
in_tenant!(list_policies, PoliciesRead, policies::routes::list, items "policies", (page: Page));
in_tenant!(create_policy, PoliciesManage, policies::routes::create, (body: Json<PolicyInput>));
in_tenant!(replace_policy, PoliciesManage, policies::routes::replace, path crate::ids::PolicyId,
    (body: Json<PolicyInput>));
in_tenant!(delete_policy, PoliciesManage, policies::routes::delete, path crate::ids::PolicyId, ());
