//! The API listener's [`Handler`]: one dispatch over the parsed [`Route`], the CORS headers of the
//! browser-facing routes, per-request metrics, and the Featureflow SSE fast path.
//!
//! Invariant: every response, error or not, is counted once under its route template: here for
//! hyper's requests, in [`Handler::fast_sse`] for a stream served without hyper.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::body::ResBody;
use super::cors;
use super::error::ApiError;
use super::route::{Route, Template};
use super::server::Handler;
use super::sse_fast::Head;
use super::state::Api;
use super::{featureflow, ofrep, thin, util};
use crate::fanout::{ConnState, SseStream};

impl Api {
    async fn dispatch(self: &Arc<Self>, route: Route, req: Request<Incoming>, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
        // Request-scoped futures are boxed: they are freed when the response is ready, while the
        // connection (and an SSE body) lives on.
        match route {
            Route::Features => featureflow::features(self, &req, conn),
            Route::Register => Box::pin(featureflow::accept_batch(self, req, "register")).await,
            Route::Events => Box::pin(featureflow::accept_batch(self, req, "events")).await,
            Route::JsEvaluate { key, user } => thin::evaluate(self, &req, &key, &user),
            Route::JsEvent { key } => Box::pin(thin::client_events(self, req, &key)).await,
            Route::JsStream { key } => thin::legacy_stream(self, &req, &key, conn),
            Route::EvalStream { key, user } => thin::eval_stream(self, &key, &user, conn),
            Route::OfrepFlag { key } => Box::pin(ofrep::single(self, req, &key, &conn)).await,
            Route::OfrepBulk => Box::pin(ofrep::bulk(self, req, &conn)).await,
            Route::OfrepStream { token } => ofrep::stream(self, &req, &token, conn),
            Route::Preflight(_) => Ok(cors::preflight()),
            Route::MethodNotAllowed(_, m) => Err(ApiError::MethodNotAllowed(m.to_string())),
            Route::NotFound { path, .. } => Err(ApiError::NotFound(path)),
        }
    }
}

impl Handler for Api {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> Response<ResBody> {
        let start = Instant::now();
        let route = Route::parse(req.method(), req.uri().path());
        let template = route.template();
        let cors_kind = route.cors();
        let origin = cors_kind.and_then(|_| req.headers().get(header::ORIGIN).cloned());
        let preflight = req.method() == Method::OPTIONS;
        let mut resp = self.dispatch(route, req, conn).await.unwrap_or_else(ApiError::into_response);
        if let Some(kind) = cors_kind {
            cors::apply(&self.http.cors_allowed_origins, origin.as_ref(), resp.headers_mut(), kind, preflight);
        }
        self.record(template, resp.status(), start);
        resp
    }

    fn has_fast_sse(&self) -> bool {
        true
    }

    /// The Featureflow server-SDK stream without hyper, when the request is exactly that and
    /// would succeed; anything else (including every error) is answered by the normal path.
    fn fast_sse(self: &Arc<Self>, head: &Head, conn: &Arc<ConnState>) -> Option<SseStream> {
        let start = Instant::now();
        // The path is the whole request target here: one with a query is left to hyper.
        if head.method != "GET" || Route::parse(&Method::GET, &head.path) != Route::Features || !util::wants_event_stream(&head.headers) {
            return None;
        }
        if self.fanout.at_capacity() {
            return None; // the normal path answers (and counts) the 503
        }
        let stream = featureflow::stream(self, &head.headers, conn.clone()).ok()?;
        self.record(Template::Features, StatusCode::OK, start);
        Some(stream)
    }

    fn connection_opened(&self) {
        self.metrics.http_connections.inc();
    }

    fn connection_closed(&self) {
        self.metrics.http_connections.dec();
    }
}
