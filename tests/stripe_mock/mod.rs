//! A local stand-in for Stripe's API (`tests/payments_stripe.rs`; include it with
//! `mod stripe_mock;`): axum on a real port, speaking the same protocol as `api.stripe.com` for
//! what Gatehouse calls — form-encoded `POST /v1/customers` and `POST /v1/payment_intents`, the
//! secret key as a Bearer token (401 with Stripe's envelope otherwise), `Idempotency-Key`
//! replayed as Stripe does (same key and parameters: the first answer again, with
//! `Idempotent-Replayed: true`; other parameters: 400 `idempotency_error`), errors as
//! `{"error": {type, code, message, param}}`. Every request is recorded. It also builds the
//! events Stripe sends to a webhook endpoint.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    /// The decoded form, in order (`metadata[invoice_id]` keeps its brackets).
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A form as decoded: (name, value) pairs in order.
type Form = Vec<(String, String)>;

/// What an idempotency key was first used for, and what it answered.
struct FirstUse {
    path: String,
    form: Form,
    answer: Value,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    /// Idempotency key → (the request's path and form, the answer).
    idempotent: HashMap<String, FirstUse>,
    next_id: u64,
    customers: u64,
    payment_intents: u64,
    fail_next: Option<(u16, String)>,
    /// Every request is answered this until [`StripeMock::stop_failing`].
    fail_all: Option<(u16, String)>,
}

#[derive(Clone)]
struct Mock {
    secret_key: String,
    inner: Arc<Mutex<Inner>>,
}

pub struct StripeMock {
    pub addr: SocketAddr,
    mock: Mock,
}

impl StripeMock {
    /// Serves on an ephemeral port of 127.0.0.1, accepting `secret_key`.
    pub async fn start(secret_key: &str) -> StripeMock {
        let mock = Mock {
            secret_key: secret_key.into(),
            inner: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/customers", post(customers))
            .route("/v1/payment_intents", post(payment_intents))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StripeMock { addr, mock }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.mock.inner.lock().unwrap().requests.clone()
    }

    /// How many customers and PaymentIntents were created (replays not counted).
    pub fn created(&self) -> (u64, u64) {
        let inner = self.mock.inner.lock().unwrap();
        (inner.customers, inner.payment_intents)
    }

    /// The next request is answered `status` with this raw body (after authentication).
    pub fn fail_next(&self, status: u16, body: &str) {
        self.mock.inner.lock().unwrap().fail_next = Some((status, body.into()));
    }

    /// Every request from now on is answered `status` with this raw body (after
    /// authentication), until [`stop_failing`](Self::stop_failing).
    pub fn fail_every(&self, status: u16, body: &str) {
        self.mock.inner.lock().unwrap().fail_all = Some((status, body.into()));
    }

    pub fn stop_failing(&self) {
        self.mock.inner.lock().unwrap().fail_all = None;
    }
}

fn stripe_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    (status, Json(json!({ "error": error }))).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// What both endpoints share: record, authenticate, decode, fail on demand, replay.
/// `Ok(form)` to go on creating; `Err(answer)` to answer at once.
#[allow(clippy::result_large_err)]
fn prologue(mock: &Mock, path: &str, headers: &HeaderMap, body: &Bytes) -> Result<Form, Response> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let recorded = Recorded {
        path: path.into(),
        authorization: header(headers, "authorization"),
        idempotency_key: header(headers, "idempotency-key"),
        content_type: header(headers, "content-type"),
        form: form.clone(),
    };
    let mut inner = mock.inner.lock().unwrap();
    inner.requests.push(recorded.clone());
    if recorded.authorization.as_deref() != Some(&format!("Bearer {}", mock.secret_key)) {
        return Err(stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided: sk_test_****",
        ));
    }
    if recorded.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Invalid request: the body must be application/x-www-form-urlencoded",
        ));
    }
    if let Some((status, body)) = inner.fail_next.take().or_else(|| inner.fail_all.clone()) {
        return Err((StatusCode::from_u16(status).unwrap(), body).into_response());
    }
    if let Some(key) = &recorded.idempotency_key {
        if let Some(first) = inner.idempotent.get(key) {
            if first.path == path && first.form == form {
                let mut res = Json(first.answer.clone()).into_response();
                res.headers_mut()
                    .insert("idempotent-replayed", "true".parse().unwrap());
                return Err(res);
            }
            return Err(stripe_error(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                None,
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with.",
            ));
        }
    }
    Ok(form)
}

