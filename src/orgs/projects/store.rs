//! Projects, organization configs and log-storage settings in the database (`projects`,
//! `org_configs`, `org_storage`). Reads take the pool; writes take the caller's transaction (see
//! [`crate::events::change`]).

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use crate::ids::ProjectId;
use crate::{
    error::Error,
    events::change::found,
    http::pagination::{has_id, HasId, List, Page},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Project {
    pub id: ProjectId,
    pub organization_id: crate::ids::OrgId,
    pub name: String,
    pub settings: Value,
    pub allowed_origins: Value,
    pub redirect_urls: Value,
    pub created_at: String,
    pub updated_at: String,
}

has_id!(Project);

const PROJECT_COLUMNS: &str =
    "id, organization_id, name, settings, allowed_origins, redirect_urls, created_at, updated_at";

impl Project {
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Project {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            name: r.try_get("name")?,
            settings: r.get_json("settings")?,
            allowed_origins: r.get_json("allowed_origins")?,
            redirect_urls: r.get_json("redirect_urls")?,
            created_at: r.get_time("created_at")?,
            updated_at: r.get_time("updated_at")?,
        })
    }
}

pub async fn load(db: &Db, org_id: &str, id: &ProjectId) -> Result<Project, Error> {
    let sql =
        format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE organization_id = $1 AND id = $2");
    let row = one_row(db, &sql, org_id, id, "Project not found").await?;
    Ok(Project::from_row(&row)?)
}

/// The organization of the project `id` (any organization's); not found if there is none.
pub async fn organization_of(db: &Db, id: &ProjectId) -> Result<String, Error> {
    sqlx::query_scalar("SELECT organization_id FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::not_found("Project not found"))
}

/// Reads one row of the organization (`$1`) by its key (`$2`); not found if there is none.
async fn one_row(
    db: &Db,
    sql: &str,
    org_id: &str,
    key: &str,
    not_found: &'static str,
) -> Result<sqlx::any::AnyRow, Error> {
    sqlx::query(sql)
        .bind(org_id)
        .bind(key)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::not_found(not_found))
}

/// One page of projects matching `filter` (`FROM projects WHERE …`).
pub async fn list_projects(db: &Db, filter: &Sql, page: &Page) -> Result<List<Project>, Error> {
    let select = format!("SELECT {PROJECT_COLUMNS}");
    page.fetch(db, "projects", &select, filter, "id", Project::from_row)
        .await
}

/// One page of the organization's projects.
pub async fn list(db: &Db, org_id: &str, page: &Page) -> Result<List<Project>, Error> {
    let mut filter = Sql::new(" FROM projects WHERE organization_id = ");
    filter.bind(org_id.to_string());
    list_projects(db, &filter, page).await
}

pub async fn count(db: &Db, org_id: &str) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE organization_id = $1")
            .bind(org_id)
            .fetch_one(db.pool())
            .await?,
    )
}

/// What a project is made of (validated). On create, `None` is the empty value; on update, it
/// keeps the stored one.
#[derive(Debug, Default)]
pub struct ProjectFields {
    pub name: Option<String>,
    pub settings: Option<Value>,
    pub allowed_origins: Option<Vec<String>>,
    pub redirect_urls: Option<Vec<String>>,
}

/// A project's fields, then the time of the write, the id and the organization: the order both
/// statements below name them in (`None` fields take the default on insert, keep the stored
/// value on update).
fn bind_fields<'q>(q: storage::AnyQuery<'q>, p: ProjectFields) -> storage::AnyQuery<'q> {
    q.bind(p.name)
        .bind(p.settings.map(|v| v.to_string()))
        .bind(p.allowed_origins.map(|v| json!(v).to_string()))
        .bind(p.redirect_urls.map(|v| json!(v).to_string()))
        .bind(storage::now())
}

