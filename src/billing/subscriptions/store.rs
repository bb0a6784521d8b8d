//! Subscriptions in the database (`subscriptions`, one row per organization). Reads take the
//! pool; writes take the caller's transaction (see [`crate::events::change`]). Times are kept
//! as stored (the handlers show them with [`storage::api_time`]); the cycle job compares the
//! stored end to change a subscription once across nodes.
//!
//! An invoice belongs to one subscription period (`billing_cycle_start..end` as read from
//! [`Subscription`]); closing a period ([`renew`]/[`end`]) happens in the transaction that
//! issues its invoice (`billing::invoices`), and a mid-cycle plan change ([`update`]) is logged
//! in `subscription_changes` for its proration. Further statuses (`past_due` for an unpaid
//! invoice, `trialing`) are added to [`SubscriptionStatus`].

use sqlx::{AnyConnection, Row};

use crate::ids::SubscriptionId;
use crate::{
    billing::Plan,
    error::Error,
    storage::{self, Db, RowExt, Sql},
};

crate::wire::string_enum! {
    /// Where a subscription is in its life: `active` (its plan applies; a cancellation only sets
    /// `cancel_at_period_end`) until its last cycle ends, then `canceled`.
    SubscriptionStatus, "status" {
        Active => "active",
        Canceled => "canceled",
    }
}

/// A subscription row, times as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub organization_id: String,
    pub plan: String,
    pub status: SubscriptionStatus,
    pub billing_cycle_start: String,
    pub billing_cycle_end: String,
    pub amount: i64,
    pub currency: String,
    pub billing_email: Option<String>,
    pub auto_renew: bool,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id, organization_id, plan, status, billing_cycle_start, billing_cycle_end, \
                       amount, currency, billing_email, auto_renew, cancel_at_period_end, \
                       canceled_at, created_at, updated_at";

fn parse_status(s: &str) -> Result<SubscriptionStatus, sqlx::Error> {
    s.parse()
        .map_err(|_| sqlx::Error::Decode(format!("unknown status {s:?} in subscriptions").into()))
}

impl Subscription {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Subscription {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            plan: r.try_get("plan")?,
            status: parse_status(&r.try_get::<String, _>("status")?)?,
            billing_cycle_start: r.try_get("billing_cycle_start")?,
            billing_cycle_end: r.try_get("billing_cycle_end")?,
            amount: r.try_get("amount")?,
            currency: r.try_get("currency")?,
            billing_email: r.try_get("billing_email")?,
            auto_renew: r.get_bool("auto_renew")?,
            cancel_at_period_end: r.get_bool("cancel_at_period_end")?,
            canceled_at: r.try_get("canceled_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// The organization's subscription (in any status), if it has one.
pub async fn find(db: &Db, org_id: &str) -> Result<Option<Subscription>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE organization_id = $1"
    ))
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(Subscription::from_row).transpose()?)
}

/// The organization's active subscription, if it has one.
pub async fn active(db: &Db, org_id: &str) -> Result<Option<Subscription>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE organization_id = $1 AND status = $2"
    ))
    .bind(org_id)
    .bind(SubscriptionStatus::Active.as_str())
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(Subscription::from_row).transpose()?)
}

/// The status of the organization's subscription, read in the change's transaction.
pub async fn status_of(
    tx: &mut AnyConnection,
    org_id: &str,
) -> Result<Option<SubscriptionStatus>, Error> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriptions WHERE organization_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(stored.as_deref().map(parse_status).transpose()?)
}

/// The status and plan of the organization's subscription, read in the change's transaction.
pub async fn find_in(
    tx: &mut AnyConnection,
    org_id: &str,
) -> Result<Option<(SubscriptionStatus, String)>, Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT status, plan FROM subscriptions WHERE organization_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row
        .map(|(status, plan)| Ok::<_, sqlx::Error>((parse_status(&status)?, plan)))
        .transpose()?)
}

/// Whether the organization's subscription is still `subscription_id`, active, in the cycle
/// starting at `cycle_start` (as stored), read in the change's transaction.
pub async fn is_current_cycle(
    tx: &mut AnyConnection,
    org_id: &str,
    subscription_id: &str,
    cycle_start: &str,
) -> Result<bool, Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM subscriptions WHERE organization_id = $1 AND id = $2 \
         AND status = $3 AND billing_cycle_start = $4",
    )
    .bind(org_id)
    .bind(subscription_id)
    .bind(SubscriptionStatus::Active.as_str())
    .bind(cycle_start)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(found.is_some())
}

/// A new active subscription: its plan (whose price it takes) and the first cycle's bounds.
#[derive(Debug)]
pub struct NewSubscription<'a> {
    pub id: &'a SubscriptionId,
    pub organization_id: &'a str,
    pub plan: &'a Plan,
    pub billing_cycle_start: chrono::DateTime<chrono::Utc>,
    pub billing_cycle_end: chrono::DateTime<chrono::Utc>,
    pub billing_email: Option<String>,
    pub auto_renew: bool,
}

