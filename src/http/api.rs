//! The API listener: routing, per-request metrics, and the shared state handlers use.
//!
//! Invariant: every response, error or not, is counted once under a bounded route template.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio::sync::mpsc;

use super::auth::Keys;
use super::body::ResBody;
use super::error::ApiError;
use super::rate_limit::KeyedRateLimit;
use super::server::Handler;
use super::featureflow;
use super::{ofrep, thin};
use crate::config::HttpConfig;
use crate::fanout::eval_stream::ContextGroups;
use crate::fanout::{ConnState, Fanout};
use crate::metrics::{status_class, Metrics};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::upstream::EventBatch;

pub struct Api {
    pub store: Arc<Store>,
    pub keys: Keys,
    pub fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    pub http: HttpConfig,
    /// Where accepted SDK events go (forwarded upstream in Redis mode).
    pub events: Option<mpsc::Sender<EventBatch>>,
    pub shutdown: Shutdown,
    /// Each key's OFREP budget (`http.ofrep_rate_limit`); `None`: unlimited.
    pub ofrep_limit: Option<KeyedRateLimit>,
    /// The groups the per-context evaluation streams share.
    pub context_groups: ContextGroups,
}

/// Route templates: the only values of the `route` label.
pub mod routes {
    pub const FEATURES: &str = "/api/sdk/v1/features";
    pub const REGISTER: &str = "/api/sdk/v1/register";
    pub const EVENTS: &str = "/api/sdk/v1/events";
    pub const JS_EVALUATE: &str = "/api/js/v1/evaluate/{key}/user/{user}";
    pub const JS_EVENT: &str = "/api/js/v1/event/{key}";
    pub const JS_STREAM: &str = "/api/js/v1/stream/{key}";
    pub const EVAL_STREAM: &str = "/api/v1/eval/stream/{key}/user/{user}";
    pub const OFREP_FLAG: &str = "/ofrep/v1/evaluate/flags/{key}";
    pub const OFREP_BULK: &str = "/ofrep/v1/evaluate/flags";
    pub const OFREP_STREAM: &str = "/ofrep/v1/stream/{key}";
    pub const UNKNOWN: &str = "unmatched";
    /// Every template, for initialising the request metrics.
    pub const ALL: &[&str] = &[
        FEATURES, REGISTER, EVENTS, JS_EVALUATE, JS_EVENT, JS_STREAM, EVAL_STREAM, OFREP_FLAG, OFREP_BULK, OFREP_STREAM, UNKNOWN,
    ];
}

impl Api {
    async fn dispatch(self: &Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> (&'static str, Result<Response<ResBody>, ApiError>) {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match path.as_str() {
            routes::FEATURES => (routes::FEATURES, match method {
                Method::GET | Method::HEAD => featureflow::features(self, req, conn),
                m => Err(ApiError::MethodNotAllowed(m.to_string())),
            }),
            routes::REGISTER => (routes::REGISTER, match method {
                Method::PUT | Method::POST => Box::pin(featureflow::accept_batch(self, req, "register")).await,
                m => Err(ApiError::MethodNotAllowed(m.to_string())),
            }),
            routes::EVENTS => (routes::EVENTS, match method {
                Method::POST => Box::pin(featureflow::accept_batch(self, req, "events")).await,
                m => Err(ApiError::MethodNotAllowed(m.to_string())),
            }),
            // Request-scoped futures are boxed: hyper keeps the top-level future's allocation for
            // the connection's whole life, so it must stay small (it was 2.7 KB per SSE client).
            p if thin::owns(p) => Box::pin(thin::handle(self, req, conn)).await,
            p if ofrep::owns(p) => Box::pin(ofrep::handle(self, req, conn)).await,
            _ => (routes::UNKNOWN, Err(ApiError::NotFound(path))),
        }
    }
}

impl Handler for Api {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> Response<ResBody> {
        let start = Instant::now();
        let (route, result) = self.dispatch(req, conn).await;
        let resp = result.unwrap_or_else(ApiError::into_response);
        let m = &self.metrics;
        m.http_requests.with_label_values(&[route, status_class(resp.status().as_u16())]).inc();
        m.http_duration.with_label_values(&[route]).observe(start.elapsed().as_secs_f64());
        resp
    }

    fn has_fast_sse(&self) -> bool {
        true
    }

    /// The Featureflow server-SDK stream without hyper, when the request is exactly that and
    /// would succeed; anything else (including every error) is answered by the normal path.
    fn fast_sse(self: &Arc<Self>, head: &super::sse_fast::Head, conn: &Arc<ConnState>) -> Option<crate::fanout::SseStream> {
        let start = Instant::now();
        if head.method != "GET" || head.path != routes::FEATURES || !super::util::wants_event_stream(&head.headers) {
            return None;
        }
        let env = self.keys.server_env(&head.headers).ok()?.clone();
        if self.fanout.at_capacity() {
            return None; // the normal path answers (and counts) the 503
        }
        let opts = crate::fanout::OpenOptions {
            last_event_id: super::util::last_event_id(&head.headers),
            protocol: "featureflow",
            conn: conn.clone(),
        };
        let stream = self.fanout.open(env, Box::new(crate::fanout::FeatureflowRenderer), opts).ok()?;
        let m = &self.metrics;
        m.http_requests.with_label_values(&[routes::FEATURES, "2xx"]).inc();
        m.http_duration.with_label_values(&[routes::FEATURES]).observe(start.elapsed().as_secs_f64());
        Some(stream)
    }

    fn connection_opened(&self) {
        self.metrics.http_connections.inc();
    }

    fn connection_closed(&self) {
        self.metrics.http_connections.dec();
    }
}