/// Runs `sql` (one of the two below) with a project's binds.
async fn write(
    tx: &mut AnyConnection,
    sql: &str,
    org_id: &str,
    id: &ProjectId,
    p: ProjectFields,
) -> Result<(), Error> {
    bind_fields(sqlx::query(sql), p)
        .bind(id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn insert(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &ProjectId,
    p: ProjectFields,
) -> Result<(), Error> {
    let sql = "INSERT INTO projects (name, settings, allowed_origins, redirect_urls, created_at, \
               updated_at, id, organization_id) VALUES (COALESCE($1, ''), COALESCE($2, '{}'), \
               COALESCE($3, '[]'), COALESCE($4, '[]'), $5, $5, $6, $7)";
    write(tx, sql, org_id, id, p).await
}

pub async fn update(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &ProjectId,
    p: ProjectFields,
) -> Result<(), Error> {
    let sql = "UPDATE projects SET name = COALESCE($1, name), settings = COALESCE($2, settings), \
               allowed_origins = COALESCE($3, allowed_origins), \
               redirect_urls = COALESCE($4, redirect_urls), updated_at = $5 \
               WHERE id = $6 AND organization_id = $7";
    write(tx, sql, org_id, id, p).await
}

pub async fn delete(tx: &mut AnyConnection, org_id: &str, id: &ProjectId) -> Result<(), Error> {
    let sql = "DELETE FROM projects WHERE organization_id = $1 AND id = $2";
    delete_one(tx, sql, org_id, id, "Project not found").await
}

/// Runs a delete of one row of the organization (`$1`) by its key (`$2`); not found if there
/// was none.
async fn delete_one(
    tx: &mut AnyConnection,
    sql: &'static str,
    org_id: &str,
    key: &str,
    not_found: &'static str,
) -> Result<(), Error> {
    let done = sqlx::query(sql)
        .bind(org_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    found(done, not_found)
}

// ---- configs ------------------------------------------------------------------------------

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Config {
    pub key: String,
    pub value: Value,
    pub updated_at: String,
}

impl Config {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Config {
            key: r.try_get("key")?,
            value: r.get_json("value")?,
            updated_at: r.get_time("updated_at")?,
        })
    }
}

impl HasId for Config {
    fn id(&self) -> &str {
        &self.key
    }
}

/// One page of the organization's configs, by key.
pub async fn configs(db: &Db, org_id: &str, page: &Page) -> Result<List<Config>, Error> {
    let mut filter = Sql::new(" FROM org_configs WHERE organization_id = ");
    filter.bind(org_id);
    let select = "SELECT key, value, updated_at";
    page.fetch(db, "configs", select, &filter, "key", Config::from_row)
        .await
}

pub async fn config(db: &Db, org_id: &str, key: &str) -> Result<Config, Error> {
    let sql =
        "SELECT key, value, updated_at FROM org_configs WHERE organization_id = $1 AND key = $2";
    let row = one_row(db, sql, org_id, key, "Config not found").await?;
    Ok(Config::from_row(&row)?)
}

/// Sets a config (created or replaced); returns it as stored.
pub async fn put_config(
    tx: &mut AnyConnection,
    org_id: &str,
    key: &str,
    value: Value,
) -> Result<Config, Error> {
    let now = storage::now();
    sqlx::query(
        "INSERT INTO org_configs (organization_id, key, value, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (organization_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(org_id)
    .bind(key)
    .bind(value.to_string())
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    Ok(Config {
        key: key.to_string(),
        value,
        updated_at: storage::api_time(&now),
    })
}

pub async fn delete_config(tx: &mut AnyConnection, org_id: &str, key: &str) -> Result<(), Error> {
    let sql = "DELETE FROM org_configs WHERE organization_id = $1 AND key = $2";
    delete_one(tx, sql, org_id, key, "Config not found").await
}

// ---- storage settings ----------------------------------------------------------------------

/// The log-storage settings as shown: the credentials only as whether they are set.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum StorageSettings {
    NotConfigured {
        configured: bool,
    },
    Configured {
        configured: bool,
        provider: String,
        bucket: String,
        region: String,
        prefix: String,
        retention_days: i64,
        credentials_set: bool,
        updated_at: String,
    },
}

pub async fn storage_settings(db: &Db, org_id: &str) -> Result<StorageSettings, Error> {
    let row = sqlx::query(
        "SELECT provider, bucket, region, prefix, retention_days, credentials, updated_at FROM org_storage WHERE organization_id = $1",
    )
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else {
        return Ok(StorageSettings::NotConfigured { configured: false });
    };
    Ok(StorageSettings::Configured {
        configured: true,
        provider: r.try_get("provider")?,
        bucket: r.try_get("bucket")?,
        region: r.try_get("region")?,
        prefix: r.try_get("prefix")?,
        retention_days: r.try_get("retention_days")?,
        credentials_set: r.try_get::<Option<String>, _>("credentials")?.is_some(),
        updated_at: r.get_time("updated_at")?,
    })
}

/// Log-storage settings to store (validated, trimmed; credentials sealed, `None`: kept).
pub struct NewStorage<'a> {
    pub provider: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub prefix: &'a str,
    pub retention_days: i64,
    pub sealed_credentials: Option<String>,
}

pub async fn put_storage(
    tx: &mut AnyConnection,
    org_id: &str,
    s: NewStorage<'_>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO org_storage (organization_id, provider, bucket, region, prefix, retention_days, credentials, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (organization_id) DO UPDATE SET provider = excluded.provider, bucket = excluded.bucket, \
         region = excluded.region, prefix = excluded.prefix, retention_days = excluded.retention_days, \
         credentials = COALESCE(excluded.credentials, org_storage.credentials), updated_at = excluded.updated_at",
    )
    .bind(org_id)
    .bind(s.provider)
    .bind(s.bucket)
    .bind(s.region)
    .bind(s.prefix)
    .bind(s.retention_days)
    .bind(s.sealed_credentials)
    .bind(storage::now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
