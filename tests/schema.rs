//! The SQLite and PostgreSQL migrations are kept in parallel by hand (`migrations/<backend>/`).
//! This test migrates a fresh database of each kind and compares what they built, table by
//! table and column by column, and lists every difference it finds.
//!
//! What is compared, per table (every table either database has, `_sqlx_migrations` aside):
//! - columns: name, position, normalised type, nullability, default;
//! - the primary key's columns, in order;
//! - indexes: named indexes (`CREATE INDEX`) by name, with their columns in order, uniqueness and
//!   whether they are partial; unnamed ones (those of `UNIQUE` constraints) by their columns,
//!   since each database names them itself (`sqlite_autoindex_t_1`, `t_col_key`);
//! - foreign keys: columns, referenced table and columns, `ON DELETE` action.
//!
//! **The type mapping** (see the conventions in `src/storage/mod.rs`): each backend's type names
//! map to a common set, and a column matches when both sides map to the same name.
//!
//! | common  | SQLite declared type              | PostgreSQL type                        |
//! |---------|-----------------------------------|----------------------------------------|
//! | text    | TEXT, VARCHAR(n), CHAR(n)          | text, character varying, character    |
//! | integer | INTEGER, BIGINT, INT               | bigint (64 bits, as SQLite's INTEGER)  |
//! | real    | REAL, DOUBLE PRECISION, FLOAT      | double precision                       |
//! | blob    | BLOB                               | bytea                                  |
//! | boolean | — (INTEGER 0/1, see below)         | boolean                                |
//!
//! Everything else maps to a name of its own that matches nothing on the other side, so that it
//! is reported: PostgreSQL `integer`/`smallint` (32/16 bits: a value SQLite stores would not fit),
//! `real` (32 bits), `timestamp…` (timestamps are TEXT in one RFC 3339 form everywhere), `json…`
//! (JSON is TEXT); SQLite `BOOLEAN` (the Any driver cannot decode it: booleans are INTEGER there).
//!
//! **Intended dialect differences**, accepted by the comparison:
//! - booleans: SQLite `INTEGER` against PostgreSQL `boolean`; their defaults then compare as 0/1
//!   (`FALSE`/`TRUE` on PostgreSQL). (SQLite's INTEGER does not say whether it holds a boolean,
//!   so a boolean column declared `bigint` on PostgreSQL would pass: its decoding by
//!   `RowExt::get_bool` accepts both anyway);
//! - a primary-key column is NOT NULL on both: PostgreSQL says so itself; SQLite reports a
//!   `TEXT PRIMARY KEY` as nullable (a legacy quirk) but no statement writes NULL keys;
//! - defaults compare without PostgreSQL's casts (`'[]'::text` is `'[]'`);
//! - names of the indexes behind `UNIQUE` constraints (see above).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, TestDatabase};
use sqlx::{Connection, Row};

