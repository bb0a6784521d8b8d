//! An organization's subscription (SPEC §6): `GET/POST/PATCH/DELETE
//! /v1/organizations/{org_id}/subscription`. Activating or changing a plan sets the
//! organization's plan in the same transaction — its rate limits and quotas follow on every node
//! at once (bus message `org:<id>`) — and emits `subscription.created|updated`. `DELETE` (owner)
//! cancels at the end of the billing cycle (`subscription.canceled`); the cycle job
//! ([`close_due`], every minute) then ends it and puts the organization back on the default
//! plan, or rolls an auto-renewing subscription into its next cycle.
//!
//! Not built here: invoices (and with them the proration of a mid-cycle plan change), which
//! belong to the billing work still to come.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use chrono::{DateTime, Months, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::DEFAULT_PLAN;
use crate::{
    app::AppState,
    error::{Error, ErrorCode, FieldError},
    events::{ActorContext, NewEvent},
    http::extract::Json,
    ids::OrgId,
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Db, RowExt},
};

const COLUMNS: &str = "id, organization_id, plan, status, billing_cycle_start, billing_cycle_end, \
                       amount, currency, billing_email, auto_renew, cancel_at_period_end, \
                       canceled_at, created_at, updated_at";

/// The subscription document (seed 000 shape, plus the cancellation fields).
async fn document(state: &AppState, r: &sqlx::any::AnyRow) -> Result<Value, Error> {
    let plan: String = r.try_get("plan")?;
    let features = state
        .plans
        .get(&plan)
        .map(|p| p.features.clone())
        .unwrap_or_else(|| json!({}));
    let time = |c: &str| -> Result<Option<String>, sqlx::Error> {
        Ok(r.try_get::<Option<String>, _>(c)?
            .map(|t| storage::api_time(&t)))
    };
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "organization_id": r.try_get::<String, _>("organization_id")?,
        "plan": plan,
        "status": r.try_get::<String, _>("status")?,
        "billing_cycle_start": time("billing_cycle_start")?,
        "billing_cycle_end": time("billing_cycle_end")?,
        "amount": r.try_get::<i64, _>("amount")?,
        "currency": r.try_get::<String, _>("currency")?,
        "billing_email": r.try_get::<Option<String>, _>("billing_email")?,
        "auto_renew": r.get_bool("auto_renew")?,
        "cancel_at_period_end": r.get_bool("cancel_at_period_end")?,
        "canceled_at": time("canceled_at")?,
        "features": features,
        "created_at": time("created_at")?,
        "updated_at": time("updated_at")?,
    }))
}

async fn row(db: &Db, org_id: &str) -> Result<Option<sqlx::any::AnyRow>, Error> {
    Ok(sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE organization_id = $1"
    ))
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?)
}

/// The organization's active subscription, or `not_found`.
async fn active(db: &Db, org_id: &str) -> Result<sqlx::any::AnyRow, Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE organization_id = $1 AND status = 'active'"
    ))
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("This organization has no active subscription"))
}

/// The organization's subscription document, if it has one (the admin organization detail).
pub async fn find(state: &AppState, org_id: &str) -> Result<Option<Value>, Error> {
    match row(&state.db, org_id).await? {
        Some(r) => Ok(Some(document(state, &r).await?)),
        None => Ok(None),
    }
}

fn cycle_end(start: DateTime<Utc>, interval: &str) -> DateTime<Utc> {
    let months = if interval == "year" { 12 } else { 1 };
    start
        .checked_add_months(Months::new(months))
        .unwrap_or(start)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    plan: Option<String>,
    billing_email: Option<String>,
    auto_renew: Option<bool>,
}

impl SubscriptionInput {
    /// The plan (when named) and the normalized billing email (when given).
    fn validate(
        &self,
        state: &AppState,
        plan_required: bool,
    ) -> Result<(Option<std::sync::Arc<super::Plan>>, Option<String>), Error> {
        let mut errors = Vec::new();
        let plan = match &self.plan {
            Some(id) => match state.plans.get(id).filter(|p| &p.id == id) {
                Some(p) => Some(p),
                None => {
                    let ids: Vec<String> = state.plans.all().iter().map(|p| p.id.clone()).collect();
                    errors.push(FieldError::new(
                        "plan",
                        format!("unknown plan; one of {}", ids.join(", ")),
                    ));
                    None
                }
            },
            None if plan_required => {
                errors.push(FieldError::new("plan", "is required"));
                None
            }
            None => None,
        };
        let email = match &self.billing_email {
            Some(e) => match crate::auth::users::normalize_email(e) {
                Ok(e) => Some(e),
                Err(_) => {
                    errors.push(FieldError::new("billing_email", "is not an email address"));
                    None
                }
            },
            None => None,
        };
        if errors.is_empty() {
            Ok((plan, email))
        } else {
            Err(Error::invalid(errors))
        }
    }
}

