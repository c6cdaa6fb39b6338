//! Small request/response helpers: bounded body reads, JSON responses, header checks.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::ResBody;
use super::error::ApiError;

/// Reads a request body of at most `limit` bytes (413 beyond).
pub async fn read_body(body: Incoming, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!("could not read the request body: {e}"))),
    }
}

/// Parses a JSON body that must be an array (event and registration batches).
pub fn json_array(body: &[u8]) -> Result<Vec<serde_json::Value>, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(a)) => Ok(a),
        Ok(_) => Err(ApiError::BadRequest("the body must be a JSON array".into())),
        Err(e) => Err(ApiError::BadRequest(format!("the body is not valid JSON: {e}"))),
    }
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut r = Response::new(ResBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn json_value(status: StatusCode, v: &serde_json::Value) -> Response<ResBody> {
    json(status, serde_json::to_vec(v).unwrap_or_default())
}

/// True if `If-None-Match` names `etag` (a blank header counts as absent; `*` matches).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let v = v.trim();
    if v.is_empty() || v == "''" || v == "\"\"" {
        return false;
    }
    v == etag || v == "*" || v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag)
}

/// True if the client asked for an event stream.
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// `Last-Event-ID` as a revision.
pub fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
