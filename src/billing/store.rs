//! Plans and an organization's plan in the database: the catalogue (`plans`), each
//! organization's plan (`organizations.plan`), and the counts its usage is measured by. Reads
//! take the pool; writes take the caller's transaction (see [`crate::events::change`]).
//!
//! Subscriptions are in [`super::subscriptions::store`], invoices in
//! [`super::invoices::store`] (priced from the [`Plan`] read here).

use serde::Serialize;
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use crate::{
    error::Error,
    storage::{self, Db, RowExt},
};

crate::wire::string_enum! {
    /// How often a plan bills: each `month` or each `year` from the subscription's start.
    BillingInterval, "interval" {
        Month => "month",
        Year => "year",
    }
}

impl BillingInterval {
    /// Calendar months in one cycle.
    pub fn months(self) -> u32 {
        match self {
            BillingInterval::Month => 1,
            BillingInterval::Year => 12,
        }
    }
}

/// A plan of the catalogue as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Plan {
    pub id: String,
    #[serde(flatten)]
    pub fields: PlanFields,
    pub created_at: String,
    pub updated_at: String,
}

impl Plan {
    /// A numeric limit (`None`: unlimited or not stated).
    pub fn limit(&self, name: &str) -> Option<u64> {
        self.fields.limits.get(name).and_then(Value::as_u64)
    }

    /// The price of usage beyond the limit `name`, if the plan bills it: (units per block,
    /// minor units per block).
    pub fn overage_price(&self, name: &str) -> Option<(u64, i64)> {
        let p = self.fields.overage_prices.get(name)?;
        let per = p.get("per").and_then(Value::as_u64).filter(|n| *n > 0)?;
        let amount = p.get("amount").and_then(Value::as_i64)?;
        Some((per, amount))
    }

