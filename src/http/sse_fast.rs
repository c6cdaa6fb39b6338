//! The SSE fast path: a connection whose first request is a complete, well-formed SSE `GET`
//! that the handler accepts is served without hyper, writing each shared frame straight to the
//! socket.
//!
//! Why: hyper keeps two 8 KiB buffers and its dispatcher per connection for the stream's whole
//! life and frames every event with chunked encoding (three-part writes). A stream needs none of
//! that: the response is `Connection: close` with no length, so the body is the frames, verbatim.
//! The response head is [`super::sse::FAST_HEAD`] (with the CORS headers of a browser stream,
//! [`super::sse::fast_head_with`]), the same headers hyper sends for a stream.
//!
//! Invariants:
//! - Only a first request head that arrived complete within the connection's header deadline
//!   (read by [`super::first_head`], in one packet or several), fits in [`PEEK_BYTES`], parses,
//!   has nothing after it, and that the handler turns into a stream takes this path; everything
//!   else (errors included) goes to hyper untouched: the bytes already read are replayed to it
//!   first ([`super::prefixed::Prefixed`]).
//! - While the client is current its socket is in the environment's writer pass
//!   ([`crate::fanout::EnvPass`]): changes and heartbeats are written by the pass and this task
//!   sleeps until the pass hands the socket back (a short write) or the stream ends. Otherwise
//!   the stream is pulled only when the previous frame was written, so nothing queues here but
//!   the one frame in flight (a shared `Bytes`).
//! - The connection ends when the stream ends, the client closes or errors, the reaper kills it,
//!   or the shutdown grace runs out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

use crate::fanout::{ConnState, EnvPass, Member, SseStream};
use crate::shutdown::Shutdown;

/// The largest first request head read before a connection's path is chosen; a larger head goes
/// to hyper (with what was read).
pub const PEEK_BYTES: usize = 2048;

/// A parsed request head: method, path (with query) and headers.
pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Parses a complete HTTP/1.1 (or 1.0) request head from `buf`. `None` when incomplete,
/// malformed, or carrying a body.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut raw = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    // A request with a body is not a plain GET stream; leave it to hyper.
    if headers.contains_key(hyper::header::CONTENT_LENGTH) || headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        return None;
    }
    Some(Head { method: req.method?.to_string(), path: req.path?.to_string(), headers, len })
}

/// Serves `stream` on `socket`, whose request head has been read, starting with the response
/// `head`. Returns when the connection is
/// done.
pub async fn serve(
    socket: TcpStream,
    head: bytes::Bytes,
    mut stream: SseStream,
    conn: Arc<ConnState>,
    shutdown: Shutdown,
    grace: Duration,
) {
    let socket = Arc::new(socket);
    let pass = stream.writer_pass();
    let shard = pass.as_ref().map_or(0, |p| p.shard_for_new());
    let pump = pump(
        &socket,
        &mut stream,
        &conn,
        pass.as_deref().map(|p| (p, shard)),
        &head,
    );
    // The client sends nothing after its request: any read result (EOF, data, error) ends it.
    let closed = async {
        let mut b = [0u8; 1];
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => return,
            }
        }
    };
    let stopping = async {
        shutdown.wait().await;
        // The stream drains itself within the window; a stalled client is cut after the grace.
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        _ = pump => {}
        _ = closed => {}
        _ = conn.kill.notified() => {}
        _ = stopping => {}
    }
    // However it ended, the pass lets go of the socket (and drops it soon, closing it).
    if let Some(p) = &pass {
        let _ = p.leave(shard, &conn).await;
    }
}

/// Writes the head and then the stream's frames, through the writer pass while the client is
/// current when there is one.
async fn pump(
    socket: &Arc<TcpStream>,
    stream: &mut SseStream,
    conn: &Arc<ConnState>,
    pass: Option<(&EnvPass, usize)>,
    head: &[u8],
) -> std::io::Result<()> {
    write_all(socket, head).await?;
    loop {
        // Pulled: whatever the stream has now (its initial state, what changed meanwhile).
        let frame = match pass {
            Some(_) => {
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_next(cx))).await
            }
            None => Poll::Ready(stream.next().await),
        };
        match frame {
            Poll::Ready(Some(frame)) => {
                write_all(socket, &frame).await?;
                continue;
            }
            Poll::Ready(None) => return end(socket),
            Poll::Pending => {}
        }
        let Some((pass, shard)) = pass else { continue };
        // Current: from here on the pass writes the socket.
        let member = Member {
            conn: conn.clone(),
            socket: socket.clone(),
            seq: stream.seq(),
            eval: stream.eval_member(),
        };
        if pass.join(shard, member).is_err() {
            continue; // the environment moved on meanwhile: pull that first
        }
        stream.park();
        let handoff = loop {
            tokio::select! {
                _ = conn.wake.notified() => {
                    if let Some(h) = conn.take_handoff() {
                        break h;
                    }
                }
                last = std::future::poll_fn(|cx| stream.poll_end(cx)) => {
                    if let Some(h) = pass.leave(shard, conn).await {
                        write_all(socket, &h.rest).await?;
                    }
                    if let Some(frame) = last {
                        write_all(socket, &frame).await?;
                    }
                    return end(socket);
                }
            }
        };
        // Back from the pass: finish the frame it started, then catch up as a pulled stream.
        write_all(socket, &handoff.rest).await?;
        stream.unpark(handoff.seq, &handoff.changes, handoff.have);
    }
}

/// The stream is over: the response ends with the connection's write side.
fn end(socket: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
}

/// Writes all of `buf` on socket readiness (the socket is shared with the pass, so this does not
/// go through `AsyncWrite`, which needs it exclusively).
async fn write_all(socket: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        socket.writable().await?;
        match socket.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_get() {
        let h = parse_head(b"GET /api/sdk/v1/features HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer k\r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/api/sdk/v1/features");
        assert_eq!(h.headers["authorization"], "Bearer k");
        assert_eq!(h.len, 98);
    }

    #[test]
    fn rejects_incomplete_malformed_and_bodies() {
        assert!(parse_head(b"GET /x HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_none());
        assert!(parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").is_none());
        assert!(parse_head(b"GET /x HTTP/1.1\r\nBad Header: \x7f\r\n\r\n").is_none());
    }
}
