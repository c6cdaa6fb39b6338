//! Small request/response helpers: JSON responses, the event-batch shape check, header checks,
//! and percent-decoding of path and query parts. Reading a body is [`super::request_body`].

use std::borrow::Cow;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::ResBody;
use super::error::ApiError;

/// Parses a JSON body that must be an array (event and registration batches).
pub fn json_array(body: &[u8]) -> Result<(), ApiError> {
    // Checks the shape without building the values.
    match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body) {
        Ok(_) => Ok(()),
        Err(e) if e.is_data() => Err(ApiError::BadRequest("the body must be a JSON array".into())),
        Err(e) => Err(ApiError::BadRequest(format!("the body is not valid JSON: {e}"))),
    }
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut r = Response::new(ResBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A computed JSON answer (OFREP bulk, thin-client evaluation), compressed for this request when
/// it accepts gzip or br and the body is at least `min_bytes` long (`0`: never), with
/// `Vary: Accept-Encoding`; and the coding chosen, for the caller's ETag
/// ([`crate::compress::coded_etag`]).
pub fn json_coded(status: StatusCode, headers: &HeaderMap, body: Bytes, min_bytes: usize) -> (Response<ResBody>, crate::compress::Coding) {
    use crate::compress::{self, Coding};
    let coding = match min_bytes {
        0 => Coding::Identity,
        n if body.len() < n => Coding::Identity,
        _ => compress::negotiate(headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok())),
    };
    let mut r = json(status, compress::compress_fast(coding, &body));
    let h = r.headers_mut();
    if let Some(ce) = coding.header() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(ce));
    }
    h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    (r, coding)
}

pub fn json_value(status: StatusCode, v: &serde_json::Value) -> Response<ResBody> {
    json(status, serde_json::to_vec(v).unwrap_or_default())
}

/// True if `If-None-Match` names `etag` or a coded representation of it (a blank header counts
/// as absent; `*` matches).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let v = v.trim();
    if v.is_empty() || v == "''" || v == "\"\"" {
        return false;
    }
    // A tag of another content coding of the same body matches too (the client's cache holds
    // the decoded body, which is what changed or not).
    v == etag
        || v == "*"
        || v.split(',').any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == etag || crate::compress::base_etag(t) == etag
        })
}

/// True if the client asked for an event stream.
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// `Last-Event-ID` as a revision. An id that is present but not a revision (another server's,
/// or garbage) reads as `u64::MAX`: ahead of this relay, so the client gets full state with every
/// remembered deletion. A blank header counts as absent.
pub fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("last-event-id")?;
    let s = v.to_str().map(str::trim).unwrap_or("?");
    if s.is_empty() {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Decodes `%XX` escapes; an invalid or cut-off escape is kept as it is, and `+` stays `+`.
/// Borrowed when there is nothing to decode.
pub fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    percent_encoding::percent_decode_str(s).into()
}

/// [`percent_decode`], then UTF-8 with invalid sequences replaced.
pub fn percent_decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(&*percent_decode("a%2Fb"), b"a/b");
        assert_eq!(&*percent_decode("a%zz%"), b"a%zz%");
        assert_eq!(&*percent_decode("%4"), b"%4");
        assert_eq!(&*percent_decode("%41"), b"A");
        assert_eq!(&*percent_decode("%4a%4A"), b"JJ");
    }

    #[test]
    fn percent_decoding_never_reads_a_plus_as_a_space() {
        assert_eq!(&*percent_decode("a+b%2B"), b"a+b+");
    }

    #[test]
    fn percent_decoding_borrows_when_there_is_nothing_to_decode() {
        assert!(matches!(percent_decode("abc"), Cow::Borrowed(b"abc")));
        assert!(matches!(percent_decode("a%zz"), Cow::Borrowed(b"a%zz")));
    }

    #[test]
    fn lossy_decoding_replaces_invalid_utf8() {
        assert_eq!(percent_decode_lossy("z%C3%ABe"), "zëe");
        assert_eq!(percent_decode_lossy("%FF!"), "\u{FFFD}!");
    }
}
