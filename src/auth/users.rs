//! User accounts: storage and the rules that every path creating a user shares.

use serde::Serialize;
use sqlx::Row;

use crate::wire::Standing;
use crate::{
    crypto,
    error::{Error, ErrorCode, ResultExt},
    events::{emit, ActorContext, NewEvent},
    ids::UserId,
    storage::{self, Db, RowExt},
};

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub status: Standing,
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
            status: row.get_parsed("status")?,
            email_verified: row.get_bool("email_verified")?,
            mfa_enabled: row.get_bool("mfa_enabled")?,
            is_platform_admin: row.get_bool("is_platform_admin")?,
            metadata: row.get_json("metadata")?,
            created_at: row.get_time("created_at")?,
            last_login: row.get_time_opt("last_login")?,
        })
    }
}

/// The form every email address is stored, compared and looked up in: trimmed, then Unicode
/// NFKC (full-width and other compatibility forms become their plain letters), full case folding
/// and NFKC again (the order of Unicode's NFKC_Casefold). Checks nothing: see
/// [`normalize_email`], which every address typed by someone goes through.
pub fn fold_email(email: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let compat: String = email.trim().nfkc().collect();
    let folded: String = caseless::default_case_fold_str(&compat).nfkc().collect();
    folded.trim().to_string()
}

/// Why an address (already folded) is refused, if it is.
fn email_problem(email: &str) -> Option<&'static str> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    use unicode_security::{GeneralSecurityProfile, MixedScript};
    // Invisible characters make two addresses that look the same: zero-width spaces and
    // joiners, bidi controls, soft hyphens (all Cf), controls, separators, private use and
    // unassigned code points.
    let invisible = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::Control
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
                | GeneralCategory::Unassigned
        )
    };
    if email.chars().any(invisible) {
        return Some("must not contain invisible, formatting or control characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Some("must be an email address");
    };
    let shaped = email.len() <= 254
        && !domain.contains('@')
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace);
    if !shaped {
        return Some("must be an email address");
    }
    // Beyond ASCII, only characters UTS #39's General Security Profile allows in identifiers
    // (this also refuses the remaining default-ignorable ones, such as the Hangul fillers).
    if email
        .chars()
        .any(|c| !c.is_ascii() && !c.identifier_allowed())
    {
        return Some("contains a character that is not allowed in an email address");
    }
    // Look-alikes across scripts: a part that mixes scripts (a Cyrillic 'а' among Latin
    // letters) is refused, and so is an address whose confusable skeleton (UTS #39) is plain
    // ASCII: it reads as an ASCII address it is not (an all-Cyrillic 'аррӏе').
    if !local.is_single_script() || !domain.is_single_script() {
        return Some(
            "must not mix letters of different scripts (such as Latin and Cyrillic) in one part",
        );
    }
    if !email.is_ascii() && unicode_security::skeleton(email).all(|c| c.is_ascii()) {
        return Some(
            "is made of look-alike characters of a plain ASCII address; type that address",
        );
    }
    None
}

/// Folds an email (see [`fold_email`]) and checks it: its shape (one `@`, a dot in the domain,
/// at most 254 bytes), no invisible characters and no look-alikes of another address.
/// Every address a request carries goes through here (register, login, codes, resets,
/// invitations, admin creation); a refusal is a 400 naming `email`.
pub fn normalize_email(email: &str) -> Result<String, Error> {
    let email = fold_email(email);
    match email_problem(&email) {
        None => Ok(email),
        Some(reason) => Err(Error::invalid_field("email", reason)),
    }
}

/// What [`fold_stored_emails`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct EmailFoldReport {
    /// Users whose stored address was rewritten to its folded form.
    pub users_folded: Vec<String>,
    /// Invitations whose stored address was rewritten.
    pub invitations_folded: usize,
    /// Addresses that more than one user's folds to: those rows are left as they are, for an
    /// operator to resolve (merge or rename the accounts).
    pub collisions: Vec<EmailCollision>,
    /// Users whose folded address [`normalize_email`] refuses (invisible characters,
    /// look-alikes): no one can sign in with it by typing it; an operator changes it.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailCollision {
    /// The folded address.
    pub email: String,
    /// The users whose addresses fold to it, by id.
    pub user_ids: Vec<String>,
}

