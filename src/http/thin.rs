//! Featureflow thin-client API (spec §5): the evaluate endpoint, client events, the legacy
//! change stream, the per-context evaluation stream, and CORS for browsers.
//!
//! - `GET /api/js/v1/evaluate/{key}/user/{base64 user}[?keys=a,b]`: the user's features, partially
//!   evaluated (see [`crate::eval::thin`]): conditions on `featureflow.date` / `featureflow.hourofday`
//!   stay as `{"rules":[…]}` for the client, everything else is resolved here. The base64 segment is
//!   everything after `/user/` (it may contain `/`); `+` is never a space. It is percent-decoded,
//!   read with the standard or URL-safe alphabet, padding optional, then as UTF-8, falling back to
//!   Latin-1 (what featureflow-client 2.x sends). `Content-Type` is exactly
//!   `application/json;charset=UTF-8`, which the client requires.
//! - `POST /api/js/v1/event/{key}`: a JSON array, answered `200 {}` and forwarded (`client_events`).
//! - `GET /api/js/v1/stream/{key}`: the legacy change stream (spec §5.3).
//! - `GET /api/v1/eval/stream/{key}/user/{base64 user}`: the per-context evaluation stream (same
//!   user encoding; see [`crate::fanout::eval_stream`]).
//!
//! Keys: any key of an environment, client or server (client keys are what browsers hold). A
//! missing or unknown key is 401 with the relay's JSON error.
//!
//! Invariants:
//! - Rule values other than time conditions never leave the relay (the engine guarantees it for
//!   each entry; this module only ever serializes [`ThinResult`](crate::eval::ThinResult)s).
//! - A feature that cannot be evaluated (compile error) is left out; the client serves `"off"` for it.
//! - Every response on these paths, errors included, carries the CORS headers, so a browser can
//!   read the status; `OPTIONS` is a preflight answered 204 without looking at the key.

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::api::{routes, Api};
use super::body::ResBody;
use super::error::ApiError;
use super::featureflow::{forward, sse_response};
use super::util;
use crate::eval::Context;
use crate::eval::thin::served;
use crate::fanout::eval_stream::EvalRenderer;
use crate::fanout::thin_streams::LegacyJsRenderer;
use crate::fanout::{ConnState, OpenOptions};

const EVALUATE: &str = "/api/js/v1/evaluate/";
const EVENT: &str = "/api/js/v1/event/";
const STREAM: &str = "/api/js/v1/stream/";
const EVAL_STREAM: &str = "/api/v1/eval/stream/";

/// The exact content type featureflow-client 1.3.x and 2.x accept (spec §5.1).
pub const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// True for every path this module serves.
pub fn owns(path: &str) -> bool {
    path.starts_with("/api/js/v1/") || path.starts_with(EVAL_STREAM)
}

/// Routes a request under [`owns`]; returns the route template for metrics and the response
/// (errors already turned into responses so the CORS headers can be added to them).
pub async fn handle(api: &Arc<Api>, req: Request<Incoming>, conn: Arc<ConnState>) -> (&'static str, Result<Response<ResBody>, ApiError>) {
    let path = req.uri().path().to_string();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let method = req.method().clone();
    let (route, result) = if let Some(rest) = path.strip_prefix(EVALUATE) {
        (routes::JS_EVALUATE, match &method {
            &Method::GET | &Method::HEAD => evaluate(api, &req, rest),
            m => not_allowed(m),
        })
    } else if let Some(key) = path.strip_prefix(EVENT) {
        (routes::JS_EVENT, match &method {
            &Method::POST => client_events(api, req, key.to_string()).await,
            m => not_allowed(m),
        })
    } else if let Some(key) = path.strip_prefix(STREAM) {
        (routes::JS_STREAM, match &method {
            &Method::GET => legacy_stream(api, &req, key, conn),
            m => not_allowed(m),
        })
    } else if let Some(rest) = path.strip_prefix(EVAL_STREAM) {
        (routes::EVAL_STREAM, match &method {
            &Method::GET => eval_stream(api, &req, rest, conn),
            m => not_allowed(m),
        })
    } else {
        (routes::UNKNOWN, Err(ApiError::NotFound(path.clone())))
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    cors(&api.http.cors_allowed_origins, origin.as_ref(), resp.headers_mut(), CorsKind::Featureflow, method == Method::OPTIONS);
    (route, Ok(resp))
}

fn not_allowed(m: &Method) -> Result<Response<ResBody>, ApiError> {
    if m == Method::OPTIONS {
        Ok(preflight())
    } else {
        Err(ApiError::MethodNotAllowed(m.to_string()))
    }
}

// ---- CORS -----------------------------------------------------------------------------------

/// Which API a CORS header set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsKind {
    /// featureflow-client: `X-Featureflow-Client`, `Content-Type`; exposes `Retry-After`.
    Featureflow,
    /// OFREP: `If-None-Match`, `Authorization`, `X-API-Key`, `Content-Type`; exposes `ETag`, `Retry-After`.
    Ofrep,
}

