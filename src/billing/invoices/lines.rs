//! The pricing of a closed period's invoice, without I/O: the base line, the proration of each
//! mid-cycle plan change (to the second) and the overage of each quantity beyond its limit.
//! Every amount is in integer minor units; the rounding rules (docs/billing.md):
//!
//! - a prorated amount is `price × seconds / period seconds`, rounded half away from zero to
//!   the minor unit, each line on its own;
//! - overage is billed per **started** block: `ceil(units beyond the limit / per)` blocks at the
//!   block's price, so `quantity × unit_amount = amount` on every line;
//! - the invoice's amount is the sum of its lines (never rounded again).

use chrono::{DateTime, SecondsFormat, Utc};

crate::wire::string_enum! {
    /// What an invoice line bills.
    LineKind, "kind" {
        Base => "base",
        Overage => "overage",
        ProrationCredit => "proration_credit",
        ProrationCharge => "proration_charge",
    }
}

/// A line before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    pub kind: LineKind,
    pub description: String,
    pub quantity: i64,
    pub unit_amount: i64,
    pub amount: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A plan as a period's lines name it: id, display name and price per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedPlan {
    pub id: String,
    pub name: String,
    pub amount: i64,
}

/// A plan change within the period: at `at`, from one plan to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChange {
    pub at: DateTime<Utc>,
    pub from: PricedPlan,
    pub to: PricedPlan,
}

/// A quantity used beyond its limit in the period, and its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overage {
    /// Its name on the invoice, e.g. `Gateway tokens`.
    pub label: String,
    pub used: u64,
    pub limit: u64,
    /// Units per priced block, and the block's price.
    pub per: u64,
    pub block_amount: i64,
}

