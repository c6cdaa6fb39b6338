//! The accept loop shared by the API and admin listeners: one task per TCP connection, HTTP/1.1
//! via hyper, graceful shutdown, and a per-connection kill switch for the slow-client reaper.
//!
//! Invariants:
//! - After shutdown is triggered no connection is accepted; idle keep-alive connections close at
//!   once and in-flight requests finish (SSE bodies end themselves on shutdown);
//!   [`Server::wait`] returns when every connection has ended (one held by the writer pass has
//!   no task, but holds its place through its [`ConnGuard`]).
//! - At most `max_connections` connections are open (when set): one beyond it is accepted and
//!   closed at once, counted ([`Refusal::Cap`]). A failed accept (EMFILE, ENFILE…) backs off
//!   (5 ms doubling to 1 s) and is counted; the log says when accept starts failing and when it
//!   works again (likewise for the cap), never once per error ([`super::accept`]).
//! - A connection has one header deadline, `header_read_timeout` from accept, for its whole first
//!   request head, whether the fast path's read ([`super::first_head`]) or hyper is reading it:
//!   one without a complete head by then is closed and counted ([`Refusal::HeaderTimeout`]).
//!   Later heads on a keep-alive connection get hyper's timer, the same length from when hyper
//!   starts waiting for them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::accept::{AcceptBackoff, Spell, Transition};
use super::body::ResBody;
use super::first_head::{self, FirstHead};
use super::prefixed::Prefixed;
use super::sse_fast;
use crate::fanout::ConnState;
use crate::shutdown::Shutdown;

/// Something that answers requests. Errors are already responses here.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> impl Future<Output = Response<ResBody>> + Send;

    /// Offers a connection's first request head to the SSE fast path ([`super::sse_fast`]): a
    /// stream to serve without hyper with its response head, or `None` to let hyper handle the
    /// request.
    fn fast_sse(self: &Arc<Self>, _head: &sse_fast::Head, _conn: &Arc<ConnState>) -> Option<(crate::fanout::SseStream, bytes::Bytes)> {
        None
    }

    /// Whether [`Handler::fast_sse`] can ever answer (connections then have their first head
    /// read by the accept loop's [`first_head`] before hyper sees them).
    fn has_fast_sse(&self) -> bool {
        false
    }

    /// Called when a connection opens/closes (for a gauge).
    fn connection_opened(&self) {}
    fn connection_closed(&self) {}

    /// Called when a connection is closed before any request was served (for a counter).
    fn connection_refused(&self, _why: Refusal) {}

    /// Called for every failed accept (for a counter).
    fn accept_failed(&self) {}
}

/// Why a connection was closed before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` were open.
    Cap,
    /// No complete first request head within `header_read_timeout` of accept.
    HeaderTimeout,
}

impl Refusal {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Cap => "cap",
            Refusal::HeaderTimeout => "header_timeout",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// hyper's write (and read) buffer bound: the per-connection send budget for SSE.
    pub max_buf_size: usize,
    /// The first request head must be complete this long after accept; later heads of a
    /// keep-alive connection this long after hyper starts waiting for them.
    pub header_read_timeout: Duration,
    /// After shutdown starts, how long a connection may take to finish (the SSE drain window
    /// plus slack) before it is dropped: a stalled client is never polled, so its stream can
    /// never end by itself.
    pub shutdown_grace: Duration,
    /// SO_SNDBUF for accepted sockets (None: the kernel's autotuning). Bounds what a slow
    /// client can hold in kernel memory on top of `max_buf_size`.
    pub send_buffer: Option<usize>,
    /// Open connections at most (None: no cap).
    pub max_connections: Option<usize>,
    /// Names the listener in logs (`api`, `admin`).
    pub name: &'static str,
    /// TLS (`[tls]`): every connection handshakes first (within the header deadline), then
    /// speaks HTTP/2 when ALPN chose `h2`, else HTTP/1.1 through hyper (no SSE fast path).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_buf_size: 64 * 1024,
            header_read_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(6),
            send_buffer: None,
            max_connections: None,
            name: "api",
            tls: None,
        }
    }
}

pub struct Server {
    tracker: TaskTracker,
    accept: tokio::task::JoinHandle<()>,
    /// The listener's address, to name it in logs.
    addr: String,
}

impl Server {
    /// Starts accepting on `listener` until `shutdown`.
    pub fn start<H: Handler>(listener: TcpListener, handler: Arc<H>, shutdown: Shutdown, opts: ServerOptions) -> Server {
        let tracker = TaskTracker::new();
        let t = tracker.clone();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let accept = tokio::spawn(accept_loop(listener, handler, shutdown, opts, t));
        Server { tracker, accept, addr }
    }

