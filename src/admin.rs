//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! Invariants: `/healthz` is 200 while the process serves; `/readyz` is 200 once every configured
//! environment has loaded data and until shutdown starts (it stays ready through an upstream
//! outage: see README, "Readiness during a Redis outage"); `/status` never shows a key.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::fanout::{ConnState, Fanout};
use crate::http::body::ResBody;
use crate::http::error::ApiError;
use crate::http::server::Handler;
use crate::http::util;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;

pub struct Admin {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub fanout: Arc<Fanout>,
    /// The relay's (API) shutdown: readiness drops as soon as it starts.
    pub shutdown: Shutdown,
    pub started: SystemTime,
    pub upstream_kind: &'static str,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Admin {
    fn readiness(&self) -> (bool, String) {
        if self.shutdown.is_triggered() {
            return (false, "shutting down".into());
        }
        let missing: Vec<&str> =
            self.store.envs().iter().filter(|e| !e.snapshot().loaded).map(|e| e.id.as_ref()).collect();
        if missing.is_empty() {
            (true, "ready".into())
        } else {
            (false, format!("no data loaded yet for: {}", missing.join(", ")))
        }
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let now = SystemTime::now();
        let envs: Vec<Value> = self
            .store
            .envs()
            .iter()
            .map(|e| {
                let snap = e.snapshot();
                let st = e.status();
                let age = st.confirmed_at.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs_f64());
                if let Some(a) = age {
                    self.metrics.data_age_seconds.with_label_values(&[&e.id]).set(a);
                }
                let mut source = json!({
                    "kind": self.upstream_kind,
                    "state": st.state,
                    "since": rfc3339(st.since),
                    "detail": st.detail,
                    "last_error": st.last_error,
                    "last_error_at": st.last_error_at.map(rfc3339),
                    "epoch": st.epoch,
                    "stale": st.stale,
                    "confirmed_at": st.confirmed_at.map(rfc3339),
                    "data_age_seconds": age,
                });
                // Redis: the node serving the environment; Redis Cluster: the cluster's state too.
                for (k, v) in [("server", &st.server), ("cluster_state", &st.cluster_state)] {
                    if let (Some(v), Some(o)) = (v, source.as_object_mut()) {
                        o.insert(k.into(), json!(v));
                    }
                }
                // Relay upstream: the parent, the hop count, the lag.
                if let (Some(r), Some(o)) = (&st.relay, source.as_object_mut()) {
                    o.insert("relay".into(), json!(r));
                }
                json!({
                    "id": e.id.as_ref(),
                    "loaded": snap.loaded,
                    "revision": snap.revision,
                    "features": snap.features.len(),
                    "etag": snap.encoded().etag.as_ref(),
                    "last_change": snap.last_change.as_ref().map(|_| rfc3339(snap.published_at)),
                    "source": source,
                })
            })
            .collect();
        let (ready, reason) = self.readiness();
        json!({
            "ready": ready,
            "reason": reason,
            "started_at": rfc3339(self.started),
            "now_ms": unix_ms(now),
            "sse_connections": self.fanout.open_streams(),
            "environments": envs,
        })
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: Arc<ConnState>) -> Response<ResBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::MethodNotAllowed(req.method().to_string()).into_response();
        }
        match req.uri().path() {
            "/healthz" => util::json(StatusCode::OK, &br#"{"status":"ok"}"#[..]),
            "/readyz" => {
                let (ready, reason) = self.readiness();
                let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                util::json_value(status, &json!({ "ready": ready, "reason": reason }))
            }
            "/status" => util::json_value(StatusCode::OK, &self.status()),
            "/metrics" => {
                // Refresh the data-age gauges before rendering.
                let _ = self.status();
                let mut r = Response::new(ResBody::full(self.metrics.render()));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            p => ApiError::NotFound(p.to_string()).into_response(),
        }
    }
}
