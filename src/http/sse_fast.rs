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
//! - While the client is current its connection is in the environment's writer pass
//!   ([`crate::fanout::EnvPass`]) and has no task: the pass writes changes and heartbeats, holds
//!   the connection's slot ([`FastConn`], with its [`ConnGuard`]), and gives it back for a new
//!   task ([`Owner::resume`]) after a short write, at the stream's maximum age or at shutdown.
//!   Otherwise the stream is pulled only when the previous frame was written, so nothing queues
//!   here but the one frame in flight (a shared `Bytes`).
//! - The connection ends when the stream ends, the client closes or errors, the reaper kills it,
//!   or the shutdown grace runs out (in the pass: the client closing, a failed write, a kill).

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

use super::server::ConnGuard;
use crate::fanout::{EnvPass, Handoff, Member, Owner, Parked, SseStream};
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

/// What a fast-path connection holds besides its socket and stream, kept by the writer pass
/// while it holds them: the connection's slot, and how to serve it again.
pub struct FastConn {
    _guard: ConnGuard,
    shutdown: Shutdown,
    grace: Duration,
    /// The environment's pass for the stream's kind, and the connection's shard in it.
    pass: Option<Arc<EnvPass>>,
    shard: usize,
    /// The pass will not take the connection again.
    pulled: bool,
}

/// Serves `stream` on `socket`, whose request head has been read, starting with the response
/// `head`. Returns when the connection is done, or when the writer pass has taken it (the pass
/// then holds `guard`, and serves the connection again through [`FastConn`] when it gives it
/// back).
pub async fn serve(socket: TcpStream, head: Bytes, stream: SseStream, guard: ConnGuard, shutdown: Shutdown, grace: Duration) {
    let pass = stream.writer_pass();
    let shard = pass.as_ref().map_or(0, |p| p.shard_for_new());
    let me = Box::new(FastConn { _guard: guard, shutdown, grace, pass, shard, pulled: false });
    drive(socket, stream, me, head, None).await;
}

impl Owner for FastConn {
    fn resume(mut self: Box<Self>, parked: Parked, mut handoff: Handoff) {
        self.pulled |= handoff.pulled;
        let Parked { socket, stream } = parked;
        tokio::spawn(async move {
            match TcpStream::from_std(socket) {
                Ok(socket) => {
                    let rest = std::mem::take(&mut handoff.rest);
                    drive(socket, stream, self, rest, Some(handoff)).await;
                }
                Err(e) => tracing::warn!(error = %e, "a stream's socket could not be registered again; its connection is closed"),
            }
        });
    }
}

/// The connection's task: writes `first` (the response head, or the rest the pass handed
/// back), then the stream's frames until the client is current, and hands the connection to the
/// writer pass then; without a pass (or after shutdown) it pulls the stream to its end.
async fn drive(socket: TcpStream, mut stream: SseStream, me: Box<FastConn>, first: Bytes, back: Option<Handoff>) {
    let conn = stream.conn().clone();
    let pass = me.pass.clone().filter(|_| !me.pulled);
    let pumped = {
        let pump = pump(&socket, &mut stream, &first, back, pass.is_some());
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
            me.shutdown.wait().await;
            // The stream drains itself within the window; a stalled client is cut after the grace.
            tokio::time::sleep(me.grace).await;
        };
        tokio::select! {
            r = pump => r.unwrap_or(Pumped::Ended),
            _ = closed => Pumped::Ended,
            _ = conn.kill.notified() => Pumped::Ended,
            _ = stopping => Pumped::Ended,
        }
    };
    let Some(pass) = pass.filter(|_| pumped == Pumped::Current) else {
        return; // the connection ends: socket, stream and slot are dropped here
    };
    // Current: the pass takes the connection, and this task ends.
    let shard = me.shard;
    match socket.into_std() {
        Ok(socket) => {
            if let Err(refused) = pass.join(shard, Member::new(socket, stream, me)) {
                refused.give_back();
            }
        }
        Err(e) => tracing::warn!(error = %e, "a stream's socket could not leave the reactor; its connection is closed"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// The client has every frame there is: the pass can take it.
    Current,
    /// The stream ended (its last frame written).
    Ended,
}

/// Writes `first`, then the stream's frames: until the client is current when `to_pass`,
/// else until the stream ends.
async fn pump(
    socket: &TcpStream,
    stream: &mut SseStream,
    first: &[u8],
    back: Option<Handoff>,
    to_pass: bool,
) -> std::io::Result<Pumped> {
    write_all(socket, first).await?;
    if let Some(h) = back {
        // Back from the pass: its frame is finished; catch up as a pulled stream.
        stream.unpark(h.seq, &h.changes, h.have);
    }
    loop {
        // Pulled: whatever the stream has now (its initial state, what changed meanwhile).
        let frame = match to_pass {
            true => std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_next(cx))).await,
            false => Poll::Ready(stream.next().await),
        };
        match frame {
            Poll::Ready(Some(frame)) => write_all(socket, &frame).await?,
            Poll::Ready(None) => {
                end(socket)?;
                return Ok(Pumped::Ended);
            }
            Poll::Pending => return Ok(Pumped::Current),
        }
    }
}

/// The stream is over: the response ends with the connection's write side.
fn end(socket: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
}

/// Writes all of `buf` on socket readiness.
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