/// Sets the organization's plan (inside `tx`); its limits follow once the caller publishes
/// `org:<id>` after the commit.
async fn set_org_plan(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    plan: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET plan = $1, updated_at = $2 WHERE id = $3")
        .bind(plan)
        .bind(storage::now())
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingRead>,
) -> Result<impl IntoResponse, Error> {
    let doc = find(&state, access.org_id()).await?.ok_or_else(|| {
        Error::not_found("This organization has no subscription; POST one to activate a plan")
    })?;
    Ok(axum::Json(doc))
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingManage>,
    Json(body): Json<SubscriptionInput>,
) -> Result<impl IntoResponse, Error> {
    let (plan, email) = body.validate(&state, true)?;
    let plan = plan.ok_or_else(|| Error::invalid_field("plan", "is required"))?;
    let org_id = access.org_id().to_string();
    // Whole seconds: the cycle's bounds read back exactly as the API shows them.
    let now = Utc::now().trunc_subsecs(0);
    let mut tx = crate::events::begin_write(&state.db).await?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriptions WHERE organization_id = $1")
            .bind(&org_id)
            .fetch_optional(&mut *tx)
            .await?;
    if existing.as_deref() == Some("active") {
        return Err(Error::new(
            ErrorCode::Conflict,
            "This organization already has an active subscription; PATCH it to change plans",
        ));
    }
    // A subscription that ended is started again in place: one per organization.
    sqlx::query("DELETE FROM subscriptions WHERE organization_id = $1")
        .bind(&org_id)
        .execute(&mut *tx)
        .await?;
    let id = crate::ids::new_id("sub");
    sqlx::query(
        "INSERT INTO subscriptions (id, organization_id, plan, status, billing_cycle_start, \
         billing_cycle_end, amount, currency, billing_email, auto_renew, cancel_at_period_end, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, $9, FALSE, $10, $10)",
    )
    .bind(&id)
    .bind(&org_id)
    .bind(&plan.id)
    .bind(storage::format_time(now))
    .bind(storage::format_time(cycle_end(now, &plan.interval)))
    .bind(plan.amount)
    .bind(&plan.currency)
    .bind(email)
    .bind(body.auto_renew.unwrap_or(true))
    .bind(storage::format_time(now))
    .execute(&mut *tx)
    .await?;
    set_org_plan(&mut tx, &org_id, &plan.id).await?;
    access
        .emit(
            &mut tx,
            "subscription.created",
            ("subscription", &id),
            json!({"id": id, "plan": plan.id, "amount": plan.amount, "currency": plan.currency}),
        )
        .await?;
    tx.commit().await?;
    state
        .bus
        .publish(crate::events::Invalidation::organization(&org_id))
        .await;
    let doc = find(&state, &org_id).await?.unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(doc)))
}

pub async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingManage>,
    Json(body): Json<SubscriptionInput>,
) -> Result<impl IntoResponse, Error> {
    let (plan, email) = body.validate(&state, false)?;
    let org_id = access.org_id().to_string();
    let current = active(&state.db, &org_id).await?;
    let id: String = current.try_get("id")?;
    let previous: String = current.try_get("plan")?;
    let mut tx = crate::events::begin_write(&state.db).await?;
    let mut sql = crate::storage::Sql::new("UPDATE subscriptions SET updated_at = ");
    sql.bind(storage::now());
    if let Some(p) = &plan {
        sql.push(", plan = ").bind(p.id.clone());
        sql.push(", amount = ").bind(p.amount);
        sql.push(", currency = ").bind(p.currency.clone());
    }
    if let Some(e) = &email {
        sql.push(", billing_email = ").bind(e.clone());
    }
    if let Some(a) = body.auto_renew {
        sql.push(", auto_renew = ").bind(a);
        if a {
            // Renewing again undoes a pending cancellation.
            sql.push(", cancel_at_period_end = ").bind(false);
            sql.push(", canceled_at = ").bind(Option::<String>::None);
        }
    }
    sql.push(" WHERE id = ").bind(id.clone());
    sql.query().execute(&mut *tx).await?;
    if let Some(p) = &plan {
        set_org_plan(&mut tx, &org_id, &p.id).await?;
    }
    access
        .emit(
            &mut tx,
            "subscription.updated",
            ("subscription", &id),
            json!({"id": id, "plan": plan.as_ref().map(|p| &p.id).unwrap_or(&previous),
                   "previous_plan": previous, "auto_renew": body.auto_renew}),
        )
        .await?;
    tx.commit().await?;
    state
        .bus
        .publish(crate::events::Invalidation::organization(&org_id))
        .await;
    Ok(axum::Json(find(&state, &org_id).await?.unwrap_or_default()))
}