    /// Waits until the accept loop stopped and every connection ended. An accept loop that
    /// panicked (or was cancelled) is logged as an error naming the listener.
    pub async fn wait(self) {
        if let Err(e) = self.accept.await {
            tracing::error!(listener = %self.addr, error = %e, "the accept loop ended abnormally");
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}


async fn accept_loop<H: Handler>(listener: TcpListener, handler: Arc<H>, shutdown: Shutdown, opts: ServerOptions, tracker: TaskTracker) {
    let mut builder = http1::Builder::new();
    builder
        .title_case_headers(true)
        .writev(true)
        .max_buf_size(opts.max_buf_size.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    let slots = opts.max_connections.map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
    let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut backoff = AcceptBackoff::default();
    let mut at_cap = Spell::default();
    let name = opts.name;
    let closed: Arc<dyn Fn() + Send + Sync> = {
        let handler = handler.clone();
        Arc::new(move || handler.connection_closed())
    };
    loop {
        // The moment a failing or rejecting spell will have been calm long enough to end.
        let calm_end = [backoff.ends_at(), at_cap.ends_at()].into_iter().flatten().min();
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            _ = sleep_until_some(calm_end), if calm_end.is_some() => {
                let now = Instant::now();
                log_accept(name, backoff.tick(now), None);
                log_cap(name, at_cap.tick(now), opts.max_connections);
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => {
                    log_accept(name, backoff.accepted(Instant::now()), None);
                    x
                }
                Err(e) => {
                    handler.accept_failed();
                    let (delay, t) = backoff.failed(e.raw_os_error());
                    log_accept(name, t, Some(&e));
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        let permit = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => {
                    log_cap(name, at_cap.calm(Instant::now()), opts.max_connections);
                    Some(p)
                }
                Err(_) => {
                    // Closed at once: a connection beyond the cap costs nothing but the accept.
                    drop(stream);
                    handler.connection_refused(Refusal::Cap);
                    log_cap(name, at_cap.hit(), opts.max_connections);
                    continue;
                }
            },
        };
        let deadline = Instant::now() + opts.header_read_timeout;
        let _ = stream.set_nodelay(true);
        if let Some(n) = opts.send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(n);
        }
        // Find peers that vanished without a FIN (a dead SDK host) instead of holding them.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(15)),
        );
        let conn = Conn { handler: handler.clone(), state: ConnState::for_peer(peer), shutdown: shutdown.clone(), grace: opts.shutdown_grace, deadline };
        let builder = builder.clone();
        handler.connection_opened();
        let guard = ConnGuard { _permit: permit, _open: tracker.token(), closed: closed.clone() };
        match &tls {
            None => tracker.spawn(serve_connection(stream, conn, builder, guard)),
            Some(acceptor) => tracker.spawn(serve_tls(stream, acceptor.clone(), conn, builder, guard)),
        };
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One line when accept starts failing, fails differently, or works again after a calm.
fn log_accept(listener: &'static str, t: Transition, error: Option<&std::io::Error>) {
    match (t, error) {
        (Transition::Began, Some(e)) => tracing::warn!(listener, error = %e, "accepting connections failed; backing off"),
        (Transition::Changed, Some(e)) => tracing::warn!(listener, error = %e, "accepting connections fails differently now"),
        (Transition::Ended { count }, _) => tracing::info!(listener, failures = count, "accepting connections again"),
        _ => {}
    }
}

/// One line when the cap starts turning connections away, and one when it has stopped.
fn log_cap(listener: &'static str, t: Transition, cap: Option<usize>) {
    match t {
        Transition::Began => tracing::warn!(listener, cap, "connection cap reached; closing new connections at once"),
        Transition::Ended { count } => tracing::info!(listener, rejected = count, "below the connection cap again"),
        Transition::Same | Transition::Changed => {}
    }
}

/// An open connection's slot under the cap and its place among the connections
/// [`Server::wait`] waits for; dropped when the connection closes, which it reports to the
/// handler. Held by the connection's task, or by the writer pass while that holds the
/// connection ([`sse_fast::FastConn`]).
pub struct ConnGuard {
    _permit: Option<OwnedSemaphorePermit>,
    _open: TaskTrackerToken,
    closed: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        (self.closed)()
    }
}

/// What a connection task holds besides its socket.
struct Conn<H> {
    handler: Arc<H>,
    state: Arc<ConnState>,
    shutdown: Shutdown,
    grace: Duration,
    /// The end of the first request head's time.
    deadline: Instant,
}

/// One connection from accept to close (or to the writer pass, which takes `guard` with it).
async fn serve_connection<H: Handler>(stream: TcpStream, conn: Conn<H>, builder: http1::Builder, guard: ConnGuard) {
    let handler = conn.handler.clone();
    if !handler.has_fast_sse() {
        serve_hyper(stream, &builder, conn).await;
        drop(guard);
        return;
    }
    match first_head::read(&stream, sse_fast::PEEK_BYTES, conn.deadline, &conn.shutdown).await {
        FirstHead::TimedOut => handler.connection_refused(Refusal::HeaderTimeout),
        FirstHead::Gone => {}
        FirstHead::Read { bytes, head_len } => {
            let fast = match head_len {
                Some(n) => sse_fast::parse_head(&bytes[..n]).and_then(|head| handler.fast_sse(&head, &conn.state)).map(|sse| (n, sse)),
                None => None,
            };
            match fast {
                // The client sends nothing after a stream request (see `sse_fast::serve`):
                // bytes after it end the connection, as any read would once streaming.
                Some((n, sse)) if n < bytes.len() => drop(sse),
                Some((_, (sse, head))) => {
                    drop(bytes);
                    sse_fast::serve(stream, head, sse, guard, conn.shutdown, conn.grace).await;
                    return;
                }
                None => serve_hyper(Prefixed::new(bytes, stream), &builder, conn).await,
            }
        }
    }
    drop(guard);
}

/// A TLS connection: the handshake within the first head's deadline, then HTTP/2 (ALPN `h2`)
/// or HTTP/1.1 through hyper.
async fn serve_tls<H: Handler>(stream: TcpStream, acceptor: tokio_rustls::TlsAcceptor, conn: Conn<H>, builder: http1::Builder, guard: ConnGuard) {
    let handler = conn.handler.clone();
    let handshake = tokio::select! {
        r = acceptor.accept(stream) => Some(r),
        _ = tokio::time::sleep_until(conn.deadline) => None,
        _ = conn.shutdown.wait() => return,
    };
    match handshake {
        None => handler.connection_refused(Refusal::HeaderTimeout),
        Some(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Some(Ok(tls)) => {
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(tls, conn).await;
            } else {
                serve_hyper(tls, &builder, conn).await;
            }
        }
    }
    drop(guard);
}

/// HTTP/2 (TLS with ALPN `h2` only): every request handled as on HTTP/1.1, streams multiplexed;
/// at shutdown a GOAWAY, then the streams get the grace to end.
async fn serve_h2<H, I>(io: I, conn: Conn<H>)
where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn { handler, state: conn_state, shutdown, grace, .. } = conn;
    let service = handler_service(handler, conn_state.clone(), None);
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    let conn = std::pin::pin!(conn);
    drive(conn, |c| c.graceful_shutdown(), &conn_state, &shutdown, grace, std::future::pending()).await;
}

async fn serve_hyper<H, I>(io: I, builder: &http1::Builder, conn: Conn<H>)
where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn { handler, state: conn_state, shutdown, grace, deadline } = conn;
    // Set by the first request hyper hands over: its head was complete in time.
    let served = Arc::new(AtomicBool::new(false));
    let service = handler_service(handler.clone(), conn_state.clone(), Some(served.clone()));
    let head_deadline = async {
        tokio::time::sleep_until(deadline).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let conn = std::pin::pin!(conn);
    if drive(conn, |c| c.graceful_shutdown(), &conn_state, &shutdown, grace, head_deadline).await {
        handler.connection_refused(Refusal::HeaderTimeout);
    }
}

/// The hyper service of a connection: each request to `handler`, its future boxed and freed when
/// the response is ready (hyper keeps the allocation of the future it is given for the
/// connection's whole life, which, for SSE, is long). `served` is raised by the first request.
fn handler_service<H: Handler>(
    handler: Arc<H>,
    conn_state: Arc<ConnState>,
    served: Option<Arc<AtomicBool>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<ResBody>, std::convert::Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        if let Some(s) = &served {
            s.store(true, Ordering::Relaxed);
        }
        let fut = Box::pin(handler.clone().handle(req, conn_state.clone()));
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    })
}

/// Runs a hyper connection (either protocol) until it ends, the reaper kills it, or
/// `head_deadline` passes (then `true`); at shutdown `graceful` is asked for and the connection
/// gets `grace` to finish.
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    conn_state: &ConnState,
    shutdown: &Shutdown,
    grace: Duration,
    head_deadline: impl Future<Output = ()>,
) -> bool
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = conn_state.kill.notified() => {}
        _ = head_deadline => return true,
        _ = shutdown.wait() => {
            graceful(conn.as_mut());
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_state.kill.notified() => {}
                _ = tokio::time::sleep(grace) => {}
            }
        }
    }
    false
}
