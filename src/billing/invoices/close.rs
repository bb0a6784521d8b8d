//! Closing subscription periods: every active subscription whose cycle ended by a time gets
//! the invoice of that cycle, and rolls into its next cycle (auto-renewing, not canceled) or
//! ends (the organization back on the default plan) — both in **one transaction** per period,
//! whose first write is the claim of the period (`invoices` UNIQUE (subscription_id,
//! period_start)) and whose second changes the subscription only if it is still as read. A
//! second node, a retry or a second run of `gatehouse billing close-period` finds the claim
//! taken and changes nothing; a crash before the commit leaves the period unclosed, to be closed
//! again whole.
//!
//! The invoice is priced ([`super::lines`]) from the plan catalogue, the subscription's plan
//! changes within the period (`subscription_changes`) and the usage counters of exactly that
//! period (`limits::usage`: an organization with a subscription counts per billing cycle, keyed
//! by the cycle's start), read before the transaction: the period has ended, so what it holds
//! does not change.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    lines::{self, NewLine, Overage, PlanChange, PricedPlan},
    store::{self, NewInvoice},
};
use crate::{
    app::AppState,
    billing::{
        store::{set_organization_plan, BillingInterval},
        subscriptions::store::{self as subscriptions, Subscription, SubscriptionStatus},
        BILLABLE_LIMITS, DEFAULT_PLAN, METERED,
    },
    error::Error,
    events::{ActorContext, Change, Invalidation},
    ids::InvoiceId,
    limits::usage::{add_months, cycle_key, Counter},
    storage,
};

/// Periods of one subscription closed in one run at most (a job away for ten years of
/// monthly cycles catches up over several runs).
const MAX_PERIODS_PER_RUN: usize = 120;

/// An invoice issued by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub invoice_id: InvoiceId,
    pub organization_id: String,
    pub subscription_id: String,
    pub period_start: String,
    pub period_end: String,
    pub amount: i64,
    pub currency: String,
}

/// What a run did: the invoices it issued, and how many subscriptions it changed.
#[derive(Debug, Default)]
pub struct Closed {
    pub issued: Vec<Issued>,
    pub subscriptions: usize,
}

/// Closes every period (of one organization's subscription, if given) that ended at or before
/// `at`, period by period, each with its invoice, then collects open invoices through the payment
/// provider, if one is configured. Periods another node closed are skipped.
pub async fn close_periods(
    state: &AppState,
    at: DateTime<Utc>,
    org_id: Option<&str>,
) -> Result<Closed, Error> {
    let closed = close_ended(state, at, org_id).await?;
    // With a payment provider: a payment for each new invoice, and another try for those whose
    // payment could not be made before (failures are logged; the invoices stay open).
    super::collect::collect_open(state, org_id, Utc::now()).await;
    Ok(closed)
}

/// [`close_periods`] without the collection: the periods ended by `at` and their invoices
/// (also run by `POST …/subscription` before it replaces a default-plan subscription, so that
/// no ended period of it is left unclosed).
pub async fn close_ended(
    state: &AppState,
    at: DateTime<Utc>,
    org_id: Option<&str>,
) -> Result<Closed, Error> {
    // This node's own counts are in the counters the invoices read.
    if let Err(e) = state.usage.flush().await {
        tracing::warn!(error = %e, "flushing usage before closing periods failed");
    }
    let mut closed = Closed::default();
    for s in subscriptions::due(&state.db, at, org_id).await? {
        let mut current = Some(s);
        let mut changed = false;
        for _ in 0..MAX_PERIODS_PER_RUN {
            let Some(s) = current.take() else { break };
            let Some((issued, next)) = close_one(state, &s).await? else {
                break;
            };
            closed.issued.push(issued);
            changed = true;
            current = next
                .filter(|n| storage::parse_time(&n.billing_cycle_end).is_some_and(|end| end <= at));
        }
        if changed {
            closed.subscriptions += 1;
        }
    }
    Ok(closed)
}

/// A plan as the invoice names it, at the price it had then.
fn priced(state: &AppState, id: &str, amount: i64) -> PricedPlan {
    let name = state
        .plans
        .get(id)
        .filter(|p| p.id == id)
        .map(|p| p.fields.name.clone())
        .unwrap_or_else(|| id.to_string());
    PricedPlan {
        id: id.to_string(),
        name,
        amount,
    }
}

/// The label of a billable limit on an invoice line.
fn label(limit_name: &str) -> &'static str {
    match limit_name {
        "api_requests_per_month" => "API requests",
        "gateway_requests_per_month" => "Gateway requests",
        "gateway_tokens_per_month" => "Gateway tokens",
        "members" => "Members",
        _ => "Projects",
    }
}

