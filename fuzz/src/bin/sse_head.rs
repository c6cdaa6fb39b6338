//! Fuzz target `sse_head`: a connection's first bytes (at most `PEEK_BYTES`, as the first-head
//! reader takes them) through `first_head::progress` and `sse_fast::parse_head`, then what the
//! fast path does with a head: the route table (`Route::parse`), `wants_event_stream`,
//! `last_event_id` and the key extractors (`bearer`, `ofrep_key`).
//!
//! Invariants: a parsed head is a complete one of the same length; a complete head's own bytes
//! are complete at that length and no shorter prefix completes (a head in several packets is
//! seen whole at the same point); an invalid buffer never parses; every route names one of the
//! templates; only the exact features path is the features route; an extracted key is a
//! trimmed, non-empty part of a header value.

use flagrelay::fuzzing::{bearer, last_event_id, ofrep_key, parse_head, progress, wants_event_stream, Progress, Route, Template, PEEK_BYTES};
use hyper::Method;

fn check_route(method: &Method, path: &str) {
    let route = Route::parse(method, path);
    assert!(Template::labels().contains(&route.template().label()), "{route:?}");
    if *method == Method::GET {
        assert_eq!(route == Route::Features, path == "/api/sdk/v1/features", "{path:?} -> {route:?}");
    }
}

fn run(data: &[u8]) {
    let buf = &data[..data.len().min(PEEK_BYTES)];
    let p = progress(buf);
    if let Progress::Complete(n) = p {
        assert!(n <= buf.len());
        assert_eq!(progress(&buf[..n]), Progress::Complete(n));
        for k in [n - 1, n / 2, n.saturating_sub(2), 0] {
            assert!(!matches!(progress(&buf[..k]), Progress::Complete(_)), "a {n}-byte head complete at {k}");
        }
    }
    let head = parse_head(buf);
    let Some(h) = head else {
        if let Ok(s) = std::str::from_utf8(buf) {
            check_route(&Method::GET, s);
        }
        return;
    };
    assert_eq!(p, Progress::Complete(h.len), "parsed a head progress calls {p:?}");
    assert!(!h.method.is_empty());
    check_route(&Method::GET, &h.path);
    if let Ok(m) = Method::from_bytes(h.method.as_bytes()) {
        check_route(&m, &h.path);
    }
    let _ = wants_event_stream(&h.headers);
    let _ = last_event_id(&h.headers);
    for key in [bearer(&h.headers), ofrep_key(&h.headers)].into_iter().flatten() {
        assert!(!key.is_empty() && key.trim() == key, "{key:?}");
        let from_header = h.headers.iter().filter_map(|(_, v)| v.to_str().ok()).any(|v| v.contains(key));
        assert!(from_header, "{key:?} is in no header");
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
