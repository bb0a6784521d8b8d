//! User accounts: storage and the rules that every path creating a user shares.

use serde::Serialize;
use sqlx::Row;

use crate::{
    crypto,
    error::{Error, ResultExt},
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
pub async fn create(db: &Db, new: NewUser<'_>) -> Result<User, Error> {
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
    .execute(db.pool())
    .await
    .on_unique("users", "email", || {
        Error::conflict("A user with this email already exists")
    })?;
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
