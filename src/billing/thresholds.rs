//! Usage threshold warnings (SPEC §6 "Billing details"): when an organization's use of a limited
//! quantity reaches 80 % and 100 % of its plan's limit, once per usage period and quantity, the
//! event `usage.threshold_reached` (audit + webhook outbox) and an email to the subscription's
//! billing email.
//!
//! Which organizations to look at: those whose counts a node flushed, or whose members or
//! projects changed ([`crate::limits::usage::UsageMeter::take_touched`]); the job
//! ([`spawn_threshold_job`], every second on every node) compares their [`period_usage`] — the
//! numbers `GET …/usage` shows and the invoice bills — with the plan's limits. Exactly once
//! across nodes and restarts: the event is emitted in the transaction whose insert into
//! `usage_threshold_notices` (organization, quantity, period, threshold) succeeded; the email
//! is sent after that commit (a crash between the two loses the email, never sends it twice).

use std::time::Duration;

use serde_json::json;

use super::{period_document, period_usage, store, PeriodUsage, Quantity};
use crate::{
    app::AppState,
    error::Error,
    events::{ActorContext, NewEvent},
};

/// The percentages of a limit that are warned about.
pub const THRESHOLDS: [u64; 2] = [80, 100];

/// The thresholds `used` has reached of `limit` (none for a limit of 0: nothing to warn ahead).
pub fn reached(used: u64, limit: u64) -> impl Iterator<Item = u64> {
    THRESHOLDS
        .into_iter()
        .filter(move |p| limit > 0 && u128::from(used) * 100 >= u128::from(limit) * u128::from(*p))
}

/// Checks the organization's usage this period and warns about each threshold newly reached.
/// Returns how many warnings this call emitted (0 when another node or an earlier call did).
pub async fn check(state: &AppState, org_id: &str) -> Result<usize, Error> {
    let usage = period_usage(state, org_id).await?;
    let due: Vec<(&Quantity, u64, u64)> = usage
        .quantities
        .iter()
        .filter_map(|q| q.limit.map(|l| (q, l)))
        .flat_map(|(q, limit)| reached(q.used, limit).map(move |p| (q, limit, p)))
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let sent = store::threshold_notices(&state.db, org_id, &usage.period.key).await?;
    let mut emitted = 0;
    for (q, limit, percent) in due {
        if sent.iter().any(|(name, p)| name == q.name && *p == percent) {
            continue;
        }
        if warn(state, org_id, &usage, q, limit, percent).await? {
            emitted += 1;
        }
    }
    Ok(emitted)
}

/// Claims the warning and emits its event in one transaction, then mails the billing email.
async fn warn(
    state: &AppState,
    org_id: &str,
    usage: &PeriodUsage,
    q: &Quantity,
    limit: u64,
    percent: u64,
) -> Result<bool, Error> {
    let notice = store::ThresholdNotice {
        organization_id: org_id,
        quantity: q.name,
        period: &usage.period.key,
        threshold_percent: percent,
        used: q.used,
        limit,
    };
    let period = period_document(&usage.period);
    let data = json!({
        "quantity": q.name,
        "threshold_percent": percent,
        "used": q.used,
        "limit": limit,
        "period": period,
    });
    let mut tx = state.db.begin_write().await?;
    if !store::record_threshold_notice(&mut tx, &notice).await? {
        return Ok(false);
    }
    crate::events::emit(
        &mut tx,
        &ActorContext::system(),
        NewEvent::new(
            "usage.threshold_reached",
            "organization",
            Some(org_id.to_string()),
        )
        .organization(crate::ids::OrgId(org_id.to_string()))
        .metadata(data.clone())
        .data(data),
    )
    .await?;
    tx.commit().await?;
    let billing_email = super::subscriptions::store::find(&state.db, org_id)
        .await?
        .and_then(|s| s.billing_email);
    if let Some(to) = billing_email {
        let what = q.name.replace('_', " ");
        let subject = format!("Your organization has used {percent}% of its {what}");
        let body = format!(
            "Your organization ({org_id}) has used {used} of the {limit} {what} its {plan} plan \
             includes in the period {start} to {end} ({percent}%).\n\n{advice}\n",
            used = q.used,
            plan = usage.plan,
            start = period.start,
            end = period.end,
            advice = if percent >= 100 {
                "Beyond the limit, usage is refused or billed as overage, as your plan states; \
                 upgrade the plan to raise it."
            } else {
                "Upgrade the plan before the limit is reached to avoid interruptions or overage."
            },
        );
        crate::mail::send_later(&state.mailer, crate::mail::Mail::new(to, subject, body));
    }
    Ok(true)
}

/// Checks every organization whose usage changed, every `every` (every node).
pub fn spawn_threshold_job(state: AppState, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for org_id in state.usage.take_touched() {
                if let Err(e) = check(&state, &org_id).await {
                    tracing::warn!(error = %e, org_id, "usage threshold check failed");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_at_80_and_100_percent() {
        let r = |used, limit| reached(used, limit).collect::<Vec<_>>();
        assert!(r(79, 100).is_empty());
        assert_eq!(r(80, 100), [80]);
        assert_eq!(r(99, 100), [80]);
        assert_eq!(r(100, 100), [80, 100]);
        assert_eq!(r(250, 100), [80, 100]);
        // 80 % of 3 is 2.4: reached at 3 (and then 100 % too).
        assert!(r(2, 3).is_empty());
        assert_eq!(r(3, 3), [80, 100]);
        assert!(r(5, 0).is_empty());
        assert_eq!(r(u64::MAX, u64::MAX), [80, 100]);
    }
}
