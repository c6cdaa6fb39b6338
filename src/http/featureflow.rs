//! Featureflow server-SDK endpoints (spec §2): the ruleset poll with ETags (compressed when the
//! request accepts gzip or br, each coding made once per snapshot), the SSE stream on the
//! same path, and the registration and events sinks. Every one needs a server key
//! (`Authorization: Bearer <key>`).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::body::ResBody;
use super::error::ApiError;
use super::sse;
use super::state::Api;
use super::util;
use crate::compress;
use crate::fanout::{ConnState, FeatureflowRenderer, OpenOptions, SseStream};

/// `GET /api/sdk/v1/features`: the bare JSON map, or an SSE stream with `Accept: text/event-stream`.
pub fn features(api: &Arc<Api>, req: &Request<Incoming>, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let headers = req.headers();
    if util::wants_event_stream(headers) {
        return Ok(sse::response(stream(api, headers, conn)?));
    }
    let env = api.keys.server_env(headers)?;
    let snap = env.snapshot();
    if !snap.loaded {
        // An empty 200 would make replacing SDKs (node, Go, Ruby, Python, .NET) drop every flag.
        return Err(ApiError::NotReady);
    }
    // Each content coding is compressed once per snapshot (the store caches it) and shared.
    let coding = compress::negotiate(headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()));
    let base_etag = snap.encoded().etag.clone();
    // .NET 1.2.1 clears its cache on a 304 (spec §2.1): always answer it with a 200.
    let dotnet = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("DotNetClient/"));
    let not_modified = !dotnet && util::if_none_match(headers, &base_etag);
    let etag = compress::coded_etag(&base_etag, coding);
    let mut resp = if not_modified {
        let mut r = Response::new(ResBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if req.method() == hyper::Method::HEAD {
        util::json(StatusCode::OK, bytes::Bytes::new())
    } else {
        util::json(StatusCode::OK, snap.encoded_as(coding).0)
    };
    let h = resp.headers_mut();
    if let (Some(ce), false) = (coding.header(), not_modified) {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(ce));
    }
    h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::ETAG, util::header_value(&etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-featureflow-sdk-config", util::header_value(&api.http.sdk_config_header));
    Ok(resp)
}

/// The server-SDK stream (spec §2.5) for a request's headers; both the hyper path and the fast
/// path open it here.
pub fn stream(api: &Api, headers: &HeaderMap, conn: Arc<ConnState>) -> Result<SseStream, ApiError> {
    let env = api.keys.server_env(headers)?.clone();
    let opts = OpenOptions { last_event_id: util::last_event_id(headers), protocol: "featureflow", conn };
    sse::open(&api.fanout, env, Box::new(FeatureflowRenderer), opts)
}

/// `PUT /api/sdk/v1/register` and `POST /api/sdk/v1/events`: a server key and a JSON array.
pub async fn accept_batch(api: &Arc<Api>, req: Request<Incoming>, kind: &'static str) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.server_env(req.headers())?.clone();
    let (parts, body) = req.into_parts();
    let (shape, body) = api.read_body(body, &parts.headers).await?.parse(util::json_array).await?;
    shape?;
    api.forward(&env.id, kind, body.bytes)?;
    api.metrics.sdk_events.with_label_values(&[&env.id, kind]).inc();
    Ok(util::json(StatusCode::OK, &b"{}"[..]))
}
