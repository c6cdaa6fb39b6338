//! OFREP, the OpenFeature Remote Evaluation Protocol (docs: ofrep.md §0, the must-follow list):
//! `POST /ofrep/v1/evaluate/flags/{key}` (single flag), `POST /ofrep/v1/evaluate/flags` (bulk,
//! trailing slash accepted, strong `ETag` + 304), and `GET /ofrep/v1/stream/{key}`, the SSE
//! endpoint the bulk response advertises in `eventStreams` (ADR-0008).
//!
//! Request: the body is `{"context": {...}}`; an empty body, a `null` or missing `context` and a
//! context without `targetingKey` are all fine (anonymous). Attributes sit flat beside
//! `targetingKey`, which is the Featureflow user id. Auth: `X-API-Key: <key>` or
//! `Authorization: Bearer <key>`, any key of the environment (client or server).
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
//! - Errors use OFREP's shapes ([`OfrepError`]): 401 without body for a missing/unknown key; 404
//!   `FLAG_NOT_FOUND` and 400 `INVALID_CONTEXT` / `PARSE_ERROR` with `key` + `errorDetails`
//!   (single); 400 `{errorCode, errorDetails}` for a bad bulk request. A feature that fails to
//!   compile answers `PARSE_ERROR` alone (a failure item in bulk); the other flags are unaffected.
//! - The bulk ETag is the SHA-1 of the exact body, so equal bodies have equal ETags; `If-None-Match`
//!   is compared as the server-SDK poll does.
//! - With `ofrep_rate_limit > 0`, each key gets that many evaluation requests per second (bursts up
//!   to one second's worth; [`super::rate_limit`]) and beyond it 429 with an integer `Retry-After`.
//!   The stream endpoint is not rate-limited.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use super::api::{routes, Api};
use super::auth::bearer;
use super::body::ResBody;
use super::error::{ApiError, OfrepCode, OfrepError};
use super::featureflow::sse_response;
use super::thin::{cors, preflight, CorsKind};
use super::util;
use crate::eval::{CompiledFeature, Context, Evaluation, Reason};
use crate::eval::thin::served;
use crate::fanout::thin_streams::OfrepRenderer;
use crate::fanout::{ConnState, OpenOptions};
use crate::store::{CompiledMap, EnvStore};

const FLAGS: &str = "/ofrep/v1/evaluate/flags";
const STREAM: &str = "/ofrep/v1/stream/";
/// `inactivityDelaySec` advertised with the event stream (the ADR-0008 default).
const INACTIVITY_DELAY_SECS: u64 = 120;
/// What a path segment keeps unescaped: RFC 3986's unreserved set.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// True for every path this module serves (`//ofrep/...` too: a base URL with a trailing slash).
pub fn owns(path: &str) -> bool {
    path.trim_start_matches('/').starts_with("ofrep/")
}

/// Routes a request under [`owns`]; see [`super::thin::handle`] for the shape of the answer.
pub async fn handle(api: &Arc<Api>, req: Request<Incoming>, conn: Arc<ConnState>) -> (&'static str, Result<Response<ResBody>, ApiError>) {
    let path = format!("/{}", req.uri().path().trim_start_matches('/'));
    let origin = req.headers().get(header::ORIGIN).cloned();
    let method = req.method().clone();
    let options = req.method() == Method::OPTIONS;
    let (route, result) = if path == FLAGS || path == "/ofrep/v1/evaluate/flags/" {
        (routes::OFREP_BULK, match &method {
            _ if options => Ok(preflight()),
            &Method::POST => bulk(api, req).await,
            m => Err(ApiError::MethodNotAllowed(m.to_string())),
        })
    } else if let Some(key) = path.strip_prefix("/ofrep/v1/evaluate/flags/").filter(|k| !k.contains('/')) {
        let key = util::percent_decode_lossy(key);
        (routes::OFREP_FLAG, match &method {
            _ if options => Ok(preflight()),
            &Method::POST => single(api, req, &key).await,
            m => Err(ApiError::MethodNotAllowed(m.to_string())),
        })
    } else if let Some(key) = path.strip_prefix(STREAM).filter(|k| !k.contains('/')) {
        (routes::OFREP_STREAM, match &method {
            _ if options => Ok(preflight()),
            &Method::GET => stream(api, &req, key, conn),
            m => Err(ApiError::MethodNotAllowed(m.to_string())),
        })
    } else {
        (routes::UNKNOWN, Err(ApiError::NotFound(path.clone())))
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    cors(&api.http.cors_allowed_origins, origin.as_ref(), resp.headers_mut(), CorsKind::Ofrep, options);
    (route, Ok(resp))
}

// ---- auth and rate limit --------------------------------------------------------------------

/// The key from `X-API-Key`, else `Authorization: Bearer <key>` (or a bare `Authorization: <key>`).
fn request_key(headers: &HeaderMap) -> Option<&str> {
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty());
    api_key.or_else(|| bearer(headers)).or_else(|| {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
        (!v.is_empty() && !v.contains(' ')).then_some(v)
    })
}

