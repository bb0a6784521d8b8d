//! User accounts: storage and the rules that every path creating a user shares.

use serde::Serialize;
use sqlx::Row;

use crate::{
    crypto,
    error::{Error, ResultExt},
    events::{emit, ActorContext, NewEvent},
    ids::UserId,
    storage::{self, Db, RowExt},
};

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub status: String,
    pub email_verified: bool,
    pub mfa_enabled: bool,
    pub is_platform_admin: bool,
    pub metadata: serde_json::Value,
    pub created_at: String,
    pub last_login: Option<String>,
}

pub const USER_COLUMNS: &str = "id, email, name, status, email_verified, mfa_enabled, \
     is_platform_admin, metadata, created_at, last_login";

impl User {
    pub fn from_row(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: UserId(row.try_get("id")?),
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            status: row.try_get("status")?,
            email_verified: row.get_bool("email_verified")?,
            mfa_enabled: row.get_bool("mfa_enabled")?,
            is_platform_admin: row.get_bool("is_platform_admin")?,
            metadata: row.get_json("metadata")?,
            created_at: storage::api_time(&row.try_get::<String, _>("created_at")?),
            last_login: row
                .try_get::<Option<String>, _>("last_login")?
                .map(|t| storage::api_time(&t)),
        })
    }
}

/// Lower-cases and trims an email, and checks its shape (one `@`, a dot in the domain,
/// at most 254 characters).
pub fn normalize_email(email: &str) -> Result<String, Error> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split('@').count() == 2
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Error::invalid_field("email", "must be an email address"));
    }
    Ok(email)
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password: &'a str,
    pub is_platform_admin: bool,
    pub email_verified: bool,
}

/// Creates a user after checking the email and password rules. Hashing runs off the async
/// threads.
pub async fn create(db: &Db, ctx: &ActorContext, new: NewUser<'_>) -> Result<User, Error> {
    let email = normalize_email(new.email)?;
    crate::auth::password::check_password(new.password, Some(&email))
        .map_err(|reason| Error::invalid_field("password", reason))?;
    if new.name.chars().count() > 200 {
        return Err(Error::invalid_field(
            "name",
            "must be at most 200 characters",
        ));
    }
    let password = new.password.to_string();
    let hash = tokio::task::spawn_blocking(move || crypto::hash_password(&password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing task failed: {e}"))?;
    let id = UserId::generate();
    let now = storage::now();
    let mut tx = crate::events::begin_write(db).await?;
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, is_platform_admin, email_verified, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(id.as_str())
    .bind(&email)
    .bind(new.name)
    .bind(&hash)
    .bind(new.is_platform_admin)
    .bind(new.email_verified)
    .bind(&now)
    .execute(&mut *tx)
    .await
    .on_unique("users", "email", || {
        Error::conflict("A user with this email already exists")
    })?;
    emit(
        &mut tx,
        ctx,
        NewEvent::new("user.created", "user", Some(id.0.clone()))
            .data(serde_json::json!({"id": id.0, "email": email})),
    )
    .await?;
    tx.commit().await?;
    get(db, &id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user vanished after insert").into())
}

pub async fn get(db: &Db, id: &UserId) -> Result<Option<User>, Error> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(User::from_row).transpose()?)
}

pub async fn count(db: &Db) -> Result<i64, Error> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(db.pool())
        .await?)
}

/// What a login needs to know about an account.
pub struct Credentials {
    pub id: String,
    pub email: String,
    pub password_hash: Option<String>,
    pub status: String,
    pub mfa_enabled: bool,
}

pub async fn credentials_by_email(db: &Db, email: &str) -> Result<Option<Credentials>, Error> {
    let email = email.trim().to_lowercase();
    let row = sqlx::query(
        "SELECT id, email, password_hash, status, mfa_enabled FROM users WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(Credentials {
            id: r.try_get("id")?,
            email: r.try_get("email")?,
            password_hash: r.try_get("password_hash")?,
            status: r.try_get("status")?,
            mfa_enabled: r.get_bool("mfa_enabled")?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| e.into())
}

