//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s) with replay protection, and 10 single-use recovery
//! codes stored as keyed hashes. The TOTP secret is stored encrypted with the master key.
//!
//! Every check of a signed-in user's second factor (enabling, disabling) is limited:
//! [`MAX_WRONG_CODES`] wrong codes per [`LOCK_MINUTES`]-minute window, then 429 until the window
//! ends. Each check is claimed before the code is evaluated, by one conditional UPDATE, so
//! parallel guesses cannot pass the limit; a right code clears the count. The MFA step of a
//! login is limited per challenge (5 attempts per `mfa_token`, see `codes`) **and** per user
//! ([`MAX_LOGIN_CODES`] per [`LOCK_MINUTES`] minutes, counted the same way in a row of its own:
//! a new login with the password hands out a new `mfa_token`, not new guesses), and challenges
//! come only from a throttled first factor.

use sqlx::Row;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::ids::UserId;
use crate::{
    app::AppState,
    crypto,
    error::{Error, ErrorCode},
    storage::{self, RowExt},
};

pub const RECOVERY_CODES: usize = 10;
/// Wrong second-factor codes a user may send per window.
pub const MAX_WRONG_CODES: i64 = 5;
/// Codes a user may send at the MFA step of logins per window, whatever `mfa_token` carries
/// them (a right code clears the count). Above a challenge's own 5, so that one login's misses
/// never lock the next; apart from [`MAX_WRONG_CODES`], so failed logins do not use up a
/// signed-in user's checks.
pub const MAX_LOGIN_CODES: i64 = 10;
/// The window of [`MAX_WRONG_CODES`] and [`MAX_LOGIN_CODES`], from its first check.
pub const LOCK_MINUTES: i64 = 15;

/// A per-user count of second-factor checks: its table (`user_id`, `window_started_at`,
/// `attempts`) and its bound per [`LOCK_MINUTES`]-minute window.
#[derive(Debug, Clone, Copy)]
struct CheckLimit {
    table: &'static str,
    max: i64,
}

/// A signed-in user's checks (enabling, disabling MFA).
const SIGNED_IN: CheckLimit = CheckLimit {
    table: "mfa_attempts",
    max: MAX_WRONG_CODES,
};

/// The MFA step of logins, across every `mfa_token` of the user.
const LOGIN: CheckLimit = CheckLimit {
    table: "mfa_login_attempts",
    max: MAX_LOGIN_CODES,
};
const ISSUER: &str = "Gatehouse";

fn totp(secret: Vec<u8>, account: &str) -> Result<TOTP, Error> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some(ISSUER.into()),
        account.into(),
    )
    .map_err(|e| anyhow::anyhow!("TOTP set-up failed: {e}").into())
}

fn recovery_key(state: &AppState) -> [u8; 32] {
    state.master_key.derive("mfa-recovery-codes")
}

pub struct Enrolment {
    pub secret: String,
    pub otpauth_uri: String,
}

/// Starts (or restarts) TOTP enrolment: a new secret, not yet enabled.
pub async fn enrol(state: &AppState, user_id: &UserId, email: &str) -> Result<Enrolment, Error> {
    let existing = sqlx::query("SELECT enabled FROM mfa_totp WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(state.db.pool())
        .await?;
    if let Some(row) = existing {
        if row.get_bool("enabled")? {
            return Err(Error::conflict("MFA is already enabled; disable it first"));
        }
    }
    let secret = match Secret::generate_secret().to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => return Err(anyhow::anyhow!("secret generation failed: {e:?}").into()),
    };
    let t = totp(secret.clone(), email)?;
    let sealed = state.master_key.encrypt(&secret, user_id.as_bytes());
    sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(user_id)
        .execute(state.db.pool())
        .await?;
    sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret, enabled, last_step, created_at) VALUES ($1, $2, $3, 0, $4)",
    )
    .bind(user_id)
    .bind(&sealed)
    .bind(false)
    .bind(storage::now())
    .execute(state.db.pool())
    .await?;
    Ok(Enrolment {
        secret: t.get_secret_base32(),
        otpauth_uri: t.get_url(),
    })
}

