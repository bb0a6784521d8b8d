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
//! A serving thread's runtime outlives the server: connections it opened for the whole process
//! (to PostgreSQL or Redis, pooled and shared) must keep working while the process shuts down
//! after the last request; it idles until the process exits.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

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
    // allocation) and without the tower adapters of `axum::serve`.
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            (io, peer) = listener.accept() => {
                let app = app.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    futures_util::FutureExt::map(app.clone().handle(req), Ok::<_, std::convert::Infallible>)
                });
                let connection = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                // (How a connection ends is the client's business: errors are not logged.)
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
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
                    return (Counted { tcp, open }, peer);
                }
                Err(e) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a handed-over connection was lost");
                }
            }
        }
    }
}

/// A connection that counts itself open until dropped (the acceptor balances by the count).
struct Counted {
    tcp: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Counted {
    fn tcp(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(&mut self.get_mut().tcp)
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
        self.tcp().poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_shutdown(cx)
    }
}
