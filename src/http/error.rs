//! Typed request errors, the conversions into them from the layers below (the SSE connection
//! cap, the closed event queue), and the one place they become HTTP status codes and bodies (JSON, or OFREP's shapes).

use hyper::{header, Response, StatusCode};

use super::body::ResBody;
use crate::fanout::Rejected;
use crate::upstream::QueueClosed;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or malformed Authorization header (expected \"Bearer <key>\")")]
    MissingKey,
    #[error("unknown key")]
    UnknownKey,
    #[error("this endpoint needs a server key; a client key was given")]
    ClientKeyOnServerEndpoint,
    #[error("a URL takes a client key only: a server key must not appear in URLs, which end up in logs")]
    ServerKeyInUrl,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many connections; retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("no flag data loaded yet for this environment; retry shortly")]
    NotReady,
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("the relay is reading too many request bodies at once; retry shortly")]
    Busy,
    #[error("the relay is shutting down; retry on another instance")]
    ShuttingDown,
    /// OFREP endpoints answer in OFREP's own shapes (see [`OfrepError`]).
    #[error("{0}")]
    Ofrep(#[from] OfrepError),
}

/// An OFREP error code (ofrep.md §1.5, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfrepCode {
    FlagNotFound,
    ParseError,
    InvalidContext,
}

impl OfrepCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OfrepCode::FlagNotFound => "FLAG_NOT_FOUND",
            OfrepCode::ParseError => "PARSE_ERROR",
            OfrepCode::InvalidContext => "INVALID_CONTEXT",
        }
    }
}

/// OFREP's error responses differ from the relay's generic `{"error","message"}` (ofrep.md §0.5):
/// an auth failure has no body, a single-flag failure names the flag, a bulk failure does not.
#[derive(Debug, thiserror::Error)]
pub enum OfrepError {
    /// 401 without a body.
    #[error("missing or unknown key")]
    Unauthorized,
    /// Single flag: 404 `FLAG_NOT_FOUND` or 400 with another code; `{"key","errorCode","errorDetails"}`.
    #[error("{details}")]
    Flag { key: String, code: OfrepCode, details: String },
    /// Bulk request: 400 `{"errorCode","errorDetails"}`.
    #[error("{details}")]
    Bulk { code: OfrepCode, details: String },
}

impl OfrepError {
    fn status(&self) -> StatusCode {
        match self {
            OfrepError::Unauthorized => StatusCode::UNAUTHORIZED,
            OfrepError::Flag { code: OfrepCode::FlagNotFound, .. } => StatusCode::NOT_FOUND,
            OfrepError::Flag { .. } | OfrepError::Bulk { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn into_response(self) -> Response<ResBody> {
        let body = match &self {
            OfrepError::Unauthorized => None,
            OfrepError::Flag { key, code, details } => {
                Some(serde_json::json!({ "key": key, "errorCode": code.as_str(), "errorDetails": details }))
            }
            OfrepError::Bulk { code, details } => Some(serde_json::json!({ "errorCode": code.as_str(), "errorDetails": details })),
        };
        let mut b = Response::builder().status(self.status()).header(header::CACHE_CONTROL, "no-cache");
        let body = match body {
            None => ResBody::Empty,
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                ResBody::full(serde_json::to_vec(&v).unwrap_or_default())
            }
        };
        b.body(body).unwrap_or_else(|_| Response::new(ResBody::Empty))
    }
}

/// Shutdown has begun: the event queue takes nothing more (503, retry in 1 s).
impl From<QueueClosed> for ApiError {
    fn from(_: QueueClosed) -> ApiError {
        ApiError::ShuttingDown
    }
}

/// The SSE connection cap: 503, retry in 5 s.
impl From<Rejected> for ApiError {
    fn from(_: Rejected) -> ApiError {
        ApiError::Overloaded { retry_after_secs: 5 }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::UnknownKey => StatusCode::UNAUTHORIZED,
            ApiError::ClientKeyOnServerEndpoint | ApiError::ServerKeyInUrl => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Overloaded { .. } | ApiError::NotReady | ApiError::Busy | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Ofrep(e) => e.status(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "missing_key",
            ApiError::UnknownKey => "unknown_key",
            ApiError::ClientKeyOnServerEndpoint => "server_key_required",
            ApiError::ServerKeyInUrl => "client_key_required",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::NotReady => "not_ready",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::Busy => "busy",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Ofrep(_) => "ofrep",
        }
    }

    /// `{"error": code, "message": text}` with the right status and headers.
    pub fn into_response(self) -> Response<ResBody> {
        if let ApiError::Ofrep(e) = self {
            return e.into_response();
        }
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut b = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache");
        match &self {
            ApiError::Overloaded { retry_after_secs } | ApiError::RateLimited { retry_after_secs } => {
                b = b.header(header::RETRY_AFTER, retry_after_secs.to_string());
            }
            ApiError::NotReady | ApiError::Busy | ApiError::ShuttingDown => b = b.header(header::RETRY_AFTER, "1"),
            ApiError::MissingKey | ApiError::UnknownKey => b = b.header(header::WWW_AUTHENTICATE, "Bearer"),
            _ => {}
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        b.body(ResBody::full(bytes)).unwrap_or_else(|_| Response::new(ResBody::Empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(r: &Response<ResBody>, name: header::HeaderName) -> Option<&str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn each_error_has_its_status_and_code() {
        let cases = [
            (ApiError::MissingKey, StatusCode::UNAUTHORIZED, "missing_key"),
            (ApiError::UnknownKey, StatusCode::UNAUTHORIZED, "unknown_key"),
            (ApiError::ClientKeyOnServerEndpoint, StatusCode::FORBIDDEN, "server_key_required"),
            (ApiError::ServerKeyInUrl, StatusCode::FORBIDDEN, "client_key_required"),
            (ApiError::NotFound("/x".into()), StatusCode::NOT_FOUND, "not_found"),
            (ApiError::MethodNotAllowed("PUT".into()), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (ApiError::PayloadTooLarge(1), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (ApiError::BadRequest("no".into()), StatusCode::BAD_REQUEST, "bad_request"),
            (ApiError::Overloaded { retry_after_secs: 5 }, StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            (ApiError::RateLimited { retry_after_secs: 1 }, StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            (ApiError::NotReady, StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            (ApiError::BodyTimeout, StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            (ApiError::Busy, StatusCode::SERVICE_UNAVAILABLE, "busy"),
            (ApiError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
        }
    }

    #[test]
    fn the_connection_cap_is_a_503_that_says_when_to_retry() {
        let r = ApiError::from(Rejected).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&r, header::RETRY_AFTER), Some("5"));
    }

    #[test]
    fn auth_failures_ask_for_a_bearer_key() {
        let r = ApiError::UnknownKey.into_response();
        assert_eq!(header(&r, header::WWW_AUTHENTICATE), Some("Bearer"));
        assert_eq!(header(&r, header::CONTENT_TYPE), Some("application/json"));
    }

    #[test]
    fn ofrep_errors_keep_ofreps_shapes() {
        let r = ApiError::from(OfrepError::Unauthorized).into_response();
        assert_eq!((r.status(), header(&r, header::CONTENT_TYPE)), (StatusCode::UNAUTHORIZED, None));
        let e = OfrepError::Flag { key: "f".into(), code: OfrepCode::FlagNotFound, details: "gone".into() };
        assert_eq!(ApiError::from(e).status(), StatusCode::NOT_FOUND);
        let e = OfrepError::Bulk { code: OfrepCode::InvalidContext, details: "bad".into() };
        assert_eq!(ApiError::from(e).status(), StatusCode::BAD_REQUEST);
    }
}
