//! An invoice as its PDF shows it: the stored invoice, the seller from the configuration
//! (`billing_seller_*`) and the organization billed, mapped onto [`crate::billing::pdf`]'s types.

use chrono::{DateTime, NaiveDate, Utc};

use super::store::{Invoice, Span};
use crate::{
    billing::pdf::{self, PdfCustomer, PdfInvoice, PdfLine, PdfPeriod, PdfSeller},
    config::Config,
    error::Error,
};

/// The organization billed, as the PDF names it.
pub struct Customer {
    pub name: String,
    pub billing_email: Option<String>,
}

fn bad(what: &str) -> Error {
    Error::from(anyhow::anyhow!("an invoice's {what} is not a date"))
}

fn period(span: &Span) -> Result<PdfPeriod, Error> {
    let time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad("period"))
    };
    Ok(PdfPeriod {
        start: time(&span.start)?,
        end: time(&span.end)?,
    })
}

fn date(s: &str, what: &str) -> Result<NaiveDate, Error> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad(what))
}

/// The PDF of `invoice`.
pub fn render(invoice: &Invoice, config: &Config, customer: Customer) -> Result<Vec<u8>, Error> {
    let lines = invoice
        .lines
        .iter()
        .map(|l| {
            Ok(PdfLine {
                description: l.description.clone(),
                kind: l.kind.as_str().to_string(),
                quantity: l.quantity,
                unit_amount: l.unit_amount,
                amount: l.amount,
                period: period(&l.period)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    pdf::render(&PdfInvoice {
        number: invoice.id.to_string(),
        issued: date(&invoice.date, "date")?,
        due: date(&invoice.due_date, "due date")?,
        status: invoice.status.as_str().to_string(),
        seller: PdfSeller {
            name: config.billing_seller_name.clone(),
            address_lines: config.billing_seller_address.clone(),
            email: config.billing_seller_email.clone(),
        },
        customer: PdfCustomer {
            organization_name: customer.name,
            billing_email: customer.billing_email,
        },
        period: period(&invoice.period)?,
        currency: invoice.currency.clone(),
        lines,
        total: invoice.amount,
    })
}
