//! Fan-out behaviour (issue: fan-out at scale): resume with Last-Event-ID inside and beyond the
//! replay ring, deletions for resuming clients, clients ahead of the relay, slow and stalled
//! clients, the connection cap, the shutdown drain, and the maximum connection age.

use flagrelay_testkit as support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;

fn flags(prod: Value) -> Value {
    json!({"production": prod, "staging": {}})
}

fn base() -> Value {
    json!({"a": simple_feature("a", "on"), "b": simple_feature("b", "on"), "c": simple_feature("c", "on")})
}

async fn resume(relay: &TestRelay, last_id: &str) -> SseClient {
    SseClient::connect(
        &relay.url("/api/sdk/v1/features"),
        &[("authorization", &format!("Bearer {SERVER_KEY}")), ("last-event-id", last_id)],
    )
    .await
}

/// Writes `prod` and waits until a watcher stream sees the change land.
async fn change(relay: &TestRelay, watcher: &mut SseClient, prod: &Value) -> SseEvent {
    relay.write_flags(&flags(prod.clone()));
    watcher.expect().await
}

#[tokio::test]
async fn a_client_resuming_inside_the_ring_gets_one_coalesced_catch_up_with_deletions() {
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    let mut client = relay.sse(SERVER_KEY).await;
    let first = client.expect().await;
    let last_id = first.id.clone().unwrap();
    client.close();

    let mut watcher = relay.sse(SERVER_KEY).await;
    watcher.expect().await;
    let mut p = base();
    p["a"] = simple_feature("a", "off");
    change(&relay, &mut watcher, &p).await;
    p.as_object_mut().unwrap().remove("b");
    change(&relay, &mut watcher, &p).await;
    p["a"] = simple_feature("a", "on");
    p["d"] = simple_feature("d", "off");
    let last = change(&relay, &mut watcher, &p).await;

    let mut resumed = resume(&relay, &last_id).await;
    let upd = resumed.expect().await;
    assert_eq!(upd.event, "features.updated");
    let data = upd.json();
    let mut keys: Vec<_> = data.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "d"], "only the touched features, not the full state");
    assert_eq!(data["a"]["rules"][0]["variantSplits"][0]["variantKey"], "on", "the latest version");
    let del = resumed.expect().await;
    assert_eq!(del.event, "features.deleted");
    assert_eq!(del.json(), json!(["b"]));
    assert_eq!(del.id, last.id, "the catch-up ends at the current revision");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sse_resumes_total", &[("env", "production"), ("outcome", "replayed")]), Some(1.0));
}

#[tokio::test]
async fn a_client_resuming_at_the_current_revision_gets_nothing_but_new_changes() {
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    let mut client = relay.sse(SERVER_KEY).await;
    let id = client.expect().await.id.unwrap();
    client.close();
    let mut resumed = resume(&relay, &id).await;
    let mut p = base();
    p["c"] = simple_feature("c", "off");
    relay.write_flags(&flags(p));
    let e = resumed.expect().await;
    assert_eq!(e.json().as_object().unwrap().keys().collect::<Vec<_>>(), vec!["c"]);
}

#[tokio::test]
async fn a_client_resuming_beyond_the_ring_gets_full_state_and_the_deletions() {
    let relay = TestRelay::builder().flags(flags(base())).config("[sse]\nreplay_revisions = 2").start().await;
    let mut client = relay.sse(SERVER_KEY).await;
    let last_id = client.expect().await.id.unwrap();
    client.close();
    let mut watcher = relay.sse(SERVER_KEY).await;
    watcher.expect().await;
    let mut p = base();
    p.as_object_mut().unwrap().remove("b");
    change(&relay, &mut watcher, &p).await;
    for i in 0..4 {
        p["c"] = simple_feature("c", if i % 2 == 0 { "off" } else { "on" });
        change(&relay, &mut watcher, &p).await;
    }
    let mut resumed = resume(&relay, &last_id).await;
    let full = resumed.expect().await;
    assert_eq!(full.event, "features.updated");
    let mut keys: Vec<_> = full.json().as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "c"], "full state");
    let del = resumed.expect().await;
    assert_eq!(del.event, "features.deleted");
    assert_eq!(del.json(), json!(["b"]), "tombstones reach upsert-only clients");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sse_resumes_total", &[("env", "production"), ("outcome", "full_state")]), Some(1.0));
}