/// The lines of the period `start..end` of `s`, billed until `until` (its end, or the moment
/// the cycle was closed early), and the plan in force at `until`.
async fn price(
    state: &AppState,
    s: &Subscription,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Vec<NewLine>, String), Error> {
    let logged = store::changes_since(&state.db, &s.id, &s.billing_cycle_start).await?;
    let (within, after): (Vec<_>, Vec<_>) = logged.into_iter().partition(|c| c.at < until);
    // The plan at the start is the first change's old plan; at the end, the last change's new
    // one (a change made after the end, before this run, is the next period's).
    let at_start = within
        .first()
        .or(after.first())
        .map(|c| priced(state, &c.from_plan, c.from_amount))
        .unwrap_or_else(|| priced(state, &s.plan, s.amount));
    let at_end = within
        .last()
        .map(|c| c.to_plan.clone())
        .or_else(|| after.first().map(|c| c.from_plan.clone()))
        .unwrap_or_else(|| s.plan.clone());
    let changes: Vec<PlanChange> = within
        .iter()
        .map(|c| PlanChange {
            at: c.at,
            from: priced(state, &c.from_plan, c.from_amount),
            to: priced(state, &c.to_plan, c.to_amount),
        })
        .collect();
    let mut lines = lines::base_and_proration(start, end, until, &at_start, &changes);
    // Overage: the plan in force at the end of the period prices usage beyond its limits.
    if let Some(plan) = state.plans.get(&at_end).filter(|p| p.id == at_end) {
        let key = cycle_key(start);
        for limit_name in BILLABLE_LIMITS {
            let (Some(limit), Some((per, block_amount))) =
                (plan.limit(limit_name), plan.overage_price(limit_name))
            else {
                continue;
            };
            let used = match METERED.iter().find(|(_, l, _)| l == limit_name) {
                Some((_, _, metric)) => {
                    state
                        .usage
                        .current(&Counter::new(&s.organization_id, *metric, key.as_str()))
                        .await?
                }
                // Members and projects: the count when the period is closed.
                None => {
                    let (members, projects) = crate::billing::store::member_and_project_counts(
                        &state.db,
                        &s.organization_id,
                    )
                    .await?;
                    let n = if *limit_name == "members" {
                        members
                    } else {
                        projects
                    };
                    n.max(0) as u64
                }
            };
            let o = Overage {
                label: label(limit_name).to_string(),
                used,
                limit,
                per,
                block_amount,
            };
            lines.extend(lines::overage_line(&o, start, until));
        }
    }
    Ok((lines, at_end))
}

/// The invoice of one period of a subscription: what the period's close ([`close_one`]) and a
/// replaced cycle's early close ([`price_replaced`]) both issue, through the same claim
/// ([`store::issue`]) and with the same `invoice.created` data.
impl NewInvoice {
    /// The invoice of the cycle of `s` billed until `until` (its end, or earlier).
    async fn price(
        state: &AppState,
        s: &Subscription,
        until: DateTime<Utc>,
    ) -> Result<Self, Error> {
        let bad = || {
            Error::from(anyhow::anyhow!(
                "a subscription's billing cycle is not a time"
            ))
        };
        let start = storage::parse_time(&s.billing_cycle_start).ok_or_else(bad)?;
        let end = storage::parse_time(&s.billing_cycle_end).ok_or_else(bad)?;
        let (lines, plan) = price(state, s, start, end, until).await?;
        Ok(NewInvoice {
            id: InvoiceId::generate(),
            organization_id: s.organization_id.clone(),
            subscription_id: s.id.clone(),
            plan,
            period_start: s.billing_cycle_start.clone(),
            period_end: if until >= end {
                s.billing_cycle_end.clone()
            } else {
                storage::format_time(until)
            },
            currency: s.currency.clone(),
            date: until.date_naive(),
            lines,
        })
    }

    /// The subscription (and cycle start) it bills.
    pub fn subscription(&self) -> (&str, &str) {
        (&self.subscription_id, &self.period_start)
    }

    /// What a run reports of it.
    fn issued(&self) -> Issued {
        Issued {
            invoice_id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            subscription_id: self.subscription_id.to_string(),
            period_start: storage::api_time(&self.period_start),
            period_end: storage::api_time(&self.period_end),
            amount: self.amount(),
            currency: self.currency.clone(),
        }
    }

