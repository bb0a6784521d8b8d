//! Projects, organization configuration (key → JSON value) and log-storage settings (whose
//! credentials are write-only and encrypted with the master key): the routes, which validate and
//! write through [`Change`]; the queries are in `projects/store.rs`.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

pub use store::{list_projects, organization_of, Project};
use store::{Config, NewStorage, ProjectFields, StorageSettings};

use crate::{
    app::AppState,
    error::{Error, FieldError},
    events::Change,
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
};

mod store;

pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
const MAX_LIST: usize = 100;

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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    name: Option<String>,
    settings: Option<Value>,
    allowed_origins: Option<Vec<String>>,
    redirect_urls: Option<Vec<String>>,
}

impl ProjectInput {
    /// The fields to store (after [`Self::validate`]).
    fn fields(self) -> ProjectFields {
        ProjectFields {
            name: self.name.map(|n| n.trim().to_string()),
            settings: self.settings,
            allowed_origins: self.allowed_origins,
            redirect_urls: self.redirect_urls,
        }
    }

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

/// Every change of a project, config or storage setting is audited (none is cached).
fn change(action: &'static str, resource: &'static str, id: &str, data: Value) -> Change {
    Change::new(action, resource, id, data)
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Json(body): Json<ProjectInput>,
) -> Result<(StatusCode, axum::Json<Project>), Error> {
    body.validate(true)?;
    let count = store::count(&state.db, access.org_id()).await?;
    crate::billing::check_count_quota(&state, access.org_id(), "projects", "projects", count)
        .await?;
    let id = crate::ids::ProjectId::generate();
    let fields = body.fields();
    change("project.created", "project", &id, json!({"id": id}))
        .write(&state, &access, async |tx| {
            store::insert(tx, access.org_id(), &id, fields).await
        })
        .await?;
    // Its projects count changed: checked against the usage thresholds.
    state.usage.touch(access.org_id());
    Ok((
        StatusCode::CREATED,
        axum::Json(store::load(&state.db, access.org_id(), &id).await?),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsRead>,
    page: Page,
) -> Result<axum::Json<List<Project>>, Error> {
    Ok(axum::Json(
        store::list(&state.db, access.org_id(), &page).await?,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsRead>,
    Path((_, id)): Path<(String, crate::ids::ProjectId)>,
) -> Result<axum::Json<Project>, Error> {
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Path((_, id)): Path<(String, crate::ids::ProjectId)>,
    Json(body): Json<ProjectInput>,
) -> Result<axum::Json<Project>, Error> {
    body.validate(false)?;
    store::load(&state.db, access.org_id(), &id).await?;
    let fields = body.fields();
    change("project.updated", "project", &id, json!({"id": id}))
        .write(&state, &access, async |tx| {
            store::update(tx, access.org_id(), &id, fields).await
        })
        .await?;
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsUpdate>,
    Path((_, id)): Path<(String, crate::ids::ProjectId)>,
) -> Result<StatusCode, Error> {
    change("project.deleted", "project", &id, json!({"id": &id}))
        .write(&state, &access, async |tx| {
            store::delete(tx, access.org_id(), &id).await
        })
        .await?;
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

pub async fn list_configs(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsRead>,
    page: Page,
) -> Result<axum::Json<List<Config>>, Error> {
    Ok(axum::Json(
        store::configs(&state.db, access.org_id(), &page).await?,
    ))
}

pub async fn get_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsRead>,
    Path((_, key)): Path<(String, String)>,
) -> Result<axum::Json<Config>, Error> {
    Ok(axum::Json(
        store::config(&state.db, access.org_id(), &key).await?,
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ProjectConfigValue")]
pub struct ConfigValue {
    value: Value,
}

pub async fn put_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsManage>,
    Path((_, key)): Path<(String, String)>,
    Json(body): Json<ConfigValue>,
) -> Result<axum::Json<Config>, Error> {
    check_config_key(&key)?;
    if body.value.to_string().len() > MAX_CONFIG_VALUE_BYTES {
        return Err(Error::invalid_field(
            "value",
            "must be at most 64 KiB of JSON",
        ));
    }
    let config = change("config.updated", "config", &key, json!({"key": key}))
        .write(&state, &access, async |tx| {
            store::put_config(tx, access.org_id(), &key, body.value).await
        })
        .await?;
    Ok(axum::Json(config))
}

pub async fn delete_config(
    State(state): State<AppState>,
    access: OrgAccess<perm::ConfigsManage>,
    Path((_, key)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    change("config.deleted", "config", &key, json!({"id": &key}))
        .write(&state, &access, async |tx| {
            store::delete_config(tx, access.org_id(), &key).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- storage settings ----------------------------------------------------------------------

const STORAGE_PROVIDERS: &[&str] = &["s3", "gcs", "azure_blob", "r2", "minio"];

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

pub async fn get_storage(
    State(state): State<AppState>,
    access: OrgAccess<perm::StorageManage>,
) -> Result<axum::Json<StorageSettings>, Error> {
    Ok(axum::Json(
        store::storage_settings(&state.db, access.org_id()).await?,
    ))
}

pub async fn put_storage(
    State(state): State<AppState>,
    access: OrgAccess<perm::StorageManage>,
    Json(body): Json<StorageInput>,
) -> Result<axum::Json<StorageSettings>, Error> {
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
    let settings = NewStorage {
        provider: &body.provider,
        bucket: body.bucket.trim(),
        region: body.region.trim(),
        prefix: body.prefix.trim(),
        retention_days: body.retention_days,
        sealed_credentials: body.credentials.as_ref().map(|c| {
            state
                .master_key
                .encrypt(c.to_string().as_bytes(), access.org_id().as_bytes())
        }),
    };
    let event = json!({"provider": body.provider, "bucket": body.bucket.trim()});
    change("storage.updated", "storage", access.org_id(), event)
        .write(&state, &access, async |tx| {
            store::put_storage(tx, access.org_id(), settings).await
        })
        .await?;
    Ok(axum::Json(
        store::storage_settings(&state.db, access.org_id()).await?,
    ))
}
