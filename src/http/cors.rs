//! CORS for the browser-facing APIs (thin client and OFREP): which origins may read a response,
//! the headers exposed to them, and the preflight answer.
//!
//! Invariant: with `*` configured any origin is allowed and no `Vary` is added; otherwise the
//! request's `Origin` is echoed only when it is configured (case-insensitively), and `Vary: Origin`
//! is always added.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::ResBody;

/// Which API a CORS header set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsKind {
    /// featureflow-client: `X-Featureflow-Client`, `Content-Type`; exposes `Retry-After`.
    Featureflow,
    /// OFREP: `If-None-Match`, `Authorization`, `X-API-Key`, `Content-Type`; exposes `ETag`, `Retry-After`.
    Ofrep,
}

/// A bare `204` preflight answer; [`apply`] adds the headers.
pub fn preflight() -> Response<ResBody> {
    let mut r = Response::new(ResBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Adds the CORS headers for `origin` (allowed origins from the config; `*` allows any): the
/// allowed origin and the exposed headers, plus, on a `preflight`, the allowed methods and headers.
pub fn apply(allowed: &[String], origin: Option<&HeaderValue>, h: &mut HeaderMap, kind: CorsKind, preflight: bool) {
    let allow = if allowed.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        origin.filter(|o| o.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))).cloned()
    };
    let Some(allow) = allow else { return };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    let (methods, headers, expose) = match kind {
        CorsKind::Featureflow => ("GET, POST, OPTIONS", "X-Featureflow-Client, Content-Type", "Retry-After"),
        CorsKind::Ofrep => ("GET, POST, OPTIONS", "If-None-Match, Authorization, X-API-Key, Content-Type", "ETag, Retry-After"),
    };
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(expose));
    if !preflight {
        return;
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(headers));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(allowed: &[&str], origin: Option<&'static str>, kind: CorsKind, preflight: bool) -> HeaderMap {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        let origin = origin.map(HeaderValue::from_static);
        let mut h = HeaderMap::new();
        apply(&allowed, origin.as_ref(), &mut h, kind, preflight);
        h
    }

    #[test]
    fn a_wildcard_allows_any_origin_without_vary() {
        let h = headers(&["*"], None, CorsKind::Featureflow, false);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "Retry-After");
        assert!(!h.contains_key(header::VARY));
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
    }

    #[test]
    fn a_configured_origin_is_echoed_and_others_get_only_vary() {
        let h = headers(&["https://App.example"], Some("https://app.example"), CorsKind::Ofrep, true);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(h[header::VARY], "Origin");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "ETag, Retry-After");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "If-None-Match, Authorization, X-API-Key, Content-Type");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "86400");
        let h = headers(&["https://app.example"], Some("https://evil.example"), CorsKind::Ofrep, true);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::VARY], "Origin");
    }
}
