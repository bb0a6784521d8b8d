//! The gateway's client to the providers: hyper's pooled HTTP/1.1 client over rustls (Mozilla's
//! roots), used directly. The request path needs nothing of a general-purpose client (URL
//! re-parsing, redirect and retry layers, a copy of every header map): a request is built once
//! from the incoming one and sent on a kept-alive connection.
//!
//! Timeouts: connecting (`gateway_connect_timeout_secs`, on the connector), the first byte of
//! the answer (`gateway_first_byte_timeout_secs`, by the proxy) and an idle stream
//! (`gateway_idle_timeout_secs`: no byte for that long ends the answer, [`IdleTimeout`]).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::time::{Instant, Sleep};

pub type HyperClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The providers' client of the thread that serves a request: each serving thread keeps its own
/// pool of upstream connections, so that a request and its upstream connection are driven by
/// the same thread (no hand-off between threads on the request path).
#[derive(Debug, Clone)]
pub struct GatewayClient {
    connect_timeout: Duration,
}

thread_local! {
    static CLIENTS: std::cell::RefCell<Vec<(Duration, HyperClient)>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl GatewayClient {
    pub fn new(connect_timeout: Duration) -> Self {
        GatewayClient { connect_timeout }
    }

    /// This thread's client (built on first use).
    pub fn get(&self) -> HyperClient {
        CLIENTS.with(|c| {
            let mut clients = c.borrow_mut();
            if let Some((_, client)) = clients.iter().find(|(t, _)| *t == self.connect_timeout) {
                return client.clone();
            }
            let client = build(self.connect_timeout);
            clients.push((self.connect_timeout, client.clone()));
            client
        })
    }
}

/// Connections kept open per provider host.
const IDLE_PER_HOST: usize = 64;

pub fn build(connect_timeout: Duration) -> HyperClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// The provider went silent for longer than the idle timeout in the middle of an answer.
#[derive(Debug)]
pub struct IdleTimeoutError(Duration);

impl std::fmt::Display for IdleTimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the provider sent nothing for {} s; the answer was cut",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for IdleTimeoutError {}

/// An answer's body that fails once no byte arrives for `idle`. The timer is armed only while
/// the body is waiting (an answer that arrives whole never registers one) and is moved forward
/// lazily, when it fires, rather than on every chunk.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            last: Instant::now(),
            timer: None,
        }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.timer.is_some() {
                    this.last = Instant::now();
                }
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let timer = match &mut this.timer {
            Some(t) => t,
            None => {
                // First wait: the clock starts now (the first byte had its own timeout).
                this.last = Instant::now();
                this.timer
                    .insert(Box::pin(tokio::time::sleep_until(this.last + this.idle)))
            }
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = this.last + this.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle)))));
            }
            timer.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