#[tokio::test]
async fn a_client_ahead_of_the_relay_gets_full_state_with_the_deletions_and_is_counted() {
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    let mut watcher = relay.sse(SERVER_KEY).await;
    let id: u64 = watcher.expect().await.id.unwrap().parse().unwrap();
    let mut p = base();
    p.as_object_mut().unwrap().remove("b");
    change(&relay, &mut watcher, &p).await;
    // An id from a replica that is further along.
    let mut resumed = resume(&relay, &(id + 1000).to_string()).await;
    let full = resumed.expect().await;
    let mut keys: Vec<_> = full.json().as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "c"]);
    let del = resumed.expect().await;
    assert_eq!(del.event, "features.deleted");
    assert_eq!(del.json(), json!(["b"]), "an upsert-only SDK must learn what it may still hold");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sse_resumes_total", &[("env", "production"), ("outcome", "ahead")]), Some(1.0));
}

#[tokio::test]
async fn an_unparseable_last_event_id_gets_full_state_with_the_deletions() {
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    let mut watcher = relay.sse(SERVER_KEY).await;
    watcher.expect().await;
    let mut p = base();
    p.as_object_mut().unwrap().remove("c");
    change(&relay, &mut watcher, &p).await;
    let mut resumed = resume(&relay, "not-a-revision").await;
    assert_eq!(resumed.expect().await.json().as_object().unwrap().len(), 2);
    assert_eq!(resumed.expect().await.json(), json!(["c"]));
}

#[tokio::test]
async fn a_client_of_a_previous_relay_process_never_gets_a_partial_replay() {
    // Revisions of a file-sourced relay start from its start time: the ids of an earlier
    // process (or another replica started earlier) are older than this process's history.
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    let mut c = relay.sse(SERVER_KEY).await;
    let id: u64 = c.expect().await.id.unwrap().parse().unwrap();
    let earlier = id - 5_000_000; // five seconds earlier, in µs
    let mut p = base();
    p.as_object_mut().unwrap().remove("a");
    change(&relay, &mut c, &p).await;
    let mut resumed = resume(&relay, &earlier.to_string()).await;
    let full = resumed.expect().await;
    assert_eq!(full.event, "features.updated");
    assert_eq!(full.json().as_object().unwrap().len(), 2, "full state, not a replay");
    assert_eq!(resumed.expect().await.json(), json!(["a"]));
}

/// Opens an SSE request on a raw socket with a tiny receive buffer and never reads it.
async fn stalled_client(relay: &TestRelay, rcvbuf: u32) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = relay.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(rcvbuf).unwrap();
    let mut s = within("connect", sock.connect(addr)).await.unwrap();
    let req = format!("GET /api/sdk/v1/features HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {SERVER_KEY}\r\n\r\n");
    within("write", s.write_all(req.as_bytes())).await.unwrap();
    s
}

fn big_feature(key: &str, n: usize) -> Value {
    big_feature_sized(key, n, 32 * 1024)
}

fn big_feature_sized(key: &str, n: usize, size: usize) -> Value {
    let mut f = simple_feature(key, "on");
    f["padding"] = json!(format!("{n}-{}", "x".repeat(size)));
    f
}

