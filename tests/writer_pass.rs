//! The writer pass (issue 12): server-SDK streams on the native path get each change from one
//! non-blocking pass per shard; a socket that takes less than a whole frame leaves the pass with
//! the rest of that frame, finishes it, and catches up with the coalesced latest state; frames
//! are never torn, interleaved, lost or sent twice.

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::tcp::api_addr;
use support::*;

const PATH: &str = "/api/sdk/v1/features";

fn flags(prod: Value) -> Value {
    json!({"production": prod, "staging": {}})
}

fn base() -> Value {
    json!({"a": simple_feature("a", "on"), "b": simple_feature("b", "on"), "c": simple_feature("c", "on")})
}

/// A feature whose `padding` starts with `"{n}-"` and is `size` bytes long.
fn padded(key: &str, n: usize, size: usize) -> Value {
    let mut f = simple_feature(key, "on");
    f["padding"] = json!(format!("{n}-{}", "x".repeat(size)));
    f
}

/// The `n` of `"{n}-xxx"` in the `big` feature of a `features.updated` event.
fn marker(e: &SseEvent) -> Option<usize> {
    let v: Value = serde_json::from_str(&e.data)
        .unwrap_or_else(|err| panic!("a torn frame: {err}: {:.200}", e.data));
    v.get("big")?
        .get("padding")?
        .as_str()?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// `n` raw server-SDK streams, each past its initial state (and so soon current, in the pass).
async fn current_clients(relay: &TestRelay, n: usize) -> Vec<SseClient> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = SseClient::raw(api_addr(relay), PATH, SERVER_KEY, None).await;
        c.expect().await;
        clients.push(c);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_tiny_buffers_gets_whole_frames_in_order_while_fast_clients_get_every_change()
{
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nsocket_send_buffer_bytes = 4096\nslow_client_timeout_ms = 60000\nwriter_shards = 2")
        .start()
        .await;
    let mut slow = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, Some(4096)).await;
    assert_eq!(slow.status, 200);
    let mut fast = current_clients(&relay, 3).await;
    // The slow client reads in small bites (a pause after every event) while changes go on.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let e = slow.expect().await;
            let m = if e.event == "features.updated" {
                marker(&e)
            } else {
                None
            };
            seen.push(e);
            if m == Some(29) {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let mut p = base();
    for i in 0..30 {
        p["big"] = padded("big", i, 16 * 1024);
        relay.write_flags(&flags(p.clone()));
        for c in &mut fast {
            let e = c.expect().await;
            assert_eq!(
                marker(&e),
                Some(i),
                "a fast client gets change {i} at once, by itself"
            );
        }
    }
    let seen = within("the slow reader to reach the last change", reader)
        .await
        .unwrap();
    assert_eq!(seen[0].event, "features.updated", "the initial state first");
    let markers: Vec<usize> = seen
        .iter()
        .skip(1)
        .map(|e| marker(e).expect("every later frame carries big"))
        .collect();
    assert!(
        markers.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {markers:?}"
    );
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "flagrelay_fanout_pass_seconds_count",
            &[("env", "production")]
        )
        .unwrap_or(0.0)
            >= 30.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_mid_frame_gets_the_rest_of_it_then_the_coalesced_state() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nsocket_send_buffer_bytes = 65536\nslow_client_timeout_ms = 60000\nwriter_shards = 2")
        .start()
        .await;
    let mut stopped = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, Some(4096)).await;
    let mut watcher = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, None).await;
    watcher.expect().await;
    // A frame of ~512 KB: far more than the stopped client's socket buffers take.
    let mut p = base();
    p["big"] = padded("big", 7, 512 * 1024);
    relay.write_flags(&flags(p.clone()));
    assert_eq!(marker(&watcher.expect().await), Some(7));
    // Four more changes while the stopped client still has most of the big frame to take.
    let mut last_id = None;
    for k in 1..=4 {
        p[format!("k{k}")] = simple_feature(&format!("k{k}"), "on");
        relay.write_flags(&flags(p.clone()));
        last_id = watcher.expect().await.id;
    }
    let initial = stopped.expect().await;
    assert_eq!(
        initial.json().as_object().unwrap().len(),
        3,
        "the initial state"
    );
    let big = stopped.expect().await;
    assert_eq!(big.event, "features.updated");
    assert_eq!(
        marker(&big),
        Some(7),
        "the rest of the frame it had stopped in, whole"
    );
    assert_eq!(
        big.json()["big"]["padding"].as_str().unwrap().len(),
        512 * 1024 + 2
    );
    let caught_up = stopped.expect().await;
    assert_eq!(caught_up.event, "features.updated");
    let mut keys: Vec<String> = caught_up
        .json()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["k1", "k2", "k3", "k4"],
        "one coalesced frame of what changed meanwhile"
    );
    assert_eq!(caught_up.id, last_id, "and it ends at the current revision");
    // Current again, it is back in the pass and gets the next change like everyone.
    p["k5"] = simple_feature("k5", "on");
    relay.write_flags(&flags(p.clone()));
    let next = stopped.expect().await;
    assert_eq!(
        next.json().as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["k5"]
    );
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "flagrelay_sse_coalesced_total",
            &[("env", "production")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_across_four_shards_each_get_every_change_exactly_once() {
    const CLIENTS: usize = 1000;
    const CHANGES: usize = 5;
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nwriter_shards = 4\nheartbeat_secs = 3600")
        .start()
        .await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, None).await);
    }
    for c in &mut clients {
        assert_eq!(c.expect().await.json().as_object().unwrap().len(), 3);
    }
    let mut p = base();
    for i in 0..CHANGES {
        p["big"] = padded("big", i, 64);
        relay.write_flags(&flags(p.clone()));
        // Every client has change i before change i + 1 is made, so none is coalesced.
        for c in &mut clients {
            let e = c.expect().await;
            assert_eq!(marker(&e), Some(i));
        }
    }
    let m = relay.metrics().await;
    let changes = metric(
        &m,
        "flagrelay_sse_events_total",
        &[("env", "production"), ("event", "change")],
    );
    assert_eq!(
        changes,
        Some((CLIENTS * CHANGES) as f64),
        "one change frame per client and change, none twice"
    );
    let passes = metric(
        &m,
        "flagrelay_fanout_pass_seconds_count",
        &[("env", "production")],
    );
    assert_eq!(
        passes,
        Some((4 * CHANGES) as f64),
        "each of the four shards made one pass per change"
    );
    let spans = metric(
        &m,
        "flagrelay_fanout_pass_span_seconds_count",
        &[("env", "production")],
    );
    assert_eq!(
        spans,
        Some(CHANGES as f64),
        "one span per change, from the first shard's start to the last one's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_close_while_in_the_pass_leave_it_and_the_rest_keep_streaming() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nwriter_shards = 2")
        .start()
        .await;
    let mut keep = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, None).await;
    keep.expect().await;
    let gone = current_clients(&relay, 20).await;
    drop(gone);
    within("the closed streams to unregister", async {
        loop {
            let m = relay.metrics().await;
            if metric(
                &m,
                "flagrelay_sse_clients",
                &[("env", "production"), ("protocol", "featureflow")],
            ) == Some(1.0)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut p = base();
    p["big"] = padded("big", 1, 10);
    relay.write_flags(&flags(p));
    assert_eq!(marker(&keep.expect().await), Some(1));
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "flagrelay_sse_events_total",
            &[("env", "production"), ("event", "change")]
        ),
        Some(1.0),
        "written to the one open stream only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thin_client_and_ofrep_streams_go_through_the_pass_with_their_cors_headers() {
    let relay = TestRelay::builder().flags(flags(base())).config("[sse]\nwriter_shards = 2").start().await;
    let origin = [("origin", "https://app.example")];
    let mut legacy = SseClient::connect(&relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}")), &origin).await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.headers["access-control-allow-origin"], "*");
    let bulk = within(
        "an OFREP bulk evaluation",
        http()
            .post(relay.url("/ofrep/v1/evaluate/flags"))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .body(r#"{"context":{"targetingKey":"ada"}}"#)
            .send(),
    )
    .await
    .unwrap();
    let v: Value = within("the bulk body", bulk.json()).await.unwrap();
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"].as_str().expect("requestUri").to_string();
    let mut ofrep = SseClient::connect(&relay.url(&uri), &origin).await;
    assert_eq!(ofrep.status, 200);
    assert_eq!(ofrep.headers["access-control-expose-headers"], "ETag, Retry-After");
    assert_eq!(ofrep.headers["content-type"], "text/event-stream");

    let mut p = base();
    p["a"] = simple_feature("a", "off");
    relay.write_flags(&flags(p));
    let keys = legacy.expect().await;
    assert_eq!(keys.json(), json!(["a"]), "the legacy stream names the changed key");
    assert_eq!(ofrep.expect().await.json()["type"], "refetchEvaluation");
    let m = relay.metrics().await;
    let passes = metric(&m, "flagrelay_fanout_pass_seconds_count", &[("env", "production")]);
    assert_eq!(passes, Some(4.0), "one pass per shard of each kind's pass");
}

fn user_segment(id: &str, role: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(json!({"id": id, "attributes": {"user_role": role}}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_context_streams_get_their_own_groups_frames_through_the_pass() {
    let prod = json!({"a": role_feature("a", &["beta"]), "e": simple_feature("e", "on")});
    let relay = TestRelay::builder().flags(flags(prod.clone())).config("[sse]\nwriter_shards = 2").start().await;
    // Three clients of each of two contexts, spread over both shards.
    let mut beta = Vec::new();
    let mut other = Vec::new();
    for i in 0..3 {
        for (list, role) in [(&mut beta, "beta"), (&mut other, "other")] {
            let seg = user_segment(&format!("{role}-user"), role);
            let mut c = SseClient::raw(api_addr(&relay), &format!("/api/v1/eval/stream/{CLIENT_KEY}/user/{seg}"), "-", None).await;
            assert_eq!(c.status, 200, "client {i} of {role}");
            let e = c.expect().await;
            assert_eq!(e.event, "features.evaluated");
            assert_eq!(e.json()["a"], if role == "beta" { "on" } else { "off" });
            list.push(c);
        }
    }
    // A change that flips `a` for both contexts, each its own way.
    let mut p = prod.clone();
    p["a"] = role_feature("a", &["other"]);
    relay.write_flags(&flags(p.clone()));
    for c in &mut beta {
        assert_eq!(c.expect().await.json(), json!({"a": "off"}));
    }
    for c in &mut other {
        assert_eq!(c.expect().await.json(), json!({"a": "on"}));
    }
    // A change the same for everyone.
    p["e"] = simple_feature("e", "off");
    relay.write_flags(&flags(p));
    for c in beta.iter_mut().chain(other.iter_mut()) {
        assert_eq!(c.expect().await.json(), json!({"e": "off"}));
    }
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_fanout_pass_seconds_count", &[("env", "production")]), Some(4.0), "two changes, two shards");
    // Each group is evaluated once on connect and once per change, however many clients it has.
    assert_eq!(metric(&m, "flagrelay_evaluations_total", &[("env", "production"), ("api", "stream")]), Some(6.0));
    assert_eq!(metric(&m, "flagrelay_sse_events_total", &[("env", "production"), ("event", "change")]), Some(12.0));
}

/// Waits until the relay's `name{labels}` is `want`.
async fn wait_metric(relay: &TestRelay, name: &str, labels: &[(&str, &str)], want: f64) {
    within(&format!("{name} to be {want}"), async {
        loop {
            if metric(&relay.metrics().await, name, labels) == Some(want) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

const HELD: &str = "flagrelay_fanout_pass_connections";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_streams_are_held_by_the_pass_with_no_task_of_their_own() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nwriter_shards = 2")
        .start()
        .await;
    let prod = [("env", "production")];
    wait_metric(&relay, HELD, &prod, 0.0).await;
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = alive();
    let mut clients = current_clients(&relay, 100).await;
    wait_metric(&relay, HELD, &prod, 100.0).await;
    let grown = alive().saturating_sub(before);
    assert!(grown < 10, "100 current streams still have {grown} tasks between them");
    // The pass writes the change to each of them, and each stays in it (every write was whole).
    let mut p = base();
    p["big"] = padded("big", 1, 10);
    relay.write_flags(&flags(p));
    for c in clients.iter_mut() {
        assert_eq!(marker(&c.expect().await), Some(1));
    }
    wait_metric(&relay, HELD, &prod, 100.0).await;
    // Clients closing are seen by the shards' epoll sets: streams unregister, slots free.
    drop(clients);
    wait_metric(&relay, HELD, &prod, 0.0).await;
    wait_metric(&relay, "flagrelay_sse_clients", &[("env", "production"), ("protocol", "featureflow")], 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_the_pass_keep_their_connection_slots_under_the_cap() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[http]\nmax_connections = 3\n[sse]\nwriter_shards = 2")
        .start()
        .await;
    let mut held = current_clients(&relay, 3).await;
    wait_metric(&relay, HELD, &[("env", "production")], 3.0).await;
    let mut extra = support::tcp::idle_socket(api_addr(&relay)).await;
    support::tcp::closed_by_peer(&mut extra).await;
    drop(held.pop());
    support::tcp::wait_open_connections(&relay, 2).await;
    let mut again = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, None).await;
    assert_eq!(again.status, 200);
    again.expect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_the_pass_is_closed_at_its_maximum_age_with_a_retry_hint() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\nmax_connection_age_secs = 1\nretry_ms = 4000\nwriter_shards = 1")
        .start()
        .await;
    let mut c = SseClient::raw(api_addr(&relay), PATH, SERVER_KEY, None).await;
    c.expect().await;
    c.retry = None; // forget the hint from the start of the stream
    wait_metric(&relay, HELD, &[("env", "production")], 1.0).await;
    c.wait_end(std::time::Duration::from_secs(5)).await;
    assert_eq!(c.retry, Some(1000), "the short retry hint of a max-age close");
    wait_metric(&relay, "flagrelay_sse_max_age_closes_total", &[("env", "production")], 1.0).await;
    wait_metric(&relay, HELD, &[("env", "production")], 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_the_pass_gives_every_stream_back_to_drain_and_the_relay_stops() {
    let relay = TestRelay::builder()
        .flags(flags(base()))
        .config("[sse]\ndrain_window_secs = 1\nretry_ms = 500\nwriter_shards = 2")
        .start()
        .await;
    let mut clients = current_clients(&relay, 20).await;
    for c in clients.iter_mut() {
        c.retry = None; // forget the hint from the start of the stream
    }
    wait_metric(&relay, HELD, &[("env", "production")], 20.0).await;
    let stopped = tokio::spawn(relay.stop());
    for c in clients.iter_mut() {
        c.wait_end(std::time::Duration::from_secs(5)).await;
        let r = c.retry.expect("a retry hint sent at the drain");
        assert!((500..=1500).contains(&r), "retry hint {r} within retry_ms..retry_ms+window");
    }
    within("the relay to stop", stopped).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_leaves_a_contexts_evaluation_alone_still_brings_its_streams_up_to_date() {
    let prod = json!({"a": role_feature("a", &["beta"]), "e": simple_feature("e", "on")});
    let relay = TestRelay::builder().flags(flags(prod.clone())).config("[sse]\nwriter_shards = 2").start().await;
    let seg = user_segment("other-user", "other");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = SseClient::raw(api_addr(&relay), &format!("/api/v1/eval/stream/{CLIENT_KEY}/user/{seg}"), "-", None).await;
        assert_eq!(c.expect().await.json()["a"], "off");
        clients.push(c);
    }
    wait_metric(&relay, HELD, &[("env", "production")], 4.0).await;
    // `a` now also targets admins: the "other" user's evaluation is the same, so no frame.
    let mut p = prod.clone();
    p["a"] = role_feature("a", &["beta", "admin"]);
    relay.write_flags(&flags(p.clone()));
    // Still, every stream has that change: it counts as delivered to all of them.
    wait_metric(&relay, "flagrelay_sse_change_delivery_seconds_count", &[("env", "production")], 1.0).await;
    // And each is current, not behind: the next change is written to it by the pass.
    p["e"] = simple_feature("e", "off");
    relay.write_flags(&flags(p));
    for c in &mut clients {
        assert_eq!(c.expect().await.json(), json!({"e": "off"}));
    }
    wait_metric(&relay, "flagrelay_sse_change_delivery_seconds_count", &[("env", "production")], 2.0).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, HELD, &[("env", "production")]), Some(4.0), "none left the pass");
    assert_eq!(metric(&m, "flagrelay_sse_slow_disconnects_total", &[("env", "production")]).unwrap_or(0.0), 0.0);
}
