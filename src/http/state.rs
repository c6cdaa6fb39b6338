//! The API listener's shared state: what every handler reads (keys, fan-out, metrics, the HTTP
//! config, the event sink) and the per-relay state that `app::run` builds for the handlers (the
//! OFREP rate limiter, the per-context stream groups, the request-body budget); plus what every
//! handler family does with it: read a body ([`Api::read_body`]), count a response
//! ([`Api::record`]) and hand on an event batch ([`Api::forward`]).

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::StatusCode;

use super::auth::Keys;
use super::error::ApiError;
use super::rate_limit::KeyedRateLimit;
use super::request_body::{self, Body, BodyBudget};
use super::route::Template;
use crate::config::HttpConfig;
use crate::fanout::eval_stream::ContextGroups;
use crate::fanout::Fanout;
use crate::metrics::{status_class, Metrics};
use crate::upstream::{EventBatch, EventSender};

pub struct Api {
    pub keys: Keys,
    pub fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    pub http: HttpConfig,
    /// Where accepted SDK events go (forwarded upstream in Redis mode).
    pub events: Option<EventSender>,
    /// The OFREP budget of each key and client address (`http.ofrep_rate_limit`); `None`: unlimited.
    pub ofrep_limit: Option<KeyedRateLimit>,
    /// The groups the per-context evaluation streams share.
    pub context_groups: ContextGroups,
    /// The bytes of request bodies being read or parsed at once (`http.body_budget_bytes`).
    pub bodies: BodyBudget,
}

impl Api {
    /// Reads a request body within `http.max_body_bytes` and the body budget.
    pub async fn read_body(&self, body: Incoming, headers: &HeaderMap) -> Result<Body, ApiError> {
        request_body::read(body, headers, self.http.max_body_bytes, &self.bodies).await
    }

    /// Counts one response under its route template (every response, on either path, once).
    pub fn record(&self, template: Template, status: StatusCode, start: Instant) {
        let m = &self.metrics;
        let route = template.label();
        m.http_requests.with_label_values(&[route, status_class(status.as_u16())]).inc();
        m.http_duration.with_label_values(&[route]).observe(start.elapsed().as_secs_f64());
    }

    /// Hands a batch to the upstream forwarder without waiting: a full queue drops and counts it.
    /// Once shutdown has begun the forwarder takes nothing more: 503, rather than a 200 for a
    /// batch that would be lost.
    pub fn forward(&self, env: &Arc<str>, kind: &'static str, body: bytes::Bytes) -> Result<(), ApiError> {
        match &self.events {
            Some(tx) => tx.send(EventBatch { env: env.clone(), kind, body }).map(|_| ()).map_err(ApiError::from),
            None => Ok(()),
        }
    }
}
