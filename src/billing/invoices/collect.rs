//! Collecting invoices through the payment provider (Stripe) when one is configured
//! (`AppState::payments`; docs/billing.md "Payments").
//!
//! - [`collect_open`] — after every close run (the cycle job each minute, `gatehouse billing
//!   close-period`): each open invoice without a PaymentIntent gets its organization's customer
//!   (made once, its id kept) and a PaymentIntent for its amount, idempotent by the invoice id at
//!   the provider. A failure is logged and recorded; the invoice stays open and a later run
//!   tries again (after 1, 2, 4, … minutes, at most 6 h apart) — the invoice itself is never
//!   touched. After `billing_payment_max_attempts` failed attempts the payment is given up
//!   ([`give_up`]): status `abandoned`, one `invoice.payment_failed` with `"final": true` and one
//!   email to the billing email; the invoice stays open (an admin may still mark it paid or
//!   void) and is not tried again.
//! - [`apply_event`] — a verified webhook event: `Paid` settles the open invoice `paid`
//!   (`invoice.paid`, actor `system`) when the payment's amount and currency are the invoice's
//!   (otherwise it is logged as an error and the invoice stays open), `Failed` records the failure (`invoice.payment_failed`) and
//!   leaves it open. Each provider event is applied once (claimed in the change's transaction);
//!   an invoice that is not open, or not ours, is left as it is.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{payment_store, store};
use crate::{
    app::AppState,
    billing::payments::{
        PaymentCustomer, PaymentEvent, PaymentOutcome, PaymentProvider, PaymentRequest,
    },
    billing::subscriptions::store as subscriptions,
    error::Error,
    events::{ActorContext, Change},
    ids::InvoiceId,
    orgs::organizations::store as organizations,
};

/// Invoices tried per run at most (the rest wait for the next run).
const MAX_PER_RUN: i64 = 100;
/// The longest wait between two failed attempts at an invoice's payment.
const MAX_BACKOFF_SECS: i64 = 6 * 3600;

/// Whether an invoice whose payment failed `attempts` times, the last at `last`, is tried again
/// at `now`: after 1, 2, 4, … minutes, at most [`MAX_BACKOFF_SECS`] apart.
pub fn due_again(attempts: i64, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(last) = last.filter(|_| attempts > 0) else {
        return true;
    };
    let wait = 60i64
        .saturating_mul(1i64 << (attempts - 1).clamp(0, 20))
        .min(MAX_BACKOFF_SECS);
    now >= last + chrono::Duration::seconds(wait)
}

/// Creates the provider's payment of every open invoice that has none (of one organization when
/// given), as of `now` (the clock the retry delays are counted on: `Utc::now()` in the close
/// runs, a chosen time in tests). Returns how many were created; failures are logged, recorded
/// and retried by a later run, until the configured number of attempts: then given up.
pub async fn collect_open(state: &AppState, org_id: Option<&str>, now: DateTime<Utc>) -> usize {
    let Some(provider) = state.payments.as_deref() else {
        return 0;
    };
    let max_attempts = i64::from(state.config.billing_payment_max_attempts.max(1));
    let pending =
        match payment_store::uncollected(&state.db, provider.name(), org_id, MAX_PER_RUN).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the invoices to collect");
                return 0;
            }
        };
    let mut created = 0;
    for p in pending {
        let id = p.invoice_id;
        // Out of attempts (a crash after the last one was recorded, or a lowered maximum).
        if p.attempts >= max_attempts {
            give_up_logged(state, provider.name(), &id, max_attempts).await;
            continue;
        }
        if !due_again(p.attempts, p.last_attempt, now) {
            continue;
        }
        match collect(state, provider, &id, now).await {
            Ok(()) => created += 1,
            Err(e) => {
                tracing::warn!(invoice_id = %id, provider = provider.name(), error = %e,
                               "creating the invoice's payment failed; a later run tries again");
                let message = e.to_string();
                match payment_store::record_attempt(
                    &state.db,
                    &id,
                    provider.name(),
                    Err(&message),
                    now,
                )
                .await
                {
                    Ok(Some(attempts)) if attempts >= max_attempts => {
                        give_up_logged(state, provider.name(), &id, max_attempts).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(invoice_id = %id, error = %e, "cannot record a payment attempt");
                    }
                }
            }
        }
    }
    created
}

