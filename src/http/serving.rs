//! Serving: one event loop per serving thread, in the manner of nginx's workers.
//!
//! One acceptor (on the main runtime) takes every new connection and hands it to the serving
//! thread with the fewest open connections. Each serving thread runs its own single-threaded
//! runtime: a connection, its requests and the gateway's upstream connections they use (the
//! providers' client pool is per thread, [`crate::gateway::client::GatewayClient`]) are all
//! driven by that one thread. Nothing on the request path is handed between threads, which
//! measured 10–15 % less CPU per gateway request than one work-stealing runtime (BENCHMARKS.md).
//!
//! Background work (webhook deliveries, the usage-log writer, flushers) stays on the main
//! runtime. `serve_threads` (default: one per CPU core) sets the number of serving threads.
//!
//! Protections of the connection layer (docs/security.md):
//! - a connection that is not serving a request must start one (send a complete request head)
//!   within `header_read_timeout_secs` (T), else it is closed: from the moment it is accepted,
//!   and again from the end of each answer (HTTP/1 and HTTP/2 alike, so a half-sent head, a
//!   trickled HTTP/2 header block, a silent or idle kept-alive connection are all closed). One
//!   watchdog timer per connection, checked every T/4 against the connection's request count,
//!   enforces it (no timer per request: the request path pays two counter updates); an idle
//!   connection is closed between T and 1¼ T after it went idle, with HTTP/2's GOAWAY. A
//!   connection that is serving a request (its handler runs or its answer is being sent) is
//!   never cut off by this: long streams and slow uploads are bounded elsewhere;
//! - an answer given without reading the whole request body (an early 401, 404, 413) carries
//!   `Connection: close`, and the unread rest of the body is read and discarded for a moment
//!   before the socket closes (a lingering close: closing with unread input would reset the
//!   connection, and the client could lose the answer);
//! - the bare answers hyper writes itself for a request it cannot parse (400, 414 URI too long,
//!   431 headers too large) are rewritten into the SPEC's JSON error envelope ([`Counted`]).
//!
//! A serving thread's runtime outlives the server: connections it opened for the whole process
//! (to PostgreSQL or Redis, pooled and shared) must keep working while the process shuts down
//! after the last request; it idles until the process exits.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};

use super::middleware::App;

/// The number of serving threads `serve_threads` asks for (0: one per CPU core).
pub fn thread_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Serves until `shutdown` resolves, then stops accepting connections and lets in-flight
/// requests finish for up to `grace`. Dropping the returned future (aborting its task) stops
/// serving at once.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let count = thread_count(app.state().config.serve_threads).max(1);
    let mut workers = Vec::with_capacity(count);
    for i in 0..count {
        workers.push(Worker::start(i, app.clone(), grace)?);
    }
    let stops = Stops(workers.iter().map(|w| w.stop.clone()).collect());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    next = (next + 1) % workers.len();
                    hand_over(&workers, next, tcp, peer);
                }
                Err(e) => accept_error(e).await,
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    stops.send(Stop::Graceful);
    let mut result = Ok(());
    for w in workers {
        if let Ok(Err(e)) = w.finished.await {
            result = Err(e);
        }
    }
    result
}

/// Gives a connection to the serving thread with the fewest open connections (from `start`
/// on, so that ties rotate).
fn hand_over(workers: &[Worker], start: usize, tcp: TcpStream, peer: SocketAddr) {
    // No Nagle delay: a streamed answer's small chunks leave as soon as they are written.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    let n = workers.len();
    let mut order: Vec<&Worker> = (0..n).map(|i| &workers[(start + i) % n]).collect();
    order.sort_by_key(|w| w.open.load(Ordering::Relaxed));
    let mut connection = match tcp.into_std() {
        Ok(s) => (s, peer),
        Err(e) => {
            tracing::warn!(error = %e, "could not hand a connection to a serving thread");
            return;
        }
    };
    // The least busy thread first; one that is gone (it cannot be, short of a bug) is skipped.
    for w in order {
        w.open.fetch_add(1, Ordering::Relaxed);
        match w.connections.send(connection) {
            Ok(()) => return,
            Err(mpsc::error::SendError(back)) => {
                w.open.fetch_sub(1, Ordering::Relaxed);
                connection = back;
            }
        }
    }
    tracing::error!("no serving thread is running; connection closed");
}

