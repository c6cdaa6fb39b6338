//! The accept loop shared by the API and admin listeners: one task per TCP connection, HTTP/1.1
//! via hyper, graceful shutdown, and a per-connection kill switch for the slow-client reaper.
//!
//! Invariants: after shutdown is triggered no connection is accepted; idle keep-alive connections
//! close at once and in-flight requests finish (SSE bodies end themselves on shutdown);
//! [`Server::wait`] returns when every connection task has ended.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::body::ResBody;
use crate::fanout::ConnState;
use crate::shutdown::Shutdown;

/// Something that answers requests. Errors are already responses here.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> impl Future<Output = Response<ResBody>> + Send;

    /// Offers a connection's first request head to the SSE fast path ([`super::sse_fast`]): a
    /// stream to serve without hyper, or `None` to let hyper handle the request.
    fn fast_sse(self: &Arc<Self>, _head: &super::sse_fast::Head, _conn: &Arc<ConnState>) -> Option<crate::fanout::SseStream> {
        None
    }

    /// Whether [`Handler::fast_sse`] can ever answer (the accept loop then peeks first requests).
    fn has_fast_sse(&self) -> bool {
        false
    }

    /// Called when a connection opens/closes (for a gauge).
    fn connection_opened(&self) {}
    fn connection_closed(&self) {}
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// hyper's write (and read) buffer bound: the per-connection send budget for SSE.
    pub max_buf_size: usize,
    pub header_read_timeout: Duration,
    /// After shutdown starts, how long a connection may take to finish (the SSE drain window
    /// plus slack) before it is dropped: a stalled client is never polled, so its stream can
    /// never end by itself.
    pub shutdown_grace: Duration,
    /// SO_SNDBUF for accepted sockets (None: the kernel's autotuning). Bounds what a slow
    /// client can hold in kernel memory on top of `max_buf_size`.
    pub send_buffer: Option<usize>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { max_buf_size: 64 * 1024, header_read_timeout: Duration::from_secs(30), shutdown_grace: Duration::from_secs(6), send_buffer: None }
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
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(n) = opts.send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(n);
        }
        // Find peers that vanished without a FIN (a dead SDK host) instead of holding them.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(15)),
        );
        let conn_state = ConnState::for_peer(peer);
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        let builder = builder.clone();
        let grace = opts.shutdown_grace;
        let head_timeout = opts.header_read_timeout;
        handler.connection_opened();
        tracker.spawn(async move {
            if handler.has_fast_sse() {
                match peek_fast_sse(&stream, &handler, &conn_state, head_timeout, &shutdown).await {
                    Peeked::Fast(len, sse) => {
                        super::sse_fast::serve(stream, len, sse, conn_state, shutdown, grace).await;
                        handler.connection_closed();
                        return;
                    }
                    Peeked::Gone => {
                        handler.connection_closed();
                        return;
                    }
                    Peeked::Hyper => {}
                }
            }
            serve_hyper(stream, &builder, handler.clone(), conn_state, shutdown, grace).await;
            handler.connection_closed();
        });
    }
}

enum Peeked {
    /// Serve this stream natively; the head is this many bytes.
    Fast(usize, crate::fanout::SseStream),
    /// Let hyper handle the connection.
    Hyper,
    /// The client went away, sent nothing in time, or shutdown started.
    Gone,
}

/// Looks at the first request without consuming it.
async fn peek_fast_sse<H: Handler>(stream: &tokio::net::TcpStream, handler: &Arc<H>, conn: &Arc<ConnState>, timeout: Duration, shutdown: &Shutdown) -> Peeked {
    let mut buf = vec![0u8; super::sse_fast::PEEK_BYTES];
    let n = tokio::select! {
        r = tokio::time::timeout(timeout, stream.peek(&mut buf)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Peeked::Gone,
        },
        _ = shutdown.wait() => return Peeked::Gone,
    };
    let Some(head) = super::sse_fast::parse_head(&buf[..n]) else {
        return Peeked::Hyper;
    };
    match handler.fast_sse(&head, conn) {
        Some(sse) => Peeked::Fast(head.len, sse),
        None => Peeked::Hyper,
    }
}

async fn serve_hyper<H: Handler>(stream: tokio::net::TcpStream, builder: &http1::Builder, handler: Arc<H>, conn_state: Arc<ConnState>, shutdown: Shutdown, grace: Duration) {
    {
        let h = handler.clone();
        let cs = conn_state.clone();
        let service = service_fn(move |req| {
            let h = h.clone();
            let cs = cs.clone();
            // Boxed and freed when the response is ready: hyper keeps the allocation of the future
            // it is given for the connection's whole life (which, for SSE, is long).
            let fut = Box::pin(h.handle(req, cs));
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            _ = conn_state.kill.notified() => {}
            _ = shutdown.wait() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = conn_state.kill.notified() => {}
                    _ = tokio::time::sleep(grace) => {}
                }
            }
        }
    }
}