async fn give_up_logged(state: &AppState, provider: &str, id: &InvoiceId, max_attempts: i64) {
    match give_up(state, provider, id, max_attempts).await {
        Ok(true) => {
            tracing::warn!(invoice_id = %id, provider, attempts = max_attempts,
                           "the invoice's payment is given up; the invoice stays open");
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(invoice_id = %id, error = %e, "cannot give up a payment"),
    }
}

/// Gives up the invoice's payment once it failed `max_attempts` times: in one transaction, its
/// status `abandoned` and the event `invoice.payment_failed` with `"final": true` (actor
/// `system`); after the commit, one email to the billing email. `false` when there was nothing
/// to give up (another node did, a payment was made, the invoice was settled meanwhile). A crash
/// between the commit and the email loses the email, never sends it twice.
pub async fn give_up(
    state: &AppState,
    provider: &str,
    id: &InvoiceId,
    max_attempts: i64,
) -> Result<bool, Error> {
    let invoice = store::get(&state.db, None, id).await?;
    let mut data = json!({"id": id, "amount": invoice.amount, "currency": invoice.currency,
                          "status": store::InvoiceStatus::Open, "provider": provider,
                          "provider_event_id": null, "final": true});
    let given_up = Change::new("invoice.payment_failed", "invoice", id, json!({}))
        .organization(&invoice.organization_id)
        .write_described_if(state, &ActorContext::system(), async |tx| {
            let Some((attempts, reason)) = payment_store::abandon(tx, id, max_attempts).await?
            else {
                return Ok(None);
            };
            data["attempts"] = json!(attempts);
            data["reason"] = json!(reason.as_deref().unwrap_or("the payment could not be made"));
            Ok(Some(((attempts, reason), data.clone())))
        })
        .await?;
    let Some((attempts, reason)) = given_up else {
        return Ok(false);
    };
    let billing_email = subscriptions::find(&state.db, &invoice.organization_id)
        .await?
        .and_then(|s| s.billing_email);
    if let Some(to) = billing_email {
        let money = crate::billing::pdf::format_money(invoice.amount, &invoice.currency);
        let subject = format!("We could not collect the payment of invoice {id}");
        let body = format!(
            "The payment of invoice {id} ({money}, period {start} to {end}) of your organization \
             ({org}) failed {attempts} times and will not be tried again.\n\nLast error: \
             {reason}\n\nThe invoice is still open and due on {due}: please pay it another \
             way or contact us.\n",
            start = invoice.period.start,
            end = invoice.period.end,
            org = invoice.organization_id,
            reason = reason.as_deref().unwrap_or("unknown"),
            due = invoice.due_date,
        );
        crate::mail::send_later(&state.mailer, crate::mail::Mail::new(to, subject, body));
    }
    Ok(true)
}

/// The invoice's customer and PaymentIntent at the provider.
async fn collect(
    state: &AppState,
    provider: &dyn PaymentProvider,
    id: &InvoiceId,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let invoice = store::get(&state.db, None, id).await?;
    let org = invoice.organization_id.as_str();
    let existing = payment_store::customer_id(&state.db, org, provider.name()).await?;
    let customer = match existing {
        Some(c) => c,
        None => {
            let billing_email = subscriptions::find(&state.db, org)
                .await?
                .and_then(|s| s.billing_email);
            let c = provider
                .ensure_customer(&PaymentCustomer {
                    organization_id: org.to_string(),
                    name: organizations::name(&state.db, org).await?,
                    billing_email,
                    existing_customer_id: None,
                })
                .await?;
            payment_store::save_customer(&state.db, org, provider.name(), &c).await?;
            // Another node may have kept another id first: use the one kept.
            payment_store::customer_id(&state.db, org, provider.name())
                .await?
                .unwrap_or(c)
        }
    };
    let intent = provider
        .create_payment_intent(&PaymentRequest {
            invoice_id: id.to_string(),
            organization_id: org.to_string(),
            customer_id: customer,
            amount: invoice.amount,
            currency: invoice.currency.clone(),
            description: format!(
                "Invoice {id} ({} to {})",
                invoice.period.start, invoice.period.end
            ),
            payment_method: None,
        })
        .await?;
    tracing::info!(invoice_id = %id, payment_intent = %intent.id, "invoice payment created");
    payment_store::record_attempt(&state.db, id, provider.name(), Ok(&intent.id), now).await?;
    Ok(())
}

/// Applies a verified provider event (see the module documentation).
pub async fn apply_event(
    state: &AppState,
    provider: &str,
    event: &PaymentEvent,
) -> Result<(), Error> {
    let Some(outcome) = &event.outcome else {
        return Ok(());
    };
    let (PaymentOutcome::Paid { invoice_id } | PaymentOutcome::Failed { invoice_id, .. }) = outcome;
    let found = match InvoiceId::parse(invoice_id) {
        Some(id) => match store::get(&state.db, None, &id).await {
            Ok(invoice) => Some((id, invoice)),
            Err(e) if e.code().status().as_u16() == 404 => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let Some((id, invoice)) = found else {
        tracing::warn!(provider, event_id = %event.event_id, invoice_id = %invoice_id,
                       "payment event for an invoice that is not here; ignored");
        return Ok(());
    };
    if invoice.status != store::InvoiceStatus::Open {
        return Ok(());
    }
    // A payment of another amount or currency than the invoice's does not settle it.
    let mismatch = event.amount.is_some_and(|a| a != invoice.amount)
        || event
            .currency
            .as_deref()
            .is_some_and(|c| !c.eq_ignore_ascii_case(&invoice.currency));
    if matches!(outcome, PaymentOutcome::Paid { .. }) && mismatch {
        tracing::error!(provider, event_id = %event.event_id, invoice_id = %id,
                        paid = ?event.amount, paid_currency = ?event.currency,
                        amount = invoice.amount, currency = %invoice.currency,
                        "a payment does not match its invoice; the invoice stays open");
        return Ok(());
    }
    let mut data = json!({"id": id, "amount": invoice.amount, "currency": invoice.currency,
                          "provider": provider, "provider_event_id": event.event_id});
    let action = match outcome {
        PaymentOutcome::Paid { .. } => {
            data["status"] = json!(store::InvoiceStatus::Paid);
            data["previous_status"] = json!(invoice.status);
            "invoice.paid"
        }
        PaymentOutcome::Failed { reason, .. } => {
            data["status"] = json!(store::InvoiceStatus::Open);
            data["reason"] = json!(reason);
            // The customer may still pay the same PaymentIntent.
            data["final"] = json!(false);
            "invoice.payment_failed"
        }
    };
    Change::new(action, "invoice", &id, data)
        .organization(&invoice.organization_id)
        .write_if(state, &ActorContext::system(), async |tx| {
            if !payment_store::claim_event(tx, provider, &event.event_id, &event.event_type, &id)
                .await?
                || payment_store::status_in(tx, &id).await? != Some(store::InvoiceStatus::Open)
            {
                return Ok(None);
            }
            match outcome {
                PaymentOutcome::Paid { .. } => {
                    store::settle(tx, &id, store::InvoiceStatus::Paid).await?;
                }
                PaymentOutcome::Failed { reason, .. } => {
                    payment_store::record_failure(tx, &id, provider, reason).await?;
                }
            }
            Ok(Some(()))
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_payments_are_retried_less_and_less_often() {
        let t = |s: i64| DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap();
        assert!(due_again(0, None, t(0)));
        assert!(!due_again(1, Some(t(0)), t(59)));
        assert!(due_again(1, Some(t(0)), t(60)));
        assert!(!due_again(3, Some(t(0)), t(239)));
        assert!(due_again(3, Some(t(0)), t(240)));
        assert!(!due_again(40, Some(t(0)), t(6 * 3600 - 1)));
        assert!(due_again(40, Some(t(0)), t(6 * 3600)));
    }
}
