//! Storage: one sqlx `Any` pool over an embedded SQLite file or PostgreSQL, chosen by URL.
//!
//! Queries are written once, in the dialect both databases share: `$1` placeholders (SQLite
//! accepts them too), `TEXT` timestamps in one fixed RFC 3339 form (so they compare as strings),
//! JSON as `TEXT`, booleans as integers 0/1 (`INTEGER` on SQLite, `BOOLEAN` on PostgreSQL: read
//! them with [`RowExt::get_bool`]), integers 64-bit (`INTEGER` on SQLite, `BIGINT` on
//! PostgreSQL), `ON CONFLICT … DO …` upserts and `RETURNING` (both databases have them).
//!
//! **Every difference between the backends lives in this module** (the dialect layer,
//! `dialect.rs`): code elsewhere never matches on [`Backend`]; it asks for what it needs by name —
//! [`begin_write`] (`BEGIN IMMEDIATE` on SQLite), [`lock_for_change`] / [`Backend::lock_for_change`]
//! (`FOR NO KEY UPDATE` on PostgreSQL), [`Backend::skip_locked`], [`Backend::insert_or_rollback`],
//! [`Sql::for_backend`] (placeholders), [`Db::notify`] and [`Listener`] (PostgreSQL
//! `LISTEN/NOTIFY`, see [`Backend::has_notifications`]).
//!
//! Each backend has its own migration files under `migrations/<backend>/`, embedded in the binary
//! and applied at start and by `gatehouse migrate`: a change is a new file with the same version
//! and name in both (never an edit of an applied one). `tests/schema.rs` migrates a database of
//! each kind and compares the schemas they build, column by column (types, nullability,
//! defaults, keys, indexes, foreign keys).

mod dialect;
mod migrations;
mod notify;
mod paging;
mod sql;

use std::{str::FromStr, time::Duration};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyPool, Executor,
};

pub use dialect::Backend;
pub use notify::Listener;
pub use sql::{Arg, Sql};

#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// The file an `sqlite:` URL points at (`None` for in-memory databases).
pub fn sqlite_file_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.into())
    }
}

impl Db {
    /// Connects (creating an SQLite file if absent). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| anyhow::anyhow!("invalid database_url: {e}"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    for statement in backend.connection_setup() {
                        conn.execute(*statement).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to the {} database: {e}", backend.name())
            })?;
        Ok(Db { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that will write (use it for the transaction you
    /// [`emit`](crate::events::emit) into): see [`Backend::begin_write`].
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.pool.begin_with(self.backend.begin_write()).await
    }

    /// Applies every embedded migration not yet applied, then the data steps not yet completed
    /// (see [`migrations::run_data_steps`]).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        migrations::migrator(self.backend)
            .run(&self.pool)
            .await
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        migrations::run_data_steps(self).await
    }

    /// True when every embedded migration has been applied.
    pub async fn migrations_applied(&self) -> anyhow::Result<bool> {
        let latest = migrations::latest_version(self.backend);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await
                .ok()
                .flatten();
        Ok(applied == Some(latest))
    }

    /// One round trip to the database, timed.
    pub async fn ping(&self) -> Result<Duration, sqlx::Error> {
        let start = std::time::Instant::now();
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(start.elapsed())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Begins a transaction that will write: [`Db::begin_write`].
pub async fn begin_write(db: &Db) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    db.begin_write().await
}

/// Takes the change lock ([`Backend::lock_for_change`]) on the row of `table` whose `id` is `id`
/// until the transaction on `conn` ends, serialising the changes that it guards. Returns whether
/// the row exists. `table` is a name from the code, never input.
pub async fn lock_for_change(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    table: &'static str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let found = sqlx::query(&format!(
        "SELECT id FROM {table} WHERE id = $1{}",
        backend.lock_for_change()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// Decoding helpers for the columns whose SQL type differs between the backends.
/// A statement with its bound values, as `sqlx::query` builds it (for helpers that bind a shared
/// run of values).
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub trait RowExt {
    /// A boolean stored as INTEGER 0/1 (SQLite) or BOOLEAN (PostgreSQL).
    fn get_bool(&self, column: &str) -> Result<bool, sqlx::Error>;
    /// A JSON document stored as TEXT.
    fn get_json(&self, column: &str) -> Result<serde_json::Value, sqlx::Error>;
    /// A closed-set value stored as its spelling (`active`, `live`, …); a spelling outside the
    /// set is a decode error naming the column and the value.
    fn get_parsed<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display;
    /// A time stored as text, as the API shows it (RFC 3339, UTC, whole seconds, `Z`).
    fn get_time(&self, column: &str) -> Result<String, sqlx::Error> {
        Ok(api_time(&self.get_text(column)?))
    }
    /// A nullable time column, as the API shows it.
    fn get_time_opt(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        Ok(self.get_text_opt(column)?.map(|t| api_time(&t)))
    }
    /// A TEXT column.
    fn get_text(&self, column: &str) -> Result<String, sqlx::Error>;
    /// A nullable TEXT column.
    fn get_text_opt(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
}

impl RowExt for sqlx::any::AnyRow {
    fn get_text(&self, column: &str) -> Result<String, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }

    fn get_text_opt(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }

    fn get_bool(&self, column: &str) -> Result<bool, sqlx::Error> {
        use sqlx::Row;
        match self.try_get::<bool, _>(column) {
            Ok(b) => Ok(b),
            Err(_) => self.try_get::<i64, _>(column).map(|i| i != 0),
        }
    }

    fn get_json(&self, column: &str) -> Result<serde_json::Value, sqlx::Error> {
        use sqlx::Row;
        let text: String = self.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(e),
        })
    }

    fn get_parsed<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        use sqlx::Row;
        let text: String = self.try_get(column)?;
        text.parse().map_err(|e: T::Err| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: format!("{e} (stored: {text:?})").into(),
        })
    }
}

