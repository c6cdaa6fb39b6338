//! The route table of the API listener: a request's method and path, parsed once into a [`Route`],
//! and the route templates that are the only values of the `route` metric label.
//!
//! Invariants:
//! - [`Route::parse`] is pure and total: every method and path is a route, an unmatched one
//!   included, and every route names its [`Template`], so each response is counted once under a
//!   bounded label.
//! - Path segments are taken as sent, except the OFREP flag key and stream token, which are
//!   percent-decoded (lossily to UTF-8, `+` is not a space).
//! - The thin-client paths (`/api/js/v1/…`, `/api/v1/eval/stream/…`) and every OFREP path
//!   (`/ofrep/…`, also with extra leading slashes) answer with CORS headers ([`Route::cors`]), errors
//!   included; on a known such path `OPTIONS` is a [`Route::Preflight`].

use hyper::Method;

use super::cors::CorsKind;
use super::util::percent_decode_lossy;

/// A route template: what the `route` label of the request metrics says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Features,
    Register,
    Events,
    JsEvaluate,
    JsEvent,
    JsStream,
    EvalStream,
    OfrepFlag,
    OfrepBulk,
    OfrepStream,
    RelayStream,
    Unmatched,
}

impl Template {
    /// Every template, for initialising the request metrics.
    pub const ALL: [Template; 12] = [
        Template::Features,
        Template::Register,
        Template::Events,
        Template::JsEvaluate,
        Template::JsEvent,
        Template::JsStream,
        Template::EvalStream,
        Template::OfrepFlag,
        Template::OfrepBulk,
        Template::OfrepStream,
        Template::RelayStream,
        Template::Unmatched,
    ];

    /// The `route` label value.
    pub fn label(self) -> &'static str {
        match self {
            Template::Features => FEATURES,
            Template::Register => REGISTER,
            Template::Events => EVENTS,
            Template::JsEvaluate => "/api/js/v1/evaluate/{key}/user/{user}",
            Template::JsEvent => "/api/js/v1/event/{key}",
            Template::JsStream => "/api/js/v1/stream/{key}",
            Template::EvalStream => "/api/v1/eval/stream/{key}/user/{user}",
            Template::OfrepFlag => "/ofrep/v1/evaluate/flags/{key}",
            Template::OfrepBulk => OFREP_BULK,
            Template::OfrepStream => "/ofrep/v1/stream/{key}",
            Template::RelayStream => RELAY_STREAM,
            Template::Unmatched => "unmatched",
        }
    }

    /// Every label value, for [`crate::metrics::Metrics::init_routes`].
    pub fn labels() -> Vec<&'static str> {
        Template::ALL.iter().map(|t| t.label()).collect()
    }
}

const FEATURES: &str = "/api/sdk/v1/features";
const REGISTER: &str = "/api/sdk/v1/register";
const EVENTS: &str = "/api/sdk/v1/events";
const RELAY_STREAM: &str = "/api/relay/v1/stream";
const JS_EVALUATE: &str = "/api/js/v1/evaluate/";
const JS_EVENT: &str = "/api/js/v1/event/";
const JS_STREAM: &str = "/api/js/v1/stream/";
const JS_PREFIX: &str = "/api/js/v1/";
const EVAL_STREAM: &str = "/api/v1/eval/stream/";
const OFREP_BULK: &str = "/ofrep/v1/evaluate/flags";
const OFREP_FLAG: &str = "/ofrep/v1/evaluate/flags/";
const OFREP_STREAM: &str = "/ofrep/v1/stream/";

/// What a request asks for. Handlers get their path parameters from here and never look at the
/// path again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET|HEAD /api/sdk/v1/features`: the ruleset poll, or its SSE stream.
    Features,
    /// `PUT|POST /api/sdk/v1/register`.
    Register,
    /// `POST /api/sdk/v1/events`.
    Events,
    /// `GET|HEAD /api/js/v1/evaluate/{key}/user/{user}` (`user` may contain `/`).
    JsEvaluate { key: String, user: String },
    /// `POST /api/js/v1/event/{key}`.
    JsEvent { key: String },
    /// `GET /api/js/v1/stream/{key}`.
    JsStream { key: String },
    /// `GET /api/v1/eval/stream/{key}/user/{user}`.
    EvalStream { key: String, user: String },
    /// `POST /ofrep/v1/evaluate/flags/{key}` (key percent-decoded).
    OfrepFlag { key: String },
    /// `POST /ofrep/v1/evaluate/flags` (a trailing slash too).
    OfrepBulk,
    /// `GET /ofrep/v1/stream/{token}` (token percent-decoded).
    OfrepStream { token: String },
    /// `GET /api/relay/v1/stream`: the stream a child relay follows.
    RelayStream,
    /// `OPTIONS` on a path that answers CORS: a bare 204 with the preflight headers.
    Preflight(Template),
    /// A known path asked with a method it does not answer (405).
    MethodNotAllowed(Template, Method),
    /// No such route (404 naming `path`).
    NotFound { template: Template, path: String, cors: Option<CorsKind> },
}