fn authenticate<'a>(api: &'a Api, headers: &HeaderMap) -> Result<(&'a Arc<EnvStore>, String), ApiError> {
    let key = request_key(headers).ok_or(ApiError::Ofrep(OfrepError::Unauthorized))?;
    let (env, _) = api.keys.any_env(key).map_err(|_| ApiError::Ofrep(OfrepError::Unauthorized))?;
    Ok((env, key.to_string()))
}

fn rate_limit(api: &Api, env: &EnvStore, key: &str) -> Result<(), ApiError> {
    let Some(limit) = &api.ofrep_limit else { return Ok(()) };
    limit.check(key).map_err(|retry_after_secs| {
        api.metrics.evaluation_errors.with_label_values(&[&env.id, "RATE_LIMITED"]).inc();
        ApiError::RateLimited { retry_after_secs }
    })
}

// ---- request parsing ------------------------------------------------------------------------

/// Reads an OFREP request body into a context, leniently (see the module docs). Never panics.
pub fn parse_request(body: &[u8]) -> Result<Context, String> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Ok(Context::default());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    match &v {
        Value::Null => Ok(Context::default()),
        Value::Object(o) => match o.get("context") {
            None | Some(Value::Null) => Ok(Context::default()),
            Some(c) => Context::from_ofrep(c).map_err(|e| e.to_string()),
        },
        _ => Err("the body must be a JSON object like {\"context\": {...}}".into()),
    }
}

// ---- mapping --------------------------------------------------------------------------------

