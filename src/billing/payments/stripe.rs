//! Stripe (`https://docs.stripe.com/api`), spoken on the wire: form-encoded `POST`s to
//! `/v1/customers` and `/v1/payment_intents` with the secret key as a Bearer token and an
//! `Idempotency-Key`; Stripe's error envelope `{"error": {type, code, message, param}}` becomes a
//! [`PaymentError::Provider`]. Webhooks carry `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`, an
//! HMAC-SHA256 of `"{t}.{raw body}"` under the endpoint's signing secret (`whsec_…`); a delivery
//! is accepted when one `v1` matches (compared in constant time) and `t` is within
//! [`TOLERANCE_SECS`] of now.
//!
//! Requests go through the webhook client ([`OutboundClient`]): no redirects, no proxies, answers
//! read up to a cap, and every connection to a vetted address. A `stripe_base_url` other than
//! [`DEFAULT_BASE_URL`] (stripe-mock, a test server) is also vetted at start.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    PaymentCustomer, PaymentError, PaymentEvent, PaymentIntent, PaymentOutcome, PaymentProvider,
    PaymentRequest, SignatureError,
};
use crate::{
    events::ssrf::{self, OutboundClient},
    secret::Secret,
};

pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// How far a webhook's signed timestamp may be from now (Stripe's libraries use the same).
pub const TOLERANCE_SECS: i64 = 300;
/// A whole API call: connect, send, read the answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a customer or a PaymentIntent is a few KiB).
const BODY_LIMIT: usize = 256 * 1024;
/// The longest `Stripe-Signature` header looked at.
const MAX_SIGNATURE_HEADER: usize = 4096;
/// Stripe's limits: idempotency keys and metadata values.
const MAX_KEY: usize = 255;
const MAX_DESCRIPTION: usize = 1000;

const NAME: &str = "stripe";

type HmacSha256 = Hmac<Sha256>;

/// What [`Stripe::new`] needs (from the configuration).
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// `sk_live_…` / `sk_test_…` (or a restricted `rk_…`).
    pub secret_key: Secret,
    /// The webhook endpoint's signing secret, `whsec_…`.
    pub webhook_secret: Secret,
    /// `https://api.stripe.com` unless a local server stands in.
    pub base_url: String,
    /// Allow a base URL that resolves to a private or loopback address.
    pub allow_private: bool,
}

/// The Stripe provider.
#[derive(Debug)]
pub struct Stripe {
    secret_key: Secret,
    webhook_secret: Secret,
    base_url: String,
    client: OutboundClient,
}

impl Stripe {
    /// Checks the base URL (its form; where it points unless it is the default) and builds the
    /// client.
    pub async fn new(settings: StripeSettings) -> anyhow::Result<Stripe> {
        let base_url = settings.base_url.trim().trim_end_matches('/').to_string();
        let parsed =
            ssrf::parse_url(&base_url).map_err(|e| anyhow::anyhow!("stripe_base_url {e}"))?;
        let default = base_url == DEFAULT_BASE_URL;
        if !default {
            ssrf::vet_url(&parsed, settings.allow_private)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "stripe_base_url {e}; set allow_private_stripe_target to use a local server"
                    )
                })?;
        }
        if settings.secret_key.expose().trim().is_empty()
            || settings.webhook_secret.expose().trim().is_empty()
        {
            anyhow::bail!("stripe_secret_key and stripe_webhook_secret must not be empty");
        }
        let client = OutboundClient::new(settings.allow_private && !default, TIMEOUT, BODY_LIMIT)?;
        Ok(Stripe {
            secret_key: settings.secret_key,
            webhook_secret: settings.webhook_secret,
            base_url,
            client,
        })
    }

    /// One form-encoded `POST` to the API; the parsed answer, or Stripe's error.
    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<Value, PaymentError> {
        let body =
            serde_urlencoded::to_string(form).map_err(|e| PaymentError::Invalid(e.to_string()))?;
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.secret_key.expose()))
            .map_err(|_| {
                PaymentError::Invalid("the Stripe secret key is not a header value".into())
            })?;
        auth.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(idempotency_key).map_err(|_| {
                PaymentError::Invalid("the idempotency key is not a header value".into())
            })?,
        );
        let url = format!("{}{path}", self.base_url);
        let answer = self
            .client
            .post(&url, headers, Bytes::from(body))
            .await
            .map_err(|e| PaymentError::Unreachable {
                provider: NAME,
                detail: e.to_string(),
            })?;
        let parsed: Option<Value> = serde_json::from_str(&answer.body_excerpt).ok();
        if (200..300).contains(&answer.status) {
            return parsed
                .filter(Value::is_object)
                .ok_or_else(|| PaymentError::BadResponse {
                    provider: NAME,
                    status: answer.status,
                    detail: "the answer is not a JSON object".into(),
                });
        }
        let error = parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .filter(|e| e.is_object());
        match error {
            Some(e) => {
                let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                Err(PaymentError::Provider {
                    provider: NAME,
                    status: answer.status,
                    kind: text("type").unwrap_or_else(|| "unknown".into()),
                    code: text("code").or_else(|| text("decline_code")),
                    message: text("message").unwrap_or_else(|| "(no message)".into()),
                })
            }
            None => Err(PaymentError::BadResponse {
                provider: NAME,
                status: answer.status,
                detail: excerpt(&answer.body_excerpt),
            }),
        }
    }
}

/// At most 200 characters of an unexpected answer, for the error message.
fn excerpt(s: &str) -> String {
    let t: String = s.chars().take(200).collect();
    if t.is_empty() {
        "(empty answer)".into()
    } else {
        t
    }
}