    /// The data of its `invoice.created` event.
    pub fn event_data(&self) -> serde_json::Value {
        json!({
            "id": self.id, "organization_id": self.organization_id,
            "subscription_id": self.subscription_id, "status": store::InvoiceStatus::Open,
            "amount": self.amount(), "currency": self.currency,
            "period": {"start": storage::api_time(&self.period_start),
                       "end": storage::api_time(&self.period_end)},
            "lines": self.lines.len(),
        })
    }

    /// Claims the period and issues the invoice in the caller's transaction: `false` (nothing
    /// written) when the period has an invoice already.
    pub async fn issue(&self, tx: &mut sqlx::AnyConnection) -> Result<bool, Error> {
        store::issue(tx, self).await
    }
}

/// The invoice of the current cycle of `s`, a default-plan subscription that `POST
/// …/subscription` replaces at `at` (before the cycle's end): the cycle closed at that moment,
/// its base price prorated to the second for the part used, the proration of any plan change
/// within it, and overage for what it used (docs/billing.md, "Replacing the default-plan
/// subscription"). `None` when it has nothing to bill (a total of 0: a free default plan with
/// nothing beyond its limits, or a cycle replaced in its first seconds). The caller claims it
/// with [`NewInvoice::issue`] in the transaction that replaces the subscription, and emits
/// `invoice.created` with [`NewInvoice::event_data`].
pub async fn price_replaced(
    state: &AppState,
    s: &Subscription,
    at: DateTime<Utc>,
) -> Result<Option<NewInvoice>, Error> {
    // This node's own counts are in the counters the invoice reads.
    if let Err(e) = state.usage.flush().await {
        tracing::warn!(error = %e, "flushing usage before closing a replaced cycle failed");
    }
    let invoice = NewInvoice::price(state, s, at).await?;
    Ok((invoice.amount() != 0).then_some(invoice))
}

/// Closes the current period of `s` (which has ended): issues its invoice and renews or ends
/// the subscription, in one transaction. `None` if another node (or run) closed it first;
/// else the invoice and, when renewed, the subscription in its next period.
async fn close_one(
    state: &AppState,
    s: &Subscription,
) -> Result<Option<(Issued, Option<Subscription>)>, Error> {
    let bad = || {
        Error::from(anyhow::anyhow!(
            "a subscription's billing cycle is not a time"
        ))
    };
    let end = storage::parse_time(&s.billing_cycle_end).ok_or_else(bad)?;
    let invoice = NewInvoice::price(state, s, end).await?;
    let id = invoice.id.clone();
    let issued = invoice.issued();
    // One cycle on (the next run closes the next period if it has ended too).
    let renewal = (s.auto_renew && !s.cancel_at_period_end).then(|| {
        let interval = state
            .plans
            .get(&s.plan)
            .map(|p| p.fields.interval)
            .unwrap_or(BillingInterval::Month);
        (end, add_months(end, interval.months()))
    });
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let subscription_data = match renewal {
        Some((_, next_end)) => json!({
            "id": s.id, "plan": s.plan, "status": SubscriptionStatus::Active, "renewed": true,
            "billing_cycle_end": time(next_end), "invoice_id": id,
        }),
        None => json!({
            "id": s.id, "plan": s.plan, "status": SubscriptionStatus::Canceled,
            "previous_plan": s.plan, "organization_plan": DEFAULT_PLAN, "invoice_id": id,
        }),
    };
    let org_id = s.organization_id.as_str();
    let done = Change::new("invoice.created", "invoice", &id, invoice.event_data())
        .and(
            "subscription.updated",
            "subscription",
            &s.id,
            subscription_data,
        )
        .organization(org_id)
        .invalidates(Invalidation::organization(org_id))
        .write_if(state, &ActorContext::system(), async |tx| {
            // The claim: a period is invoiced once.
            if !invoice.issue(tx).await? {
                return Ok(None);
            }
            // The subscription changes only if it is still as read.
            let moved = match renewal {
                Some((next_start, next_end)) => {
                    subscriptions::renew(tx, &s.id, &s.billing_cycle_end, next_start, next_end)
                        .await?
                }
                None => {
                    let ended = subscriptions::end(tx, &s.id).await?;
                    if ended {
                        set_organization_plan(tx, org_id, DEFAULT_PLAN).await?;
                    }
                    ended
                }
            };
            Ok(moved.then_some(()))
        })
        .await?;
    if done.is_none() {
        return Ok(None);
    }
    let next = renewal.map(|(next_start, next_end)| Subscription {
        billing_cycle_start: storage::format_time(next_start),
        billing_cycle_end: storage::format_time(next_end),
        ..s.clone()
    });
    Ok(Some((issued, next)))
}