/// Checks a TOTP code against the user's secret (one step of clock skew either way), refusing
/// a code whose step was already used. `require_enabled` distinguishes login from enrolment.
async fn check_totp(
    state: &AppState,
    user_id: &UserId,
    code: &str,
    require_enabled: bool,
) -> Result<bool, Error> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(false);
    }
    let Some(row) =
        sqlx::query("SELECT secret, enabled, last_step FROM mfa_totp WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(state.db.pool())
            .await?
    else {
        return Ok(false);
    };
    if require_enabled && !row.get_bool("enabled")? {
        return Ok(false);
    }
    let secret = state
        .master_key
        .decrypt(&row.try_get::<String, _>("secret")?, user_id.as_bytes())
        .map_err(|e| anyhow::anyhow!("TOTP secret unreadable: {e}"))?;
    let t = totp(secret, "")?;
    let last_step: i64 = row.try_get("last_step")?;
    let now = chrono::Utc::now().timestamp() as u64;
    let current = (now / 30) as i64;
    for step in [current - 1, current, current + 1] {
        if step <= last_step || step < 0 {
            continue;
        }
        let expected = t.generate(step as u64 * 30);
        if crypto::constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            // Only one request can advance past this step.
            let done = sqlx::query(
                "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1",
            )
            .bind(step)
            .bind(user_id)
            .execute(state.db.pool())
            .await?;
            return Ok(done.rows_affected() == 1);
        }
    }
    Ok(false)
}

/// Claims one second-factor check for the user under `limit`, or refuses with 429 when the
/// window's checks are used up. The claim is counted before the code is evaluated: a
/// conditional `UPDATE … WHERE attempts < max` and its row count, on both backends.
async fn claim_check(state: &AppState, limit: CheckLimit, user_id: &UserId) -> Result<(), Error> {
    let CheckLimit { table, max } = limit;
    let db = state.db.pool();
    let now = chrono::Utc::now();
    let now_s = storage::format_time(now);
    let window_start = storage::format_time(now - chrono::Duration::minutes(LOCK_MINUTES));
    sqlx::query(&format!(
        "INSERT INTO {table} (user_id, window_started_at, attempts) VALUES ($1, $2, 0) \
         ON CONFLICT (user_id) DO NOTHING"
    ))
    .bind(user_id)
    .bind(&now_s)
    .execute(db)
    .await?;
    // A window that has ended starts again (only one request can restart it: the next sees a
    // fresh start time).
    sqlx::query(&format!(
        "UPDATE {table} SET window_started_at = $1, attempts = 0 \
         WHERE user_id = $2 AND window_started_at <= $3"
    ))
    .bind(&now_s)
    .bind(user_id)
    .bind(&window_start)
    .execute(db)
    .await?;
    let claimed = sqlx::query(&format!(
        "UPDATE {table} SET attempts = attempts + 1 WHERE user_id = $1 AND attempts < $2"
    ))
    .bind(user_id)
    .bind(max)
    .execute(db)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(());
    }
    let started: Option<String> = sqlx::query_scalar(&format!(
        "SELECT window_started_at FROM {table} WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    let retry_after = started
        .as_deref()
        .and_then(storage::parse_time)
        .map(|t| (t + chrono::Duration::minutes(LOCK_MINUTES) - now).num_seconds())
        .unwrap_or(LOCK_MINUTES * 60)
        .max(1);
    Err(Error::new(
        ErrorCode::RateLimitExceeded,
        format!(
            "Too many wrong codes: second-factor checks for this account are locked for up to \
             {LOCK_MINUTES} minutes"
        ),
    )
    .with_retry_after(retry_after as u64))
}

/// A right code clears the user's count of wrong ones under `limit`.
async fn clear_checks(state: &AppState, limit: CheckLimit, user_id: &UserId) -> Result<(), Error> {
    sqlx::query(&format!(
        "UPDATE {} SET attempts = 0 WHERE user_id = $1",
        limit.table
    ))
    .bind(user_id)
    .execute(state.db.pool())
    .await?;
    Ok(())
}

/// Enables TOTP after a first valid code; returns the recovery codes (shown once).
pub async fn activate(
    state: &AppState,
    user_id: &UserId,
    code: &str,
) -> Result<Vec<String>, Error> {
    claim_check(state, SIGNED_IN, user_id).await?;
    if !check_totp(state, user_id, code, false).await? {
        return Err(Error::invalid_field(
            "code",
            "is not a valid code for the enrolled secret",
        ));
    }
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let raw = crypto::random_base62(10).to_lowercase();
            format!("{}-{}", &raw[..5], &raw[5..])
        })
        .collect();
    let key = recovery_key(state);
    let mut tx = state.db.pool().begin().await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    for c in &codes {
        sqlx::query("INSERT INTO mfa_recovery_codes (code_hash, user_id) VALUES ($1, $2)")
            .bind(crypto::keyed_digest(&key, c))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE mfa_totp SET enabled = $1 WHERE user_id = $2")
        .bind(true)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE users SET mfa_enabled = $1, updated_at = $2 WHERE id = $3")
        .bind(true)
        .bind(storage::now())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    clear_checks(state, SIGNED_IN, user_id).await?;
    Ok(codes)
}

