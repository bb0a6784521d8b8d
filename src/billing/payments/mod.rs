//! Payments (SPEC §6, issue #23): an invoice can be paid through a payment provider. One trait,
//! [`PaymentProvider`], one file per provider ([`stripe`]); which one (if any) is chosen from the
//! configuration at start by [`from_config`] — off unless `stripe_secret_key` and
//! `stripe_webhook_secret` are set.
//!
//! The flow the invoice code drives: when an invoice is finalized, [`PaymentProvider::ensure_customer`]
//! for its organization (the provider's customer id is kept by the caller and passed back next
//! time), then [`PaymentProvider::create_payment_intent`] for the invoice's amount (idempotent on
//! the invoice id: a retry never charges twice). The provider later calls
//! `POST /v1/billing/stripe/webhook`; that route hands the raw body and headers to
//! [`PaymentProvider::parse_webhook`], which verifies the signature and answers the
//! [`PaymentOutcome`] (paid or failed, for which invoice) or `None` for an event of no concern.
//!
//! Nothing here touches the database: the caller moves the invoice (`open → paid`) through its
//! own store and `Change`.

pub mod stripe;

use std::{fmt::Debug, sync::Arc};

use axum::http::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::{
    config::Config,
    error::{Error, ErrorCode},
    secret::Secret,
};

/// The organization a customer is ensured for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCustomer {
    pub organization_id: String,
    pub name: String,
    pub billing_email: Option<String>,
    /// The provider's id kept from an earlier call (`cus_…`): returned as is, nothing created.
    pub existing_customer_id: Option<String>,
}

/// A request to collect an invoice's amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// Sent in the metadata, and the idempotency key: one payment per invoice.
    pub invoice_id: String,
    pub organization_id: String,
    /// The provider's customer (from [`PaymentProvider::ensure_customer`]).
    pub customer_id: String,
    /// Minor units of `currency` (positive).
    pub amount: i64,
    /// ISO 4217, either case (sent lowercase).
    pub currency: String,
    pub description: String,
    /// A saved payment method of the customer (`pm_…`) to charge at once, off-session; without
    /// it the payment waits for the customer to confirm it (its `client_secret`).
    pub payment_method: Option<String>,
}

/// The provider's payment for an invoice.
#[derive(Debug, Clone)]
pub struct PaymentIntent {
    /// `pi_…`
    pub id: String,
    /// The provider's status (`requires_payment_method`, `succeeded`, …).
    pub status: String,
    /// For a client-side confirmation (Stripe.js); never logged.
    pub client_secret: Option<Secret>,
}

/// What a verified provider event means for an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Paid { invoice_id: String },
    Failed { invoice_id: String, reason: String },
}

/// A verified provider event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    /// The provider's event id (`evt_…`), to recognise a delivery seen before.
    pub event_id: String,
    /// The event's type (`payment_intent.succeeded`, …).
    pub event_type: String,
    /// `None` for an event that concerns no invoice of ours (another type, no `invoice_id`).
    pub outcome: Option<PaymentOutcome>,
    /// The payment's amount (minor units; what was received when the provider says so) and
    /// currency (lowercase), when the event carries them: the caller checks them against the
    /// invoice before believing a `Paid`.
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

/// Why a webhook was refused. The route answers 400 with this message; nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed (expected t=…,v1=…)")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("the signature's timestamp is {0} s away from now (tolerance {tolerance} s)", tolerance = stripe::TOLERANCE_SECS)]
    Stale(i64),
}

/// Why a provider call or webhook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider answered with its error envelope.
    #[error("{provider} refused the request ({status} {kind}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Provider {
        provider: &'static str,
        status: u16,
        /// Stripe's `error.type` (`card_error`, `invalid_request_error`, `api_error`, …).
        kind: String,
        code: Option<String>,
        message: String,
    },
    /// No answer (refused by the SSRF guard, connection, timeout).
    #[error("{provider} could not be reached: {detail}")]
    Unreachable {
        provider: &'static str,
        detail: String,
    },
    /// An answer that is not what the provider's protocol says.
    #[error("{provider} answered unexpectedly ({status}): {detail}")]
    BadResponse {
        provider: &'static str,
        status: u16,
        detail: String,
    },
    #[error("webhook refused: {0}")]
    Signature(SignatureError),
    #[error("webhook refused: the payload is not a provider event ({0})")]
    Payload(String),
    #[error("invalid payment request: {0}")]
    Invalid(String),
}

impl From<PaymentError> for Error {
    fn from(e: PaymentError) -> Error {
        let message = e.to_string();
        match e {
            PaymentError::Signature(_) | PaymentError::Payload(_) | PaymentError::Invalid(_) => {
                Error::new(ErrorCode::InvalidRequest, message)
            }
            PaymentError::Provider {
                provider,
                status,
                kind,
                code,
                message: provider_message,
            } => Error::new(ErrorCode::UpstreamError, message).with_details(json!({
                "provider": provider,
                "status": status,
                "type": kind,
                "code": code,
                "message": provider_message,
            })),
            PaymentError::Unreachable { provider, .. } => {
                Error::new(ErrorCode::UpstreamError, message)
                    .with_details(json!({"provider": provider}))
            }
            PaymentError::BadResponse {
                provider, status, ..
            } => Error::new(ErrorCode::UpstreamError, message)
                .with_details(json!({"provider": provider, "status": status})),
        }
    }
}

/// A payment provider (see the module documentation).
pub trait PaymentProvider: Send + Sync + Debug {
    /// `stripe`.
    fn name(&self) -> &'static str;

    /// The provider's customer for an organization: `existing_customer_id` when given, else a new
    /// one (idempotent per organization, so concurrent first calls create one).
    fn ensure_customer<'a>(
        &'a self,
        customer: &'a PaymentCustomer,
    ) -> BoxFuture<'a, Result<String, PaymentError>>;

    /// A payment for a finalized invoice; the same invoice id always answers the same payment.
    fn create_payment_intent<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>>;

    /// Verifies a webhook delivery (headers and the raw body as received) at `now` (Unix
    /// seconds) and reads what it means.
    fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<PaymentEvent, PaymentError>;
}

/// What `POST /v1/billing/stripe/webhook` calls with the raw body: the verified event at the
/// current time, or the error to answer (400 `invalid_request` for a refused signature or
/// payload).
pub fn verify_webhook(
    provider: &dyn PaymentProvider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PaymentEvent, Error> {
    let now = chrono::Utc::now().timestamp();
    provider.parse_webhook(headers, body, now).map_err(|e| {
        tracing::warn!(provider = provider.name(), error = %e, "payment webhook refused");
        Error::from(e)
    })
}

/// The provider the configuration asks for: Stripe when `stripe_secret_key` and
/// `stripe_webhook_secret` are set, none otherwise. A `stripe_base_url` other than the default
/// must resolve to public addresses unless `allow_private_stripe_target` is set (checked here and
/// at every connection).
pub async fn from_config(config: &Config) -> anyhow::Result<Option<Arc<dyn PaymentProvider>>> {
    match (&config.stripe_secret_key, &config.stripe_webhook_secret) {
        (None, None) => Ok(None),
        (Some(key), Some(webhook_secret)) => {
            let stripe = stripe::Stripe::new(stripe::StripeSettings {
                secret_key: key.clone(),
                webhook_secret: webhook_secret.clone(),
                base_url: config.stripe_base_url.clone(),
                allow_private: config.allow_private_stripe_target,
            })
            .await?;
            Ok(Some(Arc::new(stripe)))
        }
        _ => anyhow::bail!(
            "stripe_secret_key and stripe_webhook_secret are set together (payments need both)"
        ),
    }
}