/// The OFREP reason for an evaluation (see the module docs).
pub fn reason(f: &CompiledFeature, e: &Evaluation<'_>) -> &'static str {
    match e.reason {
        Reason::Disabled => "DISABLED",
        Reason::TargetingMatch => "TARGETING_MATCH",
        Reason::Split => "SPLIT",
        Reason::Default if has_targeting(f) => "DEFAULT",
        Reason::Default => "STATIC",
    }
}

/// True if some rule has conditions (so the answer can depend on the context).
fn has_targeting(f: &CompiledFeature) -> bool {
    f.feature().control.rules.iter().any(|r| !r.default_rule && r.audience.as_ref().is_some_and(|a| !a.conditions.is_empty()))
}

/// True if every variant the feature can serve is `on` or `off`, and both occur.
pub fn is_boolean(f: &CompiledFeature) -> bool {
    let c = &f.feature().control;
    let keys = c
        .variants
        .iter()
        .map(|v| v.key.as_str())
        .chain(c.rules.iter().flat_map(|r| r.variant_splits.iter().map(|s| s.variant_key.as_str())))
        .chain(std::iter::once(c.off_variant()));
    let (mut on, mut off) = (false, false);
    for k in keys {
        match k {
            "on" => on = true,
            "off" => off = true,
            _ => return false,
        }
    }
    on && off
}

/// Writes the OFREP `value` of an evaluation (see the module docs).
fn write_value(out: &mut Vec<u8>, f: &CompiledFeature, e: &Evaluation<'_>) {
    // Serializing JSON values and strings into a Vec cannot fail.
    match e.value {
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        None if matches!(e.variant, "on" | "off") && is_boolean(f) => {
            out.extend_from_slice(if e.variant == "on" { b"true" } else { b"false" })
        }
        None => {
            let _ = serde_json::to_writer(&mut *out, e.variant);
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"key","value","reason","variant"[,"metadata"]}`.
fn write_success(out: &mut Vec<u8>, key: &str, f: &CompiledFeature, e: &Evaluation<'_>, metadata: Option<&[u8]>) {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key);
    out.extend_from_slice(b",\"value\":");
    write_value(out, f, e);
    out.extend_from_slice(b",\"reason\":\"");
    out.extend_from_slice(reason(f, e).as_bytes());
    out.extend_from_slice(b"\",\"variant\":");
    write_str(out, e.variant);
    if let Some(m) = metadata {
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(m);
    }
    out.push(b'}');
}

fn write_failure(out: &mut Vec<u8>, key: &str, code: OfrepCode, details: &str) {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key);
    out.extend_from_slice(b",\"errorCode\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"errorDetails\":");
    write_str(out, details);
    out.push(b'}');
}

/// The bulk body for `ctx`: every served flag, then the event stream at `stream_uri`. Returns the
/// body and how many flags failed to evaluate.
pub fn bulk_body(compiled: &CompiledMap, ctx: &Context, stream_uri: &str) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(128 + compiled.len() * 96);
    let mut errors = 0;
    out.extend_from_slice(b"{\"flags\":[");
    let mut first = true;
    for (key, f) in compiled.iter().filter(|(_, f)| served(f)) {
        if !first {
            out.push(b',');
        }
        first = false;
        match f.evaluate(ctx) {
            Ok(e) => write_success(&mut out, key, f, &e, None),
            Err(err) => {
                errors += 1;
                write_failure(&mut out, key, OfrepCode::ParseError, &err.to_string());
            }
        }
    }
    out.extend_from_slice(b"],\"eventStreams\":[{\"type\":\"sse\",\"endpoint\":{\"requestUri\":");
    write_str(&mut out, stream_uri);
    out.extend_from_slice(b"},\"inactivityDelaySec\":");
    out.extend_from_slice(INACTIVITY_DELAY_SECS.to_string().as_bytes());
    out.extend_from_slice(b"}]}");
    (out, errors)
}

/// `/ofrep/v1/stream/<key>`, the key percent-encoded outside the URL-unreserved set.
fn stream_uri(key: &str) -> String {
    format!("{STREAM}{}", utf8_percent_encode(key, NOT_UNRESERVED))
}

/// A strong ETag for a bulk body: a 64-bit hash of the exact bytes plus their length. The hasher is
/// std's `DefaultHasher::new()` (SipHash, fixed keys: the same on every replica; a third of SHA-1's
/// cost on this hot path). The ETag only has to change when the body does; a Rust upgrade that
/// changes the algorithm costs each client one 200.
fn bulk_etag(body: &[u8]) -> String {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(body);
    format!("\"{:016x}{:x}\"", h.finish(), body.len())
}

fn ok_json(body: impl Into<Bytes>) -> Response<ResBody> {
    util::json(StatusCode::OK, body)
}

// ---- handlers -------------------------------------------------------------------------------

/// `POST /ofrep/v1/evaluate/flags/{key}`.
/// What both evaluation endpoints do first: authenticate, rate-limit, read the bounded body.
async fn admit(api: &Arc<Api>, req: Request<Incoming>) -> Result<(Arc<EnvStore>, String, hyper::http::request::Parts, bytes::Bytes), ApiError> {
    let (env, api_key) = authenticate(api, req.headers())?;
    let env = env.clone();
    rate_limit(api, &env, &api_key)?;
    let (parts, body) = req.into_parts();
    let bytes = util::read_body(body, &parts.headers, api.http.max_body_bytes).await?;
    Ok((env, api_key, parts, bytes))
}

async fn single(api: &Arc<Api>, req: Request<Incoming>, key: &str) -> Result<Response<ResBody>, ApiError> {
    let (env, _, _, bytes) = admit(api, req).await?;
    let m = &api.metrics;
    m.evaluations.with_label_values(&[&env.id, "ofrep"]).inc();
    let fail = |code: OfrepCode, details: String| {
        m.evaluation_errors.with_label_values(&[&env.id, code.as_str()]).inc();
        ApiError::Ofrep(OfrepError::Flag { key: key.to_string(), code, details })
    };
    let mut ctx = parse_request(&bytes).map_err(|d| fail(OfrepCode::InvalidContext, d))?;
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
    write_success(&mut out, key, f, &e, Some(metadata.as_bytes()));
    Ok(ok_json(out))
}

/// `POST /ofrep/v1/evaluate/flags` (`flagConfigEtag` / `flagConfigLastModified` are accepted and
/// need nothing: the answer is always computed from the current data).
async fn bulk(api: &Arc<Api>, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let (env, api_key, parts, bytes) = admit(api, req).await?;
    let m = &api.metrics;
    m.evaluations.with_label_values(&[&env.id, "ofrep_bulk"]).inc();
    let mut ctx = parse_request(&bytes).map_err(|details| {
        m.evaluation_errors.with_label_values(&[&env.id, OfrepCode::InvalidContext.as_str()]).inc();
        ApiError::Ofrep(OfrepError::Bulk { code: OfrepCode::InvalidContext, details })
    })?;
    ctx.inject_now(chrono::Utc::now());
    let snap = env.snapshot();
    if !snap.loaded {
        return Err(ApiError::NotReady); // an empty flag set would replace the client's cache
    }
    // The advertised URL carries a token, never the key: URLs end up in proxy logs.
    let (body, errors) = bulk_body(&snap.compiled, &ctx, &stream_uri(&super::auth::stream_token(&api_key)));
    if errors > 0 {
        m.evaluation_errors.with_label_values(&[&env.id, OfrepCode::ParseError.as_str()]).inc_by(errors);
    }
    let etag = bulk_etag(&body);
    let mut resp = if util::if_none_match(&parts.headers, &etag) {
        let mut r = Response::new(ResBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        ok_json(body)
    };
    resp.headers_mut().insert(header::ETAG, util::header_value(&etag));
    Ok(resp)
}

/// `GET /ofrep/v1/stream/{key}`: `refetchEvaluation` on every environment change.
fn stream(api: &Arc<Api>, req: &Request<Incoming>, key: &str, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let token = util::percent_decode_lossy(key);
    let env = api.keys.stream_env(&token).ok_or(ApiError::Ofrep(OfrepError::Unauthorized))?;
    let opts = OpenOptions { last_event_id: util::last_event_id(req.headers()), protocol: "ofrep", conn };
    let stream = api
        .fanout
        .open(env.clone(), Box::new(OfrepRenderer), opts)
        .map_err(|_| ApiError::Overloaded { retry_after_secs: 5 })?;
    Ok(sse_response(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Feature, FeatureControl};
    use serde_json::json;

    fn compiled(raw: Value) -> Arc<CompiledFeature> {
        let key = raw["key"].as_str().unwrap().to_string();
        Arc::new(CompiledFeature::compile(&Feature::from_value(&key, raw).unwrap()))
    }

    /// A feature that skipped validation (splits sum to 90): it compiles with an error.
    fn broken(key: &str) -> Arc<CompiledFeature> {
        let raw = json!({"key": key, "enabled": true,
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 90}]}]});
        let control: FeatureControl = serde_json::from_value(raw.clone()).unwrap();
        let json = Bytes::from(serde_json::to_vec(&raw).unwrap());
        Arc::new(CompiledFeature::compile(&Arc::new(Feature { key: key.into(), raw, control, json })))
    }

    fn one(f: &Arc<CompiledFeature>, ctx: &Context) -> Value {
        let mut out = Vec::new();
        let e = f.evaluate(ctx).unwrap();
        write_success(&mut out, f.key(), f, &e, Some(b"{}"));
        serde_json::from_slice(&out).unwrap()
    }

    fn feature(variants: Value, rules: Value) -> Arc<CompiledFeature> {
        compiled(json!({"key": "f", "enabled": true, "offVariantKey": "off", "variants": variants, "rules": rules}))
    }

    fn default_rule(variant: &str) -> Value {
        json!([{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}])
    }

    #[test]
    fn on_off_features_are_booleans() {
        let f = feature(json!([{"key": "on"}, {"key": "off"}]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u")), json!({"key": "f", "value": true, "reason": "STATIC", "variant": "on", "metadata": {}}));
    }

    #[test]
    fn a_catalogue_value_wins_over_the_boolean() {
        let f = feature(json!([{"key": "on", "value": {"max": 3}}, {"key": "off"}]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!({"max": 3}));
    }

    #[test]
    fn other_variant_keys_are_strings() {
        let f = feature(json!([{"key": "blue"}, {"key": "off"}]), default_rule("blue"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!("blue"));
        // No catalogue: the split keys and offVariantKey decide.
        let f = feature(json!([]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!(true));
    }

    #[test]
    fn reasons() {
        let rules = json!([
            {"defaultRule": false, "audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["gold"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 50}, {"variantKey": "off", "split": 50}]}]);
        let f = feature(json!([{"key": "on"}, {"key": "off"}]), rules);
        assert_eq!(one(&f, &Context::new("u").with("tier", "gold"))["reason"], "TARGETING_MATCH");
        assert_eq!(one(&f, &Context::new("u"))["reason"], "SPLIT");
        let rules = json!([
            {"defaultRule": false, "audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["gold"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]);
        let f = feature(json!([]), rules);
        assert_eq!(one(&f, &Context::new("u"))["reason"], "DEFAULT");
        let f = compiled(json!({"key": "f", "enabled": false, "rules": default_rule("on")}));
        let v = one(&f, &Context::new("u"));
        assert_eq!((v["reason"].as_str(), v["variant"].as_str(), &v["value"]), (Some("DISABLED"), Some("off"), &json!(false)));
    }

    #[test]
    fn a_feature_that_fails_to_compile_fails_alone_in_bulk() {
        let mut map = CompiledMap::new();
        map.insert("bad".into(), broken("bad"));
        map.insert("good".into(), feature(json!([]), default_rule("on")));
        let (body, errors) = bulk_body(&map, &Context::default(), "/ofrep/v1/stream/k");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(errors, 1);
        assert_eq!(v["flags"][0]["key"], "bad");
        assert_eq!(v["flags"][0]["errorCode"], "PARSE_ERROR");
        assert!(v["flags"][0]["errorDetails"].as_str().unwrap().contains("splits sum to 90"));
        assert_eq!(v["flags"][1]["value"], true);
        assert_eq!(v["eventStreams"][0]["endpoint"]["requestUri"], "/ofrep/v1/stream/k");
    }

    #[test]
    fn lenient_request_bodies() {
        for body in [&b""[..], b"  ", b"null", b"{}", b"{\"context\":null}", b"{\"context\":{}}"] {
            assert_eq!(parse_request(body), Ok(Context::default()), "{:?}", String::from_utf8_lossy(body));
        }
        let c = parse_request(br#"{"context":{"targetingKey":"u1","plan":"pro"}}"#).unwrap();
        assert_eq!((c.id.as_str(), c.values("plan").unwrap()), ("u1", &[json!("pro")][..]));
        for bad in [&b"{"[..], b"[]", b"\"x\"", b"{\"context\":[]}", b"{\"context\":{\"targetingKey\":1}}"] {
            assert!(parse_request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stream_uri_encodes_the_token() {
        assert_eq!(stream_uri("sdk-js_1.x~"), "/ofrep/v1/stream/sdk-js_1.x~");
        assert_eq!(stream_uri("a/b c"), "/ofrep/v1/stream/a%2Fb%20c");
        assert_eq!(stream_uri("+%ë"), "/ofrep/v1/stream/%2B%25%C3%AB");
    }
}
