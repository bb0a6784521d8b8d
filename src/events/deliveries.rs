//! The delivery log of an endpoint (one row per attempt, including the pending next one) and
//! manual retry.

use serde::Serialize;
use serde_json::json;
use sqlx::{any::AnyRow, Row};

use super::{outbox, webhooks, ActorContext, NewEvent, Scope};
use crate::ids::WebhookId;
use crate::{
    error::{Error, Result},
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

const COLUMNS: &str = "id, endpoint_id, event_id, event_type, status, attempt, manual, \
                       response_status, response_body, error, latency_ms, next_attempt_at, \
                       created_at, completed_at";

/// What an attempt is doing or did.
pub mod status {
    /// Due at `next_attempt_at`.
    pub const PENDING: &str = "pending";
    /// Claimed by a worker (until its lease runs out).
    pub const DELIVERING: &str = "delivering";
    pub const SUCCEEDED: &str = "succeeded";
    /// This attempt failed; `next_attempt_at` says when the next one is due (`None`: given up).
    pub const FAILED: &str = "failed";
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Delivery {
    pub id: crate::ids::DeliveryId,
    pub endpoint_id: WebhookId,
    pub event_id: crate::ids::EventId,
    pub event_type: String,
    pub status: String,
    pub attempt: i64,
    /// Asked for with "retry"; a failed manual attempt is not retried on the schedule.
    pub manual: bool,
    pub response_status: Option<i64>,
    /// The first bytes of the receiver's answer.
    pub response_body: Option<String>,
    /// Why no HTTP answer was had (timeout, connection refused, refused target…).
    pub error: Option<String>,
    pub latency_ms: Option<i64>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

has_id!(Delivery);

impl Delivery {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Delivery, sqlx::Error> {
        Ok(Delivery {
            id: row.try_get("id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            status: row.try_get("status")?,
            attempt: row.try_get("attempt")?,
            manual: row.get_bool("manual")?,
            response_status: row.try_get("response_status")?,
            response_body: row.try_get("response_body")?,
            error: row.try_get("error")?,
            latency_ms: row.try_get("latency_ms")?,
            next_attempt_at: row.get_time_opt("next_attempt_at")?,
            created_at: row.get_time_opt("created_at")?.unwrap_or_default(),
            completed_at: row.get_time_opt("completed_at")?,
        })
    }
}

/// The endpoint's attempts, newest first (`{"deliveries": […], …}`, cursor paging too).
pub async fn list(
    db: &Db,
    scope: &Scope,
    endpoint_id: &WebhookId,
    page: &Page,
) -> Result<List<Delivery>> {
    webhooks::get(db, scope, endpoint_id).await?;
    let total: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind(endpoint_id)
            .fetch_one(db.pool())
            .await?;
    let mut sql = Sql::new(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE endpoint_id = "
    ));
    sql.bind(endpoint_id);
    page.apply_newest_first(&mut sql, "id");
    let rows = sql.query().fetch_all(db.pool()).await?;
    let items = rows
        .iter()
        .map(Delivery::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(List::from_rows("deliveries", items, total, page))
}

/// One attempt of one of the scope's endpoints.
pub async fn get(
    db: &Db,
    scope: &Scope,
    endpoint_id: &WebhookId,
    delivery_id: &str,
) -> Result<Delivery> {
    webhooks::get(db, scope, endpoint_id).await?;
    fetch(db.pool(), endpoint_id, delivery_id).await
}

async fn fetch<'c, E>(conn: E, endpoint_id: &WebhookId, delivery_id: &str) -> Result<Delivery>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2"
    ))
    .bind(delivery_id)
    .bind(endpoint_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| Error::not_found("Delivery not found"))?;
    Ok(Delivery::from_row(&row)?)
}

/// "Retry now": the event of this attempt is sent to the endpoint again at once. When an attempt
/// of it is already pending, that one is made due now; otherwise a new (manual) attempt is
/// queued. Returns the attempt that will be made.
pub async fn retry(
    db: &Db,
    scope: &Scope,
    ctx: &ActorContext,
    endpoint_id: &WebhookId,
    delivery_id: &str,
) -> Result<Delivery> {
    let endpoint = webhooks::get(db, scope, endpoint_id).await?;
    if !endpoint.enabled {
        return Err(Error::conflict(
            "The webhook endpoint is disabled; enable it to retry deliveries",
        ));
    }
    let mut tx = super::begin_write(db).await?;
    let original = fetch(&mut *tx, endpoint_id, delivery_id).await?;
    let open = sqlx::query(
        "SELECT id, status FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2 \
         AND status IN ('pending', 'delivering') ORDER BY id DESC",
    )
    .bind(&original.event_id)
    .bind(endpoint_id)
    .fetch_optional(&mut *tx)
    .await?;
    let now = storage::now();
    let attempt_id = match open {
        Some(row) if row.try_get::<String, _>("status")? == status::DELIVERING => {
            return Err(Error::conflict("This event is being delivered right now"));
        }
        Some(row) => {
            let id: String = row.try_get("id")?;
            sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            id
        }
        None => {
            let last: i64 = sqlx::query_scalar(
                "SELECT MAX(attempt) FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2",
            )
            .bind(&original.event_id)
            .bind(endpoint_id)
            .fetch_one(&mut *tx)
            .await?;
            outbox::insert_attempt(
                &mut tx,
                endpoint_id,
                &original.event_id,
                &original.event_type,
                last + 1,
                true,
                &now,
            )
            .await?
        }
    };
    let mut audit = NewEvent::new("webhook.delivery_retried", "webhook", Some(endpoint_id.to_string()))
        .metadata(json!({ "delivery_id": delivery_id, "event_id": original.event_id, "attempt_id": attempt_id }));
    if let Scope::Organization(org, _) = scope {
        audit = audit.organization(org.clone());
    }
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    let attempt = fetch(&mut *tx, endpoint_id, &attempt_id).await?;
    tx.commit().await?;
    Ok(attempt)
}
