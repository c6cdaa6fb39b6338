//! The SSE fast path: a connection whose first request is a complete, well-formed SSE `GET`
//! that the handler accepts is served without hyper, writing each shared frame straight to the
//! socket.
//!
//! Why: hyper keeps two 8 KiB buffers and its dispatcher per connection for the stream's whole
//! life and frames every event with chunked encoding (three-part writes). A stream needs none of
//! that: the response is `Connection: close` with no length, so the body is the frames, verbatim.
//! The response head is [`super::sse::FAST_HEAD`], the same headers hyper sends for a stream.
//!
//! Invariants:
//! - Only a first request head that arrived complete within the connection's header deadline
//!   (read by [`super::first_head`], in one packet or several), fits in [`PEEK_BYTES`], parses,
//!   has nothing after it, and that the handler turns into a stream takes this path; everything
//!   else (errors included) goes to hyper untouched: the bytes already read are replayed to it
//!   first ([`super::prefixed::Prefixed`]).
//! - The stream is pulled only when the previous frame was written, so nothing queues here but
//!   the one frame in flight (a shared `Bytes`).
//! - The connection ends when the stream ends, the client closes or errors, the reaper kills it,
//!   or the shutdown grace runs out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sse::FAST_HEAD;
use crate::fanout::{ConnState, SseStream};
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

/// Serves `stream` on `socket`, whose request head has been read. Returns when the connection is
/// done.
pub async fn serve(mut socket: TcpStream, mut stream: SseStream, conn: Arc<ConnState>, shutdown: Shutdown, grace: Duration) {
    let (mut rd, mut wr) = socket.split();
    if wr.write_all(&FAST_HEAD).await.is_err() {
        return;
    }
    let pump = async {
        while let Some(frame) = stream.next().await {
            if write_frame(&mut wr, &frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    // The client sends nothing after its request: any read result (EOF, data, error) ends it.
    let closed = async {
        let mut b = [0u8; 1];
        let _ = rd.read(&mut b).await;
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
}

async fn write_frame(wr: &mut tokio::net::tcp::WriteHalf<'_>, frame: &Bytes) -> std::io::Result<()> {
    wr.write_all(frame).await
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