/// Now, in the one timestamp form stored everywhere: `2026-01-15T10:00:00.123456Z`.
pub fn now() -> String {
    format_time(chrono::Utc::now())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: sorts as text in time order on every backend. Written
/// field by field (no format string to interpret: this runs for every stored row).
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let mut s = String::with_capacity(27);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        (t.nanosecond() % 1_000_000_000) / 1000
    );
    s
}

pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Stored timestamps are rendered as RFC 3339 with second precision in API bodies.
pub fn api_time(stored: &str) -> String {
    parse_time(stored)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| stored.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_found_in_urls() {
        assert_eq!(
            sqlite_file_path("sqlite://gatehouse.db").unwrap(),
            std::path::PathBuf::from("gatehouse.db")
        );
        assert_eq!(
            sqlite_file_path("sqlite:///tmp/x.db?mode=rwc").unwrap(),
            std::path::PathBuf::from("/tmp/x.db")
        );
        assert!(sqlite_file_path("sqlite::memory:").is_none());
        assert!(sqlite_file_path("postgres://x").is_none());
    }

    #[test]
    fn stored_timestamps_sort_as_strings() {
        let a = chrono::DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z").unwrap();
        let b = a + chrono::Duration::milliseconds(1);
        let (sa, sb) = (format_time(a.into()), format_time(b.into()));
        assert!(sa < sb);
        assert_eq!(api_time(&sa), "2026-01-15T10:00:00Z");
    }

    #[test]
    fn stored_timestamps_are_microseconds_in_utc() {
        for (input, stored) in [
            ("2026-01-15T10:00:00Z", "2026-01-15T10:00:00.000000Z"),
            (
                "2026-12-31T23:59:59.999999999Z",
                "2026-12-31T23:59:59.999999Z",
            ),
            (
                "0999-02-03T04:05:06.000007+02:00",
                "0999-02-03T02:05:06.000007Z",
            ),
        ] {
            let t: chrono::DateTime<chrono::Utc> =
                chrono::DateTime::parse_from_rfc3339(input).unwrap().into();
            assert_eq!(format_time(t), stored);
            assert_eq!(
                format_time(t),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
            assert_eq!(parse_time(stored).map(format_time).as_deref(), Some(stored));
        }
    }
}
