//! Projects, organization configuration (key → JSON value) and log-storage settings (whose
//! credentials are write-only and encrypted with the master key).

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use crate::{
    app::AppState,
    error::{Error, FieldError},
    http::{
        extract::{Json, Path},
        pagination::{HasId, List, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Db, RowExt, Sql},
};

pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
const MAX_LIST: usize = 100;

#[derive(Debug, Serialize)]
pub struct Project {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub settings: Value,
    pub allowed_origins: Value,
    pub redirect_urls: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl HasId for Project {
    fn id(&self) -> &str {
        &self.id
    }
}

pub const PROJECT_COLUMNS: &str =
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
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
            updated_at: storage::api_time(&r.try_get::<String, _>("updated_at")?),
        })
    }
}

/// An origin is `scheme://host[:port]` with nothing after it.
pub fn is_origin(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.path() == "/"
            && u.query().is_none()
            && !s.ends_with('/')
    })
}

fn check_list(
    field: &str,
    list: &[String],
    ok: fn(&str) -> bool,
    what: &str,
    errors: &mut Vec<FieldError>,
) {
    if list.len() > MAX_LIST {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_LIST} entries"),
        ));
    }
    for (i, v) in list.iter().enumerate() {
        if v.len() > 2048 || !ok(v) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!("must be {what}"),
            ));
        }
    }
}

fn is_redirect_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    name: Option<String>,
    settings: Option<Value>,
    allowed_origins: Option<Vec<String>>,
    redirect_urls: Option<Vec<String>>,
}

impl ProjectInput {
    fn validate(&self, creating: bool) -> Result<(), Error> {
        let mut errors = Vec::new();
        match &self.name {
            Some(n) if n.trim().is_empty() || n.chars().count() > 200 => {
                errors.push(FieldError::new("name", "must be 1 to 200 characters"))
            }
            None if creating => errors.push(FieldError::new("name", "is required")),
            _ => {}
        }
        if let Some(s) = &self.settings {
            if !s.is_object() {
                errors.push(FieldError::new("settings", "must be an object"));
            } else if s.to_string().len() > MAX_CONFIG_VALUE_BYTES {
                errors.push(FieldError::new(
                    "settings",
                    "must be at most 64 KiB of JSON",
                ));
            }
        }
        if let Some(o) = &self.allowed_origins {
            check_list(
                "allowed_origins",
                o,
                is_origin,
                "an origin such as https://app.example.com",
                &mut errors,
            );
        }
        if let Some(r) = &self.redirect_urls {
            check_list(
                "redirect_urls",
                r,
                is_redirect_url,
                "an http(s) URL",
                &mut errors,
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(errors))
        }
    }
}

