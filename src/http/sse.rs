//! Opening an SSE stream: the one place a request becomes a fan-out stream ([`open`]), and the
//! response head every stream is sent with, both as a hyper response ([`response`]) and as the
//! fixed bytes the fast path writes ([`FAST_HEAD`]), built from one header list ([`HEADERS`]).
//!
//! Invariant: the two heads cannot drift: [`FAST_HEAD`] is computed at compile time from
//! [`HEADERS`], with the names title-cased as hyper writes them (`title_case_headers`).

use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;

use super::body::ResBody;
use super::error::ApiError;
use crate::fanout::{Fanout, OpenOptions, Renderer, SseStream};
use crate::store::EnvStore;

/// The headers of every SSE response (lower-case names, as `HeaderName` wants them).
pub const HEADERS: [(&str, &str); 3] = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")];

/// Opens a stream for `env`, rendered by `renderer`; at the connection cap a 503 with
/// `Retry-After` (see [`crate::fanout::Rejected`]).
pub fn open(fanout: &Arc<Fanout>, env: Arc<EnvStore>, renderer: Box<dyn Renderer>, opts: OpenOptions) -> Result<SseStream, ApiError> {
    Ok(fanout.open(env, renderer, opts)?)
}

/// A `200 text/event-stream` response around a stream, for hyper.
pub fn response(stream: SseStream) -> Response<ResBody> {
    let mut r = Response::new(ResBody::Sse(stream));
    let h = r.headers_mut();
    for (name, value) in HEADERS {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    r
}

const STATUS_LINE: &[u8] = b"HTTP/1.1 200 OK\r\n";
/// The fast path ends the response with the connection, so the body needs no framing.
const CLOSE: (&str, &str) = ("connection", "close");

const fn fast_head_len() -> usize {
    let mut n = STATUS_LINE.len() + CLOSE.0.len() + 2 + CLOSE.1.len() + 2 + 2;
    let mut i = 0;
    while i < HEADERS.len() {
        n += HEADERS[i].0.len() + 2 + HEADERS[i].1.len() + 2;
        i += 1;
    }
    n
}

/// Copies `s` into `out` at `at`; with `title`, upper-cases the first letter and each after `-`.
const fn put(mut out: [u8; FAST_HEAD_LEN], at: usize, s: &[u8], title: bool) -> ([u8; FAST_HEAD_LEN], usize) {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        out[at + i] = if title && (i == 0 || s[i - 1] == b'-') { b.to_ascii_uppercase() } else { b };
        i += 1;
    }
    (out, at + s.len())
}

const fn put_header(out: [u8; FAST_HEAD_LEN], at: usize, h: (&str, &str)) -> ([u8; FAST_HEAD_LEN], usize) {
    let (out, at) = put(out, at, h.0.as_bytes(), true);
    let (out, at) = put(out, at, b": ", false);
    let (out, at) = put(out, at, h.1.as_bytes(), false);
    put(out, at, b"\r\n", false)
}

const fn fast_head() -> [u8; FAST_HEAD_LEN] {
    let (mut out, mut at) = put([0; FAST_HEAD_LEN], 0, STATUS_LINE, false);
    let mut i = 0;
    while i < HEADERS.len() {
        (out, at) = put_header(out, at, HEADERS[i]);
        i += 1;
    }
    (out, at) = put_header(out, at, CLOSE);
    put(out, at, b"\r\n", false).0
}

const FAST_HEAD_LEN: usize = fast_head_len();

/// The response head the fast path writes before the frames: [`HEADERS`] plus `Connection: close`.
pub const FAST_HEAD: [u8; FAST_HEAD_LEN] = fast_head();

/// [`FAST_HEAD`] with `extra` headers (CORS for browser streams) before `Connection: close`,
/// their names title-cased as hyper writes them.
pub fn fast_head_with(extra: &hyper::HeaderMap) -> bytes::Bytes {
    if extra.is_empty() {
        return bytes::Bytes::from_static(&FAST_HEAD);
    }
    let close = FAST_HEAD.len() - (CLOSE.0.len() + 2 + CLOSE.1.len() + 2 + 2);
    let mut out = Vec::with_capacity(FAST_HEAD.len() + 64 * extra.len());
    out.extend_from_slice(&FAST_HEAD[..close]);
    for (name, value) in extra {
        for (i, b) in name.as_str().bytes().enumerate() {
            let title = i == 0 || name.as_str().as_bytes()[i - 1] == b'-';
            out.push(if title { b.to_ascii_uppercase() } else { b });
        }
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&FAST_HEAD[close..]);
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_head_is_the_header_list_title_cased_with_connection_close() {
        assert_eq!(
            std::str::from_utf8(&FAST_HEAD).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn extra_headers_go_before_connection_close_title_cased() {
        assert_eq!(&fast_head_with(&hyper::HeaderMap::new())[..], &FAST_HEAD[..]);
        let mut h = hyper::HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert("access-control-expose-headers", HeaderValue::from_static("Retry-After"));
        assert_eq!(
            std::str::from_utf8(&fast_head_with(&h)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\
             Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn every_listed_header_is_a_valid_header() {
        for (name, value) in HEADERS {
            assert!(HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n.as_str() == name), "{name}");
            assert!(HeaderValue::from_str(value).is_ok(), "{value}");
        }
    }
}