/// As axum's own accept loop: per-connection errors are skipped; others (out of file
/// descriptors) pause accepting briefly rather than spinning.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    Graceful,
    Now,
}

/// The serving threads' stop signals: graceful on shutdown, immediate if `serve` is dropped.
struct Stops(Vec<watch::Sender<Stop>>);

impl Stops {
    fn send(&self, stop: Stop) {
        for s in &self.0 {
            let _ = s.send(stop);
        }
    }
}

impl Drop for Stops {
    fn drop(&mut self) {
        self.send(Stop::Now);
    }
}

struct Worker {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    stop: watch::Sender<Stop>,
    finished: oneshot::Receiver<anyhow::Result<()>>,
}

impl Worker {
    fn start(i: usize, app: App, grace: Duration) -> io::Result<Worker> {
        let (connections, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(Stop::Running);
        let (done, finished) = oneshot::channel();
        let listener = Handed {
            rx,
            open: open.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("gatehouse-serve-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut now = stop_rx.clone();
                    let served = serve_on_this_thread(listener, app, stop_rx, grace);
                    tokio::select! {
                        result = served => { let _ = done.send(result); }
                        _ = now.wait_for(|s| *s == Stop::Now) => {}
                    }
                    // See the module documentation: the runtime stays until the process exits.
                    std::future::pending::<()>().await
                })
            })?;
        Ok(Worker {
            connections,
            open,
            stop,
            finished,
        })
    }
}

async fn serve_on_this_thread(
    mut listener: Handed,
    app: App,
    mut stop: watch::Receiver<Stop>,
    grace: Duration,
) -> anyhow::Result<()> {
    // hyper directly, HTTP/1.1 and HTTP/2 (prior knowledge) detected per connection, without
    // upgrades (nothing here upgrades a connection; each upgradeable request costs one more
    // allocation) and without the tower adapters of `axum::serve`. hyper's HTTP/2 defaults
    // bound a connection's streams (200) and header block (16 KiB); the watchdog bounds time.
    let idle_limit = Duration::from_secs(app.state().config.header_read_timeout_secs.max(1));
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // Each connection task holds a receiver; when all are gone, every connection has ended.
    let (alive, _) = watch::channel(());
    let stops = stop.clone();
    loop {
        tokio::select! {
            (io, peer) = listener.accept() => {
                let app = app.clone();
                let state = io.state.clone();
                let watched = io.state.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let active = Active::enter(&state);
                    // An HTTP/1 request with a body: whether the answer leaves some of it unread.
                    let tracked = req.version() <= hyper::Version::HTTP_11
                        && !req.body().is_end_stream();
                    let mut req = if tracked {
                        state.body_done.store(false, Ordering::Relaxed);
                        let state = state.clone();
                        req.map(|inner| axum::body::Body::new(Tracked { inner, state }))
                    } else {
                        req.map(axum::body::Body::new)
                    };
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    futures_util::FutureExt::map(app.clone().handle(req), move |mut res| {
                        if tracked && !active.state.body_done.load(Ordering::Relaxed) {
                            close_after(&mut res, &active.state);
                        }
                        // The request stays active until its answer is sent (or dropped).
                        Ok::<_, std::convert::Infallible>(res.map(|inner| Answer { inner, _active: active }))
                    })
                });
                let connection = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .into_owned();
                let alive = alive.subscribe();
                let stop = stops.clone();
                // (How a connection ends is the client's business: errors are not logged.)
                tokio::spawn(async move {
                    let connection = std::pin::pin!(connection);
                    watch_connection(connection, &watched, stop, idle_limit).await;
                    drop(alive);
                });
            }
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, alive.closed()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// What the watchdog needs of a connection: to end it politely (HTTP/2's GOAWAY, HTTP/1's
/// `Connection: close` on an answer in progress).
trait Connection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Connection for hyper_util::server::conn::auto::Connection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: HttpBody + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
    Self: Future,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::Connection::graceful_shutdown(self)
    }
}