#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    /// As the database reports it, for messages.
    declared: String,
    /// The common name (see the module docs).
    ty: String,
    not_null: bool,
    default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Index {
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ForeignKey {
    columns: Vec<String>,
    table: String,
    references: Vec<String>,
    on_delete: String,
}

#[derive(Debug, Default)]
struct Table {
    columns: Vec<Column>,
    primary_key: Vec<String>,
    /// Named indexes by name; those of `UNIQUE` constraints under `unique (<columns>)`.
    indexes: BTreeMap<String, Index>,
    foreign_keys: BTreeSet<ForeignKey>,
}

type Schema = BTreeMap<String, Table>;

fn sqlite_type(declared: &str) -> String {
    let upper = declared.to_uppercase();
    let base = upper.split('(').next().unwrap_or_default().trim();
    match base {
        "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" => "text".into(),
        "INTEGER" | "BIGINT" | "INT" => "integer".into(),
        "REAL" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" => "real".into(),
        "BLOB" => "blob".into(),
        other => format!("sqlite {other}"),
    }
}

fn postgres_type(data_type: &str) -> String {
    match data_type {
        "text" | "character varying" | "character" => "text".into(),
        "bigint" => "integer".into(),
        "double precision" => "real".into(),
        "bytea" => "blob".into(),
        "boolean" => "boolean".into(),
        other => format!("postgres {other}"),
    }
}

/// A default as both databases write it: PostgreSQL's casts and parentheses removed, booleans
/// as 0/1.
fn normalise_default(default: Option<&str>) -> Option<String> {
    let mut d = default?.trim().to_string();
    loop {
        let before = d.clone();
        if let Some(i) = d.rfind("::") {
            if d[i + 2..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == ' ' || c == '_')
            {
                d.truncate(i);
            }
        }
        if d.starts_with('(') && d.ends_with(')') {
            d = d[1..d.len() - 1].to_string();
        }
        if d == before {
            break;
        }
    }
    Some(match d.to_lowercase().as_str() {
        "false" => "0".into(),
        "true" => "1".into(),
        _ => d,
    })
}

async fn migrated(backend: Backend) -> TestDatabase {
    let db = TestDatabase::create(backend).await;
    let store = gatehouse::storage::Db::connect(&db.url, 2)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store.close().await;
    db
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut conn = sqlx::SqliteConnection::connect(url).await.expect("SQLite");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for name in tables {
        let mut table = Table::default();
        let mut key: Vec<(i64, String)> = Vec::new();
        let columns =
            sqlx::query("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for c in columns {
            let column: String = c.get("name");
            let declared: String = c.get("type");
            let pk: i64 = c.get("pk");
            if pk > 0 {
                key.push((pk, column.clone()));
            }
            table.columns.push(Column {
                ty: sqlite_type(&declared),
                declared,
                // A primary-key column is NOT NULL (see the module docs).
                not_null: c.get::<bool, _>("notnull") || pk > 0,
                default: normalise_default(c.get::<Option<String>, _>("dflt_value").as_deref()),
                name: column,
            });
        }
        key.sort();
        table.primary_key = key.into_iter().map(|(_, c)| c).collect();
        let indexes =
            sqlx::query("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)")
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for i in indexes {
            let origin: String = i.get("origin");
            if origin == "pk" {
                continue; // compared as the primary key
            }
            let index_name: String = i.get("name");
            let columns: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&index_name)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            let index = Index {
                columns: columns
                    .into_iter()
                    .map(|c| c.unwrap_or_else(|| "<expression>".into()))
                    .collect(),
                unique: i.get("unique"),
                partial: i.get("partial"),
            };
            let key = if origin == "u" {
                format!("unique ({})", index.columns.join(", "))
            } else {
                index_name
            };
            table.indexes.insert(key, index);
        }
        let keys = sqlx::query(
            "SELECT id, seq, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list(?1) \
             ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for k in keys {
            let fk = by_id.entry(k.get("id")).or_insert_with(|| ForeignKey {
                columns: vec![],
                table: k.get("table"),
                references: vec![],
                on_delete: k.get("on_delete"),
            });
            fk.columns.push(k.get("from"));
            // NULL: the referenced table's primary key, filled in below.
            if let Some(to) = k.get::<Option<String>, _>("to") {
                fk.references.push(to);
            }
        }
        table.foreign_keys = by_id.into_values().collect();
        schema.insert(name, table);
    }
    // `REFERENCES t` without columns means t's primary key.
    let keys: BTreeMap<String, Vec<String>> = schema
        .iter()
        .map(|(n, t)| (n.clone(), t.primary_key.clone()))
        .collect();
    for table in schema.values_mut() {
        table.foreign_keys = std::mem::take(&mut table.foreign_keys)
            .into_iter()
            .map(|mut fk| {
                if fk.references.is_empty() {
                    fk.references = keys.get(&fk.table).cloned().unwrap_or_default();
                }
                fk
            })
            .collect();
    }
    conn.close().await.ok();
    schema
}

