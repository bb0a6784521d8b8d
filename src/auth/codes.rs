//! Single-use secrets sent to or held by a user: 6-digit codes (email verification and
//! passwordless login: keyed hash, 10 minutes, 5 attempts, single use), password-reset tokens
//! (SHA-256, 1 hour, single use) and MFA login challenges (SHA-256, 5 minutes, 5 attempts).
//! Attempts are counted before a code is compared, in one conditional statement.

use sqlx::Row;

use crate::ids::UserId;
use crate::{
    app::AppState,
    crypto,
    error::Error,
    storage::{self, Db},
};

pub const CODE_TTL_MINUTES: i64 = 10;
pub const MAX_ATTEMPTS: i64 = 5;
pub const RESET_TTL_MINUTES: i64 = 60;
pub const MFA_CHALLENGE_TTL_MINUTES: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    Login,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::Login => "login",
        }
    }
}

fn minutes_from_now(m: i64) -> String {
    storage::format_time(chrono::Utc::now() + chrono::Duration::minutes(m))
}

fn code_key(state: &AppState) -> [u8; 32] {
    state.master_key.derive("one-time-codes")
}

/// Issues a new code (earlier unused codes of the same purpose die) and returns it.
pub async fn issue_code(
    state: &AppState,
    user_id: &UserId,
    purpose: Purpose,
) -> Result<String, Error> {
    let code = crypto::random_digits(6);
    let now = storage::now();
    let mut tx = state.db.pool().begin().await?;
    sqlx::query(
        "UPDATE one_time_codes SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL",
    )
    .bind(&now)
    .bind(user_id)
    .bind(purpose.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO one_time_codes (id, user_id, purpose, code_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(crate::ids::CodeId::generate())
    .bind(user_id)
    .bind(purpose.as_str())
    .bind(crypto::keyed_digest(&code_key(state), &code))
    .bind(&now)
    .bind(minutes_from_now(CODE_TTL_MINUTES))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(code)
}

/// Spends the user's live code of this purpose if `code` matches. An attempt is claimed before
/// the code is compared (one conditional UPDATE: however many requests race, at most
/// [`MAX_ATTEMPTS`] are ever compared), and the code dies after the fifth. An unknown user
/// (`None`) runs the same statement, which matches nothing, so it answers after the same work.
pub async fn consume_code(
    state: &AppState,
    user_id: Option<&str>,
    purpose: Purpose,
    code: &str,
) -> Result<(), Error> {
    let invalid = || Error::unauthorized("The code is invalid or expired");
    let presented = crypto::keyed_digest(&code_key(state), code.trim());
    let now = storage::now();
    let row = sqlx::query(
        "UPDATE one_time_codes SET attempts = attempts + 1 \
         WHERE id = (SELECT id FROM one_time_codes \
                     WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
                     ORDER BY id DESC LIMIT 1) \
           AND used_at IS NULL AND attempts < $4 \
         RETURNING id, code_hash",
    )
    .bind(user_id.unwrap_or(""))
    .bind(purpose.as_str())
    .bind(&now)
    .bind(MAX_ATTEMPTS)
    .fetch_optional(state.db.pool())
    .await?;
    let Some(row) = row else {
        return Err(invalid());
    };
    let id: String = row.try_get("id")?;
    let stored: String = row.try_get("code_hash")?;
    if !crypto::constant_time_eq(stored.as_bytes(), presented.as_bytes()) {
        return Err(invalid());
    }
    let spent =
        sqlx::query("UPDATE one_time_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(&now)
            .bind(&id)
            .execute(state.db.pool())
            .await?;
    if spent.rows_affected() == 1 {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// A password-reset token for the user (earlier unused ones die).
pub async fn issue_reset_token(db: &Db, user_id: &UserId) -> Result<String, Error> {
    let token = format!("rst_{}", crypto::random_base62(40));
    let now = storage::now();
    sqlx::query("UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(&now)
        .bind(user_id)
        .execute(db.pool())
        .await?;
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(crypto::sha256_hex(token.as_bytes()))
    .bind(user_id)
    .bind(&now)
    .bind(minutes_from_now(RESET_TTL_MINUTES))
    .execute(db.pool())
    .await?;
    Ok(token)
}

/// The user of a live reset token, without spending it.
pub async fn peek_reset_token(db: &Db, token: &str) -> Result<UserId, Error> {
    let row = sqlx::query(
        "SELECT user_id FROM password_resets WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(crypto::sha256_hex(token.trim().as_bytes()))
    .bind(storage::now())
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::unauthorized("The reset token is invalid, expired or already used"))?;
    Ok(row.try_get("user_id")?)
}

/// Spends a reset token; returns its user.
pub async fn consume_reset_token(db: &Db, token: &str) -> Result<UserId, Error> {
    let invalid = || Error::unauthorized("The reset token is invalid, expired or already used");
    let hash = crypto::sha256_hex(token.trim().as_bytes());
    let now = storage::now();
    let row = sqlx::query(
        "SELECT user_id FROM password_resets WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(&hash)
    .bind(&now)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(invalid)?;
    let spent = sqlx::query(
        "UPDATE password_resets SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(&now)
    .bind(&hash)
    .execute(db.pool())
    .await?;
    if spent.rows_affected() != 1 {
        return Err(invalid());
    }
    Ok(row.try_get("user_id")?)
}

/// The `mfa_token` a password login returns when the account has MFA on.
pub async fn issue_mfa_challenge(
    db: &Db,
    user_id: &UserId,
    device: &str,
    ip: &str,
) -> Result<String, Error> {
    let token = format!("mfa_{}", crypto::random_base62(40));
    sqlx::query(
        "INSERT INTO mfa_challenges (token_hash, user_id, device, ip_address, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(crypto::sha256_hex(token.as_bytes()))
    .bind(user_id)
    .bind(device)
    .bind(ip)
    .bind(storage::now())
    .bind(minutes_from_now(MFA_CHALLENGE_TTL_MINUTES))
    .execute(db.pool())
    .await?;
    Ok(token)
}

/// Claims one attempt on a live MFA challenge and returns its user. One conditional UPDATE
/// counts the attempt before any code is checked, so however many requests race on one
/// `mfa_token`, at most [`MAX_ATTEMPTS`] of them ever get to check a code.
pub async fn claim_mfa_attempt(db: &Db, token: &str) -> Result<UserId, Error> {
    let row = sqlx::query(
        "UPDATE mfa_challenges SET attempts = attempts + 1 \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 AND attempts < $3 \
         RETURNING user_id",
    )
    .bind(crypto::sha256_hex(token.trim().as_bytes()))
    .bind(storage::now())
    .bind(MAX_ATTEMPTS)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::unauthorized("The MFA token is invalid or expired"))?;
    Ok(row.try_get("user_id")?)
}

/// Spends a challenge whose code was right; false if another request spent it first.
pub async fn spend_mfa_challenge(db: &Db, token: &str) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE mfa_challenges SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(storage::now())
    .bind(crypto::sha256_hex(token.trim().as_bytes()))
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
