//! `/trueportai-services/…`: the four proxies (the same proxy code as `/openai/v1/…` etc.,
//! mounted at the seed's paths), the tenant's API keys (`{"key": …}` on creation, `enabled`
//! beside `status`, `PATCH {"enabled": false}` disabling), analytics, policies and health.

use axum::{
    body::Bytes,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value};

use super::{alias, items, reshape, TenantAccess};
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

static OPENAI: proxy::Spec = proxy::OPENAI.mounted_at(
    "/trueportai-services/openai/v1/{*path}",
    "/trueportai-services/openai/v1",
);
static ANTHROPIC: proxy::Spec = proxy::ANTHROPIC.mounted_at(
    "/trueportai-services/anthropic/v1/{*path}",
    "/trueportai-services/anthropic/v1",
);
static GOOGLE: proxy::Spec = proxy::GOOGLE.mounted_at(
    "/trueportai-services/google/v1beta/{*path}",
    "/trueportai-services/google/v1beta",
);
static AZURE: proxy::Spec = proxy::AZURE.mounted_at(
    "/trueportai-services/azure/{*path}",
    "/trueportai-services/azure",
);

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
) -> Response {
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
) -> Response {
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
) -> Result<Response, Error> {
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

/// Revokes the key (as `DELETE /v1/…/api-keys/{key_id}`).
async fn delete_key(
    state: State<AppState>,
    access: TenantAccess<perm::ApiKeysManage>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let path = access.path(id);
    keys::revoke(state, access.0, path).await
}

async fn logs(
    state: State<AppState>,
    access: TenantAccess<perm::AnalyticsRead>,
    page: Page,
    filter: Query<analytics::LogFilter>,
) -> Response {
    reshape(
        gateway::logs(state, access.0, page, filter).await,
        items("logs"),
    )
    .await
}

async fn usage_stats(
    state: State<AppState>,
    access: TenantAccess<perm::AnalyticsRead>,
    query: Query<stats::StatsQuery>,
) -> impl IntoResponse {
    stats::stats(state, access.0, query).await
}

async fn list_violations(
    state: State<AppState>,
    access: TenantAccess<perm::AnalyticsRead>,
    page: Page,
    filter: Query<violations::store::Filter>,
) -> Response {
    reshape(
        violations::list(state, access.0, page, filter).await,
        items("violations"),
    )
    .await
}

async fn violation(
    state: State<AppState>,
    access: TenantAccess<perm::AnalyticsRead>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let path = access.path(id);
    violations::get(state, access.0, path).await
}

async fn list_policies(
    state: State<AppState>,
    access: TenantAccess<perm::PoliciesRead>,
    page: Page,
) -> Response {
    reshape(
        policies::routes::list(state, access.0, page).await,
        items("policies"),
    )
    .await
}

async fn create_policy(
    state: State<AppState>,
    access: TenantAccess<perm::PoliciesManage>,
    body: Json<PolicyInput>,
) -> impl IntoResponse {
    policies::routes::create(state, access.0, body).await
}

async fn replace_policy(
    state: State<AppState>,
    access: TenantAccess<perm::PoliciesManage>,
    Path(id): Path<crate::ids::PolicyId>,
    body: Json<PolicyInput>,
) -> impl IntoResponse {
    let path = access.path(id);
    policies::routes::replace(state, access.0, path, body).await
}

async fn delete_policy(
    state: State<AppState>,
    access: TenantAccess<perm::PoliciesManage>,
    Path(id): Path<crate::ids::PolicyId>,
) -> impl IntoResponse {
    let path = access.path(id);
    policies::routes::delete(state, access.0, path).await
}

/// The gateway's health: one process serves both planes, so this is `/health`'s answer.
async fn health(state: State<AppState>) -> impl IntoResponse {
    health::health(state).await
}