/// A bare `204` preflight answer; [`cors`] adds the headers.
pub fn preflight() -> Response<ResBody> {
    let mut r = Response::new(ResBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Adds the CORS headers for `origin` (allowed origins from the config; `*` allows any): the
/// allowed origin and the exposed headers, plus, on a `preflight`, the allowed methods and headers.
pub fn cors(allowed: &[String], origin: Option<&HeaderValue>, h: &mut HeaderMap, kind: CorsKind, preflight: bool) {
    let allow = if allowed.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        origin.filter(|o| o.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))).cloned()
    };
    let Some(allow) = allow else { return };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    let (methods, headers, expose) = match kind {
        CorsKind::Featureflow => ("GET, POST, OPTIONS", "X-Featureflow-Client, Content-Type", "Retry-After"),
        CorsKind::Ofrep => ("GET, POST, OPTIONS", "If-None-Match, Authorization, X-API-Key, Content-Type", "ETag, Retry-After"),
    };
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(expose));
    if !preflight {
        return;
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(headers));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
}

// ---- decoding -------------------------------------------------------------------------------

/// Re-exported where the user-segment and `keys` decoders are, for their property tests.
pub use super::util::percent_decode;

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a user segment could not be read (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the user segment is empty")]
    Empty,
    #[error("the user segment is not base64: {0}")]
    Base64(String),
    #[error("the decoded user is not JSON: {0}")]
    Json(String),
    #[error("the decoded user is not a Featureflow user: {0}")]
    Shape(String),
}

/// Reads a base64 user segment (spec §5.1) into a context. Never panics.
pub fn decode_user(segment: &str) -> Result<Context, UserError> {
    let raw = percent_decode(segment);
    let trimmed: Vec<u8> = raw
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|&c| match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        })
        .collect();
    if trimmed.is_empty() {
        return Err(UserError::Empty);
    }
    let bytes = B64.decode(&trimmed).map_err(|e| UserError::Base64(e.to_string()))?;
    let text: Cow<'_, str> = match std::str::from_utf8(&bytes) {
        Ok(s) => Cow::Borrowed(s),
        // featureflow-client 2.x truncates UTF-16 code units to bytes: Latin-1 (spec §5.1).
        Err(_) => Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| UserError::Json(e.to_string()))?;
    Context::from_featureflow_user(&v).map_err(|e| UserError::Shape(e.to_string()))
}

/// The `keys` query parameter (`?keys=a,b`, comma-joined); `None` when absent or empty.
pub fn requested_keys(query: Option<&str>) -> Option<Vec<String>> {
    let q = query?;
    let v = q.split('&').find_map(|p| p.strip_prefix("keys="))?;
    let mut keys: Vec<String> = v
        .split(',')
        .map(util::percent_decode_lossy)
        .filter(|k| !k.is_empty())
        .collect();
    keys.sort();
    keys.dedup();
    (!keys.is_empty()).then_some(keys)
}

/// `{key}/user/{segment}` → (key, segment).
fn key_and_user(rest: &str) -> Option<(&str, &str)> {
    let (key, tail) = rest.split_once('/')?;
    let user = tail.strip_prefix("user/")?;
    Some((key, user))
}