async fn postgres_schema(url: &str) -> Schema {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("PostgreSQL");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name <> '_sqlx_migrations' ORDER BY table_name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for name in tables {
        let mut table = Table::default();
        let columns = sqlx::query(
            "SELECT column_name::text AS name, data_type::text AS data_type, \
             is_nullable::text = 'NO' AS not_null, column_default::text AS dflt \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for c in columns {
            let declared: String = c.get("data_type");
            table.columns.push(Column {
                name: c.get("name"),
                ty: postgres_type(&declared),
                declared,
                not_null: c.get("not_null"),
                default: normalise_default(c.get::<Option<String>, _>("dflt").as_deref()),
            });
        }
        // Every index of the table, its columns in order ('<expression>' for an expression),
        // and whether a constraint (primary key, UNIQUE) made it.
        let indexes = sqlx::query(
            "SELECT ic.relname::text AS name, i.indisunique AS is_unique, \
               i.indisprimary AS is_primary, i.indpred IS NOT NULL AS partial, \
               EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid \
                       AND c.contype = 'u') AS from_constraint, \
               ARRAY(SELECT COALESCE(a.attname::text, '<expression>') \
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     ORDER BY k.ord) AS columns \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_class t ON t.oid = i.indrelid \
             WHERE t.relname = $1 AND t.relnamespace = current_schema()::regnamespace",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for i in indexes {
            let columns: Vec<String> = i.get("columns");
            if i.get("is_primary") {
                table.primary_key = columns;
                continue;
            }
            let key = if i.get("from_constraint") {
                format!("unique ({})", columns.join(", "))
            } else {
                i.get("name")
            };
            table.indexes.insert(
                key,
                Index {
                    columns,
                    unique: i.get("is_unique"),
                    partial: i.get("partial"),
                },
            );
        }
        let keys = sqlx::query(
            "SELECT f.relname::text AS target, c.confdeltype::text AS on_delete, \
               ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
                     ORDER BY k.ord) AS columns, \
               ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum \
                     ORDER BY k.ord) AS refs \
             FROM pg_constraint c \
             JOIN pg_class t ON t.oid = c.conrelid \
             JOIN pg_class f ON f.oid = c.confrelid \
             WHERE c.contype = 'f' AND t.relname = $1 \
               AND t.relnamespace = current_schema()::regnamespace",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for k in keys {
            let action: String = k.get("on_delete");
            table.foreign_keys.insert(ForeignKey {
                columns: k.get("columns"),
                table: k.get("target"),
                references: k.get("refs"),
                // pg_constraint.confdeltype, in SQLite's words.
                on_delete: match action.as_str() {
                    "a" => "NO ACTION",
                    "r" => "RESTRICT",
                    "c" => "CASCADE",
                    "n" => "SET NULL",
                    "d" => "SET DEFAULT",
                    other => other,
                }
                .to_string(),
            });
        }
        schema.insert(name, table);
    }
    conn.close().await.ok();
    schema
}

/// Whether a column's types match: the same common name, or the boolean convention.
fn same_type(sqlite: &Column, postgres: &Column) -> bool {
    sqlite.ty == postgres.ty || (sqlite.ty == "integer" && postgres.ty == "boolean")
}

/// Every difference between the two schemas, one line each.
fn differences(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = sqlite.keys().chain(postgres.keys()).collect();
    for name in names {
        let (s, p) = match (sqlite.get(name), postgres.get(name)) {
            (Some(s), Some(p)) => (s, p),
            (Some(_), None) => {
                out.push(format!("table {name}: only on SQLite"));
                continue;
            }
            (None, Some(_)) => {
                out.push(format!("table {name}: only on PostgreSQL"));
                continue;
            }
            (None, None) => unreachable!(),
        };
        let mut diff = |what: String| out.push(format!("table {name}: {what}"));
        for sc in &s.columns {
            let Some(pc) = p.columns.iter().find(|c| c.name == sc.name) else {
                diff(format!("column {}: only on SQLite", sc.name));
                continue;
            };
            let column = &sc.name;
            if !same_type(sc, pc) {
                diff(format!(
                    "column {column}: type {} on SQLite ({}), {} on PostgreSQL ({})",
                    sc.declared, sc.ty, pc.declared, pc.ty
                ));
            }
            if sc.not_null != pc.not_null {
                let says = |n: bool| if n { "NOT NULL" } else { "nullable" };
                diff(format!(
                    "column {column}: {} on SQLite, {} on PostgreSQL",
                    says(sc.not_null),
                    says(pc.not_null)
                ));
            }
            if sc.default != pc.default {
                diff(format!(
                    "column {column}: default {:?} on SQLite, {:?} on PostgreSQL",
                    sc.default, pc.default
                ));
            }
        }
        for pc in &p.columns {
            if !s.columns.iter().any(|c| c.name == pc.name) {
                diff(format!("column {}: only on PostgreSQL", pc.name));
            }
        }
        let order = |t: &Table, other: &Table| -> Vec<String> {
            t.columns
                .iter()
                .filter(|c| other.columns.iter().any(|o| o.name == c.name))
                .map(|c| c.name.clone())
                .collect()
        };
        let (so, po) = (order(s, p), order(p, s));
        if so != po {
            diff(format!(
                "column order: ({}) on SQLite, ({}) on PostgreSQL",
                so.join(", "),
                po.join(", ")
            ));
        }
        if s.primary_key != p.primary_key {
            diff(format!(
                "primary key: ({}) on SQLite, ({}) on PostgreSQL",
                s.primary_key.join(", "),
                p.primary_key.join(", ")
            ));
        }
        let indexes: BTreeSet<&String> = s.indexes.keys().chain(p.indexes.keys()).collect();
        for index in indexes {
            match (s.indexes.get(index), p.indexes.get(index)) {
                (Some(si), Some(pi)) if si != pi => diff(format!(
                    "index {index}: {} on SQLite, {} on PostgreSQL",
                    describe(si),
                    describe(pi)
                )),
                (Some(si), None) => {
                    diff(format!("index {index}: only on SQLite ({})", describe(si)))
                }
                (None, Some(pi)) => diff(format!(
                    "index {index}: only on PostgreSQL ({})",
                    describe(pi)
                )),
                _ => {}
            }
        }
        for fk in s.foreign_keys.difference(&p.foreign_keys) {
            diff(format!("foreign key {fk:?}: only on SQLite"));
        }
        for fk in p.foreign_keys.difference(&s.foreign_keys) {
            diff(format!("foreign key {fk:?}: only on PostgreSQL"));
        }
    }
    out
}