    /// The limit `name` where usage beyond it is refused: a limit without an overage price
    /// (`None`: unlimited, or billed beyond the limit).
    pub fn hard_limit(&self, name: &str) -> Option<u64> {
        self.limit(name)
            .filter(|_| self.overage_price(name).is_none())
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Plan, sqlx::Error> {
        Ok(Plan {
            id: r.try_get("id")?,
            fields: PlanFields {
                name: r.try_get("name")?,
                amount: r.try_get("amount")?,
                currency: r.try_get("currency")?,
                interval: r.get_parsed("billing_interval")?,
                limits: r.get_json("limits")?,
                features: r.get_json("features")?,
                overage_prices: r.get_json("overage_prices")?,
            },
            created_at: r.get_time("created_at")?,
            updated_at: r.get_time("updated_at")?,
        })
    }
}

/// A plan's own fields, validated (an update writes the merged whole).
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct PlanFields {
    pub name: String,
    pub amount: i64,
    pub currency: String,
    pub interval: BillingInterval,
    pub limits: Value,
    pub features: Value,
    /// `{"<limit key>": {"per": units, "amount": minor units}}`: usage beyond that limit is
    /// billed (per started block of `per` units) instead of refused.
    pub overage_prices: Value,
}

const PLAN_SELECT: &str = "SELECT id, name, amount, currency, billing_interval, limits, features, \
     overage_prices, created_at, updated_at FROM plans";

/// Every plan (the catalogue's source).
pub async fn plans(db: &Db) -> Result<Vec<Plan>, sqlx::Error> {
    let rows = sqlx::query(PLAN_SELECT).fetch_all(db.pool()).await?;
    rows.iter().map(Plan::from_row).collect()
}

/// One plan as stored, or not found.
pub async fn plan(db: &Db, id: &str) -> Result<Plan, Error> {
    let row = sqlx::query(&format!("{PLAN_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::not_found("Plan not found"))?;
    Ok(Plan::from_row(&row)?)
}

/// Binds a plan's fields in the order both statements name them, then the time of the write.
fn bind_plan<'q>(q: storage::AnyQuery<'q>, v: &'q PlanFields) -> storage::AnyQuery<'q> {
    q.bind(&v.name)
        .bind(v.amount)
        .bind(&v.currency)
        .bind(v.interval.as_str())
        .bind(v.limits.to_string())
        .bind(v.features.to_string())
        .bind(v.overage_prices.to_string())
        .bind(storage::now())
}

/// Inserts a plan; a conflict if one with this id exists.
pub async fn insert_plan(tx: &mut AnyConnection, id: &str, v: &PlanFields) -> Result<(), Error> {
    let result = bind_plan(
        sqlx::query(
            "INSERT INTO plans (name, amount, currency, billing_interval, limits, features, \
             overage_prices, created_at, updated_at, id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
        ),
        v,
    )
    .bind(id)
    .execute(&mut *tx)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(Error::conflict("A plan with this id already exists"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Replaces a plan's fields (the caller read it first: a plan deleted meanwhile is left so).
pub async fn update_plan(tx: &mut AnyConnection, id: &str, v: &PlanFields) -> Result<(), Error> {
    bind_plan(
        sqlx::query(
            "UPDATE plans SET name = $1, amount = $2, currency = $3, billing_interval = $4, \
             limits = $5, features = $6, overage_prices = $7, updated_at = $8 WHERE id = $9",
        ),
        v,
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn delete_plan(tx: &mut AnyConnection, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM plans WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How many organizations are on the plan.
pub async fn organizations_on_plan(db: &Db, plan_id: &str) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM organizations WHERE plan = $1")
            .bind(plan_id)
            .fetch_one(db.pool())
            .await?,
    )
}

/// The organization's plan id (as stored: it may be missing from the catalogue).
pub async fn organization_plan(db: &Db, org_id: &str) -> Result<String, Error> {
    Ok(
        sqlx::query_scalar("SELECT plan FROM organizations WHERE id = $1")
            .bind(org_id)
            .fetch_one(db.pool())
            .await?,
    )
}

/// Sets the organization's plan (inside `tx`); its limits follow once the caller publishes
/// `org:<id>` after the commit.
pub async fn set_organization_plan(
    tx: &mut AnyConnection,
    org_id: &str,
    plan: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE organizations SET plan = $1, updated_at = $2 WHERE id = $3")
        .bind(plan)
        .bind(storage::now())
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The organization's member and project counts (measured against its plan's limits).
pub async fn member_and_project_counts(db: &Db, org_id: &str) -> Result<(i64, i64), Error> {
    let members: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE organization_id = $1")
            .bind(org_id)
            .fetch_one(db.pool())
            .await?;
    let projects: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE organization_id = $1")
            .bind(org_id)
            .fetch_one(db.pool())
            .await?;
    Ok((members, projects))
}

/// A usage threshold warning: its organization, quantity, period (the counters' key),
/// threshold and the numbers it was sent with.
#[derive(Debug)]
pub struct ThresholdNotice<'a> {
    pub organization_id: &'a str,
    pub quantity: &'a str,
    pub period: &'a str,
    pub threshold_percent: u64,
    pub used: u64,
    pub limit: u64,
}

/// The (quantity, threshold) warnings already sent for the organization's period.
pub async fn threshold_notices(
    db: &Db,
    org_id: &str,
    period: &str,
) -> Result<Vec<(String, u64)>, Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT quantity, threshold_percent FROM usage_threshold_notices \
         WHERE organization_id = $1 AND period = $2",
    )
    .bind(org_id)
    .bind(period)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(q, p)| (q, p.max(0) as u64))
        .collect())
}

/// Records a warning; false when it was recorded already (by this node or another).
pub async fn record_threshold_notice(
    tx: &mut sqlx::AnyConnection,
    n: &ThresholdNotice<'_>,
) -> Result<bool, Error> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let inserted = sqlx::query(
        "INSERT INTO usage_threshold_notices (organization_id, quantity, period, \
         threshold_percent, used, limit_value, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT DO NOTHING",
    )
    .bind(n.organization_id)
    .bind(n.quantity)
    .bind(n.period)
    .bind(clamp(n.threshold_percent))
    .bind(clamp(n.used))
    .bind(clamp(n.limit))
    .bind(crate::storage::now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
