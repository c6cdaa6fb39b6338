//! Connections under hostile or careless clients (issue 10, items 2 and 8): the API connection
//! cap, the one header deadline from accept, and stream requests that could leave ghosts.
//! The caps here are small and configured, so nothing exhausts the machine.

use flagrelay_testkit as support;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use support::tcp::{api_addr, closed_by_peer, idle_socket, idle_sockets, response_head, wait_open_connections};
use support::*;

const CAP: usize = 50;

/// A relay whose API listener takes at most [`CAP`] connections and waits a minute for a head
/// (so only the test frees a slot).
async fn capped_relay() -> TestRelay {
    TestRelay::builder().config(&format!("[http]\nmax_connections = {CAP}\nheader_read_timeout_ms = 60000")).start().await
}

fn rejected(scrape: &str, reason: &str) -> f64 {
    metric(scrape, "flagrelay_http_connections_rejected_total", &[("reason", reason)]).unwrap_or(-1.0)
}

// ---- the connection cap ---------------------------------------------------------------------

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
    let relay = capped_relay().await;
    let _held = idle_sockets(&relay, CAP).await;
    for _ in 0..5 {
        let mut extra = idle_socket(api_addr(&relay)).await;
        closed_by_peer(&mut extra).await;
    }
    assert_eq!(rejected(&relay.metrics().await, "cap"), 5.0);
}

