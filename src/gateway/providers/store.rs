//! Upstream providers in the database (`providers`). Keys are stored sealed (encrypted with
//! the master key by the caller) and never read back by the management API, only by
//! [`enabled`] for the proxy. Reads take the pool; writes take the caller's transaction (see
//! [`crate::events::change`]).

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::ProviderKind;

use crate::ids::ProviderId;
use crate::{
    error::Error,
    events::change::found,
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Provider {
    pub id: ProviderId,
    pub organization_id: crate::ids::OrgId,
    pub provider: ProviderKind,
    pub name: String,
    pub base_url: Option<String>,
    pub api_key_set: bool,
    pub models: Value,
    pub priority: i64,
    pub enabled: bool,
    pub environment: String,
    pub created_at: String,
    pub updated_at: String,
}

has_id!(Provider);

const COLUMNS: &str =
    "id, organization_id, provider, name, base_url, api_key, models, priority, enabled, \
     environment, created_at, updated_at";

impl Provider {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Provider {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            provider: kind_of(r)?,
            name: r.try_get("name")?,
            base_url: r.try_get("base_url")?,
            api_key_set: r.try_get::<Option<String>, _>("api_key")?.is_some(),
            models: r.get_json("models")?,
            priority: r.try_get("priority")?,
            enabled: r.get_bool("enabled")?,
            environment: r.try_get("environment")?,
            created_at: r.get_time("created_at")?,
            updated_at: r.get_time("updated_at")?,
        })
    }
}

/// One provider of the organization; of `env` only, when the caller is confined to one (another
/// environment's provider is not found, like another organization's).
pub async fn load(
    db: &Db,
    org_id: &str,
    id: &ProviderId,
    env: Option<&str>,
) -> Result<Provider, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM providers WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Provider not found"))?;
    let provider = Provider::from_row(&row)?;
    if env.is_some_and(|e| e != provider.environment) {
        return Err(Error::not_found("Provider not found"));
    }
    Ok(provider)
}

/// One page of the organization's providers (of `env` only, if given), in priority order.
pub async fn list(
    db: &Db,
    org_id: &str,
    env: Option<&str>,
    page: &Page,
) -> Result<List<Provider>, Error> {
    let mut sql = Sql::new(" FROM providers WHERE organization_id = ");
    sql.bind(org_id.to_string());
    if let Some(env) = env {
        sql.and("environment = ?", env.to_string());
    }
    let select = format!("SELECT {COLUMNS}");
    page.fetch(
        db,
        "providers",
        &select,
        &sql,
        "priority, id",
        Provider::from_row,
    )
    .await
}

/// An enabled provider as the proxy reads it, its key still sealed.
pub struct EnabledRow {
    pub id: String,
    pub provider: ProviderKind,
    pub name: String,
    pub base_url: Option<String>,
    pub sealed_key: Option<String>,
    pub models: Vec<String>,
}

/// The enabled providers of an organization for one environment, in priority order.
pub async fn enabled(db: &Db, org_id: &str, env: &str) -> Result<Vec<EnabledRow>, Error> {
    let rows = sqlx::query(
        "SELECT id, provider, name, base_url, api_key, models FROM providers \
         WHERE organization_id = $1 AND environment = $2 AND enabled = TRUE ORDER BY priority, id",
    )
    .bind(org_id)
    .bind(env)
    .fetch_all(db.pool())
    .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(EnabledRow {
                id: r.try_get("id")?,
                provider: kind_of(r)?,
                name: r.try_get("name")?,
                base_url: r.try_get("base_url")?,
                sealed_key: r.try_get("api_key")?,
                models: serde_json::from_value(r.get_json("models")?).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(rows)
}

/// A provider to create (validated; its key already sealed).
pub struct NewProvider<'a> {
    pub id: &'a ProviderId,
    pub organization_id: &'a str,
    pub provider: ProviderKind,
    pub name: &'a str,
    pub base_url: Option<&'a str>,
    pub sealed_key: Option<String>,
    pub models: &'a [String],
    pub priority: i64,
    pub enabled: bool,
    pub environment: &'a str,
}

pub async fn insert(tx: &mut AnyConnection, p: NewProvider<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO providers (id, organization_id, provider, name, base_url, api_key, models, priority, enabled, environment, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    )
    .bind(p.id)
    .bind(p.organization_id)
    .bind(p.provider.as_str())
    .bind(p.name)
    .bind(p.base_url)
    .bind(p.sealed_key)
    .bind(json!(p.models).to_string())
    .bind(p.priority)
    .bind(p.enabled)
    .bind(p.environment)
    .bind(storage::now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The fields a PATCH changes (validated; `None`: kept).
#[derive(Debug, Default)]
pub struct ProviderPatch {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub sealed_key: Option<String>,
    pub models: Option<Vec<String>>,
    pub priority: Option<i64>,
    pub enabled: Option<bool>,
    pub environment: Option<String>,
}

pub async fn update(
    tx: &mut AnyConnection,
    id: &ProviderId,
    patch: ProviderPatch,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE providers SET updated_at = $1, name = COALESCE($2, name), \
         base_url = COALESCE($3, base_url), api_key = COALESCE($4, api_key), \
         models = COALESCE($5, models), priority = COALESCE($6, priority), \
         enabled = COALESCE($7, enabled), environment = COALESCE($8, environment) WHERE id = $9",
    )
    .bind(storage::now())
    .bind(patch.name)
    .bind(patch.base_url)
    .bind(patch.sealed_key)
    .bind(patch.models.map(|m| json!(m).to_string()))
    .bind(patch.priority)
    .bind(patch.enabled)
    .bind(patch.environment)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes the provider (of `env` only, if given); not found if there is none.
pub async fn delete(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &ProviderId,
    env: Option<&str>,
) -> Result<(), Error> {
    let mut sql = Sql::new("DELETE FROM providers WHERE id = ");
    sql.bind(id.to_string());
    sql.and("organization_id = ?", org_id.to_string());
    if let Some(env) = env {
        sql.and("environment = ?", env.to_string());
    }
    found(sql.query().execute(&mut *tx).await?, "Provider not found")
}

/// A row's provider kind; a stored value outside the set is a decode error.
fn kind_of(r: &sqlx::any::AnyRow) -> Result<ProviderKind, sqlx::Error> {
    let kind: String = r.try_get("provider")?;
    ProviderKind::parse(&kind).ok_or_else(|| {
        sqlx::Error::Decode(format!("unexpected provider {kind:?} in providers").into())
    })
}
