//! OFREP, the OpenFeature Remote Evaluation Protocol (docs: ofrep.md §0, the must-follow list):
//! `POST /ofrep/v1/evaluate/flags/{key}` (single flag), `POST /ofrep/v1/evaluate/flags` (bulk,
//! trailing slash accepted, strong `ETag` + 304), and `GET /ofrep/v1/stream/{token}`, the SSE
//! endpoint the bulk response advertises in `eventStreams` (ADR-0008), where the token stands for
//! the key ([`super::auth::Keys::stream_token`]). This module holds the handlers; reading a request
//! is [`request`], the encoding is in [`wire`].
//!
//! Request: the body is `{"context": {...}}`; an empty body, a `null` or missing `context` and a
//! context without `targetingKey` are all fine (anonymous). Attributes sit flat beside
//! `targetingKey`, which is the Featureflow user id. Auth: `X-API-Key: <key>`,
//! `Authorization: Bearer <key>` or a bare `Authorization: <key>` ([`super::auth::ofrep_key`]), any
//! key of the environment (client or server).
//!
//! Mapping from Featureflow (the README documents it for users):
//! - `value`: the served variant's catalogue `value` if it has one; else, when every variant the
//!   feature can serve (catalogue keys, split keys and `offVariantKey`) is exactly `on`/`off`, the
//!   boolean `variant == "on"`; else the variant key as a string. `variant` is always the key.
//! - `reason`: `DISABLED` (feature off → off variant); `TARGETING_MATCH` (a rule with conditions
//!   matched and serves one variant); `SPLIT` (the matched rule splits between variants, so the
//!   bucket chose); `STATIC` (the feature has no rule with conditions: every context gets the same
//!   answer); `DEFAULT` (the feature has targeting rules and none of them matched: default rule or
//!   `offVariantKey`).
//! - `metadata`: single flag `{"revision": <environment revision>}`; bulk items carry none (so the
//!   bulk body, and hence its ETag, changes only when this context's results change, and stays small).
//!
//! Invariants:
//! - Errors use OFREP's shapes ([`OfrepError`]): 401 without body for a missing/unknown key or
//!   stream token; 404
//!   `FLAG_NOT_FOUND` and 400 `INVALID_CONTEXT` / `PARSE_ERROR` with `key` + `errorDetails`
//!   (single); 400 `{errorCode, errorDetails}` for a bad bulk request. A feature that fails to
//!   compile answers `PARSE_ERROR` alone (a failure item in bulk); the other flags are unaffected.
//! - The bulk ETag is a 64-bit SipHash (std's `DefaultHasher`, fixed keys) of the exact body plus
//!   its length ([`wire::bulk_etag`]), so equal bodies have equal ETags on every replica;
//!   `If-None-Match` is compared as the server-SDK poll does.
//! - With `ofrep_rate_limit > 0`, each key gets that many evaluation requests per second **per
//!   client address** (bursts up to one second's worth; the peer, or the first untrusted
//!   `X-Forwarded-For` hop behind `trusted_proxies`; [`super::rate_limit`]) and beyond it 429 with
//!   an integer `Retry-After`. The stream endpoint is not rate-limited.
//! - The body is read within the request-body budget and parsed as tokens within the context's
//!   limits ([`request`]; [`super::request_body`]).

pub mod request;
pub mod wire;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};

use super::body::ResBody;
use super::error::{ApiError, OfrepCode, OfrepError};
use super::sse;
use super::state::Api;
use super::util;
use super::rate_limit::client_addr;
use crate::eval::thin::served;
use crate::eval::Context;
use crate::fanout::thin_streams::OfrepRenderer;
use crate::fanout::{ConnState, OpenOptions, SseStream};
use crate::store::EnvStore;
pub use request::{parse_request, parse_request_within, RequestError};
pub use wire::bulk_body;

/// A request that passed [`admit`]: its environment, key, head and what its body says.
struct Admitted {
    env: Arc<EnvStore>,
    key: String,
    parts: Parts,
    context: Result<Context, RequestError>,
}

