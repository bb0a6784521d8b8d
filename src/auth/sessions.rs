//! Sessions and refresh tokens. A session is one sign-in on one device; its refresh tokens are
//! opaque, stored as SHA-256, single use and rotated on every use. Presenting a spent refresh
//! token is treated as theft: the whole session ends.

use serde::Serialize;
use sqlx::Row;

use crate::ids::UserId;
use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::{
        tokens::ACCESS_TTL,
        users::{User, USER_COLUMNS},
    },
    crypto,
    error::Error,
    http::request_meta::RequestMeta,
    ids::SessionId,
    storage::{self, Db, RowExt},
};

/// Lifetime of a session without use of its refresh token.
pub const REFRESH_TTL_DAYS: i64 = 30;

/// A session's tokens as answered once; `Debug` shows neither token.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SessionView {
    pub id: crate::ids::SessionId,
    pub device: String,
    pub ip_address: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub current: bool,
}

/// A session and its user, as an access token's check needs them.
pub struct SessionWithUser {
    pub user: User,
    pub revoked: bool,
    pub expires_at: String,
    pub last_seen_at: String,
}

/// The session `session_id` of user `user_id` (whatever its state), with the user.
pub async fn with_user(
    db: &Db,
    session_id: &str,
    user_id: &UserId,
) -> Result<Option<SessionWithUser>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {cols}, s.revoked_at AS s_revoked, s.expires_at AS s_expires, s.last_seen_at AS s_seen \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 AND u.id = $2",
        cols = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(SessionWithUser {
        revoked: row.try_get::<Option<String>, _>("s_revoked")?.is_some(),
        expires_at: row.try_get("s_expires")?,
        last_seen_at: row.try_get("s_seen")?,
        user: User::from_row(&row)?,
    }))
}

/// Records that a session was used now.
pub async fn touch(db: &Db, session_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
        .bind(storage::now())
        .bind(session_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

fn days_from_now(days: i64) -> String {
    storage::format_time(chrono::Utc::now() + chrono::Duration::days(days))
}

async fn new_refresh_token(db: &Db, session_id: &str) -> Result<String, Error> {
    let token = format!("rt_{}", crypto::random_base62(43));
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(crypto::sha256_hex(token.as_bytes()))
    .bind(session_id)
    .bind(storage::now())
    .bind(days_from_now(REFRESH_TTL_DAYS))
    .execute(db.pool())
    .await?;
    Ok(token)
}

fn access_token(state: &AppState, user_id: &UserId, session_id: &str) -> Result<String, Error> {
    state.keys.sign(&state.keys.claims(user_id, session_id))
}

/// Starts a session for a user who has proven who they are, and records the login.
pub async fn start(
    state: &AppState,
    user_id: &UserId,
    meta: &RequestMeta,
) -> Result<Tokens, Error> {
    let id = SessionId::generate();
    let now = storage::now();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, device, ip_address, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, $6)",
    )
    .bind(id.as_str())
    .bind(user_id)
    .bind(&meta.user_agent)
    .bind(meta.ip_string())
    .bind(&now)
    .bind(days_from_now(REFRESH_TTL_DAYS))
    .execute(state.db.pool())
    .await?;
    sqlx::query("UPDATE users SET last_login = $1 WHERE id = $2")
        .bind(&now)
        .bind(user_id)
        .execute(state.db.pool())
        .await?;
    Ok(Tokens {
        access_token: access_token(state, user_id, id.as_str())?,
        refresh_token: new_refresh_token(&state.db, id.as_str()).await?,
        token_type: "Bearer",
        expires_in: ACCESS_TTL.as_secs(),
    })
}

/// The refresh-token grant: spends the token and returns a new pair. A token already spent
/// ends its session (someone replayed it).
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<Tokens, Error> {
    let invalid = || Error::unauthorized("The refresh token is invalid or expired");
    let hash = crypto::sha256_hex(refresh_token.as_bytes());
    let row = sqlx::query(
        "SELECT r.session_id, r.expires_at, r.used_at, s.user_id, s.revoked_at, u.status \
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id \
         WHERE r.token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(invalid)?;
    let session_id: String = row.try_get("session_id")?;
    let user_id: UserId = row.try_get("user_id")?;
    let now = storage::now();
    if row.try_get::<Option<String>, _>("revoked_at")?.is_some() {
        return Err(invalid());
    }
    if row.try_get::<Option<String>, _>("used_at")?.is_some() {
        tracing::warn!(
            session_id,
            "spent refresh token presented again; ending the session"
        );
        revoke(&state.db, &session_id, "refresh_token_reuse").await?;
        return Err(invalid());
    }
    if row.try_get::<String, _>("expires_at")? <= now {
        return Err(invalid());
    }
    if crate::storage::RowExt::get_parsed::<Standing>(&row, "status")? != Standing::Active {
        return Err(Error::forbidden("This account is suspended"));
    }
    // Spend it; only one of two concurrent presentations wins.
    let spent = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(&now)
    .bind(&hash)
    .execute(state.db.pool())
    .await?;
    if spent.rows_affected() != 1 {
        revoke(&state.db, &session_id, "refresh_token_reuse").await?;
        return Err(invalid());
    }
    sqlx::query("UPDATE sessions SET last_seen_at = $1, expires_at = $2 WHERE id = $3")
        .bind(&now)
        .bind(days_from_now(REFRESH_TTL_DAYS))
        .bind(&session_id)
        .execute(state.db.pool())
        .await?;
    Ok(Tokens {
        access_token: access_token(state, &user_id, &session_id)?,
        refresh_token: new_refresh_token(&state.db, &session_id).await?,
        token_type: "Bearer",
        expires_in: ACCESS_TTL.as_secs(),
    })
}

/// Ends one session: its access tokens are refused from the next request, its refresh tokens
/// are dead.
pub async fn revoke(db: &Db, session_id: &str, reason: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(storage::now())
    .bind(reason)
    .bind(session_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Ends every session of a user, except `keep` if given, and every MFA login still waiting for
/// its second factor (a half-started session: it would otherwise outlive a password change).
pub async fn revoke_all(
    db: &Db,
    user_id: &UserId,
    keep: Option<&str>,
    reason: &str,
) -> Result<(), Error> {
    let now = storage::now();
    sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND revoked_at IS NULL AND id <> $4",
    )
    .bind(&now)
    .bind(reason)
    .bind(user_id)
    .bind(keep.unwrap_or(""))
    .execute(db.pool())
    .await?;
    sqlx::query("UPDATE mfa_challenges SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(&now)
        .bind(user_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The user's live sessions, newest first.
pub async fn list(
    db: &Db,
    user_id: &UserId,
    current: Option<&str>,
) -> Result<Vec<SessionView>, Error> {
    let rows = sqlx::query(
        "SELECT id, device, ip_address, created_at, last_seen_at, expires_at FROM sessions \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY id DESC LIMIT 100",
    )
    .bind(user_id)
    .bind(storage::now())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let id: crate::ids::SessionId = r.try_get("id")?;
            Ok(SessionView {
                current: current == Some(&*id),
                id,
                device: r.try_get("device")?,
                ip_address: r.try_get("ip_address")?,
                created_at: r.get_time("created_at")?,
                last_seen_at: r.get_time("last_seen_at")?,
                expires_at: r.get_time("expires_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(Into::into)
}
