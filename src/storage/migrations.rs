//! Migrations embedded in the binary: one list, a file per backend for each entry. Each file is
//! one concern; add a new entry (and both files) rather than editing an applied one.
//! Changes SQL cannot make (Unicode folding) are data steps in Rust: [`run_data_steps`].

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// One list of (version, name), embedded for both backends: `migrations/<backend>/<v>_<name>.sql`
/// must exist for each, so a migration added to one backend only does not build.
macro_rules! migrations {
    ($(($version:literal, $name:literal)),* $(,)?) => {
        const SQLITE: Embedded = &[$((
            $version,
            $name,
            include_str!(concat!("../../migrations/sqlite/", $version, "_", $name, ".sql")),
        )),*];
        const POSTGRES: Embedded = &[$((
            $version,
            $name,
            include_str!(concat!("../../migrations/postgres/", $version, "_", $name, ".sql")),
        )),*];
    };
}

type Embedded = &'static [(i64, &'static str, &'static str)];

migrations!(
    (1, "foundation"),
    (2, "identity"),
    (3, "events"),
    (4, "organizations"),
    (5, "limits"),
    (6, "api_keys"),
    (7, "plans"),
    (8, "gateway"),
    (9, "policies"),
    (10, "usage_rollups"),
    (11, "subscriptions"),
    (12, "mfa_attempts"),
    (13, "webhook_environments"),
    (14, "mfa_login_attempts"),
    (15, "data_steps"),
    (16, "integer_widths"),
    (17, "idempotency"),
    (18, "platform_configs"),
    (19, "invoices"),
    (20, "payments"),
    (21, "usage_thresholds"),
);

/// Data steps: changes to stored rows that SQL cannot make, run after the SQL migrations, each
/// until it completes; then it is recorded in `data_steps` (migration 15) and never runs again.
///
/// - `implicit_subscriptions`: organizations created before every organization had a
///   subscription get their default-plan one ([`crate::billing::subscriptions::backfill`]).
/// - `fold_stored_emails`: addresses stored before emails were folded (NFKC, case folding) are
///   folded ([`crate::auth::users::fold_stored_emails`]). Addresses of several users that fold
///   to one are left unchanged and reported with a warning naming the users; startup goes on.
///   While such collisions remain, the step is not recorded: it runs again (rewriting nothing
///   already folded) and warns again at each start, until an operator has resolved them.
pub async fn run_data_steps(db: &super::Db) -> anyhow::Result<()> {
    implicit_subscriptions(db).await?;
    fold_stored_emails(db).await
}

/// `implicit_subscriptions`: every organization created before subscriptions were implicit
/// gets its default-plan subscription, its first cycle starting when this runs
/// ([`crate::billing::subscriptions::backfill`]).
async fn implicit_subscriptions(db: &super::Db) -> anyhow::Result<()> {
    const STEP: &str = "implicit_subscriptions";
    let done: Option<String> = sqlx::query_scalar("SELECT name FROM data_steps WHERE name = $1")
        .bind(STEP)
        .fetch_optional(db.pool())
        .await?;
    if done.is_some() {
        return Ok(());
    }
    let started = crate::billing::subscriptions::backfill(db)
        .await
        .map_err(|e| anyhow::anyhow!("data step {STEP} failed: {e}"))?;
    if started > 0 {
        tracing::info!(
            started,
            "started the default-plan subscription of older organizations"
        );
    }
    sqlx::query(
        "INSERT INTO data_steps (name, completed_at, report) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(STEP)
    .bind(super::now())
    .bind(serde_json::json!({ "started": started }).to_string())
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn fold_stored_emails(db: &super::Db) -> anyhow::Result<()> {
    const FOLD_EMAILS: &str = "fold_stored_emails";
    let done: Option<String> = sqlx::query_scalar("SELECT name FROM data_steps WHERE name = $1")
        .bind(FOLD_EMAILS)
        .fetch_optional(db.pool())
        .await?;
    if done.is_some() {
        return Ok(());
    }
    let report = crate::auth::users::fold_stored_emails(db)
        .await
        .map_err(|e| anyhow::anyhow!("data step {FOLD_EMAILS} failed: {e}"))?;
    if !report.users_folded.is_empty() || report.invitations_folded > 0 {
        tracing::info!(
            users = report.users_folded.len(),
            invitations = report.invitations_folded,
            "folded stored email addresses"
        );
    }
    if report.collisions.is_empty() {
        sqlx::query(
            "INSERT INTO data_steps (name, completed_at, report) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(FOLD_EMAILS)
        .bind(super::now())
        .bind(serde_json::to_string(&report)?)
        .execute(db.pool())
        .await?;
    }
    Ok(())
}

fn embedded(backend: Backend) -> Embedded {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

pub fn migrator(backend: Backend) -> Migrator {
    let migrations = embedded(backend)
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

pub fn latest_version(backend: Backend) -> i64 {
    embedded(backend).last().map(|m| m.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |e: Embedded| e.iter().map(|(v, n, _)| (*v, *n)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }
}
