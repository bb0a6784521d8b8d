//! The gateway's client to the providers: hyper's HTTP/1.1 connections over rustls (Mozilla's
//! roots), pooled by the serving thread that uses them. The request path needs nothing of a
//! general-purpose client (URL re-parsing, redirect and retry layers, a copy of every header
//! map, a shared pool behind a lock, a task per request to hand its connection back): a request
//! is built once from the incoming one and sent on a kept-alive connection of this thread.
//!
//! The pool: each serving thread keeps, per provider origin (scheme, host and port), a stack of
//! idle connections (at most [`IDLE_PER_HOST`], each closed after [`IDLE_FOR`] unused). A
//! connection goes back on its stack when its answer has been read to the end; an answer cut
//! short closes it. A request takes the most recently used connection that is still open; if
//! that one turns out closed before the request was written (the provider closed it while it
//! was idle), the request goes out on the next one, or on a new connection.
//!
//! Where it connects (SSRF): unless `allow_private_provider_targets` is set, a new connection goes
//! only to public addresses ([`crate::events::ssrf::is_public`]). A literal address in the URL is
//! checked as it is; a host name is resolved, every address it resolves to is checked (one
//! non-public answer refuses the name), and the connection is made to those checked addresses —
//! nothing is resolved twice, so a second DNS answer cannot rebind the connection to an internal
//! address. The check runs only when a connection is opened; a request on a pooled connection
//! pays nothing. A refusal is an error whose source chain holds a [`TargetError`].
//!
//! Timeouts: connecting (`gateway_connect_timeout_secs`, on the connector), the first byte of
//! the answer (`gateway_first_byte_timeout_secs`, by the proxy) and an idle stream
//! (`gateway_idle_timeout_secs`: no byte for that long ends the answer, [`Answer`]).

