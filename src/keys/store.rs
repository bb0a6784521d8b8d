//! API keys in the database: the `api_keys` rows and their secrets (`api_key_secrets`, by the
//! SHA-256 of the token). Reads take the pool; writes take the caller's transaction (see
//! [`crate::events::change`]). Knows nothing of HTTP, events or caches.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::{KeyStatus, KeyType};
use crate::{
    environment::Environment,
    error::Error,
    http::pagination::{has_id, List, Page},
    ids::KeyId,
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ApiKey {
    pub id: KeyId,
    /// Always `api_key` (seed 003's resource type, additive).
    pub object: &'static str,
    pub organization_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    pub key_preview: String,
    /// The preview again, under seed 003's name (additive).
    pub display_key: String,
    #[schemars(with = "Vec<String>")]
    pub scopes: Value,
    #[schemars(with = "Vec<String>")]
    pub allowed_origins: Value,
    #[schemars(with = "Option<RateLimitSchema>")]
    pub rate_limit: Option<Value>,
    pub project_id: Option<String>,
    pub status: KeyStatus,
    pub created_at: String,
    pub created_by: Option<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub rotated_at: Option<String>,
    pub revoked_at: Option<String>,
    pub grace_expires_at: Option<String>,
}

/// How a key's `rate_limit` is written (its schema in the API's document).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct RateLimitSchema {
    requests_per_minute: i64,
    tokens_per_minute: Option<i64>,
}

has_id!(ApiKey);

const COLUMNS: &str =
    "id, organization_id, name, type, environment, key_preview, scopes, allowed_origins, \
     rate_limit, project_id, status, created_at, created_by, last_used_at, expires_at, rotated_at, \
     revoked_at, grace_expires_at";

impl ApiKey {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let expires_at: Option<String> = r.try_get("expires_at")?;
        let mut status: KeyStatus = r.get_parsed("status")?;
        if status == KeyStatus::Active
            && expires_at
                .as_deref()
                .is_some_and(|t| t <= storage::now().as_str())
        {
            status = KeyStatus::Expired;
        }
        let key_preview: String = r.try_get("key_preview")?;
        Ok(ApiKey {
            id: KeyId(r.try_get("id")?),
            object: "api_key",
            organization_id: r.try_get("organization_id")?,
            name: r.try_get("name")?,
            key_type: r.get_parsed("type")?,
            environment: r.get_parsed("environment")?,
            display_key: key_preview.clone(),
            key_preview,
            scopes: r.get_json("scopes")?,
            allowed_origins: r.get_json("allowed_origins")?,
            rate_limit: r
                .try_get::<Option<String>, _>("rate_limit")?
                .and_then(|s| serde_json::from_str(&s).ok()),
            project_id: r.try_get("project_id")?,
            status,
            created_at: r.get_time("created_at")?,
            created_by: r.try_get("created_by")?,
            last_used_at: r.get_time_opt("last_used_at")?,
            expires_at: expires_at.map(|t| storage::api_time(&t)),
            rotated_at: r.get_time_opt("rotated_at")?,
            revoked_at: r.get_time_opt("revoked_at")?,
            grace_expires_at: r.get_time_opt("grace_expires_at")?,
        })
    }

    /// The scopes the key carries, as strings.
    pub fn scope_names(&self) -> impl Iterator<Item = &str> {
        self.scopes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
}

/// One key of the organization; of `env` only, when the caller is confined to one (a test
/// caller sees test keys only, a live caller live keys only).
pub async fn load(db: &Db, org_id: &str, id: &str, env: Option<&str>) -> Result<ApiKey, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("API key not found"))?;
    let key = ApiKey::from_row(&row)?;
    if env.is_some_and(|e| e != key.environment.as_str()) {
        return Err(Error::not_found("API key not found"));
    }
    Ok(key)
}

/// Which keys a list shows. `status` is the derived one: `expired` is an active key past its
/// expiry, and `active` excludes those.
#[derive(Debug, Default, schemars::JsonSchema)]
pub struct KeyFilter {
    pub environment: Option<String>,
    pub key_type: Option<String>,
    pub status: Option<StatusFilter>,
    /// Only the keys of this project.
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
pub enum StatusFilter {
    Active,
    Expired,
    Disabled,
    Revoked,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(StatusFilter::Active),
            "expired" => Some(StatusFilter::Expired),
            "disabled" => Some(StatusFilter::Disabled),
            "revoked" => Some(StatusFilter::Revoked),
            _ => None,
        }
    }
}

/// One page of the organization's keys, newest first.
pub async fn list(
    db: &Db,
    org_id: &str,
    filter: KeyFilter,
    page: &Page,
) -> Result<List<ApiKey>, Error> {
    let mut sql = Sql::new(" FROM api_keys WHERE organization_id = ");
    sql.bind(org_id.to_string());
    if let Some(env) = filter.environment {
        sql.and("environment = ?", env);
    }
    if let Some(t) = filter.key_type {
        sql.and("type = ?", t);
    }
    if let Some(project) = filter.project_id {
        sql.and("project_id = ?", project);
    }
    match filter.status {
        None => {}
        Some(StatusFilter::Expired) => {
            sql.and("status = ?", "active")
                .and("expires_at <= ?", storage::now());
        }
        Some(StatusFilter::Active) => {
            sql.and("status = ?", "active")
                .push(" AND (expires_at IS NULL OR expires_at > ")
                .bind(storage::now())
                .push(")");
        }
        Some(StatusFilter::Disabled) => {
            sql.and("status = ?", "disabled");
        }
        Some(StatusFilter::Revoked) => {
            sql.and("status = ?", "revoked");
        }
    }
    let select = format!("SELECT {COLUMNS}");
    page.fetch(db, "api_keys", &select, &sql, "id DESC", ApiKey::from_row)
        .await
}