fn id_of(v: &Value, prefix: &str) -> Result<String, PaymentError> {
    v.get("id")
        .and_then(Value::as_str)
        .filter(|id| id.starts_with(prefix))
        .map(str::to_string)
        .ok_or_else(|| PaymentError::BadResponse {
            provider: NAME,
            status: 200,
            detail: format!("the answer has no {prefix}… id"),
        })
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), PaymentError> {
    if value.is_empty() || value.len() > max {
        return Err(PaymentError::Invalid(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn ensure_customer<'a>(
        &'a self,
        customer: &'a PaymentCustomer,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async move {
            if let Some(id) = &customer.existing_customer_id {
                return Ok(id.clone());
            }
            bounded("organization_id", &customer.organization_id, MAX_KEY - 20)?;
            let mut form = vec![
                ("name", customer.name.chars().take(256).collect()),
                (
                    "metadata[organization_id]",
                    customer.organization_id.clone(),
                ),
            ];
            if let Some(email) = &customer.billing_email {
                form.push(("email", email.chars().take(512).collect()));
            }
            let key = format!("gatehouse-customer-{}", customer.organization_id);
            let answer = self.post("/v1/customers", &key, &form).await?;
            id_of(&answer, "cus_")
        })
    }

    fn create_payment_intent<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>> {
        Box::pin(async move {
            bounded("invoice_id", &request.invoice_id, MAX_KEY)?;
            bounded("customer_id", &request.customer_id, MAX_KEY)?;
            if request.description.len() > MAX_DESCRIPTION {
                return Err(PaymentError::Invalid(format!(
                    "description must be at most {MAX_DESCRIPTION} characters"
                )));
            }
            if request.amount <= 0 {
                return Err(PaymentError::Invalid(
                    "amount must be positive (minor units)".into(),
                ));
            }
            let currency = request.currency.to_ascii_lowercase();
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(PaymentError::Invalid(
                    "currency must be an ISO 4217 code".into(),
                ));
            }
            let mut form = vec![
                ("amount", request.amount.to_string()),
                ("currency", currency),
                ("customer", request.customer_id.clone()),
                ("description", request.description.clone()),
                ("metadata[invoice_id]", request.invoice_id.clone()),
                ("metadata[organization_id]", request.organization_id.clone()),
            ];
            match &request.payment_method {
                Some(pm) => {
                    bounded("payment_method", pm, MAX_KEY)?;
                    form.extend([
                        ("payment_method", pm.clone()),
                        ("confirm", "true".into()),
                        ("off_session", "true".into()),
                    ]);
                }
                None => form.push(("automatic_payment_methods[enabled]", "true".into())),
            }
            let answer = self
                .post("/v1/payment_intents", &request.invoice_id, &form)
                .await?;
            let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(PaymentIntent {
                id: id_of(&answer, "pi_")?,
                status: text("status").unwrap_or_default(),
                client_secret: text("client_secret").map(Secret::from),
            })
        })
    }

    fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<PaymentEvent, PaymentError> {
        let signature = headers
            .get("stripe-signature")
            .ok_or(PaymentError::Signature(SignatureError::Missing))?
            .to_str()
            .map_err(|_| PaymentError::Signature(SignatureError::Malformed))?;
        verify_signature(self.webhook_secret.expose(), signature, body, now)
            .map_err(PaymentError::Signature)?;
        event(body)
    }
}

/// Checks a `Stripe-Signature` header against the raw body (see the module documentation).
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    if header.len() > MAX_SIGNATURE_HEADER {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => signatures.push(v),
            _ => {} // v0 (test mode's old scheme) and future schemes are ignored.
        }
    }
    let (Some(t), false) = (timestamp, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let matches = signatures.iter().any(|sig| {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        signer(secret, t, body).verify_slice(&sig).is_ok()
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    let skew = now - t;
    if skew.abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale(skew));
    }
    Ok(())
}

fn signer(secret: &str, t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Stripe-Signature` header Stripe would send for `body` at `t` (for tests and local
/// servers that stand in for Stripe).
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    let sig = signer(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(sig))
}

/// Reads a verified event: the PaymentIntent events that concern an invoice of ours.
fn event(body: &[u8]) -> Result<PaymentEvent, PaymentError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| PaymentError::Payload(e.to_string()))?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(event_id), Some(event_type)) = (text(&v, "id"), text(&v, "type")) else {
        return Err(PaymentError::Payload("no id or type".into()));
    };
    let object = v.pointer("/data/object").cloned().unwrap_or(Value::Null);
    let invoice_id = object
        .pointer("/metadata/invoice_id")
        .and_then(Value::as_str)
        .filter(|_| object.get("object").and_then(Value::as_str) == Some("payment_intent"))
        .map(str::to_string);
    let outcome = invoice_id.and_then(|invoice_id| match event_type.as_str() {
        "payment_intent.succeeded" => Some(PaymentOutcome::Paid { invoice_id }),
        "payment_intent.payment_failed" => {
            let error = object.get("last_payment_error").unwrap_or(&Value::Null);
            let reason = text(error, "message")
                .or_else(|| text(error, "decline_code"))
                .or_else(|| text(error, "code"))
                .unwrap_or_else(|| "the payment failed".into());
            Some(PaymentOutcome::Failed { invoice_id, reason })
        }
        "payment_intent.canceled" => {
            let why = text(&object, "cancellation_reason").unwrap_or_else(|| "canceled".into());
            Some(PaymentOutcome::Failed {
                invoice_id,
                reason: format!("the payment was canceled ({why})"),
            })
        }
        _ => None,
    });
    let amount = ["amount_received", "amount"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_i64).filter(|a| *a > 0));
    let currency = text(&object, "currency").map(|c| c.to_ascii_lowercase());
    Ok(PaymentEvent {
        event_id,
        event_type,
        outcome,
        amount,
        currency,
    })
}
