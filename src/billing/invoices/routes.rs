//! The invoice handlers: extract, call the store, answer. Settling an invoice (paid, void) is
//! a platform admin's change, written through [`Change`] as the organization's event; a payment
//! provider's webhook settles it through [`collect::apply_event`].

use crate::http::pagination::List;
use axum::{body::Bytes, extract::State, http::HeaderMap};
use serde_json::json;

use super::{
    collect,
    document::{self, Customer},
    store::{self, Invoice, InvoiceStatus},
};
use crate::{
    app::AppState,
    auth::extract::PlatformAdmin,
    billing::{payments, subscriptions::store as subscriptions},
    error::Error,
    events::Change,
    http::{extract::Path, pagination::Page, request_meta::RequestMeta},
    ids::InvoiceId,
    orgs::{access::OrgAccess, organizations::store as organizations, roles::perm},
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
) -> Result<axum::Json<List<Invoice>>, Error> {
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
) -> Result<axum::Json<Invoice>, Error> {
    let invoice = store::get(&state.db, Some(access.org_id()), &id).await?;
    Ok(axum::Json(with_pdf_url(&state, invoice)))
}

/// `GET …/invoices/{id}/pdf`: the invoice as a PDF (seller from the configuration, the
/// organization and its billing email as the customer).
pub async fn pdf(
    State(state): State<AppState>,
    access: OrgAccess<perm::BillingRead>,
    Path((_, id)): Path<(String, InvoiceId)>,
) -> Result<crate::http::openapi::Pdf, Error> {
    let org = access.org_id();
    let invoice = store::get(&state.db, Some(org), &id).await?;
    let customer = Customer {
        name: organizations::name(&state.db, org).await?,
        billing_email: subscriptions::find(&state.db, org)
            .await?
            .and_then(|s| s.billing_email),
    };
    let bytes = document::render(&invoice, &state.config, customer)?;
    Ok(crate::http::openapi::Pdf {
        filename: format!("{id}.pdf"),
        bytes,
    })
}

/// `POST /v1/billing/stripe/webhook`: public, believed only with Stripe's signature over the
/// raw body. 404 when no provider is configured; 400 for a refused signature; 200 otherwise
/// (an event applied, seen before, about an invoice not open or not here, or of no concern).
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Received>, Error> {
    let Some(provider) = state.payments.as_deref().filter(|p| p.name() == "stripe") else {
        return Err(Error::not_found("Stripe payments are not configured"));
    };
    let event = payments::verify_webhook(provider, &headers, &body)?;
    collect::apply_event(&state, provider.name(), &event).await?;
    Ok(axum::Json(Received { received: true }))
}

/// The payment provider's event was taken (applied, seen before, or of no concern).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Received {
    /// Always `true`.
    received: bool,
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