use std::{
    cell::RefCell,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use axum::http::{header, uri::Authority, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::{body::Incoming, client::conn::http1};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{dns::Name, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};

use crate::events::ssrf;
pub use crate::events::ssrf::TargetError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connector = HttpsConnector<Guarded>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per provider origin, per serving thread.
pub const IDLE_PER_HOST: usize = 64;
/// An idle connection unused for this long is closed.
pub const IDLE_FOR: Duration = Duration::from_secs(90);

/// The providers' client. Cheap to clone; the connections live in the pool of the thread that
/// sends, so that a request and its upstream connection are driven by the same thread.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    connect_timeout: Duration,
    /// `allow_private_provider_targets`: connect to non-public addresses too.
    allow_private: bool,
}

/// A provider's scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    authority: Authority,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One origin's idle connections (most recently used last) and its `Host` header.
struct HostPool {
    origin: Origin,
    host: HeaderValue,
    idle: Vec<Idle>,
}

/// A thread's connections made with one connect timeout and target rule.
struct ThreadPool {
    connect_timeout: Duration,
    allow_private: bool,
    connector: Connector,
    hosts: Vec<HostPool>,
}

thread_local! {
    static POOLS: RefCell<Vec<ThreadPool>> = const { RefCell::new(Vec::new()) };
}

impl GatewayClient {
    /// `allow_private`: also connect to private, loopback, link-local and other non-public
    /// addresses (`allow_private_provider_targets`).
    pub fn new(connect_timeout: Duration, allow_private: bool) -> Self {
        GatewayClient {
            connect_timeout,
            allow_private,
        }
    }

    /// Sends `req` (its URI absolute: `http` or `https`, with a host) to the provider and
    /// returns its answer once the head has arrived. The body ends with an error once no byte
    /// has arrived for `idle`; read to its end, it hands its connection back to the pool.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        idle: Duration,
    ) -> Result<Response<Answer>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let https = match parts.uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the provider's URL is neither http nor https".into()),
        };
        let Some(authority) = parts.uri.authority().cloned() else {
            return Err("the provider's URL has no host".into());
        };
        let origin = Origin { https, authority };
        let target = std::mem::take(&mut parts.uri);
        // Origin-form on the wire: the path and query only.
        let mut uri = axum::http::uri::Parts::default();
        uri.path_and_query = target.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri)?;
        let (host, mut pooled) = self.with_host(&origin, |h| (h.host.clone(), checkout(h)));
        parts.headers.insert(header::HOST, host);
        let mut req = Request::from_parts(parts, body);
        while let Some(mut sender) = pooled {
            // Ready at once, unless its last answer's end is still being read; an error means
            // the connection closed while idle.
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(res) => return Ok(self.answer(res, sender, origin, idle)),
                    // Not written: the connection closed under it; try the next one.
                    Err(mut e) => match e.take_message() {
                        Some(back) => req = back,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
            pooled = self.with_host(&origin, checkout);
        }
        let connector = self.with_pool(|p| p.connector.clone());
        let io = tower::ServiceExt::oneshot(connector, target).await?;
        let (mut sender, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "provider connection ended");
            }
        });
        let res = sender.send_request(req).await?;
        Ok(self.answer(res, sender, origin, idle))
    }

    fn answer(
        &self,
        res: Response<Incoming>,
        sender: Sender,
        origin: Origin,
        idle: Duration,
    ) -> Response<Answer> {
        let checkin = Checkin {
            client: self.clone(),
            origin,
            sender,
        };
        res.map(|inner| Answer {
            inner,
            idle,
            last: Instant::now(),
            timer: None,
            checkin: Some(checkin),
        })
    }

    /// Runs `f` on this thread's pool for this client's connect timeout and target rule (made
    /// on first use).
    fn with_pool<R>(&self, f: impl FnOnce(&mut ThreadPool) -> R) -> R {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let i = match pools.iter().position(|p| {
                p.connect_timeout == self.connect_timeout && p.allow_private == self.allow_private
            }) {
                Some(i) => i,
                None => {
                    pools.push(ThreadPool {
                        connect_timeout: self.connect_timeout,
                        allow_private: self.allow_private,
                        connector: connector(self.connect_timeout, self.allow_private),
                        hosts: Vec::new(),
                    });
                    pools.len() - 1
                }
            };
            f(&mut pools[i])
        })
    }

    /// Runs `f` on this thread's idle connections to `origin`.
    fn with_host<R>(&self, origin: &Origin, f: impl FnOnce(&mut HostPool) -> R) -> R {
        self.with_pool(|pool| f(pool.host(origin)))
    }
}

impl ThreadPool {
    /// The idle connections to `origin` (made on first use).
    fn host(&mut self, origin: &Origin) -> &mut HostPool {
        let i = match self.hosts.iter().position(|h| h.origin == *origin) {
            Some(i) => i,
            None => {
                self.hosts.push(HostPool {
                    host: host_header(origin),
                    origin: origin.clone(),
                    idle: Vec::new(),
                });
                self.hosts.len() - 1
            }
        };
        &mut self.hosts[i]
    }
}

/// Closes the connections idle for [`IDLE_FOR`] or more (the oldest are first).
fn close_stale(host: &mut HostPool, now: Instant) {
    let stale = host
        .idle
        .iter()
        .take_while(|i| now.duration_since(i.since) >= IDLE_FOR)
        .count();
    host.idle.drain(..stale);
}

/// The most recently used idle connection that is still open; closes those idle too long.
fn checkout(host: &mut HostPool) -> Option<Sender> {
    close_stale(host, Instant::now());
    while let Some(idle) = host.idle.pop() {
        if !idle.sender.is_closed() {
            return Some(idle.sender);
        }
    }
    None
}

/// `Host`: the host, with the port unless it is the scheme's default.
fn host_header(origin: &Origin) -> HeaderValue {
    let default_port = if origin.https { 443 } else { 80 };
    let host = match origin.authority.port_u16() {
        Some(p) if p != default_port => origin.authority.as_str(),
        _ => origin.authority.host(),
    };
    HeaderValue::from_str(host).expect("an authority is a valid header value")
}

fn connector(connect_timeout: Duration, allow_private: bool) -> Connector {
    let mut http = HttpConnector::new_with_resolver(VettedResolver { allow_private });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(Guarded {
            http,
            allow_private,
        })
}