/// Whether `project_id` names a project of the organization.
pub async fn project_exists(db: &Db, org_id: &str, project_id: &str) -> Result<bool, Error> {
    let found: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE id = $1 AND organization_id = $2")
            .bind(project_id)
            .bind(org_id)
            .fetch_one(db.pool())
            .await?;
    Ok(found > 0)
}

/// The key a token's hash belongs to, if any (current or in its grace period).
pub async fn key_of_secret(db: &Db, secret_hash: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT key_id FROM api_key_secrets WHERE secret_hash = $1")
        .bind(secret_hash)
        .fetch_optional(db.pool())
        .await
}

/// A new key's value as stored: the preview and the hash of its token, never the token.
pub struct Secret {
    pub preview: String,
    pub hash: String,
}

/// A key to create (validated).
pub struct NewKey<'a> {
    pub id: &'a KeyId,
    pub organization_id: &'a str,
    pub name: &'a str,
    pub key_type: KeyType,
    pub environment: Environment,
    pub scopes: &'a [String],
    pub allowed_origins: &'a [String],
    pub rate_limit: Option<&'a Value>,
    pub project_id: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub expires_at: Option<&'a str>,
    pub secret: &'a Secret,
}

/// Inserts an active key and its first secret.
pub async fn insert(tx: &mut AnyConnection, key: &NewKey<'_>) -> Result<(), Error> {
    let now = storage::now();
    sqlx::query(
        "INSERT INTO api_keys (id, organization_id, name, type, environment, key_preview, scopes, allowed_origins, \
         rate_limit, project_id, status, created_by, created_at, updated_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $12, $12, $13)",
    )
    .bind(key.id.as_str())
    .bind(key.organization_id)
    .bind(key.name)
    .bind(key.key_type.as_str())
    .bind(key.environment.as_str())
    .bind(&key.secret.preview)
    .bind(json!(key.scopes).to_string())
    .bind(json!(key.allowed_origins).to_string())
    .bind(key.rate_limit.map(|r| r.to_string()))
    .bind(key.project_id)
    .bind(key.created_by)
    .bind(&now)
    .bind(key.expires_at)
    .execute(&mut *tx)
    .await?;
    add_secret(tx, key.id.as_str(), &key.secret.hash, &now).await
}

async fn add_secret(
    tx: &mut AnyConnection,
    key_id: &str,
    hash: &str,
    now: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(hash)
    .bind(key_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The fields a PATCH changes (validated; `None`: kept).
#[derive(Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    /// `active` or `disabled` (revoking is its own change).
    pub status: Option<KeyStatus>,
    pub rate_limit: Option<Value>,
}

pub async fn update(tx: &mut AnyConnection, id: &str, patch: &KeyPatch) -> Result<(), Error> {
    sqlx::query(
        "UPDATE api_keys SET updated_at = $1, name = COALESCE($2, name), \
         scopes = COALESCE($3, scopes), allowed_origins = COALESCE($4, allowed_origins), \
         status = COALESCE($5, status), rate_limit = COALESCE($6, rate_limit) WHERE id = $7",
    )
    .bind(storage::now())
    .bind(patch.name.as_deref())
    .bind(patch.scopes.as_ref().map(|s| json!(s).to_string()))
    .bind(patch.allowed_origins.as_ref().map(|o| json!(o).to_string()))
    .bind(patch.status.map(KeyStatus::as_str))
    .bind(patch.rate_limit.as_ref().map(Value::to_string))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn revoke(tx: &mut AnyConnection, id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE api_keys SET status = 'revoked', revoked_at = $1, updated_at = $1 WHERE id = $2",
    )
    .bind(storage::now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Gives the key a new secret: the current ones stay valid until `grace_until`.
pub async fn rotate(
    tx: &mut AnyConnection,
    id: &str,
    secret: &Secret,
    now: &str,
    grace_until: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE api_key_secrets SET grace_expires_at = $1 WHERE key_id = $2 AND grace_expires_at IS NULL",
    )
    .bind(grace_until)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    add_secret(tx, id, &secret.hash, now).await?;
    sqlx::query(
        "UPDATE api_keys SET key_preview = $1, rotated_at = $2, grace_expires_at = $3, updated_at = $2 WHERE id = $4",
    )
    .bind(&secret.preview)
    .bind(now)
    .bind(grace_until)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether an active publishable key's allowed origins match `pattern` (a LIKE pattern over the
/// stored JSON array, escaped with `\\`).
pub async fn publishable_key_allows(db: &Db, pattern: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys WHERE type = 'publishable' AND status = 'active' \
         AND allowed_origins LIKE $1 ESCAPE '\\'",
    )
    .bind(pattern)
    .fetch_one(db.pool())
    .await?;
    Ok(n > 0)
}
