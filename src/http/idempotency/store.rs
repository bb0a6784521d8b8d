//! The `idempotency` table (migration 17): one row per (caller, `Idempotency-Key`), claimed by
//! the request whose insert succeeds, completed with the answer to replay, removed when the
//! answer is not kept. Knows nothing of HTTP: the layer (`mod.rs`) decides what to keep.

use sqlx::Row;

use crate::storage::Db;

/// Where a claimed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Claimed; its answer is not known yet.
    InProgress,
    /// Answered; the answer is kept for replay.
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::InProgress => "in_progress",
            State::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<State, sqlx::Error> {
        match s {
            "in_progress" => Ok(State::InProgress),
            "done" => Ok(State::Done),
            other => Err(sqlx::Error::Decode(
                format!("unknown idempotency state {other:?}").into(),
            )),
        }
    }
}

/// (caller, key): whose request, and the key it carried.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub caller: &'a str,
    pub key: &'a str,
}

/// A stored row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub fingerprint: String,
    pub state: State,
    pub status: Option<i64>,
    /// JSON: `[[name, value], …]`.
    pub headers: Option<String>,
    /// The body sealed with the master key; `None` when it was too large to keep.
    pub sealed_body: Option<String>,
    /// Also the claim's identity: a completion or release touches only the row it claimed.
    pub created_at: String,
    pub expires_at: String,
}

/// The answer to keep.
#[derive(Debug)]
pub struct Answer<'a> {
    pub status: i64,
    pub headers: &'a str,
    pub sealed_body: Option<&'a str>,
}

/// Claims `slot` for a request with `fingerprint`: true when this insert made the row (the
/// request runs), false when a row exists already (on any node).
pub async fn claim(
    db: &Db,
    slot: Slot<'_>,
    fingerprint: &str,
    created_at: &str,
    expires_at: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency (caller, idempotency_key, fingerprint, state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(slot.caller)
    .bind(slot.key)
    .bind(fingerprint)
    .bind(State::InProgress.as_str())
    .bind(created_at)
    .bind(expires_at)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn find(db: &Db, slot: Slot<'_>) -> Result<Option<Entry>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT fingerprint, state, status, headers, sealed_body, created_at, expires_at \
         FROM idempotency WHERE caller = $1 AND idempotency_key = $2",
    )
    .bind(slot.caller)
    .bind(slot.key)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(Entry {
            fingerprint: r.try_get("fingerprint")?,
            state: State::parse(&r.try_get::<String, _>("state")?)?,
            status: r.try_get("status")?,
            headers: r.try_get("headers")?,
            sealed_body: r.try_get("sealed_body")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// Deletes the row of `slot` claimed at `created_at` (an expired or abandoned row being
/// replaced, or a claim whose answer is not kept); a newer claim of the slot is left alone.
pub async fn remove(db: &Db, slot: Slot<'_>, created_at: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency WHERE caller = $1 AND idempotency_key = $2 AND created_at = $3",
    )
    .bind(slot.caller)
    .bind(slot.key)
    .bind(created_at)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(deleted == 1)
}

/// Completes the claim of `slot` made at `created_at` with `answer`.
pub async fn complete(
    db: &Db,
    slot: Slot<'_>,
    created_at: &str,
    answer: Answer<'_>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE idempotency SET state = $1, status = $2, headers = $3, sealed_body = $4 \
         WHERE caller = $5 AND idempotency_key = $6 AND created_at = $7 AND state = $8",
    )
    .bind(State::Done.as_str())
    .bind(answer.status)
    .bind(answer.headers)
    .bind(answer.sealed_body)
    .bind(slot.caller)
    .bind(slot.key)
    .bind(created_at)
    .bind(State::InProgress.as_str())
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Deletes every row that expired before `now`; returns how many.
pub async fn delete_expired(db: &Db, now: &str) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM idempotency WHERE expires_at <= $1")
            .bind(now)
            .execute(db.pool())
            .await?
            .rows_affected(),
    )
}