async fn load(db: &Db, org_id: &str, id: &str) -> Result<Project, Error> {
    let row = sqlx::query(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Project not found"))?;
    Ok(Project::from_row(&row)?)
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Json(body): Json<ProjectInput>,
) -> Result<impl IntoResponse, Error> {
    body.validate(true)?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE organization_id = $1")
        .bind(access.org_id())
        .fetch_one(state.db.pool())
        .await?;
    crate::billing::check_count_quota(&state, access.org_id(), "projects", "projects", count)
        .await?;
    let id = crate::ids::new_id("proj");
    let now = storage::now();
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO projects (id, organization_id, name, settings, allowed_origins, redirect_urls, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(&id)
    .bind(access.org_id())
    .bind(body.name.as_deref().unwrap_or_default().trim())
    .bind(body.settings.unwrap_or_else(|| json!({})).to_string())
    .bind(json!(body.allowed_origins.unwrap_or_default()).to_string())
    .bind(json!(body.redirect_urls.unwrap_or_default()).to_string())
    .bind(&now)
    .execute(&mut *tx)
        .await?;
    access
        .emit(
            &mut tx,
            "project.created",
            ("project", &id),
            json!({"id": id}),
        )
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(load(&state.db, access.org_id(), &id).await?),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsRead>,
    page: Page,
) -> Result<impl IntoResponse, Error> {
    let mut filter = Sql::new(" FROM projects WHERE organization_id = ");
    filter.bind(access.org_id().to_string());
    Ok(axum::Json(list_projects(&state.db, &filter, &page).await?))
}

/// One page of projects matching `filter` (`FROM projects WHERE …`).
pub async fn list_projects(db: &Db, filter: &Sql, page: &Page) -> Result<List<Project>, Error> {
    let select = format!("SELECT {PROJECT_COLUMNS}");
    page.fetch(db, "projects", &select, filter, "id", Project::from_row)
        .await
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(load(&state.db, access.org_id(), &id).await?))
}

pub async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<ProjectInput>,
) -> Result<impl IntoResponse, Error> {
    body.validate(false)?;
    load(&state.db, access.org_id(), &id).await?;
    let mut sql = Sql::new("UPDATE projects SET updated_at = ");
    sql.bind(storage::now());
    if let Some(v) = &body.name {
        sql.push(", name = ").bind(v.trim().to_string());
    }
    if let Some(v) = &body.settings {
        sql.push(", settings = ").bind(v.to_string());
    }
    if let Some(v) = &body.allowed_origins {
        sql.push(", allowed_origins = ").bind(json!(v).to_string());
    }
    if let Some(v) = &body.redirect_urls {
        sql.push(", redirect_urls = ").bind(json!(v).to_string());
    }
    sql.push(" WHERE id = ").bind(id.clone());
    sql.push(" AND organization_id = ")
        .bind(access.org_id().to_string());
    let mut tx = crate::events::begin_write(&state.db).await?;
    sql.query().execute(&mut *tx).await?;
    access
        .emit(
            &mut tx,
            "project.updated",
            ("project", &id),
            json!({"id": id}),
        )
        .await?;
    tx.commit().await?;
    Ok(axum::Json(load(&state.db, access.org_id(), &id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let mut tx = crate::events::begin_write(&state.db).await?;
    let done = sqlx::query("DELETE FROM projects WHERE id = $1 AND organization_id = $2")
        .bind(&id)
        .bind(access.org_id())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("Project not found"));
    }
    access
        .emit(
            &mut tx,
            "project.deleted",
            ("project", &id),
            json!({"id": &id}),
        )
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- configs ------------------------------------------------------------------------------

fn check_config_key(key: &str) -> Result<(), Error> {
    let ok = (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_field(
            "key",
            "must be 1 to 128 of A-Z a-z 0-9 _ - . :",
        ))
    }
}

fn config_json(r: &sqlx::any::AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "key": r.try_get::<String, _>("key")?,
        "value": r.get_json("value")?,
        "updated_at": storage::api_time(&r.try_get::<String, _>("updated_at")?),
    }))
}

pub async fn list_configs(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsRead>,
) -> Result<impl IntoResponse, Error> {
    let rows = sqlx::query(
        "SELECT key, value, updated_at FROM org_configs WHERE organization_id = $1 ORDER BY key",
    )
    .bind(access.org_id())
    .fetch_all(state.db.pool())
    .await?;
    let configs = rows
        .iter()
        .map(config_json)
        .collect::<Result<Vec<_>, _>>()?;
    let total = configs.len();
    Ok(axum::Json(
        json!({ "configs": configs, "total": total, "limit": total, "offset": 0, "has_more": false }),
    ))
}