/// Starts the organization's subscription, replacing one that ended: one per organization.
pub async fn start(tx: &mut AnyConnection, new: &NewSubscription<'_>) -> Result<(), Error> {
    sqlx::query("DELETE FROM subscriptions WHERE organization_id = $1")
        .bind(new.organization_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO subscriptions (id, organization_id, plan, status, billing_cycle_start, \
         billing_cycle_end, amount, currency, billing_email, auto_renew, cancel_at_period_end, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, FALSE, $11, $11)",
    )
    .bind(new.id)
    .bind(new.organization_id)
    .bind(&new.plan.id)
    .bind(SubscriptionStatus::Active.as_str())
    .bind(storage::format_time(new.billing_cycle_start))
    .bind(storage::format_time(new.billing_cycle_end))
    .bind(new.plan.fields.amount)
    .bind(&new.plan.fields.currency)
    .bind(new.billing_email.clone())
    .bind(new.auto_renew)
    .bind(storage::format_time(new.billing_cycle_start))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a `PATCH` changes (each `None` is kept).
#[derive(Debug, Default)]
pub struct SubscriptionPatch<'a> {
    /// A new plan: its id, price and currency.
    pub plan: Option<(&'a str, i64, &'a str)>,
    pub billing_email: Option<String>,
    /// Renewing again (`true`) also undoes a pending cancellation.
    pub auto_renew: Option<bool>,
}

/// Applies a `PATCH`. A plan change is also written to `subscription_changes` (the previous
/// plan read under the change lock), for the proration on the period's invoice.
pub async fn update(
    tx: &mut AnyConnection,
    backend: storage::Backend,
    id: &SubscriptionId,
    patch: &SubscriptionPatch<'_>,
) -> Result<(), Error> {
    let now = chrono::Utc::now();
    if let Some((plan, amount, currency)) = patch.plan {
        storage::lock_for_change(tx, backend, "subscriptions", id).await?;
        let (from_plan, from_amount): (String, i64) =
            sqlx::query_as("SELECT plan, amount FROM subscriptions WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if from_plan != plan || from_amount != amount {
            sqlx::query(
                "INSERT INTO subscription_changes (id, subscription_id, changed_at, from_plan, \
                 from_amount, to_plan, to_amount, currency) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(crate::ids::SubscriptionChangeId::generate())
            .bind(id)
            .bind(storage::format_time(now))
            .bind(from_plan)
            .bind(from_amount)
            .bind(plan)
            .bind(amount)
            .bind(currency)
            .execute(&mut *tx)
            .await?;
        }
    }
    let mut sql = Sql::new("UPDATE subscriptions SET updated_at = ");
    sql.bind(storage::format_time(now));
    if let Some((plan, amount, currency)) = patch.plan {
        sql.push(", plan = ").bind(plan.to_string());
        sql.push(", amount = ").bind(amount);
        sql.push(", currency = ").bind(currency.to_string());
    }
    if let Some(e) = &patch.billing_email {
        sql.push(", billing_email = ").bind(e.clone());
    }
    if let Some(a) = patch.auto_renew {
        sql.push(", auto_renew = ").bind(a);
        if a {
            sql.push(", cancel_at_period_end = ").bind(false);
            sql.push(", canceled_at = ").bind(Option::<String>::None);
        }
    }
    sql.push(" WHERE id = ").bind(id.to_string());
    sql.query().execute(&mut *tx).await?;
    Ok(())
}

/// Cancels at the end of the current cycle (the first cancellation's time is kept).
pub async fn cancel_at_period_end(
    tx: &mut AnyConnection,
    id: &SubscriptionId,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE subscriptions SET cancel_at_period_end = TRUE, auto_renew = FALSE, \
         canceled_at = COALESCE(canceled_at, $1), updated_at = $1 WHERE id = $2",
    )
    .bind(storage::now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every active subscription whose cycle ended by `now` (of one organization, if given).
pub async fn due(
    db: &Db,
    now: chrono::DateTime<chrono::Utc>,
    org_id: Option<&str>,
) -> Result<Vec<Subscription>, Error> {
    let mut sql = Sql::new(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE status = "
    ));
    sql.bind(SubscriptionStatus::Active.as_str());
    sql.push(" AND billing_cycle_end <= ")
        .bind(storage::format_time(now));
    if let Some(org) = org_id {
        sql.push(" AND organization_id = ").bind(org.to_string());
    }
    sql.push(" ORDER BY billing_cycle_end, id");
    let rows = sql.query().fetch_all(db.pool()).await?;
    Ok(rows
        .iter()
        .map(Subscription::from_row)
        .collect::<Result<_, _>>()?)
}

/// Moves a due subscription into the cycle `start..end`; `false` if it is no longer the one
/// read (still active, its cycle still ending at `read_end`): another node got there first.
pub async fn renew(
    tx: &mut AnyConnection,
    id: &SubscriptionId,
    read_end: &str,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE subscriptions SET billing_cycle_start = $1, billing_cycle_end = $2, \
         updated_at = $3 WHERE id = $4 AND status = $5 AND billing_cycle_end = $6",
    )
    .bind(storage::format_time(start))
    .bind(storage::format_time(end))
    .bind(storage::now())
    .bind(id)
    .bind(SubscriptionStatus::Active.as_str())
    .bind(read_end)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Ends an active subscription (status `canceled`); `false` if it was no longer active.
pub async fn end(tx: &mut AnyConnection, id: &SubscriptionId) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE subscriptions SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
    )
    .bind(SubscriptionStatus::Canceled.as_str())
    .bind(storage::now())
    .bind(id)
    .bind(SubscriptionStatus::Active.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The email of the organization's first owner (the implicit subscription's billing email).
pub async fn first_owner_email(
    tx: &mut AnyConnection,
    org_id: &str,
) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.organization_id = $1 AND m.role = 'owner' ORDER BY m.created_at, m.id LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(&mut *tx)
    .await?)
}

/// Organizations that have no subscription row (created before subscriptions were implicit).
pub async fn organizations_without(db: &Db) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT o.id FROM organizations o WHERE NOT EXISTS \
         (SELECT 1 FROM subscriptions s WHERE s.organization_id = o.id) ORDER BY o.id",
    )
    .fetch_all(db.pool())
    .await?)
}
