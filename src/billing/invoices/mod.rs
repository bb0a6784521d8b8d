//! Invoices (SPEC §6 "Billing details", issue #23): one per closed subscription period, issued
//! by the cycle job and `gatehouse billing close-period` ([`close`]), priced by [`lines`] (base
//! price, proration of mid-cycle plan changes to the second, overage beyond the plan's limits),
//! stored by [`store`], read and settled through [`routes`]:
//!
//! - `GET /v1/organizations/{org_id}/invoices[/{id}]` (admin / `billing:read`);
//! - `GET …/invoices/{id}/pdf` (the same permission): the PDF ([`document`] over `billing/pdf.rs`);
//! - `POST /v1/admin/invoices/{id}/pay` and `…/void` (platform admin; from `open` only);
//! - `POST /v1/billing/stripe/webhook` (public, Stripe's signature): payments through the
//!   provider ([`collect`], `billing/payments/`), which also collects open invoices after each
//!   close run.
//!
//! The rules are in `docs/billing.md`.

pub mod close;
pub mod collect;
pub mod document;
pub mod lines;
pub mod payment_store;
pub mod routes;
pub mod store;

pub use close::{close_periods, Closed, Issued};
pub use store::{Invoice, InvoiceStatus};

use crate::http::routes::Routes;

pub fn routes() -> Routes {
    Routes::new()
        .get("/v1/organizations/{org_id}/invoices", routes::list)
        .get("/v1/organizations/{org_id}/invoices/{id}", routes::get)
        .get("/v1/organizations/{org_id}/invoices/{id}/pdf", routes::pdf)
        .post("/v1/admin/invoices/{id}/pay", routes::pay)
        .post("/v1/admin/invoices/{id}/void", routes::void)
        .post("/v1/billing/stripe/webhook", routes::stripe_webhook)
}