/// Spends a recovery code if it is one of the user's unused codes.
async fn use_recovery_code(state: &AppState, user_id: &UserId, code: &str) -> Result<bool, Error> {
    let digest = crypto::keyed_digest(&recovery_key(state), &code.trim().to_lowercase());
    let done = sqlx::query(
        "UPDATE mfa_recovery_codes SET used_at = $1 WHERE code_hash = $2 AND user_id = $3 AND used_at IS NULL",
    )
    .bind(storage::now())
    .bind(&digest)
    .bind(user_id)
    .execute(state.db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A TOTP code or a recovery code of a signed-in user, under the user's wrong-code limit (429
/// once it is reached).
pub async fn check_second_factor(
    state: &AppState,
    user_id: &UserId,
    code: &str,
) -> Result<bool, Error> {
    checked(state, SIGNED_IN, user_id, code).await
}

/// The MFA step of a login: the caller has claimed an attempt on the login's challenge
/// ([`crate::auth::codes::claim_mfa_attempt`], at most 5 per challenge); this claims one of the
/// user's [`MAX_LOGIN_CODES`] per window as well (429 once they are used up, whichever
/// `mfa_token` carries the code).
pub async fn check_login_second_factor(
    state: &AppState,
    user_id: &UserId,
    code: &str,
) -> Result<bool, Error> {
    checked(state, LOGIN, user_id, code).await
}

/// A TOTP or recovery code, claimed under `limit` first; a right one clears the count.
async fn checked(
    state: &AppState,
    limit: CheckLimit,
    user_id: &UserId,
    code: &str,
) -> Result<bool, Error> {
    claim_check(state, limit, user_id).await?;
    let ok = totp_or_recovery(state, user_id, code).await?;
    if ok {
        clear_checks(state, limit, user_id).await?;
    }
    Ok(ok)
}

async fn totp_or_recovery(state: &AppState, user_id: &UserId, code: &str) -> Result<bool, Error> {
    Ok(check_totp(state, user_id, code, true).await?
        || (code.trim().len() == 11 && use_recovery_code(state, user_id, code).await?))
}

/// Turns MFA off (after a valid code) and forgets the secret and recovery codes.
pub async fn disable(state: &AppState, user_id: &UserId, code: &str) -> Result<(), Error> {
    if !check_second_factor(state, user_id, code).await? {
        return Err(Error::invalid_field("code", "is not a valid code"));
    }
    let mut tx = state.db.pool().begin().await?;
    for sql in [
        "DELETE FROM mfa_totp WHERE user_id = $1",
        "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
    ] {
        sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE users SET mfa_enabled = $1, updated_at = $2 WHERE id = $3")
        .bind(false)
        .bind(storage::now())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