#[tokio::test]
async fn at_the_cap_the_admin_listener_still_answers() {
    let relay = capped_relay().await;
    let _held = idle_sockets(&relay, CAP).await;
    let mut extra = idle_socket(api_addr(&relay)).await;
    closed_by_peer(&mut extra).await;
    let c = http();
    for path in ["/healthz", "/metrics"] {
        let r = within(path, c.get(relay.admin_url(path)).send()).await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_poll_is_refused_at_the_cap_and_served_once_a_slot_frees() {
    let relay = capped_relay().await;
    let mut held = idle_sockets(&relay, CAP).await;
    assert!(http().get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send().await.is_err(), "over the cap");
    drop(held.pop());
    wait_open_connections(&relay, CAP - 1).await;
    assert_eq!(relay.poll(SERVER_KEY).await.status(), 200);
}

#[tokio::test]
async fn the_cap_is_exported_as_a_gauge() {
    let relay = capped_relay().await;
    assert_eq!(metric(&relay.metrics().await, "flagrelay_http_connection_limit", &[]), Some(CAP as f64));
}

// ---- the header deadline --------------------------------------------------------------------

/// A relay that closes a connection without a complete request head after `ms`.
async fn relay_with_header_timeout(ms: u64) -> TestRelay {
    TestRelay::builder().config(&format!("[http]\nheader_read_timeout_ms = {ms}")).start().await
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_at_the_header_deadline_and_counted() {
    let relay = relay_with_header_timeout(300).await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    closed_by_peer(&mut sock).await;
    assert_eq!(rejected(&relay.metrics().await, "header_timeout"), 1.0);
}

#[tokio::test]
async fn a_slowloris_sending_a_header_byte_every_100ms_is_closed_at_the_header_deadline() {
    let relay = relay_with_header_timeout(500).await;
    let sock = idle_socket(api_addr(&relay)).await;
    let (mut rd, mut wr) = sock.into_split();
    let trickle = tokio::spawn(async move {
        if wr.write_all(b"GET /api/sdk/v1/features HTTP/1.1\r\nX-Slow: ").await.is_err() {
            return;
        }
        // One byte per 100 ms: never a complete head, never idle for long.
        while wr.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed_by_peer(&mut rd).await;
    trickle.abort();
    assert_eq!(rejected(&relay.metrics().await, "header_timeout"), 1.0);
}

#[tokio::test]
async fn an_idle_admin_connection_is_closed_at_the_header_deadline_too() {
    let relay = relay_with_header_timeout(300).await;
    let mut sock = idle_socket(relay.admin.trim_start_matches("http://").parse().expect("admin address")).await;
    closed_by_peer(&mut sock).await;
}

#[tokio::test]
async fn a_stream_request_head_split_across_packets_is_served_by_the_fast_path() {
    let relay = TestRelay::builder().start().await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    let parts: [&[u8]; 3] = [b"GET /api/sdk/v1/features HTTP/1.1\r\nHost: relay\r\n", b"Accept: text/event-stream\r\n", b"Authorization: Bearer "];
    for p in parts {
        within("a write", sock.write_all(p)).await.expect("write");
        // Separate segments: the relay sees the head arrive in pieces.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let head = response_head(&mut sock, format!("{SERVER_KEY}\r\n\r\n").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The fast path answers `Connection: close` without chunked framing; hyper would chunk.
    assert!(head.contains("Connection: close") && !head.contains("Transfer-Encoding"), "{head}");
}

// ---- ghost streams --------------------------------------------------------------------------

/// Every stream route's path, with the key it needs in the URL or a header.
async fn stream_requests(relay: &TestRelay) -> Vec<(String, Vec<(&'static str, String)>)> {
    let bulk = within(
        "an OFREP bulk evaluation",
        http()
            .post(relay.url("/ofrep/v1/evaluate/flags"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(r#"{"context": {"targetingKey": "u1"}}"#)
            .send(),
    )
    .await
    .expect("bulk");
    let v: serde_json::Value = within("the bulk body", bulk.json()).await.expect("json");
    let ofrep = v["eventStreams"][0]["endpoint"]["requestUri"].as_str().expect("requestUri").to_string();
    vec![
        ("/api/sdk/v1/features".into(), vec![("authorization", format!("Bearer {SERVER_KEY}"))]),
        (format!("/api/js/v1/stream/{CLIENT_KEY}"), vec![]),
        (format!("/api/v1/eval/stream/{CLIENT_KEY}/user/e30="), vec![]),
        (ofrep, vec![]),
    ]
}

#[tokio::test]
async fn a_stream_request_with_a_content_length_body_is_answered_400_with_json() {
    let relay = TestRelay::builder().start().await;
    for (path, headers) in stream_requests(&relay).await {
        let mut req = http().get(relay.url(&path)).header("accept", "text/event-stream").body("hello");
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let r = within("a stream request with a body", req.send()).await.expect("request");
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
    }
    assert_eq!(relay.status().await["sse_connections"], 0);
}

#[tokio::test]
async fn a_stream_request_with_a_chunked_body_is_answered_400() {
    let relay = TestRelay::builder().start().await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    let req = format!(
        "GET /api/js/v1/stream/{CLIENT_KEY} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    let head = response_head(&mut sock, req.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn a_stream_request_with_an_empty_body_is_still_a_stream() {
    let relay = TestRelay::builder().start().await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    let req = format!("GET /api/js/v1/stream/{CLIENT_KEY} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n");
    let head = response_head(&mut sock, req.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_client_that_closes_a_thin_client_stream_is_no_longer_counted() {
    // Heartbeats an hour apart: only reading the socket can notice the close.
    let relay = TestRelay::builder().config("[sse]\nheartbeat_secs = 3600").start().await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    let req = format!("GET /api/js/v1/stream/{CLIENT_KEY} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n\r\n");
    let head = response_head(&mut sock, req.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(relay.status().await["sse_connections"], 1);
    drop(sock);
    within("the stream to be forgotten", async {
        while relay.status().await["sse_connections"] != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_fast_path_stream_request_followed_by_more_bytes_is_closed_at_once() {
    let relay = TestRelay::builder().config("[sse]\nheartbeat_secs = 3600").start().await;
    let mut sock = idle_socket(api_addr(&relay)).await;
    let req = format!("GET /api/sdk/v1/features HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\nAuthorization: Bearer {SERVER_KEY}\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    within("a request write", sock.write_all(req.as_bytes())).await.expect("write");
    // A stream cannot answer a pipelined request, and the client is misbehaving: close.
    closed_by_peer(&mut sock).await;
    assert_eq!(relay.status().await["sse_connections"], 0);
}