fn describe(i: &Index) -> String {
    format!(
        "{}({}){}",
        if i.unique { "UNIQUE " } else { "" },
        i.columns.join(", "),
        if i.partial { " partial" } else { "" }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_databases_migrate_to_the_same_schema() {
    if !common::postgres_available("both_databases_migrate_to_the_same_schema").await {
        return;
    }
    let (sqlite, postgres) = (
        migrated(Backend::Sqlite).await,
        migrated(Backend::Postgres).await,
    );
    let (s, p) = (
        sqlite_schema(&sqlite.url).await,
        postgres_schema(&postgres.url).await,
    );
    assert!(s.len() > 10, "SQLite tables found: {:?}", s.keys());
    assert!(
        s.values().all(|t| !t.columns.is_empty()),
        "every table has columns"
    );
    let found = differences(&s, &p);
    assert!(
        found.is_empty(),
        "the SQLite and PostgreSQL migrations build different schemas ({} differences):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The comparison sees drift of every kind it checks (so that the test above cannot pass by
/// comparing nothing): each change made to one database below is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comparison_reports_every_kind_of_drift() {
    if !common::postgres_available("the_comparison_reports_every_kind_of_drift").await {
        return;
    }
    let (sqlite, postgres) = (
        migrated(Backend::Sqlite).await,
        migrated(Backend::Postgres).await,
    );
    let mut pg = sqlx::PgConnection::connect(&postgres.url).await.unwrap();
    for statement in [
        "CREATE TABLE drift_only_here (id TEXT PRIMARY KEY)",
        "ALTER TABLE users ADD COLUMN drift_column TEXT",
        "ALTER TABLE users ALTER COLUMN name DROP NOT NULL",
        "ALTER TABLE usage_logs ALTER COLUMN latency_ms TYPE INTEGER",
        "ALTER TABLE api_keys ALTER COLUMN allowed_origins SET DEFAULT '{}'",
        "DROP INDEX memberships_user_idx",
        "CREATE UNIQUE INDEX sessions_user_idx2 ON sessions (user_id)",
        "ALTER TABLE projects ADD CONSTRAINT projects_drift_key UNIQUE (organization_id, name)",
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_project_id_fkey",
        "ALTER TABLE api_keys ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE",
        "ALTER TABLE org_configs DROP CONSTRAINT org_configs_pkey",
        "ALTER TABLE projects DROP COLUMN settings",
        "ALTER TABLE projects ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
    ] {
        sqlx::query(statement).execute(&mut pg).await.expect(statement);
    }
    pg.close().await.ok();
    let found = differences(
        &sqlite_schema(&sqlite.url).await,
        &postgres_schema(&postgres.url).await,
    );
    let report = found.join("\n");
    for expected in [
        "table drift_only_here: only on PostgreSQL",
        "table users: column drift_column: only on PostgreSQL",
        "table users: column name: NOT NULL on SQLite, nullable on PostgreSQL",
        "table usage_logs: column latency_ms: type INTEGER on SQLite (integer), integer on PostgreSQL (postgres integer)",
        "table api_keys: column allowed_origins: default",
        "table memberships: index memberships_user_idx: only on SQLite",
        "table sessions: index sessions_user_idx2: only on PostgreSQL (UNIQUE (user_id))",
        "table projects: index unique (organization_id, name): only on PostgreSQL",
        "table api_keys: foreign key",
        "table org_configs: primary key: (organization_id, key) on SQLite, () on PostgreSQL",
        "table projects: column order: (id, organization_id, name, settings,",
    ] {
        assert!(
            report.contains(expected),
            "expected {expected:?} among the differences:\n{report}"
        );
    }
}