/// Drives one connection to its end: closes it when it has been idle (no request served, none
/// started) for `limit`, and shuts it down gracefully when the server stops.
///
/// One timer per connection, re-armed every `limit / 4`: it compares the connection's request
/// count with the one it saw last, so the request path itself arms no timer.
async fn watch_connection<C: Connection>(
    mut connection: Pin<&mut C>,
    state: &ConnState,
    mut stop: watch::Receiver<Stop>,
    limit: Duration,
) {
    let period = limit / 4;
    let mut tick = std::pin::pin!(tokio::time::sleep(period));
    let mut seen = state.requests.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    let stopping = loop {
        tokio::select! {
            biased;
            _ = connection.as_mut() => return,
            () = tick.as_mut() => {
                let requests = state.requests.load(Ordering::Relaxed);
                if requests != seen || state.active.load(Ordering::Relaxed) > 0 {
                    seen = requests;
                    quiet = Duration::ZERO;
                } else {
                    quiet += period;
                    if quiet >= limit {
                        break false;
                    }
                }
                tick.as_mut().reset(tokio::time::Instant::now() + period);
            }
            _ = stop.wait_for(|s| *s != Stop::Running) => break true,
        }
    };
    // Idle too long, nothing in progress: a graceful end is immediate for HTTP/1 and one GOAWAY
    // for HTTP/2, and a peer that does not let it finish is dropped after a moment. A stopping
    // server lets requests in progress finish (within its grace period).
    connection.as_mut().graceful_shutdown();
    if stopping {
        let _ = connection.await;
    } else {
        let _ = tokio::time::timeout(LINGER, connection).await;
    }
}

/// A request in progress on its connection, from its head to the end (or drop) of its answer.
struct Active {
    state: Arc<ConnState>,
}

impl Active {
    fn enter(state: &Arc<ConnState>) -> Active {
        // One thread drives a connection and its requests: plain loads and stores suffice.
        let requests = state.requests.load(Ordering::Relaxed);
        state
            .requests
            .store(requests.wrapping_add(1), Ordering::Relaxed);
        let active = state.active.load(Ordering::Relaxed);
        state.active.store(active + 1, Ordering::Relaxed);
        Active {
            state: state.clone(),
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let active = self.state.active.load(Ordering::Relaxed);
        self.state
            .active
            .store(active.saturating_sub(1), Ordering::Relaxed);
    }
}

/// An answer's body; the request counts as active until it is sent or dropped.
struct Answer {
    inner: axum::body::Body,
    _active: Active,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A serving thread's listener: the connections the acceptor hands it.
struct Handed {
    rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
}

impl Handed {
    async fn accept(&mut self) -> (Counted, SocketAddr) {
        loop {
            let Some((std, peer)) = self.rx.recv().await else {
                // The acceptor is gone: no more connections (shutdown ends this server).
                return std::future::pending().await;
            };
            match TcpStream::from_std(std) {
                Ok(tcp) => {
                    let open = self.open.clone();
                    return (Counted::new(tcp, open), peer);
                }
                Err(e) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a handed-over connection was lost");
                }
            }
        }
    }
}

/// What a connection's requests tell its socket (one per connection, shared by its requests).
#[derive(Default)]
struct ConnState {
    /// Requests started on the connection (wrapping): the watchdog's sign of progress.
    requests: AtomicU32,
    /// Requests in progress: from their head to the end of their answer.
    active: AtomicU32,
    /// The current HTTP/1 request's body was read to its end (HTTP/1 requests on a connection
    /// come one after the other).
    body_done: AtomicBool,
    /// An answer left request body unread: read and discard it before closing.
    linger: AtomicBool,
}

/// Marks an answer that leaves request body unread: the connection closes after it, and says so.
fn close_after(res: &mut axum::response::Response, state: &ConnState) {
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    state.linger.store(true, Ordering::Relaxed);
}

/// An HTTP/1 request body that notes when it has been read to its end.
struct Tracked {
    inner: hyper::body::Incoming,
    state: Arc<ConnState>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.state.body_done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long, and how much, a lingering close reads before it closes anyway.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A connection that counts itself open until dropped (the acceptor balances by the count).
///
/// It also rewrites hyper's own error answers: for a request it cannot parse, hyper writes a
/// bare `400`, `414` or `431` head (no body) and closes. Every answer of the application carries
/// `x-request-id` (the edge sets it), so an HTTP/1.1 4xx head without one is hyper's; it is
/// replaced by the same status with the SPEC's error envelope. The test is on the first bytes
/// of a write (one comparison for every other answer).
struct Counted {
    tcp: std::mem::ManuallyDrop<TcpStream>,
    open: Arc<AtomicUsize>,
    state: Arc<ConnState>,
    /// Bytes written in place of hyper's own error answer, from `.1` on, not yet sent.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Counted {
    fn new(tcp: TcpStream, open: Arc<AtomicUsize>) -> Counted {
        Counted {
            tcp: std::mem::ManuallyDrop::new(tcp),
            open,
            state: Arc::new(ConnState::default()),
            replacement: None,
        }
    }

