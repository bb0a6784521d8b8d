//! The invoice handlers: extract, call the store, answer. Settling an invoice (paid, void) is
//! a platform admin's change, written through [`Change`] as the organization's event.

use axum::{extract::State, response::IntoResponse};
use serde_json::json;

use super::store::{self, Invoice, InvoiceStatus};
use crate::{
    app::AppState,
    auth::extract::PlatformAdmin,
    error::Error,
    events::Change,
    http::{extract::Path, pagination::Page, request_meta::RequestMeta},
    ids::InvoiceId,
    orgs::{access::OrgAccess, roles::perm},
};

/// Where the invoice's PDF is served (the PDF itself is `billing/pdf.rs`'s).
fn with_pdf_url(state: &AppState, mut invoice: Invoice) -> Invoice {
    invoice.pdf_url = Some(state.config.link(&format!(
        "/v1/organizations/{}/invoices/{}/pdf",
        invoice.organization_id, invoice.id
    )));
    invoice
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingRead>,
    page: Page,
) -> Result<impl IntoResponse, Error> {
    let mut list = store::list(&state.db, access.org_id(), &page).await?;
    list.items = std::mem::take(&mut list.items)
        .into_iter()
        .map(|i| with_pdf_url(&state, i))
        .collect();
    Ok(axum::Json(list))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingRead>,
    Path((_, id)): Path<(String, InvoiceId)>,
) -> Result<impl IntoResponse, Error> {
    let invoice = store::get(&state.db, Some(access.org_id()), &id).await?;
    Ok(axum::Json(with_pdf_url(&state, invoice)))
}

/// Moves an open invoice to `to` (paid or void), emitting `invoice.paid|voided` as its
/// organization's event.
async fn settle(
    state: &AppState,
    admin: &PlatformAdmin,
    meta: &RequestMeta,
    id: &InvoiceId,
    to: InvoiceStatus,
) -> Result<axum::Json<Invoice>, Error> {
    let action = match to {
        InvoiceStatus::Paid => "invoice.paid",
        _ => "invoice.voided",
    };
    // The organization names the event; read first (an unknown id is not found).
    let current = store::get(&state.db, None, id).await?;
    let data = json!({"id": id, "amount": current.amount, "currency": current.currency,
                      "status": to, "previous_status": current.status});
    Change::new(action, "invoice", id, data)
        .organization(&current.organization_id)
        .write(state, &admin.context(meta), async |tx| {
            store::settle(tx, id, to).await
        })
        .await?;
    let invoice = store::get(&state.db, None, id).await?;
    Ok(axum::Json(with_pdf_url(state, invoice)))
}

/// `POST /v1/admin/invoices/{id}/pay`: paid outside Gatehouse (a bank transfer).
pub async fn pay(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<InvoiceId>,
) -> Result<axum::Json<Invoice>, Error> {
    settle(&state, &admin, &meta, &id, InvoiceStatus::Paid).await
}

/// `POST /v1/admin/invoices/{id}/void`: canceled, never to be paid.
pub async fn void(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<InvoiceId>,
) -> Result<axum::Json<Invoice>, Error> {
    settle(&state, &admin, &meta, &id, InvoiceStatus::Void).await
}
