//! Invoices (SPEC §6 "Billing details", issue #23): one per closed subscription period, issued
//! by the cycle job and `gatehouse billing close-period` ([`close`]), priced by [`lines`] (base
//! price, proration of mid-cycle plan changes to the second, overage beyond the plan's limits),
//! stored by [`store`], read and settled through [`routes`]:
//!
//! - `GET /v1/organizations/{org_id}/invoices[/{id}]` (admin / `billing:read`);
//! - `POST /v1/admin/invoices/{id}/pay` and `…/void` (platform admin; from `open` only).
//!
//! The PDF (`…/invoices/{id}/pdf`, `pdf_url`) and payment providers are built elsewhere
//! (`billing/pdf.rs`, `billing/payments/`). The rules are in `docs/billing.md`.

pub mod close;
pub mod lines;
pub mod routes;
pub mod store;

pub use close::{close_periods, Closed, Issued};
pub use store::{Invoice, InvoiceStatus};

use crate::http::routes::Routes;

pub fn routes() -> Routes {
    Routes::new()
        .get("/v1/organizations/{org_id}/invoices", routes::list)
        .get("/v1/organizations/{org_id}/invoices/{id}", routes::get)
        .post("/v1/admin/invoices/{id}/pay", routes::pay)
        .post("/v1/admin/invoices/{id}/void", routes::void)
}