/// `amount × part / whole`, rounded half away from zero (`whole` > 0).
pub fn prorate(amount: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    let n = i128::from(amount) * i128::from(part);
    let w = i128::from(whole);
    let q = (n.abs() * 2 + w) / (w * 2);
    let q = if n < 0 { -q } else { q };
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Thousands separated: 1234567 → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The base line (the plan in force at the period's start) and, for each plan change within the
/// period (in time order), a credit for the unused part of the old plan and a charge for the rest
/// of the new one, to the second.
///
/// `until` is when the period stops being billed: its `end` for a period that ran its course, or
/// the moment a replaced subscription's cycle was closed early (`start <= until <= end`). Up to
/// `until` the base price is prorated (`price × (until − start) / (end − start)`, in full when
/// `until` is the end) and each change's credit and charge count the seconds from the change to
/// `until`; changes outside `start..until` are ignored. Each plan is thus paid for exactly the
/// seconds it was in force (up to each line's rounding).
pub fn base_and_proration(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    until: DateTime<Utc>,
    at_start: &PricedPlan,
    changes: &[PlanChange],
) -> Vec<NewLine> {
    let whole = (end - start).num_seconds().max(1);
    let until = until.clamp(start, end);
    let base = if until == end {
        NewLine {
            kind: LineKind::Base,
            description: format!("{} plan, {} to {}", at_start.name, time(start), time(end)),
            quantity: 1,
            unit_amount: at_start.amount,
            amount: at_start.amount,
            start,
            end,
        }
    } else {
        let used = (until - start).num_seconds().max(0);
        let amount = prorate(at_start.amount, used, whole);
        NewLine {
            kind: LineKind::Base,
            description: format!(
                "{} plan, {} to {} ({used} of {whole} s)",
                at_start.name,
                time(start),
                time(until)
            ),
            quantity: 1,
            unit_amount: amount,
            amount,
            start,
            end: until,
        }
    };
    let mut lines = vec![base];
    for c in changes.iter().filter(|c| start <= c.at && c.at < until) {
        // To the second: the change counts from the second it was made in.
        let at = DateTime::from_timestamp(c.at.timestamp(), 0).unwrap_or(c.at);
        let rest = (until - at).num_seconds().max(0);
        let credit = -prorate(c.from.amount, rest, whole);
        let charge = prorate(c.to.amount, rest, whole);
        lines.push(NewLine {
            kind: LineKind::ProrationCredit,
            description: format!(
                "Unused time on {} from {} ({rest} of {whole} s)",
                c.from.name,
                time(at)
            ),
            quantity: 1,
            unit_amount: credit,
            amount: credit,
            start: at,
            end: until,
        });
        lines.push(NewLine {
            kind: LineKind::ProrationCharge,
            description: format!(
                "Remaining time on {} from {} ({rest} of {whole} s)",
                c.to.name,
                time(at)
            ),
            quantity: 1,
            unit_amount: charge,
            amount: charge,
            start: at,
            end: until,
        });
    }
    lines
}

/// The overage line of a quantity used beyond its limit (`None` within it): per started block.
pub fn overage_line(o: &Overage, start: DateTime<Utc>, end: DateTime<Utc>) -> Option<NewLine> {
    let beyond = o.used.checked_sub(o.limit).filter(|n| *n > 0)?;
    let per = o.per.max(1);
    let blocks = beyond.div_ceil(per);
    let quantity = i64::try_from(blocks).unwrap_or(i64::MAX);
    Some(NewLine {
        kind: LineKind::Overage,
        description: format!(
            "{} beyond the {} included: {} ({} × {})",
            o.label,
            grouped(o.limit),
            grouped(beyond),
            grouped(blocks),
            grouped(per)
        ),
        quantity,
        unit_amount: o.block_amount,
        amount: quantity.saturating_mul(o.block_amount),
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn plan(id: &str, amount: i64) -> PricedPlan {
        PricedPlan {
            id: id.into(),
            name: id.into(),
            amount,
        }
    }

    #[test]
    fn prorating_rounds_half_away_from_zero() {
        assert_eq!(prorate(100, 1, 3), 33);
        assert_eq!(prorate(100, 2, 3), 67);
        assert_eq!(prorate(1, 1, 2), 1);
        assert_eq!(prorate(-1, 1, 2), -1);
        assert_eq!(prorate(4900, 0, 10), 0);
        assert_eq!(prorate(4900, 10, 10), 4900);
        assert_eq!(prorate(i64::MAX, 2, 2), i64::MAX);
    }

    #[test]
    fn a_change_in_the_middle_credits_and_charges_the_rest() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 16, 0, 0, 0).unwrap();
        let lines = base_and_proration(
            start,
            end,
            end,
            &plan("smb", 4900),
            &[PlanChange {
                at,
                from: plan("smb", 4900),
                to: plan("midmarket", 49900),
            }],
        );
        let amounts: Vec<i64> = lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, [4900, -2450, 24950]);
        assert_eq!(lines[1].kind, LineKind::ProrationCredit);
        assert_eq!(lines[2].start, at);
    }

    #[test]
    fn a_cycle_closed_early_bills_each_plan_for_the_seconds_it_was_in_force() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        let change = Utc.with_ymd_and_hms(2026, 1, 7, 0, 0, 0).unwrap();
        let until = Utc.with_ymd_and_hms(2026, 1, 16, 0, 0, 0).unwrap();
        let lines = base_and_proration(start, end, until, &plan("smb", 4900), &[]);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].amount, lines[0].unit_amount), (2450, 2450));
        assert_eq!((lines[0].start, lines[0].end), (start, until));
        assert_eq!(
            lines[0].description,
            "smb plan, 2026-01-01T00:00:00Z to 2026-01-16T00:00:00Z (1296000 of 2592000 s)"
        );
        // SMB for 6 days, then MidMarket for 9 days of a 30-day cycle, closed on the 16th.
        let lines = base_and_proration(
            start,
            end,
            until,
            &plan("smb", 3000),
            &[PlanChange {
                at: change,
                from: plan("smb", 3000),
                to: plan("midmarket", 30000),
            }],
        );
        let amounts: Vec<i64> = lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, [1500, -900, 9000]);
        assert_eq!(amounts.iter().sum::<i64>(), 600 + 9000);
        // A change after the early close is not this period's; closed at its start, nothing.
        assert_eq!(
            base_and_proration(start, end, start, &plan("smb", 4900), &[])[0].amount,
            0
        );
    }

    #[test]
    fn overage_is_billed_per_started_block() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let o = |used| Overage {
            label: "Gateway tokens".into(),
            used,
            limit: 1000,
            per: 100,
            block_amount: 7,
        };
        assert_eq!(overage_line(&o(1000), t, t), None);
        assert_eq!(overage_line(&o(999), t, t), None);
        let l = overage_line(&o(1001), t, t).unwrap();
        assert_eq!((l.quantity, l.unit_amount, l.amount), (1, 7, 7));
        let l = overage_line(&o(1250), t, t).unwrap();
        assert_eq!((l.quantity, l.amount), (3, 21));
        assert_eq!(
            l.description,
            "Gateway tokens beyond the 1,000 included: 250 (3 × 100)"
        );
    }
}