impl Route {
    /// Parses a request line's method and path (without the query).
    pub fn parse(method: &Method, path: &str) -> Route {
        let get_or_head = matches!(*method, Method::GET | Method::HEAD);
        match path {
            FEATURES => return Route::allow(get_or_head, method, Template::Features, || Route::Features),
            REGISTER => return Route::allow(matches!(*method, Method::PUT | Method::POST), method, Template::Register, || Route::Register),
            EVENTS => return Route::allow(*method == Method::POST, method, Template::Events, || Route::Events),
            RELAY_STREAM => return Route::allow(*method == Method::GET, method, Template::RelayStream, || Route::RelayStream),
            _ => {}
        }
        if path.starts_with(JS_PREFIX) || path.starts_with(EVAL_STREAM) {
            return Route::thin(method, path);
        }
        if path.trim_start_matches('/').starts_with("ofrep/") {
            return Route::ofrep(method, path);
        }
        Route::NotFound { template: Template::Unmatched, path: path.to_string(), cors: None }
    }

    /// The thin-client paths (CORS, `OPTIONS` a preflight on every known one).
    fn thin(method: &Method, path: &str) -> Route {
        let cors = Some(CorsKind::Featureflow);
        let not_found = |template| Route::NotFound { template, path: path.to_string(), cors };
        let get = *method == Method::GET;
        if let Some(rest) = path.strip_prefix(JS_EVALUATE) {
            Route::cors_allow(matches!(*method, Method::GET | Method::HEAD), method, Template::JsEvaluate, || match key_and_user(rest) {
                Some((key, user)) => Route::JsEvaluate { key: key.into(), user: user.into() },
                None => not_found(Template::JsEvaluate),
            })
        } else if let Some(key) = path.strip_prefix(JS_EVENT) {
            Route::cors_allow(*method == Method::POST, method, Template::JsEvent, || Route::JsEvent { key: key.into() })
        } else if let Some(key) = path.strip_prefix(JS_STREAM) {
            Route::cors_allow(get, method, Template::JsStream, || Route::JsStream { key: key.into() })
        } else if let Some(rest) = path.strip_prefix(EVAL_STREAM) {
            Route::cors_allow(get, method, Template::EvalStream, || match key_and_user(rest) {
                Some((key, user)) => Route::EvalStream { key: key.into(), user: user.into() },
                None => not_found(Template::EvalStream),
            })
        } else {
            not_found(Template::Unmatched)
        }
    }

    /// The OFREP paths, leading slashes collapsed (a base URL with a trailing slash).
    fn ofrep(method: &Method, path: &str) -> Route {
        let path = format!("/{}", path.trim_start_matches('/'));
        let post = *method == Method::POST;
        if path == OFREP_BULK || path == OFREP_FLAG {
            Route::cors_allow(post, method, Template::OfrepBulk, || Route::OfrepBulk)
        } else if let Some(key) = path.strip_prefix(OFREP_FLAG).filter(|k| !k.contains('/')) {
            Route::cors_allow(post, method, Template::OfrepFlag, || Route::OfrepFlag { key: percent_decode_lossy(key) })
        } else if let Some(token) = path.strip_prefix(OFREP_STREAM).filter(|k| !k.contains('/')) {
            Route::cors_allow(*method == Method::GET, method, Template::OfrepStream, || Route::OfrepStream { token: percent_decode_lossy(token) })
        } else {
            Route::NotFound { template: Template::Unmatched, path, cors: Some(CorsKind::Ofrep) }
        }
    }

    fn allow(allowed: bool, method: &Method, template: Template, route: impl FnOnce() -> Route) -> Route {
        if allowed {
            route()
        } else {
            Route::MethodNotAllowed(template, method.clone())
        }
    }

