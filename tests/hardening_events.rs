//! SDK events in Redis mode: nothing accepted is lost without a count. The queue toward Redis is
//! bounded by bytes; at shutdown the forwarder flushes what it accepted within its deadline and
//! counts (and logs) what it could not deliver; a batch posted after shutdown began gets 503.

use flagrelay_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use flagrelay::config::Upstream;
use flagrelay::metrics::Metrics;
use flagrelay::shutdown::Shutdown;
use flagrelay::upstream::{self, Accepted, EventSender, QueueClosed};
use serde_json::Value;
use support::process::{RelayProcess, Stderr};
use support::redis::server::TestRedis;
use support::redis::{fast_upstream, relay_on, tool_config, wait_counter};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENV: &str = "production";
const STREAM: &str = "{flagrelay:production}:events";

async fn seeded() -> TestRedis {
    let r = TestRedis::start(&[]).await;
    r.writer(ENV).await.import(serde_json::Map::new()).await.expect("import production");
    r.writer("staging").await.import(serde_json::Map::new()).await.expect("import staging");
    r
}

fn batch(n: usize) -> flagrelay::upstream::EventBatch {
    let body = format!(r#"[{{"featureKey":"alpha","evaluatedVariant":"on","n":{n}}}]"#);
    flagrelay::upstream::EventBatch { env: ENV.into(), kind: "events", body: body.into() }
}

fn sent(m: &Metrics) -> u64 {
    m.events_forwarded.with_label_values(&[ENV, "sent"]).get()
}

fn dropped(m: &Metrics, reason: &str) -> u64 {
    m.events_dropped.with_label_values(&[ENV, reason]).get()
}

/// A forwarder on `redis` whose `XADD`s wait up to 10 s for an answer (a frozen Redis holds one),
/// already connected: one batch went through.
async fn connected_forwarder(redis: &TestRedis, flush_within: Duration) -> (EventSender, tokio::task::JoinHandle<()>, Arc<Metrics>, Shutdown) {
    let mut cfg = tool_config(&redis.url());
    cfg.response_timeout = Duration::from_secs(10);
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
    let shutdown = Shutdown::new();
    let (tx, forwarder) = upstream::event_sink(&Upstream::Redis(cfg), metrics.clone(), shutdown.clone(), flush_within).expect("a Redis upstream forwards");
    let task = tokio::spawn(forwarder.run());
    assert_eq!(tx.send(batch(0)), Ok(Accepted::Queued));
    within("the first batch to be sent", async {
        while sent(&metrics) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    (tx, task, metrics, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_the_forwarder_delivers_everything_it_accepted_when_redis_answers_within_the_deadline() {
    let redis = seeded().await;
    let (tx, task, metrics, shutdown) = connected_forwarder(&redis, Duration::from_secs(8)).await;
    redis.stop();
    for n in 1..=50 {
        assert_eq!(tx.send(batch(n)), Ok(Accepted::Queued));
    }
    shutdown.trigger();
    assert_eq!(tx.send(batch(51)), Err(QueueClosed), "nothing is accepted once shutdown began");
    redis.cont();
    within("the forwarder to flush and end", task).await.unwrap();
    assert_eq!(sent(&metrics), 51);
    assert_eq!(redis.cmd::<u64>(&["XLEN", STREAM]).await, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_delivered_by_the_flush_deadline_is_counted_as_dropped() {
    let redis = seeded().await;
    let (tx, task, metrics, shutdown) = connected_forwarder(&redis, Duration::from_millis(500)).await;
    redis.stop();
    for n in 1..=50 {
        assert_eq!(tx.send(batch(n)), Ok(Accepted::Queued));
    }
    shutdown.trigger();
    within("the forwarder to end at its flush deadline", task).await.unwrap();
    assert_eq!(sent(&metrics), 1);
    assert_eq!(dropped(&metrics, "shutdown"), 50, "the one in flight and the 49 queued");
    assert_eq!(metrics.events_forwarded.with_label_values(&[ENV, "dropped"]).get(), 50);
    assert_eq!(metrics.events_queue_bytes.get(), 0);
    redis.cont();
}

/// A 1 MB event batch: a JSON array of zeros.
fn megabyte_batch() -> String {
    let mut s = String::with_capacity(1_000_002);
    s.push('[');
    s.push_str(&"0,".repeat(499_999));
    s.push_str("0]");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_frozen_the_event_queue_holds_no_more_than_its_byte_budget() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "response_timeout_ms = 10000\nevents_queue_bytes = 3145728").start().await;
    let post = |body: String| http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).header("content-type", "application/json").body(body).send();
    assert_eq!(within("a batch", post("[]".into())).await.unwrap().status(), 200);
    wait_counter(&relay, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "sent")], 1.0).await;
    redis.stop();
    let body = megabyte_batch();
    for _ in 0..20 {
        assert_eq!(within("a 1 MB batch", post(body.clone())).await.unwrap().status(), 200, "requests never wait on Redis");
    }
    let m = relay.metrics().await;
    // One batch is in flight and two more fit in 3 MiB; the other 17 are dropped at once.
    assert_eq!(metric(&m, "flagrelay_events_dropped_total", &[("env", ENV), ("reason", "queue_full")]), Some(17.0));
    assert!(metric(&m, "flagrelay_events_queue_bytes", &[]).unwrap() <= 3_145_728.0);
    redis.cont();
}

/// Sends a request head with `Expect: 100-continue` and waits for the `100 Continue` that says
/// the handler is reading the body.
async fn head_sent(relay: &TestRelay, head: &str) -> tokio::net::TcpStream {
    let addr = relay.base.trim_start_matches("http://");
    let mut s = within("connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    within("write the head", s.write_all(head.as_bytes())).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("100 Continue", s.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_request_ends_after_shutdown_began_gets_503_not_a_200_that_is_dropped() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let heads = [
        format!("POST /api/sdk/v1/events HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {SERVER_KEY}\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"),
        format!("PUT /api/sdk/v1/register HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {SERVER_KEY}\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"),
        format!("POST /api/js/v1/event/{CLIENT_KEY} HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"),
    ];
    let mut conns = Vec::new();
    for h in &heads {
        conns.push(head_sent(&relay, h).await);
    }
    relay.shutdown.trigger();
    for (mut s, head) in conns.into_iter().zip(&heads) {
        within("write the body", s.write_all(b"[]")).await.unwrap();
        let mut resp = Vec::new();
        within("the response", s.read_to_end(&mut resp)).await.unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 503"), "{head:?} -> {resp}");
        assert!(resp.contains("shutting_down"), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_answered_200_while_redis_is_frozen_is_delivered_or_logged_as_dropped_at_shutdown() {
    let redis = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flagrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = 2\n{}\n\
             [[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\n\
             [[environments]]\nid = \"staging\"\nserver_keys = [\"{STAGING_SERVER_KEY}\"]\n[sse]\ndrain_window_secs = 1\n",
            fast_upstream(&redis.url(), "response_timeout_ms = 10000")
        ),
    )
    .unwrap();
    let relay = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    let c = http();
    let post = |n: usize| c.post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body(format!("[{n}]")).send();
    let scrape = || async { within("/metrics", c.get(relay.admin_url("/metrics")).send()).await.unwrap().text().await.unwrap() };
    assert_eq!(within("a batch", post(0)).await.unwrap().status(), 200);
    within("the first batch to be sent", async {
        while metric(&scrape().await, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "sent")]) != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    redis.stop();
    const N: usize = 200;
    for n in 1..=N {
        assert_eq!(within("a batch", post(n)).await.unwrap().status(), 200);
    }
    let m = scrape().await;
    assert_eq!(metric(&m, "flagrelay_sdk_events_received_total", &[("env", ENV), ("kind", "events")]), Some(N as f64 + 1.0));
    relay.sigterm();
    let (status, logs) = relay.wait().await;
    assert!(status.success(), "{status:?}");
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("event batches dropped at shutdown")))
        .unwrap_or_else(|| panic!("no shutdown drop line in:\n{logs}"));
    assert_eq!((line["delivered"].as_u64(), line["dropped"].as_u64()), (Some(0), Some(N as u64)), "{line}");
    // Accepted N + 1 = delivered 1 + dropped N. The XADD in flight at the deadline is counted as
    // dropped though a thawed Redis may still append it: never reported delivered unless it was.
    redis.cont();
    let xlen = redis.cmd::<u64>(&["XLEN", STREAM]).await;
    assert!((1..=2).contains(&xlen), "{xlen}");
}