    /// Sends what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.replacement {
            let n = std::task::ready!(Pin::new(&mut *self.tcp).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
            if *sent == bytes.len() {
                self.replacement = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` (a whole write) in place of hyper's own error answer, if it is one.
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let bytes = own_error_answer(head)?;
        self.replacement = Some((bytes, 0));
        Some(match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Taken whole; the rest is sent by the next write, flush or shutdown.
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

/// Whether `needle` (ASCII) occurs in `hay`, ignoring ASCII case, without allocating (this runs
/// on every small 4xx answer head, 429s included).
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The SPEC's envelope in place of hyper's bare answer to an unparsable request (`head`: one
/// whole write starting with `HTTP/1.1 4`), or `None` when `head` is not one.
fn own_error_answer(head: &[u8]) -> Option<Vec<u8>> {
    const PREFIX: &[u8] = b"HTTP/1.1 4";
    if !head.starts_with(PREFIX) || head.len() > 1024 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    if contains_ignore_case(head, b"\r\nx-request-id:")
        || !contains_ignore_case(head, b"\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let status = axum::http::StatusCode::from_bytes(head.get(9..12)?).ok()?;
    let message = match status.as_u16() {
        400 => "The request could not be parsed (malformed request line or headers)",
        414 => "The request URI is too long",
        431 => "The request's header fields are too large or too many",
        _ => status
            .canonical_reason()
            .unwrap_or("The request was refused"),
    };
    let text = std::str::from_utf8(head).ok()?;
    let request_id = crate::ids::RequestId::generate();
    let report = crate::error::ErrorReport {
        code: crate::error::ErrorCode::from_status(status),
        message: message.into(),
        details: None,
    };
    let body = serde_json::to_vec(&report.envelope(status, &request_id)).ok()?;
    let mut out = Vec::with_capacity(head.len() + body.len() + 128);
    for line in text.trim_end().split("\r\n") {
        let name = line.split(':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {request_id}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    Some(out)
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: taken once, here; `self.tcp` is not used again.
        let mut tcp = unsafe { std::mem::ManuallyDrop::take(&mut self.tcp) };
        if let Some((bytes, sent)) = self.replacement.take() {
            // What the socket did not take before hyper let go of the connection (small).
            let _ = tcp.try_write(&bytes[sent..]);
        }
        if !self.state.linger.load(Ordering::Relaxed) {
            return;
        }
        // A lingering close: our answer is sent (and the write side shut); reading what the
        // client still sends keeps the kernel from answering it with a reset, which could
        // destroy the answer before the client reads it.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 8192];
            let mut read = 0;
            let drain = async {
                while read < LINGER_BYTES {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl Counted {
    fn tcp(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(&mut *self.get_mut().tcp)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_some() {
            std::task::ready!(this.poll_replacement(cx))?;
        }
        if b.starts_with(b"HTTP/1.1 4") {
            if let Some(done) = this.replace(cx, b) {
                return done;
            }
        }
        Pin::new(&mut *this.tcp).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_some() {
            std::task::ready!(this.poll_replacement(cx))?;
        }
        // hyper queues a head as a buffer of its own.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if first.starts_with(b"HTTP/1.1 4") {
                if let Some(done) = this.replace(cx, first) {
                    return done;
                }
            }
        }
        Pin::new(&mut *this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut *this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut *this.tcp).poll_shutdown(cx)
    }
}
