//! Invoices in the database: `invoices` (one per closed subscription period; UNIQUE
//! (subscription_id, period_start) is the claim that makes closing a period happen once),
//! `invoice_lines`, and the plan changes a period's proration reads (`subscription_changes`,
//! written by [`crate::billing::subscriptions::store::update`]). Reads take the pool; writes
//! take the caller's transaction (see [`crate::events::change`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::lines::{LineKind, NewLine};
use crate::{
    error::Error,
    http::pagination::{has_id, List, Page},
    ids::{InvoiceId, InvoiceLineId, SubscriptionId},
    storage::{self, Db, RowExt, Sql},
};

crate::wire::string_enum! {
    /// Where an invoice is: `draft` only while being assembled (inside the transaction that
    /// issues it), `open` once issued, then `paid` or `void`.
    InvoiceStatus, "status" {
        Draft => "draft",
        Open => "open",
        Paid => "paid",
        Void => "void",
    }
}

/// A span of time as the API shows it (RFC 3339, whole seconds; `end` excluded).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Span {
    pub start: String,
    pub end: String,
}

impl Span {
    fn stored(start: &str, end: &str) -> Span {
        Span {
            start: storage::api_time(start),
            end: storage::api_time(end),
        }
    }
}

/// An invoice line as shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Line {
    pub id: InvoiceLineId,
    pub kind: LineKind,
    pub description: String,
    pub quantity: i64,
    pub unit_amount: i64,
    pub amount: i64,
    pub period: Span,
}

/// An invoice as shown (`pdf_url` is filled by the handler, which knows the public URL).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Invoice {
    pub id: InvoiceId,
    pub organization_id: String,
    pub subscription_id: String,
    pub plan: String,
    pub status: InvoiceStatus,
    pub amount: i64,
    pub currency: String,
    /// Issue date (the period's last day, `YYYY-MM-DD`).
    pub date: String,
    pub due_date: String,
    pub period: Span,
    pub lines: Vec<Line>,
    pub pdf_url: Option<String>,
    pub created_at: String,
    pub paid_at: Option<String>,
    pub voided_at: Option<String>,
}

has_id!(Invoice);

const COLUMNS: &str = "id, organization_id, subscription_id, plan, status, amount, currency, \
                       date, due_date, period_start, period_end, created_at, paid_at, voided_at";

impl Invoice {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Invoice, sqlx::Error> {
        let time = |c: &str| -> Result<Option<String>, sqlx::Error> {
            Ok(r.try_get::<Option<String>, _>(c)?
                .as_deref()
                .map(storage::api_time))
        };
        Ok(Invoice {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            subscription_id: r.try_get("subscription_id")?,
            plan: r.try_get("plan")?,
            status: r.get_parsed("status")?,
            amount: r.try_get("amount")?,
            currency: r.try_get("currency")?,
            date: r.try_get("date")?,
            due_date: r.try_get("due_date")?,
            period: Span::stored(
                &r.try_get::<String, _>("period_start")?,
                &r.try_get::<String, _>("period_end")?,
            ),
            lines: Vec::new(),
            pdf_url: None,
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
            paid_at: time("paid_at")?,
            voided_at: time("voided_at")?,
        })
    }
}

/// Fills the invoices' lines, in their order (one query for the page).
async fn with_lines(db: &Db, invoices: &mut [Invoice]) -> Result<(), Error> {
    if invoices.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::new(
        "SELECT id, invoice_id, kind, description, quantity, unit_amount, amount, period_start, \
         period_end FROM invoice_lines WHERE invoice_id IN (",
    );
    for (i, inv) in invoices.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(&inv.id);
    }
    sql.push(") ORDER BY invoice_id, position");
    for r in sql.query().fetch_all(db.pool()).await? {
        let invoice_id: String = r.try_get("invoice_id")?;
        let line = Line {
            id: r.try_get("id")?,
            kind: r.get_parsed("kind")?,
            description: r.try_get("description")?,
            quantity: r.try_get("quantity")?,
            unit_amount: r.try_get("unit_amount")?,
            amount: r.try_get("amount")?,
            period: Span::stored(
                &r.try_get::<String, _>("period_start")?,
                &r.try_get::<String, _>("period_end")?,
            ),
        };
        if let Some(inv) = invoices.iter_mut().find(|i| *i.id == *invoice_id) {
            inv.lines.push(line);
        }
    }
    Ok(())
}

/// One page of the organization's invoices, newest first, with their lines.
pub async fn list(db: &Db, org_id: &str, page: &Page) -> Result<List<Invoice>, Error> {
    let mut filter = Sql::new(" FROM invoices WHERE organization_id = ");
    filter.bind(org_id.to_string());
    let mut list = page
        .fetch(
            db,
            "invoices",
            &format!("SELECT {COLUMNS}"),
            &filter,
            "id DESC",
            Invoice::from_row,
        )
        .await?;
    with_lines(db, &mut list.items).await?;
    Ok(list)
}

/// One invoice with its lines: of the organization when given (another organization's is not
/// found), else of any (the platform admin's routes).
pub async fn get(db: &Db, org_id: Option<&str>, id: &str) -> Result<Invoice, Error> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM invoices WHERE id = "));
    sql.bind(id.to_string());
    if let Some(org) = org_id {
        sql.push(" AND organization_id = ").bind(org.to_string());
    }
    let row = sql
        .query()
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::not_found("Invoice not found"))?;
    let mut invoice = [Invoice::from_row(&row)?];
    with_lines(db, &mut invoice).await?;
    let [invoice] = invoice;
    Ok(invoice)
}

