//! Payments of invoices in the database (migration 20): each organization's customer at the
//! payment provider (`payment_customers`), each open invoice's payment there
//! (`invoice_payments`: its PaymentIntent, or the failed attempts to make one), and the provider
//! events already applied (`payment_events`, the dedupe of webhook deliveries).
//!
//! The customer and payment rows are bookkeeping of calls to the provider (made outside any
//! transaction, retried by the next run); an event's claim is written in the transaction of the
//! change it causes, so a replay finds it only if that change committed.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::store::InvoiceStatus;
use crate::{
    error::Error,
    ids::InvoiceId,
    storage::{self, Db},
};

/// The organization's customer id at `provider`, if one was made.
pub async fn customer_id(db: &Db, org_id: &str, provider: &str) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT customer_id FROM payment_customers WHERE organization_id = $1 AND provider = $2",
    )
    .bind(org_id)
    .bind(provider)
    .fetch_optional(db.pool())
    .await?)
}

/// Keeps the organization's customer id (the first one kept wins; the provider's idempotency
/// key makes concurrent first calls answer the same customer anyway).
pub async fn save_customer(
    db: &Db,
    org_id: &str,
    provider: &str,
    customer_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO payment_customers (organization_id, provider, customer_id, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (organization_id, provider) DO NOTHING",
    )
    .bind(org_id)
    .bind(provider)
    .bind(customer_id)
    .bind(storage::now())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// An open invoice still to be collected, with its failed attempts so far.
#[derive(Debug, Clone)]
pub struct Uncollected {
    pub invoice_id: InvoiceId,
    /// Failed attempts to create its payment (0: never tried).
    pub attempts: i64,
    /// When the last attempt failed.
    pub last_attempt: Option<DateTime<Utc>>,
}

/// Open invoices with something to pay and no payment at `provider` yet (never tried, or every
/// try failed, and not given up), never-tried first, then by fewest attempts, at most `limit` (of
/// one organization when given).
pub async fn uncollected(
    db: &Db,
    provider: &str,
    org_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Uncollected>, Error> {
    let mut sql = storage::Sql::new(
        "SELECT i.id, p.attempts, p.updated_at FROM invoices i LEFT JOIN invoice_payments p \
         ON p.invoice_id = i.id AND p.provider = ",
    );
    sql.bind(provider.to_string());
    sql.push(" WHERE i.status = ")
        .bind(InvoiceStatus::Open.as_str().to_string());
    sql.push(
        " AND i.amount > 0 AND p.payment_intent_id IS NULL AND (p.status IS NULL OR p.status <> ",
    )
    .bind(ABANDONED.to_string());
    sql.push(")");
    if let Some(org) = org_id {
        sql.push(" AND i.organization_id = ").bind(org.to_string());
    }
    sql.push(" ORDER BY COALESCE(p.attempts, 0), i.id LIMIT ")
        .bind(limit);
    sql.query()
        .fetch_all(db.pool())
        .await?
        .iter()
        .filter_map(|r| {
            let id: String = match r.try_get("id") {
                Ok(id) => id,
                Err(e) => return Some(Err(e.into())),
            };
            let attempts: Option<i64> = r.try_get("attempts").ok().flatten();
            let last: Option<String> = r.try_get("updated_at").ok().flatten();
            Some(Ok(Uncollected {
                invoice_id: InvoiceId::parse(&id)?,
                attempts: attempts.unwrap_or(0),
                last_attempt: last.as_deref().and_then(storage::parse_time),
            }))
        })
        .collect()
}

/// `invoice_payments.status` of a payment given up after the configured number of failed
/// attempts: final, never tried again (the invoice stays open).
pub const ABANDONED: &str = "abandoned";

/// Records an attempt, made at `now`, to create the invoice's payment: its PaymentIntent id, or
/// why it failed (a later run tries again). Returns the failed attempts so far (`None` when the
/// payment was given up meanwhile: a failure no longer counts).
pub async fn record_attempt(
    db: &Db,
    invoice_id: &InvoiceId,
    provider: &str,
    outcome: Result<&str, &str>,
    now: DateTime<Utc>,
) -> Result<Option<i64>, Error> {
    let (intent, status, error) = match outcome {
        Ok(pi) => (Some(pi), "created", None),
        Err(e) => (None, "failed", Some(e)),
    };
    let now = storage::format_time(now);
    // A created payment is always kept; a failure does not reopen a payment given up.
    let attempts: Option<i64> = sqlx::query_scalar(
        "INSERT INTO invoice_payments (invoice_id, provider, payment_intent_id, status, attempts, \
         last_error, created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $6) \
         ON CONFLICT (invoice_id) DO UPDATE SET \
         payment_intent_id = COALESCE(invoice_payments.payment_intent_id, excluded.payment_intent_id), \
         status = excluded.status, attempts = invoice_payments.attempts + 1, \
         last_error = excluded.last_error, updated_at = excluded.updated_at \
         WHERE excluded.status = 'created' OR invoice_payments.status <> $7 \
         RETURNING attempts",
    )
    .bind(invoice_id)
    .bind(provider)
    .bind(intent)
    .bind(status)
    .bind(error)
    .bind(&now)
    .bind(ABANDONED)
    .fetch_optional(db.pool())
    .await?;
    Ok(attempts)
}

/// Gives up the invoice's payment after `max_attempts` failed attempts (status
/// [`ABANDONED`]), in the transaction that emits its event: `Some((attempts, last error))` when
/// this call did, `None` when it was not due (fewer attempts, a payment made, the invoice no
/// longer open) or another node gave it up first.
pub async fn abandon(
    tx: &mut AnyConnection,
    invoice_id: &InvoiceId,
    max_attempts: i64,
) -> Result<Option<(i64, Option<String>)>, Error> {
    let done = sqlx::query(
        "UPDATE invoice_payments SET status = $1, updated_at = $2 WHERE invoice_id = $3 \
         AND status = 'failed' AND payment_intent_id IS NULL AND attempts >= $4 \
         AND EXISTS (SELECT 1 FROM invoices i WHERE i.id = invoice_payments.invoice_id \
         AND i.status = $5)",
    )
    .bind(ABANDONED)
    .bind(storage::now())
    .bind(invoice_id)
    .bind(max_attempts)
    .bind(InvoiceStatus::Open.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let row: (i64, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM invoice_payments WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(&mut *tx)
            .await?;
    Ok(Some(row))
}

/// The invoice's payment at the provider: (PaymentIntent id, status, last error).
pub async fn payment_of(
    db: &Db,
    invoice_id: &InvoiceId,
) -> Result<Option<(Option<String>, String, Option<String>)>, Error> {
    Ok(sqlx::query_as(
        "SELECT payment_intent_id, status, last_error FROM invoice_payments WHERE invoice_id = $1",
    )
    .bind(invoice_id)
    .fetch_optional(db.pool())
    .await?)
}

/// Claims a provider event inside the transaction it causes: `false` when it was applied
/// before (a replayed delivery).
pub async fn claim_event(
    tx: &mut AnyConnection,
    provider: &str,
    event_id: &str,
    event_type: &str,
    invoice_id: &InvoiceId,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO payment_events (event_id, provider, event_type, invoice_id, received_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(provider)
    .bind(event_type)
    .bind(invoice_id)
    .bind(storage::now())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The invoice's status as this transaction sees it.
pub async fn status_in(
    tx: &mut AnyConnection,
    invoice_id: &InvoiceId,
) -> Result<Option<InvoiceStatus>, Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1")
        .bind(invoice_id)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(status.and_then(|s| s.parse().ok()))
}

/// Records the provider's refusal of the invoice's payment (it stays open).
pub async fn record_failure(
    tx: &mut AnyConnection,
    invoice_id: &InvoiceId,
    provider: &str,
    reason: &str,
) -> Result<(), Error> {
    let now = storage::now();
    sqlx::query(
        "INSERT INTO invoice_payments (invoice_id, provider, status, attempts, last_error, \
         created_at, updated_at) VALUES ($1, $2, 'payment_failed', 0, $3, $4, $4) \
         ON CONFLICT (invoice_id) DO UPDATE SET status = 'payment_failed', \
         last_error = excluded.last_error, updated_at = excluded.updated_at",
    )
    .bind(invoice_id)
    .bind(provider)
    .bind(reason)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
