//! Typed request errors and the one place they become HTTP status codes and JSON bodies.

use hyper::{header, Response, StatusCode};

use super::body::ResBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or malformed Authorization header (expected \"Bearer <key>\")")]
    MissingKey,
    #[error("unknown key")]
    UnknownKey,
    #[error("this endpoint needs a server key; a client key was given")]
    ClientKeyOnServerEndpoint,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("too many connections; retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("shutting down")]
    ShuttingDown,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::UnknownKey => StatusCode::UNAUTHORIZED,
            ApiError::ClientKeyOnServerEndpoint => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Overloaded { .. } | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "missing_key",
            ApiError::UnknownKey => "unknown_key",
            ApiError::ClientKeyOnServerEndpoint => "server_key_required",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::ShuttingDown => "shutting_down",
        }
    }

    /// `{"error": code, "message": text}` with the right status and headers.
    pub fn into_response(self) -> Response<ResBody> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut b = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache");
        match &self {
            ApiError::Overloaded { retry_after_secs } | ApiError::RateLimited { retry_after_secs } => {
                b = b.header(header::RETRY_AFTER, retry_after_secs.to_string());
            }
            ApiError::ShuttingDown => b = b.header(header::RETRY_AFTER, "1"),
            ApiError::MissingKey | ApiError::UnknownKey => b = b.header(header::WWW_AUTHENTICATE, "Bearer"),
            _ => {}
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        b.body(ResBody::full(bytes)).unwrap_or_else(|_| Response::new(ResBody::Empty))
    }
}