/// Days from an invoice's date to its due date.
pub const DUE_AFTER_DAYS: i64 = 30;

/// The invoice of one period of a subscription, priced and ready to be claimed: its period,
/// plan, currency, date and lines (priced and reported by [`super::close`]).
#[derive(Debug, Clone)]
pub struct NewInvoice {
    pub id: InvoiceId,
    pub organization_id: String,
    pub subscription_id: SubscriptionId,
    /// The plan in force when the period stopped being billed.
    pub plan: String,
    /// The period's bounds as stored (the subscription's cycle start; its end, or the moment
    /// the cycle was closed early).
    pub period_start: String,
    pub period_end: String,
    pub currency: String,
    pub date: chrono::NaiveDate,
    pub lines: Vec<NewLine>,
}

impl NewInvoice {
    /// The sum of the lines.
    pub fn amount(&self) -> i64 {
        self.lines
            .iter()
            .fold(0i64, |sum, l| sum.saturating_add(l.amount))
    }

    /// [`DUE_AFTER_DAYS`] after its date.
    pub fn due_date(&self) -> chrono::NaiveDate {
        self.date + chrono::Duration::days(DUE_AFTER_DAYS)
    }
}

/// Claims the period and issues its invoice: inserted as `draft` with its lines, then `open`.
/// `false` (nothing written) when the period has an invoice already: another node, or an
/// earlier run, issued it.
pub async fn issue(tx: &mut AnyConnection, new: &NewInvoice) -> Result<bool, Error> {
    let now = storage::now();
    let claimed = sqlx::query(
        "INSERT INTO invoices (id, organization_id, subscription_id, plan, period_start, \
         period_end, amount, currency, status, date, due_date, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         ON CONFLICT (subscription_id, period_start) DO NOTHING",
    )
    .bind(&new.id)
    .bind(&new.organization_id)
    .bind(&new.subscription_id)
    .bind(&new.plan)
    .bind(&new.period_start)
    .bind(&new.period_end)
    .bind(new.amount())
    .bind(&new.currency)
    .bind(InvoiceStatus::Draft.as_str())
    .bind(new.date.to_string())
    .bind(new.due_date().to_string())
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(false);
    }
    for (position, l) in new.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, \
             unit_amount, amount, period_start, period_end) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(InvoiceLineId::generate())
        .bind(&new.id)
        .bind(position as i64)
        .bind(l.kind.as_str())
        .bind(&l.description)
        .bind(l.quantity)
        .bind(l.unit_amount)
        .bind(l.amount)
        .bind(storage::format_time(l.start))
        .bind(storage::format_time(l.end))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE invoices SET status = $1 WHERE id = $2")
        .bind(InvoiceStatus::Open.as_str())
        .bind(&new.id)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// Moves an `open` invoice to `paid` or `void` (stamping the time); a conflict if it is not
/// open, not found if there is none. Returns its organization.
pub async fn settle(
    tx: &mut AnyConnection,
    id: &InvoiceId,
    to: InvoiceStatus,
) -> Result<String, Error> {
    let now = storage::now();
    let column = match to {
        InvoiceStatus::Paid => "paid_at",
        _ => "voided_at",
    };
    let done = sqlx::query(&format!(
        "UPDATE invoices SET status = $1, {column} = $2, updated_at = $2 \
         WHERE id = $3 AND status = $4"
    ))
    .bind(to.as_str())
    .bind(&now)
    .bind(id)
    .bind(InvoiceStatus::Open.as_str())
    .execute(&mut *tx)
    .await?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT organization_id, status FROM invoices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((org, status)) = row else {
        return Err(Error::not_found("Invoice not found"));
    };
    if done.rows_affected() == 0 {
        return Err(Error::conflict(format!(
            "The invoice is {status}; only an open invoice can be marked {to}"
        )));
    }
    Ok(org)
}

/// A plan change of a subscription as logged.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub at: DateTime<Utc>,
    pub from_plan: String,
    pub from_amount: i64,
    pub to_plan: String,
    pub to_amount: i64,
}

/// The subscription's plan changes made at or after `since`, oldest first.
pub async fn changes_since(
    db: &Db,
    subscription_id: &SubscriptionId,
    since: &str,
) -> Result<Vec<LoggedChange>, Error> {
    let rows = sqlx::query(
        "SELECT changed_at, from_plan, from_amount, to_plan, to_amount FROM subscription_changes \
         WHERE subscription_id = $1 AND changed_at >= $2 ORDER BY changed_at, id",
    )
    .bind(subscription_id)
    .bind(since)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let at: String = r.try_get("changed_at")?;
            Ok(LoggedChange {
                at: storage::parse_time(&at)
                    .ok_or_else(|| sqlx::Error::Decode(format!("bad changed_at {at:?}").into()))?,
                from_plan: r.try_get("from_plan")?,
                from_amount: r.try_get("from_amount")?,
                to_plan: r.try_get("to_plan")?,
                to_amount: r.try_get("to_amount")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::from)
}
