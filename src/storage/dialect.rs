//! The dialect layer: every place where SQLite and PostgreSQL need different SQL or a different
//! mechanism has a name here, and code outside `storage` asks for it by that name instead of
//! matching on the backend. Everything else is written once in the shared dialect described in
//! the module docs of [`crate::storage`].
//!
//! | Need | SQLite | PostgreSQL |
//! |---|---|---|
//! | set up each new connection ([`Backend::connection_setup`]) | `PRAGMA`s (WAL, foreign keys, busy timeout) | nothing |
//! | open a write transaction ([`Backend::begin_write`]) | `BEGIN IMMEDIATE` | `BEGIN` |
//! | lock rows read before a change ([`Backend::lock_for_change`]) | nothing | `FOR NO KEY UPDATE` |
//! | claim rows among concurrent workers ([`Backend::skip_locked`]) | nothing | `FOR UPDATE OF … SKIP LOCKED` |
//! | a batch insert that fails as a whole ([`Backend::insert_or_rollback`]) | `INSERT OR ROLLBACK` | `INSERT` |
//! | placeholders of built statements ([`super::Sql::for_backend`]) | `?` | `$N` |
//! | notifications between nodes ([`Backend::has_notifications`]) | none (one node) | `LISTEN/NOTIFY` |

/// Which database a [`super::Db`] talks to, and so which dialect its statements are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Every backend, for values made once per backend (prepared statement texts).
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The statements run on every new connection. SQLite: WAL for concurrent readers, foreign
    /// keys enforced, and waiting (not failing) when another connection holds the write lock.
    pub fn connection_setup(self) -> &'static [&'static str] {
        match self {
            Backend::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
                "PRAGMA busy_timeout = 10000",
            ],
            Backend::Postgres => &[],
        }
    }

    /// The statement that opens a write transaction (see [`super::begin_write`]). On SQLite it
    /// takes the write lock at once (`BEGIN IMMEDIATE`): a deferred transaction that reads first
    /// and then writes fails with "database is locked" when another connection wrote in between,
    /// instead of waiting.
    pub fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// The clause that locks the rows a `SELECT` reads until the transaction ends, serialising
    /// changes guarded by them: `FOR NO KEY UPDATE` on PostgreSQL (it does not block inserts whose
    /// foreign keys point at the row); nothing on SQLite, where a write transaction
    /// (`BEGIN IMMEDIATE`) already holds the database's one write lock.
    pub fn lock_for_change(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR NO KEY UPDATE",
        }
    }

    /// The clock as SQL, in the text [`super::now`] stores (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC),
    /// for a column list shared by several queries that compares stored times with the clock
    /// but cannot bind it (its placeholders would collide with each query's own).
    pub fn now_text(self) -> &'static str {
        match self {
            Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')",
            Backend::Postgres => {
                "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            }
        }
    }

    /// The clause ending a `SELECT … LIMIT n` that picks rows for a claiming `UPDATE`, so that
    /// several nodes never claim the same row: `FOR UPDATE OF <alias> SKIP LOCKED` on PostgreSQL
    /// (rows another transaction is claiming are passed over, not waited for); nothing on SQLite,
    /// where one node's one writer makes the statement atomic by itself.
    pub fn skip_locked(self, alias: &str) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR UPDATE OF {alias} SKIP LOCKED"),
        }
    }

    /// The verb of a multi-row insert that is one part of a larger transaction which a failure
    /// rolls back anyway: `INSERT OR ROLLBACK` on SQLite, so that a statement of many rows needs
    /// no statement journal of its own; plain `INSERT` on PostgreSQL (a failed statement aborts
    /// its transaction there already).
    pub fn insert_or_rollback(self) -> &'static str {
        match self {
            Backend::Sqlite => "INSERT OR ROLLBACK",
            Backend::Postgres => "INSERT",
        }
    }

    /// Whether the database carries notifications between the nodes sharing it (PostgreSQL
    /// `LISTEN/NOTIFY`, see [`super::Listener`]). SQLite has none: it serves one node.
    pub fn has_notifications(self) -> bool {
        match self {
            Backend::Sqlite => false,
            Backend::Postgres => true,
        }
    }

    /// Whether built statements ([`super::Sql::for_backend`]) use plain `?` placeholders, bound
    /// in order: SQLite finds a numbered parameter (`$N`) by walking a list, so binding n of them
    /// costs O(n²). PostgreSQL accepts only `$N`.
    pub fn positional_placeholders(self) -> bool {
        self == Backend::Sqlite
    }
}
