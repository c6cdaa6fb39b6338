//! Featureflow thin-client API (spec §5): the evaluate endpoint, client events, the legacy
//! change stream, the per-context evaluation stream, and reading the user segment they share.
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
//! Keys: a client key of an environment (what browsers hold); the key is in the URL, which ends
//! up in logs, so a server key is refused with 403 ([`super::auth::Keys::url_env`]). A missing or
//! unknown key is 401 with the relay's JSON error.
//!
//! Invariants:
//! - Rule values other than time conditions never leave the relay (the engine guarantees it for
//!   each entry; this module only ever serializes [`ThinResult`](crate::eval::ThinResult)s).
//! - A feature that cannot be evaluated (compile error) is left out; the client serves `"off"` for it.
//! - Every response on these paths, errors included, carries the CORS headers, so a browser can
//!   read the status; `OPTIONS` is a preflight answered 204 without looking at the key (both done
//!   by the dispatcher for the route: [`super::route`], [`super::cors`]).

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::body::ResBody;
use super::error::ApiError;
use super::sse;
use super::state::Api;
use super::util;
/// Re-exported where the user-segment and `keys` decoders are, for their property tests.
pub use super::util::percent_decode;
use crate::eval::thin::served;
use crate::eval::{Context, ContextError};
use crate::fanout::eval_stream::EvalRenderer;
use crate::fanout::thin_streams::LegacyJsRenderer;
use crate::fanout::{ConnState, OpenOptions, SseStream};

/// The exact content type featureflow-client 1.3.x and 2.x accept (spec §5.1).
pub const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

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
    #[error("{0}")]
    TooLarge(ContextError),
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

/// [`decode_user`], refusing a context over `max_bytes` encoded (`http.max_context_bytes`).
pub fn decode_user_within(segment: &str, max_bytes: usize) -> Result<Context, UserError> {
    let ctx = decode_user(segment)?;
    ctx.check_bytes(max_bytes).map_err(UserError::TooLarge)?;
    Ok(ctx)
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

impl From<UserError> for ApiError {
    fn from(e: UserError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

// ---- handlers -------------------------------------------------------------------------------

/// `GET /api/js/v1/evaluate/{key}/user/{base64 user}`.
pub fn evaluate(api: &Arc<Api>, req: &Request<Incoming>, key: &str, user: &str) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.url_env(key)?;
    let ctx = decode_user_within(user, api.http.max_context_bytes)?;
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
    let mut r = if req.method() == Method::HEAD {
        Response::new(ResBody::full(bytes::Bytes::new()))
    } else {
        // Compressed per request above http.compress_min_bytes.
        util::json_coded(StatusCode::OK, req.headers(), bytes::Bytes::from(out), api.http.compress_min_bytes).0
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// `POST /api/js/v1/event/{key}`: like the server events endpoint, keyed by the path.
pub async fn client_events(api: &Arc<Api>, req: Request<Incoming>, key: &str) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.url_env(key)?.clone();
    let (parts, body) = req.into_parts();
    let (shape, body) = api.read_body(body, &parts.headers).await?.parse(util::json_array).await?;
    shape?;
    api.forward(&env.id, "client_events", body.bytes)?;
    api.metrics.sdk_events.with_label_values(&[&env.id, "client_events"]).inc();
    Ok(util::json(StatusCode::OK, &b"{}"[..]))
}

/// `GET /api/js/v1/stream/{key}`: changed keys per change (spec §5.3).
pub fn legacy_stream(api: &Arc<Api>, req: &Request<Incoming>, key: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    Ok(sse::response(legacy_sse(api, req.headers(), key, conn)?))
}

/// The stream of [`legacy_stream`], for either path (hyper or native).
pub fn legacy_sse(api: &Arc<Api>, headers: &HeaderMap, key: &str, conn: Arc<ConnState>) -> Result<SseStream, ApiError> {
    let env = api.keys.url_env(key)?.clone();
    let opts = OpenOptions { last_event_id: util::last_event_id(headers), protocol: "js_legacy", conn };
    sse::open(&api.fanout, env, Box::new(LegacyJsRenderer), opts)
}

/// `GET /api/v1/eval/stream/{key}/user/{base64 user}`: the per-context evaluation stream.
pub fn eval_stream(api: &Arc<Api>, key: &str, user: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    Ok(sse::response(eval_sse(api, key, user, conn)?))
}

/// The stream of [`eval_stream`], for either path (hyper or native).
pub fn eval_sse(api: &Arc<Api>, key: &str, user: &str, conn: Arc<ConnState>) -> Result<SseStream, ApiError> {
    let env = api.keys.url_env(key)?.clone();
    let ctx = decode_user_within(user, api.http.max_context_bytes)?;
    if !env.snapshot().loaded {
        return Err(ApiError::NotReady); // "everything off" would be cached by the client
    }
    let group = api.context_groups.get(&env, ctx);
    let opts = OpenOptions { last_event_id: None, protocol: "eval", conn };
    sse::open(&api.fanout, env, Box::new(EvalRenderer::new(group)), opts)
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
    fn a_user_over_the_context_limit_is_refused_naming_the_limit() {
        let seg = b64(br#"{"id":"u","attributes":{"a":"0123456789"}}"#);
        let size = decode_user(&seg).unwrap().encoded_len();
        assert!(decode_user_within(&seg, size).is_ok());
        let e = decode_user_within(&seg, size - 1).unwrap_err();
        assert_eq!(e, UserError::TooLarge(ContextError::TooManyBytes { limit: size - 1 }));
        assert!(e.to_string().contains("http.max_context_bytes"), "{e}");
    }

    #[test]
    fn keys_query() {
        assert_eq!(requested_keys(Some("keys=b,a,b")), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(requested_keys(Some("x=1&keys=a%2Cb")), Some(vec!["a,b".to_string()]));
        assert_eq!(requested_keys(Some("keys=")), None);
        assert_eq!(requested_keys(None), None);
    }
}
