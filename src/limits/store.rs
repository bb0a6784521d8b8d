//! What the request path's limits read and write in the database: an organization's plan, the
//! organization a user reaches through `{org_id}` (id or slug) with its plan, and the one
//! notice per organization, metric and period that a quota was exceeded. Knows nothing of HTTP
//! or caches (`middleware.rs` caches what it reads here).

use sqlx::AnyConnection;

use crate::storage::Db;

/// The plan of the organization, if it exists.
pub async fn plan_of(db: &Db, org_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT plan FROM organizations WHERE id = $1")
        .bind(org_id)
        .fetch_optional(db.pool())
        .await
}

/// Records that the organization exceeded `metric`'s quota in `period`; false when it was
/// recorded already (by this node or another).
pub async fn record_quota_notice(
    tx: &mut AnyConnection,
    org_id: &str,
    metric: &str,
    period: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO quota_notices (organization_id, metric, period, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(org_id)
    .bind(metric)
    .bind(period)
    .bind(crate::storage::now())
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
