//! An organization's subscription (SPEC §6): `GET/POST/PATCH/DELETE
//! /v1/organizations/{org_id}/subscription`. Activating or changing a plan sets the
//! organization's plan in the same transaction — its rate limits and quotas follow on every node
//! at once (bus message `org:<id>`) — and emits `subscription.created|updated`. `DELETE` (owner)
//! cancels at the end of the billing cycle (`subscription.canceled`); the cycle job
//! ([`close_due`], every minute) then ends it and puts the organization back on the default
//! plan, or rolls an auto-renewing subscription into its next cycle.
//!
//! The queries are in [`store`]; the member's changes are written through [`Change`], the
//! cycle job's too (the system's, changing a subscription only if no
//! other node did).
//!
//! A plan change is logged (`subscription_changes`) for its proration on the period's invoice;
//! invoices are in [`crate::billing::invoices`].

pub mod store;

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::store::{NewSubscription, Subscription, SubscriptionPatch, SubscriptionStatus};
use super::store::{set_organization_plan, BillingInterval};
use crate::{
    app::AppState,
    error::{Error, ErrorCode, FieldError},
    events::{Change, Invalidation},
    http::extract::Json,
    orgs::{access::OrgAccess, roles::perm},
    storage,
};

/// The subscription document (seed 000 shape, plus the cancellation fields).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SubscriptionDocument {
    id: crate::ids::SubscriptionId,
    organization_id: String,
    plan: String,
    status: SubscriptionStatus,
    billing_cycle_start: String,
    billing_cycle_end: String,
    /// In the currency's minor units, per billing cycle.
    amount: i64,
    currency: String,
    billing_email: Option<String>,
    auto_renew: bool,
    cancel_at_period_end: bool,
    canceled_at: Option<String>,
    /// The plan's features (free-form, as the plan defines them).
    features: Value,
    created_at: String,
    updated_at: String,
}

fn document(state: &AppState, s: &Subscription) -> SubscriptionDocument {
    let features = state
        .plans
        .get(&s.plan)
        .map(|p| p.fields.features.clone())
        .unwrap_or_else(|| json!({}));
    let time = |t: &str| storage::api_time(t);
    SubscriptionDocument {
        id: s.id.clone(),
        organization_id: s.organization_id.clone(),
        plan: s.plan.clone(),
        status: s.status,
        billing_cycle_start: time(&s.billing_cycle_start),
        billing_cycle_end: time(&s.billing_cycle_end),
        amount: s.amount,
        currency: s.currency.clone(),
        billing_email: s.billing_email.clone(),
        auto_renew: s.auto_renew,
        cancel_at_period_end: s.cancel_at_period_end,
        canceled_at: s.canceled_at.as_deref().map(time),
        features,
        created_at: time(&s.created_at),
        updated_at: time(&s.updated_at),
    }
}

/// The organization's subscription document, after a change that leaves it one.
async fn document_of(state: &AppState, org_id: &str) -> Result<SubscriptionDocument, Error> {
    find(state, org_id)
        .await?
        .ok_or_else(|| Error::not_found("This organization has no subscription"))
}

/// The organization's active subscription, or `not_found`.
async fn active(state: &AppState, org_id: &str) -> Result<Subscription, Error> {
    store::active(&state.db, org_id)
        .await?
        .ok_or_else(|| Error::not_found("This organization has no active subscription"))
}

/// The organization's subscription document, if it has one (the admin organization detail).
pub async fn find(state: &AppState, org_id: &str) -> Result<Option<SubscriptionDocument>, Error> {
    Ok(store::find(&state.db, org_id)
        .await?
        .map(|s| document(state, &s)))
}

fn cycle_end(start: DateTime<Utc>, interval: BillingInterval) -> DateTime<Utc> {
    crate::limits::usage::add_months(start, interval.months())
}

/// A new subscription to `plan` whose first cycle starts at `start`.
fn first_cycle<'a>(
    plan: &'a super::Plan,
    id: &'a crate::ids::SubscriptionId,
    org_id: &'a str,
    start: DateTime<Utc>,
    billing_email: Option<String>,
    auto_renew: bool,
) -> NewSubscription<'a> {
    NewSubscription {
        id,
        organization_id: org_id,
        plan,
        billing_cycle_start: start,
        billing_cycle_end: cycle_end(start, plan.fields.interval),
        billing_email,
        auto_renew,
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingRead>,
) -> Result<axum::Json<SubscriptionDocument>, Error> {
    // Every organization has one from its creation ([`start_implicit`], [`backfill`]).
    let doc = find(&state, access.org_id())
        .await?
        .ok_or_else(|| Error::not_found("Organization not found"))?;
    Ok(axum::Json(doc))
}

