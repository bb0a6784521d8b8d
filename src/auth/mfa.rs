//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s) with replay protection, and 10 single-use recovery
//! codes stored as keyed hashes. The TOTP secret is stored encrypted with the master key.

use sqlx::Row;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::{
    app::AppState,
    crypto,
    error::Error,
    storage::{self, RowExt},
};

pub const RECOVERY_CODES: usize = 10;
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
pub async fn enrol(state: &AppState, user_id: &str, email: &str) -> Result<Enrolment, Error> {
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
pub async fn check_totp(
    state: &AppState,
    user_id: &str,
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

/// Enables TOTP after a first valid code; returns the recovery codes (shown once).
pub async fn activate(state: &AppState, user_id: &str, code: &str) -> Result<Vec<String>, Error> {
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
    Ok(codes)
}

/// Spends a recovery code if it is one of the user's unused codes.
pub async fn use_recovery_code(state: &AppState, user_id: &str, code: &str) -> Result<bool, Error> {
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

/// A TOTP code or a recovery code.
pub async fn check_second_factor(
    state: &AppState,
    user_id: &str,
    code: &str,
) -> Result<bool, Error> {
    if check_totp(state, user_id, code, true).await? {
        return Ok(true);
    }
    if code.trim().len() == 11 {
        return use_recovery_code(state, user_id, code).await;
    }
    Ok(false)
}

/// Turns MFA off (after a valid code) and forgets the secret and recovery codes.
pub async fn disable(state: &AppState, user_id: &str, code: &str) -> Result<(), Error> {
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
