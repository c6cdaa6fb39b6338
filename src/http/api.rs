//! The API listener's [`Handler`]: one dispatch over the parsed [`Route`], the CORS headers of the
//! browser-facing routes, per-request and per-connection metrics, and the Featureflow SSE fast
//! path.
//!
//! Invariants:
//! - Every response, error or not, is counted once under its route template: here for hyper's
//!   requests, in [`Handler::fast_sse`] for a stream served without hyper.
//! - A stream request that carries a body (`Content-Length` above 0, or any `Transfer-Encoding`)
//!   is answered 400 ([`stream_with_body`]): a `GET` stream has no body, and hyper would never
//!   read one while it streams, so it would not see the client go (a ghost stream).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};

use super::body::ResBody;
use super::cors;
use super::error::ApiError;
use super::route::Route;
use super::server::{Handler, Refusal};
use super::sse_fast::Head;
use super::state::Api;
use super::{featureflow, ofrep, relay, sse, thin, util};
use crate::fanout::{ConnState, SseStream};

/// Whether `route` with these headers opens an SSE stream.
fn is_stream(route: &Route, headers: &HeaderMap) -> bool {
    match route {
        Route::JsStream { .. } | Route::EvalStream { .. } | Route::OfrepStream { .. } | Route::RelayStream => true,
        Route::Features => util::wants_event_stream(headers),
        _ => false,
    }
}

/// Whether a request announces a body: `Transfer-Encoding`, or a `Content-Length` that is not 0.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(0))
}

/// A stream request with a body: malformed, answered 400 before it becomes a stream.
pub fn stream_with_body(route: &Route, headers: &HeaderMap) -> bool {
    is_stream(route, headers) && has_body(headers)
}

impl Api {
    async fn dispatch(self: &Arc<Self>, route: Route, req: Request<Incoming>, conn: Arc<ConnState>) -> Result<Response<ResBody>, ApiError> {
        if stream_with_body(&route, req.headers()) {
            return Err(ApiError::BadRequest("a stream request must not have a body".into()));
        }
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
            Route::RelayStream => relay::stream(self, &req, conn),
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

    /// A stream without hyper — the Featureflow server-SDK stream, the legacy thin-client stream,
    /// the per-context evaluation stream and the OFREP change stream — when the request is exactly that and would succeed;
    /// anything else (including every error) is answered by the normal path.
    fn fast_sse(self: &Arc<Self>, head: &Head, conn: &Arc<ConnState>) -> Option<(SseStream, Bytes)> {
        let start = Instant::now();
        // The path is the whole request target here: one with a query is left to hyper.
        if head.method != "GET" || head.path.contains('?') || self.fanout.at_capacity() {
            return None; // (at the cap the normal path answers, and counts, the 503)
        }
        let route = Route::parse(&Method::GET, &head.path);
        let (template, cors_kind) = (route.template(), route.cors());
        let stream = match route {
            Route::Features if util::wants_event_stream(&head.headers) => featureflow::stream(self, &head.headers, conn.clone()),
            Route::JsStream { key } => thin::legacy_sse(self, &head.headers, &key, conn.clone()),
            Route::EvalStream { key, user } => thin::eval_sse(self, &key, &user, conn.clone()),
            Route::OfrepStream { token } => ofrep::stream_sse(self, &head.headers, &token, conn.clone()),
            _ => return None,
        }
        .ok()?;
        let mut extra = HeaderMap::new();
        if let Some(kind) = cors_kind {
            cors::apply(&self.http.cors_allowed_origins, head.headers.get(header::ORIGIN), &mut extra, kind, false);
        }
        self.record(template, StatusCode::OK, start);
        Some((stream, sse::fast_head_with(&extra)))
    }

    fn connection_opened(&self) {
        self.metrics.http_connections.inc();
    }

    fn connection_closed(&self) {
        self.metrics.http_connections.dec();
    }

    fn connection_refused(&self, why: Refusal) {
        self.metrics.http_connections_rejected.with_label_values(&[why.label()]).inc();
    }

    fn accept_failed(&self) {
        self.metrics.http_accept_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_stream_request_that_announces_a_body_is_refused() {
        let sse = ("accept", "text/event-stream");
        let js = Route::JsStream { key: "k".into() };
        type Case = (Route, Vec<(&'static str, &'static str)>, bool);
        // (route, headers, refused)
        let table: Vec<Case> = vec![
            (js.clone(), vec![], false),
            (js.clone(), vec![("content-length", "0")], false),
            (js.clone(), vec![("content-length", "5")], true),
            (js.clone(), vec![("transfer-encoding", "chunked")], true),
            (js.clone(), vec![("content-length", "nonsense")], true),
            (Route::Features, vec![sse, ("content-length", "5")], true),
            (Route::Features, vec![("content-length", "5")], false),
            (Route::EvalStream { key: "k".into(), user: "e30=".into() }, vec![("content-length", "1")], true),
            (Route::OfrepStream { token: "t".into() }, vec![("transfer-encoding", "chunked")], true),
            (Route::OfrepBulk, vec![("content-length", "5")], false),
        ];
        for (route, h, refused) in table {
            assert_eq!(stream_with_body(&route, &headers(&h)), refused, "{route:?} {h:?}");
        }
    }
}