/// The subscription every organization has from its creation: the default plan from `now`,
/// renewing, billed to its first owner's email. Started in the organization's creating
/// transaction (`orgs::organizations::create_owned`), and by [`backfill`] for organizations
/// created before.
pub async fn start_implicit(
    tx: &mut sqlx::AnyConnection,
    plans: &super::PlanCatalogue,
    id: &crate::ids::SubscriptionId,
    org_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let plan = plans.get(super::DEFAULT_PLAN).ok_or_else(|| {
        Error::new(
            ErrorCode::InternalError,
            "the default plan is missing from the catalogue",
        )
    })?;
    start_default(tx, &plan, id, org_id, now).await
}

async fn start_default(
    tx: &mut sqlx::AnyConnection,
    plan: &super::Plan,
    id: &crate::ids::SubscriptionId,
    org_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let now = now.trunc_subsecs(0);
    let billing_email = store::first_owner_email(tx, org_id).await?;
    let new = first_cycle(plan, id, org_id, now, billing_email, true);
    store::start(tx, &new).await
}

/// Gives every organization without a subscription (created before they were implicit) its
/// default-plan subscription, its first cycle starting now (a data step run at start-up:
/// `storage::migrations::run_data_steps`). Returns how many it started.
pub async fn backfill(db: &storage::Db) -> Result<usize, Error> {
    let plan = super::store::plan(db, super::DEFAULT_PLAN).await?;
    let mut started = 0;
    for org_id in store::organizations_without(db).await? {
        let mut tx = db.begin_write().await?;
        // Checked again in the transaction: another node's backfill or a POST may have won.
        if store::status_of(&mut tx, &org_id).await?.is_none() {
            let id = crate::ids::SubscriptionId::generate();
            start_default(&mut tx, &plan, &id, &org_id, Utc::now()).await?;
            started += 1;
        }
        tx.commit().await?;
    }
    Ok(started)
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingManage>,
    Json(body): Json<SubscriptionInput>,
) -> Result<(StatusCode, axum::Json<SubscriptionDocument>), Error> {
    let (plan, email) = body.validate(&state, true)?;
    let plan = plan.ok_or_else(|| Error::invalid_field("plan", "is required"))?;
    let org_id = access.org_id().to_string();
    // Whole seconds: the cycle's bounds read back exactly as the API shows them.
    let now = Utc::now().trunc_subsecs(0);
    let id = crate::ids::SubscriptionId::generate();
    let changed_meanwhile = || {
        Error::new(
            ErrorCode::Conflict,
            "The subscription changed while this one was being activated; try again",
        )
    };
    // The default-plan subscription this replaces is closed now, like any period: first every
    // period of it that has ended (as the cycle job would), then its current cycle up to now,
    // invoiced in the transaction that replaces it (docs/billing.md).
    let on_default =
        |s: &Option<Subscription>| s.as_ref().is_some_and(|s| s.plan == super::DEFAULT_PLAN);
    let mut current = store::active(&state.db, &org_id).await?;
    let mut replaced = None;
    if on_default(&current) {
        crate::billing::invoices::close::close_ended(&state, now, Some(&org_id)).await?;
        current = store::active(&state.db, &org_id).await?;
        if let Some(s) = current.as_ref().filter(|_| on_default(&current)) {
            // Still due: another node is closing it at this moment.
            if storage::parse_time(&s.billing_cycle_end).is_none_or(|end| end <= now) {
                return Err(changed_meanwhile());
            }
            replaced = crate::billing::invoices::close::price_replaced(&state, s, now).await?;
        }
    }
    // Without a billing email, the one of the subscription it replaces is kept.
    let email = match email {
        Some(e) => Some(e),
        None => store::find(&state.db, &org_id)
            .await?
            .and_then(|s| s.billing_email),
    };
    let auto_renew = body.auto_renew.unwrap_or(true);
    let new = first_cycle(&plan, &id, &org_id, now, email, auto_renew);
    let data = json!({"id": id, "plan": plan.id, "amount": plan.fields.amount, "currency": plan.fields.currency});
    let mut change = Change::new("subscription.created", "subscription", &id, data)
        .invalidates(Invalidation::organization(&org_id));
    if let Some(invoice) = &replaced {
        change = change.and(
            "invoice.created",
            "invoice",
            &invoice.id,
            invoice.event_data(),
        );
    }
    change
        .write(&state, &access, async |tx| {
            // Concurrent activations wait here for each other (PostgreSQL; SQLite's writes are
            // serialized anyway), then the later one finds the plan activated.
            if let Some(s) = &current {
                storage::lock_for_change(tx, state.db.backend(), "subscriptions", &s.id).await?;
            }
            // The implicit default-plan subscription is replaced by the plan activated; a
            // subscription on another plan is changed with PATCH.
            let found = store::find_in(tx, &org_id).await?;
            if found.as_ref().is_some_and(|(status, plan)| {
                *status == SubscriptionStatus::Active && plan != super::DEFAULT_PLAN
            }) {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    "This organization already has an active subscription; PATCH it to change plans",
                ));
            }
            if let Some(invoice) = &replaced {
                // Still the cycle priced, and not invoiced yet (the close job's claim).
                let (sub, start) = invoice.subscription();
                if !store::is_current_cycle(tx, &org_id, sub, start).await?
                    || !invoice.issue(tx).await?
                {
                    return Err(changed_meanwhile());
                }
            }
            store::start(tx, &new).await?;
            set_organization_plan(tx, &org_id, &plan.id).await
        })
        .await?;
    let doc = document_of(&state, &org_id).await?;
    Ok((StatusCode::CREATED, axum::Json(doc)))
}