    /// Like [`Route::allow`], with `OPTIONS` a preflight.
    fn cors_allow(allowed: bool, method: &Method, template: Template, route: impl FnOnce() -> Route) -> Route {
        if allowed {
            route()
        } else if *method == Method::OPTIONS {
            Route::Preflight(template)
        } else {
            Route::MethodNotAllowed(template, method.clone())
        }
    }

    /// The template this route is counted under.
    pub fn template(&self) -> Template {
        match self {
            Route::Features => Template::Features,
            Route::Register => Template::Register,
            Route::Events => Template::Events,
            Route::JsEvaluate { .. } => Template::JsEvaluate,
            Route::JsEvent { .. } => Template::JsEvent,
            Route::JsStream { .. } => Template::JsStream,
            Route::EvalStream { .. } => Template::EvalStream,
            Route::OfrepFlag { .. } => Template::OfrepFlag,
            Route::OfrepBulk => Template::OfrepBulk,
            Route::OfrepStream { .. } => Template::OfrepStream,
            Route::RelayStream => Template::RelayStream,
            Route::Preflight(t) | Route::MethodNotAllowed(t, _) | Route::NotFound { template: t, .. } => *t,
        }
    }

    /// Which CORS headers every response on this route carries, if any.
    pub fn cors(&self) -> Option<CorsKind> {
        match self {
            Route::NotFound { cors, .. } => *cors,
            _ => match self.template() {
                Template::JsEvaluate | Template::JsEvent | Template::JsStream | Template::EvalStream => Some(CorsKind::Featureflow),
                Template::OfrepFlag | Template::OfrepBulk | Template::OfrepStream => Some(CorsKind::Ofrep),
                Template::Features | Template::Register | Template::Events | Template::RelayStream | Template::Unmatched => None,
            },
        }
    }
}

