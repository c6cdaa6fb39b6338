//! Featureflow server-SDK endpoints (spec §2): the ruleset poll with ETags, the SSE stream on the
//! same path, and the registration and events sinks.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::api::Api;
use super::body::ResBody;
use super::error::ApiError;
use super::util;
use crate::fanout::{ConnState, FeatureflowRenderer, OpenOptions, SseStream};
use crate::upstream::EventBatch;

/// `GET /api/sdk/v1/features`: the bare JSON map, or an SSE stream with `Accept: text/event-stream`.
pub fn features(api: &Arc<Api>, req: Request<Incoming>, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let headers = req.headers();
    let env = api.keys.server_env(headers)?.clone();
    if util::wants_event_stream(headers) {
        let opts = OpenOptions { last_event_id: util::last_event_id(headers), protocol: "featureflow", conn };
        let stream = api
            .fanout
            .open(env, Box::new(FeatureflowRenderer), opts)
            .map_err(|_| ApiError::Overloaded { retry_after_secs: 5 })?;
        return Ok(sse_response(stream));
    }
    let snap = env.snapshot();
    if !snap.loaded {
        // An empty 200 would make replacing SDKs (node, Go, Ruby, Python, .NET) drop every flag.
        return Err(ApiError::NotReady);
    }
    let enc = snap.encoded();
    // .NET 1.2.1 clears its cache on a 304 (spec §2.1): always answer it with a 200.
    let dotnet = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("DotNetClient/"));
    let not_modified = !dotnet && util::if_none_match(headers, &enc.etag);
    let mut resp = if not_modified {
        let mut r = Response::new(ResBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if req.method() == hyper::Method::HEAD {
        util::json(StatusCode::OK, bytes::Bytes::new())
    } else {
        util::json(StatusCode::OK, enc.body.clone())
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, util::header_value(&enc.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-featureflow-sdk-config", util::header_value(&api.http.sdk_config_header));
    Ok(resp)
}

/// A `200 text/event-stream` response around a fan-out stream.
pub fn sse_response(stream: SseStream) -> Response<ResBody> {
    let mut r = Response::new(ResBody::Sse(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `PUT /api/sdk/v1/register` and `POST /api/sdk/v1/events`: a server key and a JSON array.
pub async fn accept_batch(api: &Arc<Api>, req: Request<Incoming>, kind: &'static str) -> Result<Response<ResBody>, ApiError> {
    let env = api.keys.server_env(req.headers())?.clone();
    let (parts, body) = req.into_parts();
    let bytes = util::read_body(body, &parts.headers, api.http.max_body_bytes).await?;
    util::json_array(&bytes)?;
    api.metrics.sdk_events.with_label_values(&[&env.id, kind]).inc();
    forward(api, &env.id, kind, bytes);
    Ok(util::json(StatusCode::OK, &b"{}"[..]))
}

/// Hands a batch to the upstream forwarder without waiting: a full queue drops and counts it.
pub fn forward(api: &Api, env: &Arc<str>, kind: &'static str, body: bytes::Bytes) {
    if let Some(tx) = &api.events {
        let batch = EventBatch { env: env.clone(), kind, body };
        if tx.try_send(batch).is_err() {
            api.metrics.events_forwarded.with_label_values(&[env, "dropped"]).inc();
        }
    }
}