pub async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingManage>,
    Json(body): Json<SubscriptionInput>,
) -> Result<axum::Json<SubscriptionDocument>, Error> {
    let (plan, email) = body.validate(&state, false)?;
    let org_id = access.org_id().to_string();
    let current = active(&state, &org_id).await?;
    // A change is prorated on the period's invoice, in the subscription's one currency.
    if let Some(p) = plan
        .as_ref()
        .filter(|p| p.fields.currency != current.currency)
    {
        return Err(Error::invalid_field(
            "plan",
            format!(
                "the {} plan is billed in {}, this subscription in {}; cancel it and start a new one",
                p.id, p.fields.currency, current.currency
            ),
        ));
    }
    let (id, previous) = (current.id, current.plan);
    let patch = SubscriptionPatch {
        plan: plan
            .as_ref()
            .map(|p| (p.id.as_str(), p.fields.amount, p.fields.currency.as_str())),
        billing_email: email,
        auto_renew: body.auto_renew,
    };
    let data = json!({"id": id, "plan": plan.as_ref().map(|p| &p.id).unwrap_or(&previous),
                      "previous_plan": previous, "auto_renew": body.auto_renew});
    Change::new("subscription.updated", "subscription", &id, data)
        .invalidates(Invalidation::organization(&org_id))
        .write(&state, &access, async |tx| {
            store::update(tx, state.db.backend(), &id, &patch).await?;
            match &plan {
                Some(p) => set_organization_plan(tx, &org_id, &p.id).await,
                None => Ok(()),
            }
        })
        .await?;
    Ok(axum::Json(document_of(&state, &org_id).await?))
}

pub async fn cancel(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingCancel>,
) -> Result<axum::Json<SubscriptionDocument>, Error> {
    let org_id = access.org_id().to_string();
    let current = active(&state, &org_id).await?;
    let id = current.id;
    let data = json!({"id": id, "cancel_at": storage::api_time(&current.billing_cycle_end)});
    Change::new("subscription.canceled", "subscription", &id, data)
        .write(&state, &access, async |tx| {
            store::cancel_at_period_end(tx, &id).await
        })
        .await?;
    Ok(axum::Json(document_of(&state, &org_id).await?))
}

/// The cycle job: every subscription whose cycle ended by `now` gets the invoice of each
/// period that ended, and rolls into its next cycle (auto-renewing, not canceled) or ends —
/// status `canceled`, the organization back on the default plan — emitting `invoice.created`
/// and `subscription.updated` ([`crate::billing::invoices::close`]). Returns how many
/// subscriptions it changed.
pub async fn close_due(state: &AppState, now: DateTime<Utc>) -> Result<usize, Error> {
    Ok(crate::billing::invoices::close_periods(state, now, None)
        .await?
        .subscriptions)
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
