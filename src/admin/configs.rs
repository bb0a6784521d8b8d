//! `GET /v1/admin/configs`, `GET/PUT /v1/admin/configs/{key}`: the platform configuration
//! ([`crate::platform`]). Reads answer from this node's snapshot; a write goes through
//! [`Change`] (`platform_config.updated`, audited as the admin) and announces itself on the bus,
//! so every node reads the settings again at once.

use crate::platform::ConfigEntry;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    app::AppState,
    auth::extract::PlatformAdmin,
    error::Error,
    events::{Change, Invalidation},
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
        request_meta::RequestMeta,
    },
    platform::{store, ConfigKey},
};

/// The key named in the path, else 404 naming the known keys.
fn known(name: &str) -> Result<ConfigKey, Error> {
    ConfigKey::parse(name).ok_or_else(|| {
        let known = ConfigKey::names();
        Error::not_found(format!(
            "No platform configuration key '{}'; the keys are {}",
            name.chars().take(100).collect::<String>(),
            known.join(", ")
        ))
        .with_details(json!({ "known_keys": known }))
    })
}

pub async fn list(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
) -> Result<axum::Json<List<ConfigEntry>>, Error> {
    let entries = state.platform.current().entries();
    Ok(axum::Json(List::slice("configs", entries, &page)))
}

pub async fn get(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(name): Path<String>,
) -> Result<axum::Json<ConfigEntry>, Error> {
    let key = known(&name)?;
    Ok(axum::Json(state.platform.current().entry(key)))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    value: Value,
}

pub async fn set(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(name): Path<String>,
    Json(body): Json<SetConfig>,
) -> Result<axum::Json<ConfigEntry>, Error> {
    let key = known(&name)?;
    let value = key.validate(&body.value)?;
    let previous = state.platform.current().entry(key).value;
    let by = admin.context(&meta);
    let admin_id = admin.0.user.id.0.clone();
    Change::new(
        "platform_config.updated",
        "platform_config",
        key.name(),
        json!({ "key": key.name(), "value": value }),
    )
    .metadata(json!({ "previous": previous }))
    .invalidates(Invalidation::PlatformConfigs)
    .write(&state, &by, async |tx| {
        store::set(tx, key, value, Some(&admin_id)).await
    })
    .await?;
    // This node answers with the new value (other nodes read it on the bus message).
    state.platform.reload(&state.db).await?;
    Ok(axum::Json(state.platform.current().entry(key)))
}
