//! What the request path's limits read and write in the database: an organization's plan, the
//! organization a user reaches through `{org_id}` (id or slug) with its plan, and the one
//! notice per organization, metric and period that a quota was exceeded. Knows nothing of HTTP
//! or caches (`middleware.rs` caches what it reads here).

use sqlx::{AnyConnection, Row};

use crate::storage::Db;

/// The plan of the organization, if it exists.
pub async fn plan_of(db: &Db, org_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT plan FROM organizations WHERE id = $1")
        .bind(org_id)
        .fetch_optional(db.pool())
        .await
}

/// The organization `org_param` (its id or slug) names and its plan, if `user_id` is a member.
pub async fn membership_plan(
    db: &Db,
    user_id: &str,
    org_param: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT o.id, o.plan FROM organizations o \
         JOIN memberships m ON m.organization_id = o.id AND m.user_id = $1 \
         WHERE o.id = $2 OR o.slug = $2",
    )
    .bind(user_id)
    .bind(org_param)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| Ok((r.try_get("id")?, r.try_get("plan")?)))
        .transpose()
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
