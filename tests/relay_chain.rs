//! Relay chaining through faults: a real redis-server at the root, relays that follow relays
//! (in process over real HTTP, or processes that can be killed and frozen), and TCP proxies that
//! cut a child off its parent or move it to another parent. Every scenario ends with an
//! upsert-only SSE client, a replacing SSE client and a poll on the deepest relay all exactly
//! equal to `flags export` of the root Redis.

use flagrelay_testkit as support;

use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use support::process::{RelayProcess, Stderr};
use support::proxy::{addr_of, Proxy};
use support::redis::server::TestRedis;
use support::redis::watcher::{converge_at, poll_flags_at, Background, WatchingClient};
use support::redis::{counter, fast_upstream, writer_for, Flags};
use support::relay::{child_of, child_process_config, process_config, root_on};
use support::*;

const ENV: &str = "production";
const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");

fn flags(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), simple_feature(k, v))).collect()
}

async fn seed(redis: &TestRedis) {
    redis.writer(ENV).await.import(flags(&[("alpha", "on"), ("beta", "off"), ("gamma", "on")])).await.expect("import");
    redis.writer("staging").await.import(flags(&[])).await.expect("import staging");
}

/// An upsert-only and a replacing SDK client of the relay at `base`.
async fn sdk_clients(base: &str) -> (WatchingClient, WatchingClient) {
    (WatchingClient::at(base, SERVER_KEY, false).await, WatchingClient::at(base, SERVER_KEY, true).await)
}

/// Waits until polling and both clients of the relay at `base` hold exactly what Redis holds.
async fn converge(base: &str, redis: &TestRedis, clients: &mut (WatchingClient, WatchingClient)) -> Flags {
    converge_at(base, &redis.tool_config(), ENV, SERVER_KEY, &mut [&mut clients.0, &mut clients.1]).await
}

/// `n` writes: updates of the seeded features, new features, deletions of some of them.
async fn writes(redis: &TestRedis, tag: &str, n: usize) {
    let mut w = redis.writer(ENV).await;
    for i in 0..n {
        let key = format!("{tag}-{}", i % 4);
        match i % 3 {
            0 | 1 => w.put(vec![(key.clone(), simple_feature(&key, if i % 2 == 0 { "on" } else { "off" }))]).await.expect("put"),
            _ => w.delete(&[key]).await.expect("delete"),
        };
    }
}

