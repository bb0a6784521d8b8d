//! Migrations embedded in the binary, one list per backend. Each file is one concern; add a new
//! one to both lists (same version, same description) rather than editing an applied one.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

macro_rules! migrations {
    ($backend:literal: $(($version:literal, $name:literal)),* $(,)?) => {
        &[$((
            $version,
            $name,
            include_str!(concat!("../../migrations/", $backend, "/", $version, "_", $name, ".sql")),
        )),*]
    };
}

type Embedded = &'static [(i64, &'static str, &'static str)];

const SQLITE: Embedded = migrations!("sqlite":
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
);

const POSTGRES: Embedded = migrations!("postgres":
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
);

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