fn bad_user(e: UserError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

// ---- handlers -------------------------------------------------------------------------------

/// `GET /api/js/v1/evaluate/{key}/user/{base64 user}`.
fn evaluate(api: &Arc<Api>, req: &Request<Incoming>, rest: &str) -> Result<Response<ResBody>, ApiError> {
    let (key, segment) = key_and_user(rest).ok_or_else(|| ApiError::NotFound(req.uri().path().to_string()))?;
    let (env, _) = api.keys.any_env(key)?;
    let ctx = decode_user(segment).map_err(bad_user)?;
    let snap = env.snapshot();
    if !snap.loaded {
        // An empty answer would be cached by the client as "everything off".
        return Err(ApiError::NotReady);
    }
    let m = &api.metrics;
    m.evaluations.with_label_values(&[&env.id, "thin_client"]).inc();
    let wanted = requested_keys(req.uri().query());
    let features: Box<dyn Iterator<Item = _>> = match &wanted {
        None => Box::new(snap.compiled.iter()),
        Some(keys) => Box::new(keys.iter().filter_map(|k| snap.compiled.get_key_value(k))),
    };
    let mut out = Vec::with_capacity(64 + snap.compiled.len() * 48);
    out.push(b'{');
    let mut first = true;
    for (k, f) in features.filter(|(_, f)| served(f)) {
        match f.evaluate_thin(&ctx) {
            Ok(r) => {
                if !first {
                    out.push(b',');
                }
                first = false;
                // Serializing strings and borrowed JSON values cannot fail.
                let _ = serde_json::to_writer(&mut out, k);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, &r);
            }
            Err(_) => m.evaluation_errors.with_label_values(&[&env.id, "PARSE_ERROR"]).inc(),
        }
    }
    out.push(b'}');
    let body = if req.method() == Method::HEAD { bytes::Bytes::new() } else { bytes::Bytes::from(out) };
    let mut r = Response::new(ResBody::full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// `POST /api/js/v1/event/{key}`: like the server events endpoint, keyed by the path.
async fn client_events(api: &Arc<Api>, req: Request<Incoming>, key: String) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.any_env(&key)?.0.clone();
    let (parts, body) = req.into_parts();
    let bytes = util::read_body(body, &parts.headers, api.http.max_body_bytes).await?;
    util::json_array(&bytes)?;
    api.metrics.sdk_events.with_label_values(&[&env.id, "client_events"]).inc();
    forward(api, &env.id, "client_events", bytes);
    Ok(util::json(StatusCode::OK, &b"{}"[..]))
}

/// `GET /api/js/v1/stream/{key}`: changed keys per change (spec §5.3).
fn legacy_stream(api: &Arc<Api>, req: &Request<Incoming>, key: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.any_env(key)?.0.clone();
    let opts = OpenOptions { last_event_id: util::last_event_id(req.headers()), protocol: "js_legacy", conn };
    let stream = api
        .fanout
        .open(env, Box::new(LegacyJsRenderer), opts)
        .map_err(|_| ApiError::Overloaded { retry_after_secs: 5 })?;
    Ok(sse_response(stream))
}

/// `GET /api/v1/eval/stream/{key}/user/{base64 user}`: the per-context evaluation stream.
fn eval_stream(api: &Arc<Api>, req: &Request<Incoming>, rest: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let (key, segment) = key_and_user(rest).ok_or_else(|| ApiError::NotFound(req.uri().path().to_string()))?;
    let env = api.keys.any_env(key)?.0.clone();
    let ctx = decode_user(segment).map_err(bad_user)?;
    if !env.snapshot().loaded {
        return Err(ApiError::NotReady); // "everything off" would be cached by the client
    }
    let group = api.context_groups.get(&env, ctx);
    let opts = OpenOptions { last_event_id: None, protocol: "eval", conn };
    let stream = api
        .fanout
        .open(env, Box::new(EvalRenderer::new(group)), opts)
        .map_err(|_| ApiError::Overloaded { retry_after_secs: 5 })?;
    Ok(sse_response(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn decodes_the_observed_latin1_vector() {
        // featureflow-client 2.1.0, spec §5.1: `ë` became the single byte 0xEB.
        let seg = "eyJpZCI6ImFsaWNlIiwiYXR0cmlidXRlcyI6eyJyb2xlIjpbImJldGEiXSwidGllciI6ImdvbGQiLCJuYW1lIjoiWm/rLys/In19";
        let c = decode_user(seg).unwrap();
        assert_eq!(c.id, "alice");
        assert_eq!(c.values("name").unwrap(), &[serde_json::json!("Zoë/+?")]);
    }

    #[test]
    fn decodes_utf8_unpadded_urlsafe_and_percent_encoded() {
        let json = r#"{"id":"zoë","attributes":{"x":"ü"}}"#;
        let std = b64(json.as_bytes());
        for seg in [std.clone(), std.trim_end_matches('=').to_string(), std.replace('+', "-").replace('/', "_"), std.replace('=', "%3D")] {
            let c = decode_user(&seg).unwrap_or_else(|e| panic!("{seg}: {e}"));
            assert_eq!(c.id, "zoë");
            assert_eq!(c.values("x").unwrap(), &[serde_json::json!("ü")]);
        }
    }

    #[test]
    fn rejects_bad_segments_with_a_reason() {
        assert_eq!(decode_user(""), Err(UserError::Empty));
        assert!(matches!(decode_user("!!!!"), Err(UserError::Base64(_))));
        assert!(matches!(decode_user(&b64(b"{nope")), Err(UserError::Json(_))));
        assert!(matches!(decode_user(&b64(b"[1,2]")), Err(UserError::Shape(_))));
        assert!(matches!(decode_user(&b64(br#"{"id":5}"#)), Err(UserError::Shape(_))));
    }

    #[test]
    fn keys_query() {
        assert_eq!(requested_keys(Some("keys=b,a,b")), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(requested_keys(Some("x=1&keys=a%2Cb")), Some(vec!["a,b".to_string()]));
        assert_eq!(requested_keys(Some("keys=")), None);
        assert_eq!(requested_keys(None), None);
    }
}