pub async fn cancel(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingCancel>,
) -> Result<impl IntoResponse, Error> {
    let org_id = access.org_id().to_string();
    let current = active(&state.db, &org_id).await?;
    let id: String = current.try_get("id")?;
    let ends: String = current.try_get("billing_cycle_end")?;
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "UPDATE subscriptions SET cancel_at_period_end = TRUE, auto_renew = FALSE, \
         canceled_at = COALESCE(canceled_at, $1), updated_at = $1 WHERE id = $2",
    )
    .bind(storage::now())
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    access
        .emit(
            &mut tx,
            "subscription.canceled",
            ("subscription", &id),
            json!({"id": id, "cancel_at": storage::api_time(&ends)}),
        )
        .await?;
    tx.commit().await?;
    Ok(axum::Json(find(&state, &org_id).await?.unwrap_or_default()))
}

/// The cycle job: every subscription whose cycle ended by `now` either rolls into its next
/// cycle (auto-renewing, not canceled) or ends — status `canceled`, the organization back on
/// the default plan, `subscription.updated` emitted. Returns how many it changed.
pub async fn close_due(state: &AppState, now: DateTime<Utc>) -> Result<usize, Error> {
    let due = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE status = 'active' AND billing_cycle_end <= $1"
    ))
    .bind(storage::format_time(now))
    .fetch_all(state.db.pool())
    .await?;
    let mut changed = 0;
    for r in &due {
        let id: String = r.try_get("id")?;
        let org_id: String = r.try_get("organization_id")?;
        let plan_id: String = r.try_get("plan")?;
        let renews = r.get_bool("auto_renew")? && !r.get_bool("cancel_at_period_end")?;
        let mut tx = crate::events::begin_write(&state.db).await?;
        let data = if renews {
            // Whole cycles from the last end, however long the job was away.
            let interval = state
                .plans
                .get(&plan_id)
                .map(|p| p.interval.clone())
                .unwrap_or_else(|| "month".into());
            let mut start =
                storage::parse_time(&r.try_get::<String, _>("billing_cycle_end")?).unwrap_or(now);
            let mut end = cycle_end(start, &interval);
            while end <= now {
                start = end;
                end = cycle_end(start, &interval);
            }
            let done = sqlx::query(
                "UPDATE subscriptions SET billing_cycle_start = $1, billing_cycle_end = $2, \
                 updated_at = $3 WHERE id = $4 AND status = 'active' AND billing_cycle_end = $5",
            )
            .bind(storage::format_time(start))
            .bind(storage::format_time(end))
            .bind(storage::now())
            .bind(&id)
            .bind(r.try_get::<String, _>("billing_cycle_end")?)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue; // another node got there first
            }
            json!({"id": id, "plan": plan_id, "status": "active", "renewed": true,
                   "billing_cycle_end": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})
        } else {
            let done = sqlx::query(
                "UPDATE subscriptions SET status = 'canceled', updated_at = $1 \
                 WHERE id = $2 AND status = 'active'",
            )
            .bind(storage::now())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue; // another node got there first
            }
            set_org_plan(&mut tx, &org_id, DEFAULT_PLAN).await?;
            json!({"id": id, "plan": plan_id, "status": "canceled", "previous_plan": plan_id,
                   "organization_plan": DEFAULT_PLAN})
        };
        crate::events::emit(
            &mut tx,
            &ActorContext::system(),
            NewEvent::new("subscription.updated", "subscription", Some(id.clone()))
                .organization(OrgId(org_id.clone()))
                .data(data),
        )
        .await?;
        tx.commit().await?;
        state
            .bus
            .publish(crate::events::Invalidation::organization(&org_id))
            .await;
        changed += 1;
    }
    Ok(changed)
}

/// Runs [`close_due`] every minute (every node; a subscription is changed once, by whichever
/// node's update finds it still due).
pub fn spawn_cycle_job(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = close_due(&state, Utc::now()).await {
                tracing::warn!(error = %e, "subscription cycle job failed");
            }
        }
    });
}