/// The TCP connector under TLS: refuses a literal non-public address in the URL (hyper's
/// connector connects to a literal address without asking the resolver), and resolves names
/// with [`VettedResolver`].
#[derive(Clone)]
struct Guarded {
    http: HttpConnector<VettedResolver>,
    allow_private: bool,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, BoxError>> + Send>>;

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        if let Some(ip) = literal_ip(&dst) {
            if let Err(refused) = ssrf::check_addrs(&[ip], self.allow_private) {
                return Box::pin(std::future::ready(Err(refused.into())));
            }
        }
        let connecting = self.http.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The URL's host when it is an address, parsed as hyper's connector parses it (brackets
/// around an IPv6 address removed). Anything else goes to the resolver.
fn literal_ip(dst: &Uri) -> Option<IpAddr> {
    let host = dst.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Resolves a provider's host name and answers only when every address is allowed
/// ([`ssrf::resolve_vetted`]); the connector then connects to exactly those addresses.
#[derive(Clone)]
struct VettedResolver {
    allow_private: bool,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, TargetError>> + Send>>;

impl tower::Service<Name> for VettedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = TargetError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TargetError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = ssrf::resolve_vetted(name.as_str(), allow_private).await?;
            // The connector puts the URL's port on these.
            let addrs: Vec<SocketAddr> =
                addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

/// Whether `e` (or an error under it) is the refusal of a non-public provider address.
pub fn refused_target(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        matches!(
            e.downcast_ref::<TargetError>(),
            Some(TargetError::NonPublic(_))
        )
    })
}

/// A connection on its way back to the pool of the thread that finishes its answer.
struct Checkin {
    client: GatewayClient,
    origin: Origin,
    sender: Sender,
}

impl Checkin {
    fn put_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        // During the thread's teardown the pool is gone and the connection is closed.
        let _ = POOLS.try_with(|_| {
            self.client.with_pool(|pool| {
                let h = pool.host(&self.origin);
                if h.idle.len() < IDLE_PER_HOST {
                    h.idle.push(Idle {
                        sender: self.sender,
                        since: now,
                    });
                }
                // Connections to origins no longer asked (a provider removed or moved) are
                // closed too, not only those of the origin a request takes one from.
                for host in &mut pool.hosts {
                    close_stale(host, now);
                }
            })
        });
    }
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

/// A provider's answer body. It fails once no byte arrives for `idle`: the timer is armed only
/// while the body is waiting (an answer that arrives whole never registers one) and is moved
/// forward lazily, when it fires, rather than on every chunk. Read to its end, it puts its
/// connection back in the pool; dropped before, it closes it.
pub struct Answer {
    inner: Incoming,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    checkin: Option<Checkin>,
}

impl Answer {
    fn finish(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.put_back();
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = BoxError;

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
                match &frame {
                    None => this.finish(),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.finish(),
                    Some(Ok(_)) => {}
                    // The connection is not reused.
                    Some(Err(_)) => this.checkin = None,
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

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    };

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// How the test provider treats a connection after each answer.
    #[derive(Clone)]
    enum After {
        KeepAlive,
        Close,
        /// Keep it until told to close it (then say it is closed).
        CloseIdle(
            Arc<tokio::sync::Notify>,
            tokio::sync::mpsc::UnboundedSender<()>,
        ),
    }

    /// A provider on a real port speaking raw HTTP/1.1: answers `ok` (or, for `/cut`, two of the
    /// ten bytes it announces, then nothing). Counts connections and keeps the request heads.
    async fn provider(after: After) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let heads = h.clone();
                let after = after.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let cut = head.starts_with("GET /cut ");
                        heads.lock().unwrap().push(head);
                        if cut {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok")
                                .await;
                            std::future::pending::<()>().await;
                        }
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        match &after {
                            After::KeepAlive => {}
                            After::Close => return,
                            After::CloseIdle(close, closed) => {
                                close.notified().await;
                                drop(socket);
                                let _ = closed.send(());
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted, heads)
    }

    async fn get(client: &GatewayClient, url: &str) -> Result<Response<Answer>, BoxError> {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        client.send(req, Duration::from_secs(5)).await
    }

    async fn read(res: Response<Answer>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again() {
        let (base, accepted, heads) = provider(After::KeepAlive).await;
        let client = GatewayClient::new(Duration::from_secs(2), true);
        for _ in 0..5 {
            let res = get(&client, &format!("{base}/v1/models?limit=2"))
                .await
                .unwrap();
            assert_eq!(read(res).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Origin-form on the wire, with the provider's host and port.
        let head = heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            head.starts_with("get /v1/models?limit=2 http/1.1\r\n"),
            "{head}"
        );
        let port = base.rsplit(':').next().unwrap();
        assert!(head.contains(&format!("host: 127.0.0.1:{port}")), "{head}");
    }

    #[tokio::test]
    async fn connections_the_provider_closed_are_replaced() {
        let (base, accepted, _) = provider(After::Close).await;
        let client = GatewayClient::new(Duration::from_secs(2), true);
        for _ in 0..20 {
            let res = get(&client, &format!("{base}/v1/x")).await.unwrap();
            assert_eq!(read(res).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_while_idle_is_sent_again() {
        let close = Arc::new(tokio::sync::Notify::new());
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let (base, accepted, _) = provider(After::CloseIdle(close.clone(), closed_tx)).await;
        let client = GatewayClient::new(Duration::from_secs(2), true);
        for i in 1..=10 {
            let res = get(&client, &format!("{base}/v1/x")).await.unwrap();
            assert_eq!(read(res).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), i);
            // The provider closes the idle connection; the next request is sent at once.
            close.notify_one();
            closed.recv().await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_closes_its_connection() {
        let (base, accepted, _) = provider(After::KeepAlive).await;
        let client = GatewayClient::new(Duration::from_secs(2), true);
        let mut body = get(&client, &format!("{base}/cut"))
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ok");
        drop(body);
        let res = get(&client, &format!("{base}/v1/x")).await.unwrap();
        assert_eq!(read(res).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_silent_provider_ends_the_answer_after_the_idle_time() {
        let (base, _, _) = provider(After::KeepAlive).await;
        let client = GatewayClient::new(Duration::from_secs(2), true);
        let req = Request::get(format!("{base}/cut"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client.send(req, Duration::from_millis(50)).await.unwrap();
        let err = res.into_body().collect().await.err().unwrap();
        assert!(err.is::<IdleTimeoutError>(), "{err}");
    }

    #[tokio::test]
    async fn non_public_targets_are_refused_when_a_connection_is_opened() {
        let (base, accepted, _) = provider(After::KeepAlive).await;
        let port = base.rsplit(':').next().unwrap();
        let strict = GatewayClient::new(Duration::from_secs(2), false);
        for url in [
            // A name resolving to loopback (checked by the resolver), literal addresses (checked
            // before hyper's connector, which does not resolve them), and loopback as one
            // number (not an address to hyper: the resolver's answer is checked).
            format!("http://localhost:{port}/x"),
            format!("http://127.0.0.1:{port}/x"),
            format!("http://[::1]:{port}/x"),
            format!("http://[::ffff:127.0.0.1]:{port}/x"),
            format!("http://2130706433:{port}/x"),
            format!("https://localhost:{port}/x"),
        ] {
            let err = get(&strict, &url).await.err().unwrap();
            assert!(refused_target(&*err), "{url}: {err}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // Allowed, the same provider is reached.
        let allowed = GatewayClient::new(Duration::from_secs(2), true);
        let res = get(&allowed, &format!("http://localhost:{port}/x"))
            .await
            .unwrap();
        assert_eq!(read(res).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn urls_the_client_cannot_reach_are_refused() {
        let client = GatewayClient::new(Duration::from_secs(2), true);
        assert!(get(&client, "ftp://example.com/x").await.is_err());
        assert!(get(&client, "/relative").await.is_err());
        // Nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(get(&client, &format!("http://{addr}/x")).await.is_err());
    }
}
