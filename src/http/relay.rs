//! `GET /api/relay/v1/stream`: the stream a child relay follows
//! ([`crate::fanout::relay_stream`] renders it), authenticated like the server-SDK endpoints
//! (`Authorization: Bearer <server key>`). The response carries `X-Flagrelay-Hops`: how many
//! relays this one is below the root source (0 when it follows Redis or a file), so the child
//! knows its own depth.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};

use super::body::ResBody;
use super::error::ApiError;
use super::sse;
use super::state::Api;
use crate::fanout::relay_stream::RelayRenderer;
use crate::fanout::{ConnState, OpenOptions};

pub use crate::upstream::relay::HOPS_HEADER;

pub fn stream(api: &Arc<Api>, req: &Request<Incoming>, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
    let headers = req.headers();
    let env = api.keys.server_env(headers)?.clone();
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).filter(|s| !s.trim().is_empty());
    let hops = env.status().relay.map_or(0, |r| r.hops);
    let renderer = Box::new(RelayRenderer::new(&env, last));
    let opts = OpenOptions { last_event_id: None, protocol: "relay", conn };
    let mut resp = sse::response(sse::open(&api.fanout, env, renderer, opts)?);
    resp.headers_mut().insert(HeaderName::from_static(HOPS_HEADER), HeaderValue::from(hops));
    Ok(resp)
}