#[tokio::test]
async fn a_stalled_client_does_not_stop_a_reading_client_and_is_disconnected_when_over_budget() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nclient_buffer_bytes = 8192\nsocket_send_buffer_bytes = 65536\nslow_client_timeout_ms = 1000")
        .start()
        .await;
    let _stalled = stalled_client(&relay, 4096).await;
    let mut reader = relay.sse(SERVER_KEY).await;
    reader.expect().await;
    // ~8 MB of changes: far more than the stalled client's socket buffers and budget.
    let mut p = base();
    let mut last_id = None;
    for i in 0..250 {
        p["big"] = big_feature("big", i);
        relay.write_flags(&flags(p.clone()));
        // The reading client keeps up with every change.
        let e = reader.expect().await;
        assert!(e.data.contains(&format!("\"{i}-x")), "change {i} reached the reader");
        last_id = e.id;
    }
    // Polling agrees with the reader's last event.
    let body: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    assert!(body["big"]["padding"].as_str().unwrap().starts_with("249-"));
    assert!(last_id.is_some());
    within("the stalled client to be disconnected and counted", async {
        loop {
            let m = relay.metrics().await;
            if metric(&m, "flagrelay_sse_slow_disconnects_total", &[("env", "production")]) == Some(1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within("the stalled stream to unregister", async {
        loop {
            let m = relay.metrics().await;
            if metric(&m, "flagrelay_sse_clients", &[("env", "production"), ("protocol", "featureflow")]) == Some(1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_lagging_client_catches_up_with_the_latest_state_not_the_backlog() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nclient_buffer_bytes = 8192\nsocket_send_buffer_bytes = 65536\nslow_client_timeout_ms = 60000")
        .start()
        .await;
    let mut watcher = relay.sse(SERVER_KEY).await;
    watcher.expect().await;
    // A client that does not read while 120 changes of ~64 KB happen (more than the kernel's
    // socket buffers hold), then drains its socket.
    // (A receive buffer of at least one loopback MSS, so the window can reopen promptly.)
    let mut lagger = stalled_client(&relay, 256 * 1024).await;
    let mut p = base();
    for i in 0..120 {
        p["big"] = big_feature_sized("big", i, 64 * 1024);
        change(&relay, &mut watcher, &p).await;
    }
    let mut raw = Vec::new();
    let r = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut lagger, &mut buf).await.unwrap();
            assert!(n > 0, "stream ended early");
            raw.extend_from_slice(&buf[..n]);
            if find(&raw, b"\"119-x").is_some() {
                return;
            }
        }
    })
    .await;
    if r.is_err() {
        let text = String::from_utf8_lossy(&raw);
        let short: String = text.chars().filter(|c| *c != 'x').collect();
        panic!("the lagging client never reached the latest version; it read {} bytes: {}", raw.len(), &short[short.len().saturating_sub(3000)..]);
    }
    let frames = count(&raw, b"event: features.updated");
    assert!(frames < 121, "caught up with the latest state, not a backlog of every change ({frames} frames)");
    let m = relay.metrics().await;
    assert!(metric(&m, "flagrelay_sse_lagged_total", &[("env", "production")]).unwrap_or(0.0) >= 1.0);
    assert!(metric(&m, "flagrelay_sse_coalesced_total", &[("env", "production")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(metric(&m, "flagrelay_sse_slow_disconnects_total", &[("env", "production")]).unwrap_or(0.0), 0.0);
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn count(h: &[u8], n: &[u8]) -> usize {
    h.windows(n.len()).filter(|w| *w == n).count()
}

#[tokio::test]
async fn the_connection_cap_answers_503_with_retry_after() {
    let relay = TestRelay::builder().flags(flags(base())).config("[sse]\nmax_connections = 1").start().await;
    let mut first = relay.sse(SERVER_KEY).await;
    first.expect().await;
    let second = relay.sse(SERVER_KEY).await;
    assert_eq!(second.status, 503);
    assert!(second.headers.contains_key("retry-after"));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sse_rejected_total", &[("env", "production")]), Some(1.0));
    // Polling is not affected by the SSE cap.
    assert_eq!(relay.poll(SERVER_KEY).await.status(), 200);
    drop(first);
    within("a slot to free up", async {
        loop {
            let mut c = relay.sse(SERVER_KEY).await;
            if c.status == 200 {
                c.expect().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_drain_closes_every_client_with_a_randomised_retry_hint_within_the_window() {
    let relay = TestRelay::builder().flags(flags(base())).config("[sse]\ndrain_window_secs = 1\nretry_ms = 500").start().await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = relay.sse(SERVER_KEY).await;
        c.expect().await;
        clients.push(c);
    }
    for c in &mut clients {
        c.retry = None; // forget the hint from the start of the stream
    }
    let stop = tokio::spawn(relay.stop());
    let mut hints = Vec::new();
    for c in &mut clients {
        c.wait_end(Duration::from_secs(5)).await;
        let r = c.retry.expect("a retry hint sent at the close");
        assert!((500..=1500).contains(&r), "retry hint {r} within retry_ms..retry_ms+window");
        hints.push(r);
    }
    hints.sort();
    hints.dedup();
    assert!(hints.len() > 1, "the hints are spread, not one value for everyone: {hints:?}");
    within("the relay to stop", stop).await.unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_the_deadline_because_of_a_stalled_client() {
    // A deadline far beyond the harness's stop timeout: only dropping the stalled connection
    // after the drain window can end the shutdown in time.
    let relay = TestRelay::builder()
        .shutdown_timeout(600)
        .flags(flags(base()))
        .config("[sse]\nclient_buffer_bytes = 8192\nsocket_send_buffer_bytes = 65536\nslow_client_timeout_ms = 600000\ndrain_window_secs = 1")
        .start()
        .await;
    let _stalled = stalled_client(&relay, 4096).await;
    let mut watcher = relay.sse(SERVER_KEY).await;
    watcher.expect().await;
    let mut p = base();
    for i in 0..200 {
        p["big"] = big_feature("big", i);
        change(&relay, &mut watcher, &p).await;
    }
    within("the relay to stop with a stalled client", relay.stop()).await;
}

#[tokio::test]
async fn max_age_closes_the_stream_and_the_client_resumes_without_loss() {
    let relay = TestRelay::builder().flags(flags(base())).config("[sse]\nmax_connection_age_secs = 1\nretry_ms = 4000").start().await;
    let mut client = relay.sse(SERVER_KEY).await;
    client.expect().await;
    client.retry = None;
    client.wait_end(Duration::from_secs(5)).await;
    assert_eq!(client.retry, Some(1000), "a short retry hint at the max-age close");
    let last_id = client.last_id.clone().unwrap();
    let mut p = base();
    p.as_object_mut().unwrap().remove("a");
    relay.write_flags(&flags(p));
    relay.wait_status("production", "the change to land", |s| s["features"] == 2).await;
    let mut resumed = resume(&relay, &last_id).await;
    let del = resumed.expect().await;
    assert_eq!(del.event, "features.deleted");
    assert_eq!(del.json(), json!(["a"]));
    let m = relay.metrics().await;
    assert!(metric(&m, "flagrelay_sse_max_age_closes_total", &[("env", "production")]).unwrap() >= 1.0);
}

#[tokio::test]
async fn streams_work_on_the_native_path_and_on_the_general_http_path() {
    let relay = TestRelay::builder().flags(flags(base())).start().await;
    // A plain SSE GET is served natively: no chunked framing, the body is the frames.
    let mut fast = relay.sse(SERVER_KEY).await;
    assert_eq!(fast.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert!(fast.headers.get("transfer-encoding").is_none());
    // A request the native path does not take (it announces a body) goes through hyper.
    let mut general = SseClient::connect(
        &relay.url("/api/sdk/v1/features"),
        &[("authorization", &format!("Bearer {SERVER_KEY}")), ("content-length", "0")],
    )
    .await;
    assert_eq!(general.status, 200);
    assert_eq!(general.headers.get("transfer-encoding").map(|v| v.to_str().unwrap()), Some("chunked"));
    for c in [&mut fast, &mut general] {
        assert_eq!(c.expect().await.json().as_object().unwrap().len(), 3);
    }
    let mut p = base();
    p["a"] = simple_feature("a", "off");
    relay.write_flags(&flags(p));
    for c in [&mut fast, &mut general] {
        let e = c.expect().await;
        assert_eq!(e.json().as_object().unwrap().keys().collect::<Vec<_>>(), vec!["a"]);
    }
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_http_requests_total", &[("route", "/api/sdk/v1/features"), ("status", "2xx")]), Some(2.0));
}