/// Verifies a password off the async threads. With no account (`hash` None) it verifies
/// against a dummy hash, so unknown emails cost the same time as wrong passwords.
pub async fn verify_password(password: &str, hash: Option<&str>) -> Result<bool, Error> {
    let password = password.to_string();
    let known = hash.is_some();
    let hash = hash
        .unwrap_or_else(|| crypto::dummy_password_hash())
        .to_string();
    let ok = tokio::task::spawn_blocking(move || crypto::verify_password(&password, &hash))
        .await
        .map_err(|e| anyhow::anyhow!("password check task failed: {e}"))?;
    Ok(ok && known)
}

/// Checks the rules and stores a new password.
pub async fn set_password(
    db: &Db,
    user_id: &str,
    email: &str,
    password: &str,
) -> Result<(), Error> {
    crate::auth::password::check_password(password, Some(email))
        .map_err(|reason| Error::invalid_field("new_password", reason))?;
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || crypto::hash_password(&password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing task failed: {e}"))?;
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(&hash)
        .bind(storage::now())
        .bind(user_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

pub async fn mark_email_verified(db: &Db, user_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE users SET email_verified = $1, updated_at = $2 WHERE id = $3")
        .bind(true)
        .bind(storage::now())
        .bind(user_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A profile change: each field only if given.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    pub name: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Admin-only fields on top of the profile.
#[derive(Debug, Default)]
pub struct AdminPatch {
    pub status: Option<String>,
    pub is_platform_admin: Option<bool>,
}

pub const MAX_METADATA_BYTES: usize = 8 * 1024;

pub async fn update(
    db: &Db,
    ctx: &ActorContext,
    user_id: &str,
    profile: ProfilePatch,
    admin: AdminPatch,
) -> Result<User, Error> {
    let mut errors = Vec::new();
    if let Some(name) = &profile.name {
        if name.chars().count() > 200 {
            errors.push(crate::error::FieldError::new(
                "name",
                "must be at most 200 characters",
            ));
        }
    }
    if let Some(meta) = &profile.metadata {
        if !meta.is_object() {
            errors.push(crate::error::FieldError::new(
                "metadata",
                "must be an object",
            ));
        } else if meta.to_string().len() > MAX_METADATA_BYTES {
            errors.push(crate::error::FieldError::new(
                "metadata",
                "must be at most 8 KiB of JSON",
            ));
        }
    }
    if let Some(status) = &admin.status {
        if status != "active" && status != "suspended" {
            errors.push(crate::error::FieldError::new(
                "status",
                "must be active or suspended",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let changed: Vec<&str> = [
        ("name", profile.name.is_some()),
        ("metadata", profile.metadata.is_some()),
        ("status", admin.status.is_some()),
        ("is_platform_admin", admin.is_platform_admin.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let mut sql = crate::storage::Sql::new("UPDATE users SET updated_at = ");
    sql.bind(storage::now());
    if let Some(name) = profile.name {
        sql.push(", name = ").bind(name.trim().to_string());
    }
    if let Some(meta) = profile.metadata {
        sql.push(", metadata = ").bind(meta.to_string());
    }
    if let Some(status) = admin.status {
        sql.push(", status = ").bind(status);
    }
    if let Some(flag) = admin.is_platform_admin {
        sql.push(", is_platform_admin = ").bind(flag);
    }
    sql.push(" WHERE id = ").bind(user_id);
    let mut tx = crate::events::begin_write(db).await?;
    sql.query().execute(&mut *tx).await?;
    emit(
        &mut tx,
        ctx,
        NewEvent::new("user.updated", "user", Some(user_id.to_string()))
            .data(serde_json::json!({"id": user_id}))
            .metadata(serde_json::json!({"changed": changed})),
    )
    .await?;
    tx.commit().await?;
    get(db, &UserId(user_id.to_string()))
        .await?
        .ok_or_else(|| Error::not_found("User not found"))
}