/// What both evaluation endpoints do first: authenticate, rate-limit by key and client address,
/// read the body within its budget and parse it (off the runtime when it is big; the body and
/// its share of the budget are let go before any evaluation).
async fn admit(api: &Arc<Api>, req: Request<Incoming>, conn: &ConnState) -> Result<Admitted, ApiError> {
    let (env, key) = api.keys.ofrep_env(req.headers())?;
    let (env, key) = (env.clone(), key.to_string());
    if let Some(limit) = &api.ofrep_limit {
        let client = client_addr(conn.peer.map(|p| p.ip()), req.headers(), &api.http.trusted_proxies);
        limit.check(&key, client).map_err(|retry_after_secs| {
            api.metrics.evaluation_errors.with_label_values(&[&env.id, "RATE_LIMITED"]).inc();
            ApiError::RateLimited { retry_after_secs }
        })?;
    }
    let (parts, body) = req.into_parts();
    let max = api.http.max_context_bytes;
    let (context, _body) = api.read_body(body, &parts.headers).await?.parse(move |b| parse_request_within(b, max)).await?;
    Ok(Admitted { env, key, parts, context })
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn single(api: &Arc<Api>, req: Request<Incoming>, key: &str, conn: &ConnState) -> Result<Response<ResBody>, ApiError> {
    let Admitted { env, context, .. } = admit(api, req, conn).await?;
    let m = &api.metrics;
    m.evaluations.with_label_values(&[&env.id, "ofrep"]).inc();
    let fail = |code: OfrepCode, details: String| {
        m.evaluation_errors.with_label_values(&[&env.id, code.as_str()]).inc();
        OfrepError::Flag { key: key.to_string(), code, details }
    };
    let mut ctx = context.map_err(|e| fail(OfrepCode::InvalidContext, e.to_string()))?;
    // OFREP clients cannot finish time conditions themselves: the relay supplies "now"
    // (featureflow.date, and featureflow.hourofday in UTC) unless the context carries them.
    ctx.inject_now(chrono::Utc::now());
    let snap = env.snapshot();
    if !snap.loaded {
        return Err(ApiError::NotReady); // not FLAG_NOT_FOUND for a flag that may well exist
    }
    let f = snap
        .compiled
        .get(key)
        .filter(|f| served(f))
        .ok_or_else(|| fail(OfrepCode::FlagNotFound, format!("flag '{key}' does not exist")))?;
    let e = f.evaluate(&ctx).map_err(|e| fail(OfrepCode::ParseError, e.to_string()))?;
    let mut out = Vec::with_capacity(256);
    let metadata = format!("{{\"revision\":{}}}", snap.revision);
    wire::write_success(&mut out, key, f, &e, Some(metadata.as_bytes()));
    Ok(util::json(StatusCode::OK, out))
}

/// `POST /ofrep/v1/evaluate/flags` (`flagConfigEtag` / `flagConfigLastModified` are accepted and
/// need nothing: the answer is always computed from the current data).
pub async fn bulk(api: &Arc<Api>, req: Request<Incoming>, conn: &ConnState) -> Result<Response<ResBody>, ApiError> {
    let Admitted { env, key, parts, context } = admit(api, req, conn).await?;
    let m = &api.metrics;
    m.evaluations.with_label_values(&[&env.id, "ofrep_bulk"]).inc();
    let mut ctx = context.map_err(|e| {
        m.evaluation_errors.with_label_values(&[&env.id, OfrepCode::InvalidContext.as_str()]).inc();
        OfrepError::Bulk { code: OfrepCode::InvalidContext, details: e.to_string() }
    })?;
    ctx.inject_now(chrono::Utc::now());
    let snap = env.snapshot();
    if !snap.loaded {
        return Err(ApiError::NotReady); // an empty flag set would replace the client's cache
    }
    // The advertised URL carries a token, never the key: URLs end up in proxy logs.
    let (body, errors) = bulk_body(&snap.compiled, &ctx, &wire::stream_uri(&api.keys.stream_token(&key)));
    if errors > 0 {
        m.evaluation_errors.with_label_values(&[&env.id, OfrepCode::ParseError.as_str()]).inc_by(errors);
    }
    let etag = wire::bulk_etag(&body);
    let (mut resp, etag) = if util::if_none_match(&parts.headers, &etag) {
        let mut r = Response::new(ResBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        (r, etag)
    } else {
        // Compressed per request above http.compress_min_bytes; its own tag per coding.
        let (r, coding) = util::json_coded(StatusCode::OK, &parts.headers, body.into(), api.http.compress_min_bytes);
        (r, crate::compress::coded_etag(&etag, coding))
    };
    resp.headers_mut().insert(header::ETAG, util::header_value(&etag));
    Ok(resp)
}

/// `GET /ofrep/v1/stream/{token}`: `refetchEvaluation` on every environment change.
pub fn stream(api: &Arc<Api>, req: &Request<Incoming>, token: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    Ok(sse::response(stream_sse(api, req.headers(), token, conn)?))
}

/// The stream of [`stream`], for either path (hyper or native).
pub fn stream_sse(api: &Arc<Api>, headers: &HeaderMap, token: &str, conn: Arc<ConnState>) -> Result<SseStream, ApiError> {
    let env = api.keys.stream_env(token).ok_or(OfrepError::Unauthorized)?;
    let opts = OpenOptions { last_event_id: util::last_event_id(headers), protocol: "ofrep", conn };
    sse::open(&api.fanout, env.clone(), Box::new(OfrepRenderer), opts)
}