/// Brings addresses stored before [`fold_email`] existed to their folded form (SQL cannot do
/// NFKC, so this runs in Rust: the data step `fold_stored_emails`, see
/// `storage::migrations::run_data_steps`). A user's address is rewritten only if no other user's
/// address folds to the same one; such collisions are left unchanged and reported (a warning
/// naming the users, and in the returned report), as are addresses that would be refused as
/// typed. Invitations' addresses are folded too (they are not unique). Idempotent: a second run
/// rewrites nothing.
pub async fn fold_stored_emails(db: &Db) -> Result<EmailFoldReport, Error> {
    use futures_util::TryStreamExt;
    let mut report = EmailFoldReport::default();
    // Only the rows that change are kept in memory, grouped by the address they fold to.
    let mut changed: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    {
        let mut rows = sqlx::query("SELECT id, email FROM users ORDER BY id").fetch(db.pool());
        while let Some(row) = rows.try_next().await? {
            let id: String = row.try_get("id")?;
            let raw: String = row.try_get("email")?;
            let folded = fold_email(&raw);
            if email_problem(&folded).is_some() {
                report.refused.push(id.clone());
            }
            if folded != raw {
                changed.entry(folded).or_default().push((id, raw));
            }
        }
    }
    for (folded, rows) in changed {
        let holders: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(&folded)
            .fetch_all(db.pool())
            .await?;
        let mut user_ids: Vec<String> = holders
            .into_iter()
            .chain(rows.iter().map(|(id, _)| id.clone()))
            .collect();
        if user_ids.len() == 1 {
            let (id, raw) = &rows[0];
            // Only if the row still holds what was read; a unique violation means another user
            // took the folded address meanwhile: a collision like the others.
            let done = sqlx::query("UPDATE users SET email = $1 WHERE id = $2 AND email = $3")
                .bind(&folded)
                .bind(id)
                .bind(raw)
                .execute(db.pool())
                .await
                .map(|r| r.rows_affected() == 1)
                .on_unique("users", "email", || Error::conflict("taken"));
            match done {
                Ok(true) => {
                    report.users_folded.push(id.clone());
                    continue;
                }
                Ok(false) => continue,
                Err(e) if e.code() == ErrorCode::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        user_ids.sort();
        user_ids.dedup();
        tracing::warn!(
            email = %folded,
            user_ids = %user_ids.join(", "),
            "stored email addresses of several users fold to one; left unchanged: merge or rename \
             these accounts"
        );
        report.collisions.push(EmailCollision {
            email: folded,
            user_ids,
        });
    }
    if !report.refused.is_empty() {
        tracing::warn!(
            user_ids = %report.refused.join(", "),
            "stored email addresses that would be refused as typed (invisible characters or \
             look-alikes); change them"
        );
    }
    let invitations: Vec<(String, String)> = {
        let mut out = Vec::new();
        let mut rows = sqlx::query("SELECT id, email FROM invitations").fetch(db.pool());
        while let Some(row) = rows.try_next().await? {
            let raw: String = row.try_get("email")?;
            let folded = fold_email(&raw);
            if folded != raw {
                out.push((row.try_get("id")?, folded));
            }
        }
        out
    };
    for (id, folded) in invitations {
        sqlx::query("UPDATE invitations SET email = $1 WHERE id = $2")
            .bind(&folded)
            .bind(&id)
            .execute(db.pool())
            .await?;
        report.invitations_folded += 1;
    }
    Ok(report)
}

/// A user to create: a platform admin ([`NewUser::platform_admin`]) or a person signing up
/// ([`NewUser::signing_up`]).
pub struct NewUser<'a> {
    email: &'a str,
    name: &'a str,
    password: &'a str,
    is_platform_admin: bool,
    email_verified: bool,
}

impl<'a> NewUser<'a> {
    /// A platform admin (created by an operator or at the first start): its email counts as
    /// verified.
    pub fn platform_admin(email: &'a str, name: &'a str, password: &'a str) -> Self {
        NewUser {
            email,
            name,
            password,
            is_platform_admin: true,
            email_verified: true,
        }
    }

    /// A person signing up; `email_verified` when the address is already proven.
    pub fn signing_up(
        email: &'a str,
        name: &'a str,
        password: &'a str,
        email_verified: bool,
    ) -> Self {
        NewUser {
            email,
            name,
            password,
            is_platform_admin: false,
            email_verified,
        }
    }
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
    pub id: UserId,
    pub email: String,
    pub password_hash: Option<String>,
    pub status: Standing,
    pub mfa_enabled: bool,
}

/// The account of an email address (folded here; callers check what a request typed with
/// [`normalize_email`] first).
pub async fn credentials_by_email(db: &Db, email: &str) -> Result<Option<Credentials>, Error> {
    let email = fold_email(email);
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
            status: r.get_parsed("status")?,
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
    user_id: &UserId,
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

pub async fn mark_email_verified(db: &Db, user_id: &UserId) -> Result<(), Error> {
    sqlx::query("UPDATE users SET email_verified = $1, updated_at = $2 WHERE id = $3")
        .bind(true)
        .bind(storage::now())
        .bind(user_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The account's address has just been proven by a secret mailed to it: a sign-in code, a
/// password-reset token or an invitation token. If the address was not verified yet, whoever
/// registered it never proved it was theirs, so what they set up before is dropped: the password
/// (the owner sets their own, a reset sets the new one), every session and every pending MFA
/// login — all but `keep`, the session that presented the proof. Returns whether the address
/// was unverified (and the account therefore taken back). One conditional statement decides,
/// so two proofs at once drop things once. Runs in the caller's transaction.
pub async fn email_proven(
    conn: &mut sqlx::AnyConnection,
    user_id: &UserId,
    keep_session: Option<&str>,
) -> Result<bool, Error> {
    let now = storage::now();
    let first = sqlx::query(
        "UPDATE users SET email_verified = $1, password_hash = NULL, mfa_enabled = $4, \
         updated_at = $2 WHERE id = $3 AND email_verified = $4",
    )
    .bind(true)
    .bind(&now)
    .bind(user_id)
    .bind(false)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if first {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'email_proven' \
             WHERE user_id = $2 AND revoked_at IS NULL AND id <> $3",
        )
        .bind(&now)
        .bind(user_id)
        .bind(keep_session.unwrap_or(""))
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE mfa_challenges SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
        )
        .bind(&now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
        // A second factor enrolled before the address was proven is the registrant's, not the
        // address owner's: it would lock the owner out of their own account.
        for table in ["mfa_totp", "mfa_recovery_codes"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(first)
}

/// [`email_proven`] in a transaction of its own.
pub async fn prove_email(
    db: &Db,
    user_id: &UserId,
    keep_session: Option<&str>,
) -> Result<bool, Error> {
    let mut tx = crate::events::begin_write(db).await?;
    let first = email_proven(&mut tx, user_id, keep_session).await?;
    tx.commit().await?;
    Ok(first)
}

/// A profile change: each field only if given.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
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
    user_id: &UserId,
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
    let status = match admin.status.as_deref().map(Standing::input) {
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
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
    if let Some(status) = status {
        sql.push(", status = ").bind(status.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(email: &str) -> Option<&'static str> {
        email_problem(&fold_email(email))
    }

    #[test]
    fn emails_fold_to_one_form() {
        for (typed, stored) in [
            ("  Alice@Example.COM ", "alice@example.com"),
            ("\u{ff41}lice@\u{ff25}xample.com", "alice@example.com"),
            ("\u{fb01}ona@example.com", "fiona@example.com"),
            ("STRASSE@example.de", "strasse@example.de"),
            ("stra\u{df}e@example.de", "strasse@example.de"),
            ("Jos\u{e9}@example.com", "jos\u{e9}@example.com"),
            ("Jose\u{301}@example.com", "jos\u{e9}@example.com"),
        ] {
            assert_eq!(fold_email(typed), stored, "{typed:?}");
            assert_eq!(fold_email(stored), stored, "idempotent: {stored:?}");
        }
    }

    #[test]
    fn invisible_characters_mixed_scripts_and_look_alikes_are_refused() {
        for email in [
            "ali\u{200b}ce@example.com", // zero-width space
            "ali\u{200d}ce@example.com", // zero-width joiner
            "alice\u{202e}@example.com", // right-to-left override
            "alice@exa\u{2066}mple.com", // left-to-right isolate
            "ali\u{ad}ce@example.com",   // soft hyphen
            "\u{feff}alice@example.com", // byte-order mark
            "ali\u{7}ce@example.com",
        ] {
            assert_eq!(
                problem(email),
                Some("must not contain invisible, formatting or control characters"),
                "{email:?}"
            );
        }
        assert!(
            problem("ali\u{3164}ce@example.com").is_some(),
            "Hangul filler"
        );
        // A Cyrillic 'а' among Latin letters, in the local part or the domain.
        assert!(problem("\u{430}lice@example.com")
            .unwrap()
            .contains("scripts"));
        assert!(problem("alice@ex\u{430}mple.com")
            .unwrap()
            .contains("scripts"));
        // All-Cyrillic look-alikes of ASCII addresses.
        assert!(problem("\u{430}\u{440}\u{440}\u{4cf}\u{435}@example.com")
            .unwrap()
            .contains("look-alike"));
        // Real non-ASCII addresses stay possible.
        for email in [
            "jos\u{e9}@example.com",
            "\u{438}\u{432}\u{430}\u{43d}@example.com",
            "\u{438}\u{432}\u{430}\u{43d}@\u{43f}\u{43e}\u{447}\u{442}\u{430}.\u{440}\u{444}",
            "\u{7528}\u{6237}@\u{4f8b}\u{5b50}.\u{4e2d}\u{56fd}",
            "a.b+tag@sub.example.co.uk",
        ] {
            assert_eq!(problem(email), None, "{email:?}");
        }
        for bad in [
            "",
            "alice",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@.example.com",
        ] {
            assert_eq!(problem(bad), Some("must be an email address"), "{bad:?}");
        }
    }
}