/// `{key}/user/{segment}` → (key, segment).
fn key_and_user(rest: &str) -> Option<(&str, &str)> {
    let (key, tail) = rest.split_once('/')?;
    let user = tail.strip_prefix("user/")?;
    Some((key, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: &str, path: &str) -> Route {
        Route::parse(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn server_sdk_paths_take_their_methods_and_nothing_else() {
        let cases = [
            ("GET", "/api/sdk/v1/features", Route::Features),
            ("HEAD", "/api/sdk/v1/features", Route::Features),
            ("POST", "/api/sdk/v1/features", Route::MethodNotAllowed(Template::Features, Method::POST)),
            ("OPTIONS", "/api/sdk/v1/features", Route::MethodNotAllowed(Template::Features, Method::OPTIONS)),
            ("PUT", "/api/sdk/v1/register", Route::Register),
            ("POST", "/api/sdk/v1/register", Route::Register),
            ("GET", "/api/sdk/v1/register", Route::MethodNotAllowed(Template::Register, Method::GET)),
            ("POST", "/api/sdk/v1/events", Route::Events),
            ("PUT", "/api/sdk/v1/events", Route::MethodNotAllowed(Template::Events, Method::PUT)),
            ("GET", "/api/relay/v1/stream", Route::RelayStream),
            ("POST", "/api/relay/v1/stream", Route::MethodNotAllowed(Template::RelayStream, Method::POST)),
        ];
        for (m, p, want) in cases {
            assert_eq!(parse(m, p), want, "{m} {p}");
            assert_eq!(want.cors(), None, "{m} {p}");
        }
    }

    #[test]
    fn thin_client_paths_carry_their_parameters_as_sent() {
        let cases = [
            ("GET", "/api/js/v1/evaluate/k/user/eyJ/x%3D", Route::JsEvaluate { key: s("k"), user: s("eyJ/x%3D") }),
            ("HEAD", "/api/js/v1/evaluate/k/user/u", Route::JsEvaluate { key: s("k"), user: s("u") }),
            ("POST", "/api/js/v1/event/k%20", Route::JsEvent { key: s("k%20") }),
            ("GET", "/api/js/v1/stream/k", Route::JsStream { key: s("k") }),
            ("GET", "/api/v1/eval/stream/k/user/u", Route::EvalStream { key: s("k"), user: s("u") }),
        ];
        for (m, p, want) in cases {
            assert_eq!(parse(m, p), want, "{m} {p}");
            assert_eq!(want.cors(), Some(CorsKind::Featureflow), "{m} {p}");
        }
    }

    #[test]
    fn thin_client_paths_answer_options_as_a_preflight_and_other_methods_405() {
        assert_eq!(parse("OPTIONS", "/api/js/v1/evaluate/k/user/u"), Route::Preflight(Template::JsEvaluate));
        assert_eq!(parse("OPTIONS", "/api/js/v1/event/k"), Route::Preflight(Template::JsEvent));
        assert_eq!(parse("OPTIONS", "/api/v1/eval/stream/k"), Route::Preflight(Template::EvalStream));
        assert_eq!(parse("POST", "/api/js/v1/stream/k"), Route::MethodNotAllowed(Template::JsStream, Method::POST));
        assert_eq!(parse("GET", "/api/js/v1/event/k"), Route::MethodNotAllowed(Template::JsEvent, Method::GET));
    }

    #[test]
    fn a_thin_client_path_without_a_user_is_not_found_under_its_template() {
        let r = parse("GET", "/api/js/v1/evaluate/k");
        assert_eq!(r, Route::NotFound { template: Template::JsEvaluate, path: s("/api/js/v1/evaluate/k"), cors: Some(CorsKind::Featureflow) });
        let r = parse("GET", "/api/v1/eval/stream/k/u");
        assert_eq!(r.template(), Template::EvalStream);
        let r = parse("OPTIONS", "/api/js/v1/nope");
        assert_eq!(r, Route::NotFound { template: Template::Unmatched, path: s("/api/js/v1/nope"), cors: Some(CorsKind::Featureflow) });
    }

    #[test]
    fn ofrep_paths_decode_the_key_and_collapse_leading_slashes() {
        let cases = [
            ("POST", "/ofrep/v1/evaluate/flags", Route::OfrepBulk),
            ("POST", "/ofrep/v1/evaluate/flags/", Route::OfrepBulk),
            ("POST", "//ofrep/v1/evaluate/flags", Route::OfrepBulk),
            ("POST", "/ofrep/v1/evaluate/flags/a%2Fb+c", Route::OfrepFlag { key: s("a/b+c") }),
            ("POST", "/ofrep/v1/evaluate/flags/%zz", Route::OfrepFlag { key: s("%zz") }),
            ("GET", "/ofrep/v1/stream/st-1%41", Route::OfrepStream { token: s("st-1A") }),
            ("OPTIONS", "/ofrep/v1/evaluate/flags/k", Route::Preflight(Template::OfrepFlag)),
            ("GET", "/ofrep/v1/evaluate/flags", Route::MethodNotAllowed(Template::OfrepBulk, Method::GET)),
            ("POST", "/ofrep/v1/stream/t", Route::MethodNotAllowed(Template::OfrepStream, Method::POST)),
        ];
        for (m, p, want) in cases {
            assert_eq!(parse(m, p), want, "{m} {p}");
            assert_eq!(want.cors(), Some(CorsKind::Ofrep), "{m} {p}");
        }
    }

    #[test]
    fn unknown_ofrep_paths_are_not_found_with_the_normalised_path() {
        let r = parse("POST", "//ofrep/v1/evaluate/flags/a/b");
        assert_eq!(r, Route::NotFound { template: Template::Unmatched, path: s("/ofrep/v1/evaluate/flags/a/b"), cors: Some(CorsKind::Ofrep) });
    }

    #[test]
    fn everything_else_is_unmatched_without_cors() {
        for p in ["/", "/api/sdk/v1/features/", "/api/sdk/v1/features?x=1", "/metrics", "/ofrepx"] {
            assert_eq!(parse("GET", p), Route::NotFound { template: Template::Unmatched, path: s(p), cors: None }, "{p}");
        }
    }

    #[test]
    fn labels_are_the_route_templates() {
        assert_eq!(
            Template::labels(),
            [
                "/api/sdk/v1/features",
                "/api/sdk/v1/register",
                "/api/sdk/v1/events",
                "/api/js/v1/evaluate/{key}/user/{user}",
                "/api/js/v1/event/{key}",
                "/api/js/v1/stream/{key}",
                "/api/v1/eval/stream/{key}/user/{user}",
                "/ofrep/v1/evaluate/flags/{key}",
                "/ofrep/v1/evaluate/flags",
                "/ofrep/v1/stream/{key}",
                "/api/relay/v1/stream",
                "unmatched",
            ]
        );
    }
}