fn base_of(p: &RelayProcess) -> String {
    p.url("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_redis_a_b_c_carries_every_change_with_the_roots_revisions() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let b = child_of(&a.base, "").start().await;
    let c = child_of(&b.base, "").start().await;
    let mut clients = sdk_clients(&c.base).await;
    converge(&c.base, &redis, &mut clients).await;

    writes(&redis, "flow", 30).await;
    redis.writer(ENV).await.delete(&["beta".into()]).await.expect("delete");
    let want = converge(&c.base, &redis, &mut clients).await;
    assert!(!want.contains_key("beta"));

    let root = a.env_status(ENV).await["revision"].clone();
    let s = c.wait_status(ENV, "C at the root's revision", |s| s["revision"] == root && s["source"]["state"] == "connected").await;
    assert_eq!(s["source"]["relay"]["hops"], 2, "A follows Redis; B is one hop from it, C two");
    assert_eq!(s["source"]["relay"]["parent"], b.base.as_str(), "{s}");
    assert_eq!(s["source"]["relay"]["lag_revisions"], 0, "{s}");
    assert_eq!(b.env_status(ENV).await["source"]["relay"]["hops"], 1);
    // Publish times carry through: C measures propagation from the write into Redis.
    let m = c.metrics().await;
    assert!(metric(&m, "flagrelay_propagation_seconds_count", &[("env", ENV)]).unwrap_or(0.0) > 0.0, "propagation observed at C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_moved_from_the_root_to_a_child_resumes_from_the_roots_revision() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let b = child_of(&a.base, "").start().await;
    let mut on_a = WatchingClient::upsert_only(&a, SERVER_KEY).await;
    let mut on_b = sdk_clients(&b.base).await;
    let want = converge(&b.base, &redis, &mut on_b).await;
    on_a.wait_for(&want).await;
    let last = on_a.last_id.expect("an id from the root");

    redis.writer(ENV).await.put(vec![("delta".into(), simple_feature("delta", "on"))]).await.expect("put");
    let want = converge(&b.base, &redis, &mut on_b).await;
    // The same revision means the same state on both: B replays only what came after it.
    let mut moved = SseClient::connect(&b.url("/api/sdk/v1/features"), &[("authorization", &format!("Bearer {SERVER_KEY}")), ("last-event-id", &last.to_string())]).await;
    let e = moved.expect().await;
    assert_eq!(e.event, "features.updated");
    assert_eq!(e.json().as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()), Some(vec!["delta".to_string()]), "only the change after the root's revision");
    assert_eq!(want.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_relay_killed_and_restarted_is_followed_again_by_its_child() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = child_process_config(dir.path(), &a.base);
    let b = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    let proxy = Proxy::start(addr_of(&base_of(&b))).await;
    let c = child_of(&proxy.url(), "").start().await;
    let mut clients = sdk_clients(&c.base).await;
    converge(&c.base, &redis, &mut clients).await;

    b.signal("KILL");
    drop(b);
    writes(&redis, "while-b-is-dead", 12).await;
    let b = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    proxy.retarget(addr_of(&base_of(&b)));
    let want = converge(&c.base, &redis, &mut clients).await;
    assert!(want.contains_key("while-b-is-dead-2"));
    // C held a position of the killed B: the new B could not prove it and sent a snapshot.
    assert!(counter(&c, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "reconnect")]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_parent_is_noticed_within_the_heartbeat_timeout_and_followed_again_after_sigcont() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = process_config(dir.path(), &fast_upstream(&redis.url(), ""));
    let a = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    let b = child_of(&base_of(&a), "").start().await;
    let mut clients = sdk_clients(&b.base).await;
    converge(&b.base, &redis, &mut clients).await;

    a.signal("STOP");
    let stopped = std::time::Instant::now();
    writes(&redis, "while-a-is-frozen", 9).await;
    b.wait_status(ENV, "B to notice the frozen parent", |s| s["source"]["state"] != "connected").await;
    // The last heartbeat came at most a second before the stop: noticed within the timeout
    // after it (plus scheduling slack).
    let noticed = stopped.elapsed();
    assert!(noticed < std::time::Duration::from_millis(support::relay::HEARTBEAT_TIMEOUT_MS + 1500), "noticed after {noticed:?}");
    assert!(b.env_status(ENV).await["source"]["stale"] == true);
    a.signal("CONT");
    let want = converge(&b.base, &redis, &mut clients).await;
    assert!(want.contains_key("while-a-is-frozen-2"));
    b.wait_status(ENV, "B live again", |s| s["source"]["state"] == "connected" && s["source"]["stale"] == false).await;
    assert!(counter(&b, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_parent_is_followed_when_its_ca_is_trusted_and_refused_otherwise() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = support::redis::tls::TlsFiles::generate(dir.path(), false);
    let proxy = Proxy::start_tls(addr_of(&a.base), &tls.server_cert, &tls.server_key).await;
    // Not trusted (the system roots do not know the test CA): never followed, never ready.
    let untrusting = child_of(&proxy.https_url(), "").start_unready().await;
    let s = untrusting.wait_status(ENV, "a TLS error", |s| s["source"]["last_error"].is_string()).await;
    assert!(s["source"]["last_error"].as_str().unwrap_or("").contains("TLS"), "{s}");
    assert_eq!(s["loaded"], false);
    let trusting = child_of(&proxy.https_url(), &format!("tls_ca_file = {:?}", tls.ca.display().to_string())).start().await;
    let mut clients = sdk_clients(&trusting.base).await;
    converge(&trusting.base, &redis, &mut clients).await;
    assert_eq!(untrusting.env_status(ENV).await["loaded"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_serving_tls_itself_is_followed_over_https() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = support::redis::tls::TlsFiles::generate(dir.path(), false);
    let cfg = format!("[tls]\ncert_file = {:?}\nkey_file = {:?}", tls.server_cert.display().to_string(), tls.server_key.display().to_string());
    let a = root_on(&redis.url(), "").config(&cfg).start().await;
    let parent = a.base.replace("http://", "https://");
    let b = child_of(&parent, &format!("tls_ca_file = {:?}", tls.ca.display().to_string())).start().await;
    let mut clients = sdk_clients(&b.base).await;
    converge(&b.base, &redis, &mut clients).await;
    redis.writer(ENV).await.delete(&["beta".into()]).await.expect("delete");
    let want = converge(&b.base, &redis, &mut clients).await;
    assert!(!want.contains_key("beta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_without_a_warm_start_is_not_ready_until_its_parent_sent_data() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let proxy = Proxy::start(addr_of(&a.base)).await;
    proxy.cut();
    let b = child_of(&proxy.url(), "").start_unready().await;
    b.wait_status(ENV, "B failing to reach its parent", |s| s["source"]["last_error"].is_string()).await;
    let r = within("/readyz", http().get(b.admin_url("/readyz")).send()).await.expect("readyz");
    assert_eq!(r.status(), 503);
    assert_eq!(b.env_status(ENV).await["loaded"], false);
    proxy.restore();
    b.wait_ready().await;
    let mut clients = sdk_clients(&b.base).await;
    converge(&b.base, &redis, &mut clients).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cut_off_while_its_parents_ring_overflows_gets_a_snapshot_and_drops_what_vanished() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "replay_revisions = 4").start().await;
    let proxy = Proxy::start(addr_of(&a.base)).await;
    let b = child_of(&proxy.url(), "").start().await;
    let mut clients = sdk_clients(&b.base).await;
    converge(&b.base, &redis, &mut clients).await;

    proxy.cut();
    b.wait_status(ENV, "B cut off", |s| s["source"]["state"] != "connected").await;
    redis.writer(ENV).await.delete(&["alpha".into(), "gamma".into()]).await.expect("delete");
    writes(&redis, "overflow", 10).await;
    proxy.restore();
    let want = converge(&b.base, &redis, &mut clients).await;
    assert!(!want.contains_key("alpha") && !want.contains_key("gamma"), "{want:?}");
    let m = a.metrics().await;
    assert!(metric(&m, "flagrelay_sse_resumes_total", &[("env", ENV), ("outcome", "full_state")]).unwrap_or(0.0) >= 1.0, "A answered the resume with a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_restarted_against_changed_redis_data_gives_every_hop_the_new_state() {
    let mut redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let proxy = Proxy::start(addr_of(&a.base)).await;
    let b = child_of(&proxy.url(), "").start().await;
    let c = child_of(&b.base, "").start().await;
    let mut clients = sdk_clients(&c.base).await;
    converge(&c.base, &redis, &mut clients).await;

    a.stop().await;
    redis
        .restart_with_changed_data(|url| async move {
            let mut w = writer_for(&url, ENV).await;
            w.put(vec![("alpha".into(), simple_feature("alpha", "off")), ("delta".into(), simple_feature("delta", "on"))]).await.expect("put");
            w.delete(&["beta".into()]).await.expect("delete");
        })
        .await;
    let a2 = root_on(&redis.url(), "").start().await;
    proxy.retarget(addr_of(&a2.base));
    let want = converge(&c.base, &redis, &mut clients).await;
    assert!(want.contains_key("delta") && !want.contains_key("beta"));
    let root = a2.env_status(ENV).await["revision"].clone();
    c.wait_status(ENV, "C at the new root's revision", |s| s["revision"] == root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_switching_between_two_parents_behind_one_address_stays_exact() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a1 = root_on(&redis.url(), "").start().await;
    let a2 = root_on(&redis.url(), "").start().await;
    let proxy = Proxy::start(addr_of(&a1.base)).await;
    let b = child_of(&proxy.url(), "").start().await;
    let c = child_of(&b.base, "").start().await;
    let mut clients = sdk_clients(&c.base).await;
    converge(&c.base, &redis, &mut clients).await;

    for round in 0..6 {
        writes(&redis, &format!("round{round}"), 5).await;
        let next = if round % 2 == 0 { &a2 } else { &a1 };
        proxy.retarget(addr_of(&next.base));
        writes(&redis, &format!("after{round}"), 3).await;
        converge(&c.base, &redis, &mut clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarts_serving_its_last_state_while_its_parent_is_unreachable() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let a = root_on(&redis.url(), "").start().await;
    let proxy = Proxy::start(addr_of(&a.base)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let warm = format!("snapshot_dir = {:?}", dir.path().display().to_string());
    let b = child_of(&proxy.url(), &warm).start().await;
    let mut clients = sdk_clients(&b.base).await;
    let want = converge(&b.base, &redis, &mut clients).await;
    b.stop().await;

    proxy.cut();
    let b = child_of(&proxy.url(), &warm).start().await;
    assert_eq!(support::redis::watcher::exact(&poll_flags_at(&b.base, SERVER_KEY).await), support::redis::watcher::exact(&want));
    assert_eq!(b.env_status(ENV).await["source"]["stale"], true);
    proxy.restore();
    writes(&redis, "after-warm-start", 4).await;
    let mut clients = sdk_clients(&b.base).await;
    converge(&b.base, &redis, &mut clients).await;
    b.wait_status(ENV, "B live", |s| s["source"]["stale"] == false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_soak_with_faults_interleaved_ends_with_no_divergence_at_the_deepest_relay() {
    let seed_n: u64 = std::env::var("FLAGRELAY_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261202);
    let writes_n: usize = std::env::var("FLAGRELAY_SOAK_WRITES").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    eprintln!("relay soak: seed {seed_n}, {writes_n} writes (FLAGRELAY_SOAK_SEED / FLAGRELAY_SOAK_WRITES to change)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_n);
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    // Two parents on the same Redis behind one address; rings small enough to overflow.
    let mut parents = [root_on(&redis.url(), "replay_revisions = 16").start().await, root_on(&redis.url(), "replay_revisions = 16").start().await];
    let mut cur = 0;
    let proxy = Proxy::start(addr_of(&parents[cur].base)).await;
    let b = child_of(&proxy.url(), "").start().await;
    let c = child_of(&b.base, "").start().await;
    let upserting = Background::spawn(WatchingClient::at(&c.base, SERVER_KEY, false).await);
    let replacing = Background::spawn(WatchingClient::at(&c.base, SERVER_KEY, true).await);
    let mut w = redis.writer(ENV).await;
    let mut faults = [0usize; 5];
    for i in 0..writes_n {
        let key = format!("k{}", rng.gen_range(0..40));
        if rng.gen_bool(0.3) {
            w.delete(&[key]).await.expect("delete");
        } else {
            let v = format!("v{}", rng.gen_range(0..1000));
            w.put(vec![(key.clone(), simple_feature(&key, &v))]).await.expect("put");
        }
        if i % 50 == 49 {
            let fault = rng.gen_range(0..5);
            faults[fault] += 1;
            match fault {
                // B moves to the other parent.
                0 => {
                    cur = 1 - cur;
                    proxy.retarget(addr_of(&parents[cur].base));
                }
                // B is cut off (until a later restore, retarget or the end).
                1 => proxy.cut(),
                2 => proxy.restore(),
                // B's parent freezes: B notices by the heartbeat timeout while writes go on.
                3 => {
                    proxy.freeze();
                    b.wait_status(ENV, "B to notice the frozen parent", |s| s["source"]["state"] != "connected").await;
                    proxy.thaw();
                }
                // B's parent restarts (a new stream epoch) and B follows it.
                _ => {
                    let fresh = root_on(&redis.url(), "replay_revisions = 16").start().await;
                    std::mem::replace(&mut parents[cur], fresh).stop().await;
                    proxy.retarget(addr_of(&parents[cur].base));
                }
            }
        }
    }
    eprintln!("relay soak: faults (switch, cut, restore, freeze, parent restart) = {faults:?}");
    proxy.restore();
    let want = w.export().await.expect("export");
    support::redis::watcher::wait_poll_at(&c.base, SERVER_KEY, &want).await;
    upserting.wait_for(&want, "upsert-only").await;
    replacing.wait_for(&want, "replacing").await;
    // Before the relays stop: a stream that ends with its relay is not a client's failure.
    upserting.task.abort();
    replacing.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_two_relay_example_serves_the_roots_flags_from_the_child() {
    // As the README runs it (the example config and flags file, `--relay-url` for the child), on
    // ports of the test's choosing.
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut root = std::process::Command::new(BIN);
    root.current_dir(repo).args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"]);
    let root = RelayProcess::spawn(root, Stderr::Collect).await;
    let mut child = std::process::Command::new(BIN);
    child.current_dir(repo).args(["--relay-url", &base_of(&root), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"]);
    let child = RelayProcess::spawn(child, Stderr::Collect).await;
    let key = "sdk-srv-env-example-production-0001";
    let want = within("the root's flags", async {
        loop {
            if let Ok(r) = http().get(root.url("/api/sdk/v1/features")).bearer_auth(key).send().await {
                if r.status() == 200 {
                    return r.json::<Value>().await.expect("json");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let got = within("the child's flags", async {
        loop {
            if let Ok(r) = http().get(child.url("/api/sdk/v1/features")).bearer_auth(key).send().await {
                if r.status() == 200 {
                    return r.json::<Value>().await.expect("json");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(serde_json::to_string(&got).expect("json"), serde_json::to_string(&want).expect("json"));
    let status: Value = http().get(child.admin_url("/status")).send().await.expect("status").json().await.expect("json");
    let production = status["environments"].as_array().and_then(|a| a.iter().find(|e| e["id"] == ENV)).cloned().unwrap_or(Value::Null);
    assert_eq!(production["source"]["relay"]["parent"], base_of(&root).as_str(), "{production}");
    assert_eq!(production["source"]["relay"]["hops"], 1, "{production}");
}