fn remember(
    mock: &Mock,
    path: &str,
    key: Option<String>,
    form: Vec<(String, String)>,
    answer: &Value,
) {
    if let Some(key) = key {
        mock.inner.lock().unwrap().idempotent.insert(
            key,
            FirstUse {
                path: path.into(),
                form,
                answer: answer.clone(),
            },
        );
    }
}

fn metadata(form: &[(String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in form {
        if let Some(name) = k
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            m.insert(name.into(), json!(v));
        }
    }
    Value::Object(m)
}

fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn customers(State(mock): State<Mock>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/v1/customers";
    let form = match prologue(&mock, PATH, &headers, &body) {
        Ok(form) => form,
        Err(answer) => return answer,
    };
    let id = {
        let mut inner = mock.inner.lock().unwrap();
        inner.next_id += 1;
        inner.customers += 1;
        format!("cus_mock{:06}", inner.next_id)
    };
    let answer = json!({
        "id": id,
        "object": "customer",
        "name": field(&form, "name"),
        "email": field(&form, "email"),
        "metadata": metadata(&form),
        "livemode": false,
    });
    remember(
        &mock,
        PATH,
        header(&headers, "idempotency-key"),
        form,
        &answer,
    );
    Json(answer).into_response()
}

async fn payment_intents(State(mock): State<Mock>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/v1/payment_intents";
    let form = match prologue(&mock, PATH, &headers, &body) {
        Ok(form) => form,
        Err(answer) => return answer,
    };
    let amount = field(&form, "amount").and_then(|a| a.parse::<i64>().ok());
    let Some(amount) = amount.filter(|a| *a >= 1) else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: amount.",
        );
    };
    let Some(currency) = field(&form, "currency") else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: currency.",
        );
    };
    if field(&form, "confirm") == Some("true")
        && field(&form, "payment_method") == Some("pm_card_chargeDeclined")
    {
        return stripe_error(
            StatusCode::PAYMENT_REQUIRED,
            "card_error",
            Some("card_declined"),
            "Your card was declined.",
        );
    }
    let id = {
        let mut inner = mock.inner.lock().unwrap();
        inner.next_id += 1;
        inner.payment_intents += 1;
        format!("pi_mock{:06}", inner.next_id)
    };
    let answer = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "currency": currency,
        "customer": field(&form, "customer"),
        "description": field(&form, "description"),
        "metadata": metadata(&form),
        // Confirmed off-session with a saved payment method: charged at once (the mock's
        // cards always succeed, `pm_card_chargeDeclined` excepted, as in Stripe's test mode).
        "status": match (field(&form, "confirm"), field(&form, "payment_method")) {
            (Some("true"), Some(_)) => "succeeded",
            _ => "requires_payment_method",
        },
        "client_secret": format!("{id}_secret_mock"),
        "livemode": false,
    });
    remember(
        &mock,
        PATH,
        header(&headers, "idempotency-key"),
        form,
        &answer,
    );
    Json(answer).into_response()
}

/// An event as Stripe posts it to a webhook endpoint, about a PaymentIntent.
pub fn payment_intent_event(event_id: &str, event_type: &str, payment_intent: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1_767_225_600,
        "type": event_type,
        "livemode": false,
        "pending_webhooks": 1,
        "data": { "object": payment_intent },
    }))
    .unwrap()
}

/// Posts `body` to a webhook endpoint as Stripe does: JSON, signed with `secret` at `t`.
pub async fn deliver(url: &str, secret: &str, t: i64, body: Vec<u8>) -> reqwest::Response {
    let signature = gatehouse::billing::payments::stripe::signature_header(secret, t, &body);
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature)
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .body(body)
        .send()
        .await
        .unwrap()
}
