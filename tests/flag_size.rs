//! Issue 10 item 1b over real sources: a feature over `upstream.max_feature_bytes` is rejected
//! like an invalid one (counted, named in the status, the previous version stays) whether the
//! flags file or Redis delivered it, and a resume that falls out of the byte-bounded replay ring
//! (`sse.replay_bytes`) gets full state as one beyond the revision ring does.

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::redis::server::TestRedis;
use support::redis::watcher::poll_flags;
use support::redis::*;
use support::*;

const ENV: &str = "production";

/// `simple_feature` carrying `padding` bytes more.
fn padded(key: &str, variant: &str, padding: usize) -> Value {
    let mut f = simple_feature(key, variant);
    f["padding"] = json!("p".repeat(padding));
    f
}

fn variant(flags: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    flags.get(key).and_then(|f| f["rules"][0]["variantSplits"][0]["variantKey"].as_str()).map(str::to_string)
}

async fn served(relay: &TestRelay) -> serde_json::Map<String, Value> {
    let r = relay.poll(SERVER_KEY).await;
    within("the poll body", r.json::<Value>()).await.expect("JSON").as_object().cloned().unwrap_or_default()
}

/// A file-sourced relay with `max_feature_bytes = 4096`, on a flags file this test writes (the
/// builder's own `[upstream]` section has no room for the key).
struct Capped {
    relay: TestRelay,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Capped {
    async fn start(flags: Value) -> Capped {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flags.json");
        std::fs::write(&path, flags.to_string()).expect("write flags");
        let upstream = format!("[upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\nmax_feature_bytes = 4096\n", path.display().to_string());
        let relay = TestRelay::builder().upstream(&upstream).start().await;
        Capped { relay, path, _dir: dir }
    }

    fn write(&self, flags: &Value) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, flags.to_string()).expect("write flags");
        std::fs::rename(&tmp, &self.path).expect("rename flags");
    }
}

#[tokio::test]
async fn a_feature_over_the_size_cap_in_the_flags_file_is_rejected_and_the_previous_version_stays() {
    let c = Capped::start(json!({ENV: {"alpha": padded("alpha", "on", 10), "huge": padded("huge", "on", 10_000)}, "staging": {}})).await;
    let relay = &c.relay;
    let s = served(relay).await;
    assert!(s.contains_key("alpha") && !s.contains_key("huge"), "a new feature over the cap never enters");
    wait_counter(relay, "flagrelay_invalid_features_total", &[("env", ENV)], 1.0).await;

    c.write(&json!({ENV: {"alpha": padded("alpha", "off", 10_000), "beta": padded("beta", "on", 10)}, "staging": {}}));
    within("beta to be served", async {
        while !served(relay).await.contains_key("beta") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(variant(&served(relay).await, "alpha").as_deref(), Some("on"), "the previous alpha stays");
    assert!(counter(relay, "flagrelay_invalid_features_total", &[("env", ENV)]).await >= 2.0);
    let st = relay.env_status(ENV).await;
    assert!(st["source"]["last_error"].as_str().unwrap_or("").contains("max_feature_bytes"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_over_the_size_cap_from_redis_is_rejected_in_messages_and_in_resyncs() {
    let redis = TestRedis::start(&[]).await;
    redis.writer(ENV).await.import([("alpha".to_string(), padded("alpha", "on", 10))].into_iter().collect()).await.expect("import");
    redis.writer("staging").await.import(serde_json::Map::new()).await.expect("import staging");
    let relay = relay_on(&redis.url(), "probe_interval_ms = 60000\nmax_feature_bytes = 4096").start().await;
    assert_eq!(variant(&poll_flags(&relay, SERVER_KEY).await.into_iter().collect(), "alpha").as_deref(), Some("on"));

    // Published without its body (over 16 KiB) and with it: both over the cap.
    let mut w = redis.writer(ENV).await;
    w.put(vec![("alpha".into(), padded("alpha", "off", 20_000))]).await.expect("put");
    wait_counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)], 1.0).await;
    w.put(vec![("alpha".into(), padded("alpha", "off", 8_000)), ("beta".into(), padded("beta", "on", 10))]).await.expect("put");
    wait_counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)], 2.0).await;
    let s: serde_json::Map<String, Value> = within("beta", async {
        loop {
            let s: serde_json::Map<String, Value> = poll_flags(&relay, SERVER_KEY).await.into_iter().collect();
            if s.contains_key("beta") {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(variant(&s, "alpha").as_deref(), Some("on"), "the previous alpha stays");

    // A resync reads the hash, which holds the big alpha: rejected again, still the old one.
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_counter(&relay, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "reconnect")], 1.0).await;
    wait_counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)], 3.0).await;
    let s: serde_json::Map<String, Value> = poll_flags(&relay, SERVER_KEY).await.into_iter().collect();
    assert_eq!(variant(&s, "alpha").as_deref(), Some("on"));
}

#[tokio::test]
async fn a_resume_out_of_the_byte_bounded_ring_gets_full_state_and_one_inside_is_replayed() {
    let flags = |v: usize| json!({ENV: {"big": padded("big", if v.is_multiple_of(2) { "on" } else { "off" }, 10_000 + v)}, "staging": {}});
    let relay = TestRelay::builder().flags(flags(0)).config("[sse]\nreplay_bytes = 70000\n").start().await;
    let mut sse = relay.sse(SERVER_KEY).await;
    sse.expect().await;
    let mut ids = Vec::new();
    for v in 1..=6 {
        relay.write_flags(&flags(v));
        ids.push(sse.expect().await.id.expect("an id"));
    }
    sse.close();
    let ring = metric(&relay.metrics().await, "flagrelay_replay_bytes", &[("env", ENV), ("part", "ring")]).unwrap_or(0.0);
    assert!(ring > 0.0 && ring <= 70_000.0, "the ring holds {ring} bytes");
    let resume = |id: String| {
        let url = relay.url("/api/sdk/v1/features");
        async move {
            let auth = format!("Bearer {SERVER_KEY}");
            let mut c = SseClient::connect(&url, &[("authorization", &auth), ("last-event-id", &id)]).await;
            let e = c.expect().await;
            c.close();
            e
        }
    };
    let replayed = counter(&relay, "flagrelay_sse_resumes_total", &[("env", ENV), ("outcome", "replayed")]).await;
    assert_eq!(resume(ids[4].clone()).await.event, "features.updated");
    wait_counter(&relay, "flagrelay_sse_resumes_total", &[("env", ENV), ("outcome", "replayed")], replayed + 1.0).await;
    let full = counter(&relay, "flagrelay_sse_resumes_total", &[("env", ENV), ("outcome", "full_state")]).await;
    resume(ids[0].clone()).await;
    wait_counter(&relay, "flagrelay_sse_resumes_total", &[("env", ENV), ("outcome", "full_state")], full + 1.0).await;
}