pub async fn get_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsRead>,
    Path((_, key)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    let row = sqlx::query(
        "SELECT key, value, updated_at FROM org_configs WHERE organization_id = $1 AND key = $2",
    )
    .bind(access.org_id())
    .bind(&key)
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Config not found"))?;
    Ok(axum::Json(config_json(&row)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigValue {
    value: Value,
}

pub async fn put_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsManage>,
    Path((_, key)): Path<(String, String)>,
    Json(body): Json<ConfigValue>,
) -> Result<impl IntoResponse, Error> {
    check_config_key(&key)?;
    let text = body.value.to_string();
    if text.len() > MAX_CONFIG_VALUE_BYTES {
        return Err(Error::invalid_field(
            "value",
            "must be at most 64 KiB of JSON",
        ));
    }
    let now = storage::now();
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO org_configs (organization_id, key, value, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (organization_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(access.org_id())
    .bind(&key)
    .bind(&text)
    .bind(&now)
    .execute(&mut *tx)
        .await?;
    access
        .emit(
            &mut tx,
            "config.updated",
            ("config", &key),
            json!({"key": key}),
        )
        .await?;
    tx.commit().await?;
    Ok(axum::Json(
        json!({ "key": key, "value": body.value, "updated_at": storage::api_time(&now) }),
    ))
}

pub async fn delete_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsManage>,
    Path((_, key)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let mut tx = crate::events::begin_write(&state.db).await?;
    let done = sqlx::query("DELETE FROM org_configs WHERE organization_id = $1 AND key = $2")
        .bind(access.org_id())
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("Config not found"));
    }
    access
        .emit(
            &mut tx,
            "config.deleted",
            ("config", &key),
            json!({"id": &key}),
        )
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- storage settings ----------------------------------------------------------------------

const STORAGE_PROVIDERS: &[&str] = &["s3", "gcs", "azure_blob", "r2", "minio"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageInput {
    provider: String,
    bucket: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    prefix: String,
    retention_days: i64,
    credentials: Option<Value>,
}

async fn storage_json(db: &Db, org_id: &str) -> Result<Value, Error> {
    let row = sqlx::query(
        "SELECT provider, bucket, region, prefix, retention_days, credentials, updated_at FROM org_storage WHERE organization_id = $1",
    )
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else {
        return Ok(json!({ "configured": false }));
    };
    Ok(json!({
        "configured": true,
        "provider": r.try_get::<String, _>("provider")?,
        "bucket": r.try_get::<String, _>("bucket")?,
        "region": r.try_get::<String, _>("region")?,
        "prefix": r.try_get::<String, _>("prefix")?,
        "retention_days": r.try_get::<i64, _>("retention_days")?,
        "credentials_set": r.try_get::<Option<String>, _>("credentials")?.is_some(),
        "updated_at": storage::api_time(&r.try_get::<String, _>("updated_at")?),
    }))
}

pub async fn get_storage(
    State(state): State<AppState>,
    access: OrgAccess<perm::StorageManage>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(storage_json(&state.db, access.org_id()).await?))
}

pub async fn put_storage(
    State(state): State<AppState>,
    access: OrgAccess<perm::StorageManage>,
    Json(body): Json<StorageInput>,
) -> Result<impl IntoResponse, Error> {
    let mut errors = Vec::new();
    if !STORAGE_PROVIDERS.contains(&body.provider.as_str()) {
        errors.push(FieldError::new(
            "provider",
            format!("must be one of {}", STORAGE_PROVIDERS.join(", ")),
        ));
    }
    if body.bucket.trim().is_empty() || body.bucket.len() > 255 {
        errors.push(FieldError::new("bucket", "must be 1 to 255 characters"));
    }
    if body.region.len() > 64 || body.prefix.len() > 1024 {
        errors.push(FieldError::new(
            "region",
            "region ≤ 64 and prefix ≤ 1024 characters",
        ));
    }
    if !(1..=3650).contains(&body.retention_days) {
        errors.push(FieldError::new("retention_days", "must be from 1 to 3650"));
    }
    if let Some(c) = &body.credentials {
        if !c.is_object() || c.to_string().len() > 16 * 1024 {
            errors.push(FieldError::new(
                "credentials",
                "must be an object of at most 16 KiB",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    // Credentials are write-only: omitted, the stored ones are kept.
    let sealed = body.credentials.as_ref().map(|c| {
        state
            .master_key
            .encrypt(c.to_string().as_bytes(), access.org_id().as_bytes())
    });
    let now = storage::now();
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO org_storage (organization_id, provider, bucket, region, prefix, retention_days, credentials, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (organization_id) DO UPDATE SET provider = excluded.provider, bucket = excluded.bucket, \
         region = excluded.region, prefix = excluded.prefix, retention_days = excluded.retention_days, \
         credentials = COALESCE(excluded.credentials, org_storage.credentials), updated_at = excluded.updated_at",
    )
    .bind(access.org_id())
    .bind(&body.provider)
    .bind(body.bucket.trim())
    .bind(body.region.trim())
    .bind(body.prefix.trim())
    .bind(body.retention_days)
    .bind(sealed)
    .bind(&now)
    .execute(&mut *tx)
        .await?;
    access
        .emit(
            &mut tx,
            "storage.updated",
            ("storage", access.org_id()),
            json!({"provider": body.provider, "bucket": body.bucket.trim()}),
        )
        .await?;
    tx.commit().await?;
    Ok(axum::Json(storage_json(&state.db, access.org_id()).await?))
}
