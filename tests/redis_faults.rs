//! The Redis upstream through faults, against real redis-server processes driven by PID:
//! kill and restart with changed data, a fresh empty instance filled by `import`, a frozen
//! server, a subscriber cut off by the pub/sub output-buffer limit, a Sentinel failover to a
//! lower revision, a seeded randomized soak, and a restarted server still loading its data.
//! A connected SSE client and polling watch every scenario; everything is compared as exact JSON
//! against `flags export`.

use flagrelay_testkit as support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::redis::*;
use support::redis::faults::hand_made_change;
use support::redis::sentinel::TestSentinel;
use support::redis::server::TestRedis;
use support::redis::watcher::{converge, exact, poll_flags, wait_poll, Background, WatchingClient};
use support::*;

const ENV: &str = "production";

fn flags(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), simple_feature(k, v))).collect()
}

async fn seed(redis: &TestRedis) {
    redis.writer(ENV).await.import(flags(&[("alpha", "on"), ("beta", "off"), ("gamma", "on")])).await.expect("import");
    redis.writer("staging").await.import(flags(&[])).await.expect("import staging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_changed_data_converges() {
    let mut redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;

    redis
        .restart_with_changed_data(|url| async move {
            let mut w = writer_for(&url, ENV).await;
            w.put(vec![("alpha".into(), simple_feature("alpha", "off")), ("delta".into(), simple_feature("delta", "on"))]).await.unwrap();
            w.delete(&["beta".into()]).await.unwrap();
        })
        .await;
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(want.contains_key("delta") && !want.contains_key("beta"));
    assert!(counter(&relay, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await >= 1.0);
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "reconnect")]).await >= 1.0);
    relay.wait_status(ENV, "connected", |s| s["source"]["state"] == "connected" && s["revision"] == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replaced_by_a_fresh_instance_filled_by_import_converges() {
    let mut redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut upserting = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let mut replacing = WatchingClient::replacing(&relay, SERVER_KEY).await;
    let before = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut upserting, &mut replacing]).await;

    redis.restart_empty().await;
    // Empty and not initialised: the relay keeps serving what it had.
    relay.wait_status(ENV, "not initialised", |s| s["source"]["detail"].as_str().unwrap_or("").contains("not initialised")).await;
    wait_poll(&relay, SERVER_KEY, &before).await;
    redis.writer(ENV).await.import(flags(&[("gamma", "off"), ("omega", "on")])).await.unwrap();
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut upserting, &mut replacing]).await;
    assert_eq!(want.keys().collect::<Vec<_>>(), vec!["gamma", "omega"]);
    // The new instance's revision (1) is far below what the relay held: accepted.
    relay.wait_status(ENV, "revision 1", |s| s["revision"] == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_dropped_after_failed_probes_and_rejoined_after_sigcont() {
    let redis = TestRedis::start(&[]).await;
    seed(&redis).await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let before = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;

    redis.stop();
    // Later reconnect attempts replace last_error (connect timeouts): match while it says why.
    let st = relay
        .wait_status(ENV, "disconnected after failed probes", |s| {
            s["source"]["state"] == "disconnected" && s["source"]["last_error"].as_str().unwrap_or("").contains("probe")
        })
        .await;
    assert_eq!(st["source"]["stale"], true);
    assert!(counter(&relay, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await >= 1.0);
    assert_eq!(counter(&relay, "flagrelay_upstream_connected", &[("env", ENV)]).await, 0.0);
    // Last-known-good keeps being served, and the relay stays ready.
    wait_poll(&relay, SERVER_KEY, &before).await;
    let ready = within("readyz", http().get(relay.admin_url("/readyz")).send()).await.unwrap();
    assert_eq!(ready.status(), 200);

    redis.cont();
    redis.writer(ENV).await.put(vec![("beta".into(), simple_feature("beta", "on"))]).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    relay.wait_status(ENV, "connected again", |s| s["source"]["state"] == "connected" && s["source"]["stale"] == false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_by_the_pubsub_output_buffer_limit_reconnects_and_resyncs() {
    let redis = TestRedis::start(&["client-output-buffer-limit pubsub 32kb 16kb 0"]).await;
    seed(&redis).await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;

    // One atomic batch publishes ~300 KB at once: far over the subscriber's 32 KB limit.
    let filler: Vec<String> = (0..60).map(|i| format!("some-user-id-{i:04}")).collect();
    let batch: Vec<(String, Value)> = (0..300)
        .map(|i| {
            let key = format!("bulk-{i:03}");
            let mut f = role_feature(&key, &[]);
            f["rules"][0]["audience"]["conditions"][0]["values"] = json!(filler);
            (key, f)
        })
        .collect();
    redis.writer(ENV).await.put(batch).await.unwrap();
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert_eq!(want.len(), 303);
    assert!(redis.log().contains("output buffer limits"), "the server cut the subscriber:\n{}", redis.log());
    assert!(counter(&relay, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await >= 1.0);
    // And it keeps following afterwards.
    redis.writer(ENV).await.delete(&["bulk-000".into()]).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_even_to_a_lower_revision() {
    let sentinel = TestSentinel::start().await;
    seed(&sentinel.master).await;
    let relay = TestRelay::builder().upstream(&sentinel.upstream()).start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &sentinel.master.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    sentinel.wait_replica_synced("production").await;

    sentinel.failover().await;
    // A stale writer keeps writing to the old master, which is still a writable master for a
    // while; the relay, still attached to it, applies those writes.
    let mut stale = sentinel.master.writer(ENV).await;
    let r = stale.put((0..5).map(|i| (format!("doomed-{i}"), simple_feature(&format!("doomed-{i}"), "on"))).collect()).await.expect("the old master still takes writes");
    let high = r.revision;
    // The new master gets one real write.
    let mut fresh = sentinel.replica.writer(ENV).await;
    let low = fresh.put(vec![("alpha".into(), simple_feature("alpha", "off"))]).await.unwrap().revision;
    assert!(low < high, "the new master's revision {low} is below the old one's {high}");

    // Sentinel demotes the old master and cuts its subscribers; the relay asks Sentinel again.
    let new_master = sentinel.replica.url();
    let want = within("export from the new master", writer_for(&new_master, ENV).await.export()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            let st = relay.env_status(ENV).await;
            if st["revision"] == low && st["source"]["state"] == "connected" && exact(&poll_flags(&relay, SERVER_KEY).await) == exact(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "the relay did not converge to the new master; status {}\nsentinel log:\n{}", relay.env_status(ENV).await, sentinel.log());
    sse.wait_for(&want).await;
    assert!(!want.contains_key("doomed-0"), "the writes lost in the failover are reverted for SDKs too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_soak_every_client_ends_equal_to_redis() {
    let seed: u64 = std::env::var("FLAGRELAY_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261125);
    let writes: usize = std::env::var("FLAGRELAY_SOAK_WRITES").ok().and_then(|s| s.parse().ok()).unwrap_or(1200);
    eprintln!("soak: seed {seed}, {writes} writes (FLAGRELAY_SOAK_SEED / FLAGRELAY_SOAK_WRITES to change)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut redis = TestRedis::start(&[]).await;
    seed_env(&redis).await;
    let relay = relay_on(&redis.url(), "").config("[sse]\nheartbeat_secs = 1\n").start().await;
    let upserting = Background::spawn(WatchingClient::upsert_only(&relay, SERVER_KEY).await);
    let replacing = Background::spawn(WatchingClient::replacing(&relay, SERVER_KEY).await);

    let mut w = redis.writer(ENV).await;
    let mut done = 0usize;
    let mut faults = Vec::new();
    // Every kind of fault, in a seeded order, each cycle reshuffled, at seeded intervals.
    let mut cycle: Vec<u32> = Vec::new();
    let mut next_fault = rng.gen_range(30..120);
    while done < writes {
        // A batch of 1-4 changes in one atomic script call.
        let n = rng.gen_range(1..=4);
        let ops: Vec<(String, Option<Value>)> = (0..n)
            .map(|_| {
                let key = format!("f{:02}", rng.gen_range(0..40));
                if rng.gen_bool(0.25) {
                    (key, None)
                } else {
                    let mut f = simple_feature(&key, if rng.gen_bool(0.5) { "on" } else { "off" });
                    f["n"] = json!(done);
                    (key, Some(f))
                }
            })
            .collect();
        done += n;
        if let Err(e) = w.batch(ops).await {
            // The server was just killed or frozen by a fault: reconnect the writer.
            eprintln!("soak: write failed ({e}); reconnecting the writer");
            w = redis.writer(ENV).await;
        }
        if done >= next_fault {
            next_fault = done + rng.gen_range(30..120);
            if cycle.is_empty() {
                cycle = (0..6).collect();
                rand::seq::SliceRandom::shuffle(&mut cycle[..], &mut rng);
            }
            let fault = cycle.pop().unwrap_or(4);
            faults.push(fault);
            match fault {
                0 => {
                    redis.restart().await;
                    w = redis.writer(ENV).await;
                }
                1 => {
                    redis.stop();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(100..900))).await;
                    redis.cont();
                }
                2 => {
                    // A gap: two revisions, only the second one published (atomically).
                    hand_made_change(&mut redis.con().await, ENV, simple_feature("lost", "on"), 2, Some("PUBLISH")).await;
                }
                3 => {
                    // Trailing loss: a change without its message (atomically).
                    let variant = if done.is_multiple_of(2) { "on" } else { "off" };
                    hand_made_change(&mut redis.con().await, ENV, simple_feature("trailing", variant), 1, None).await;
                }
                4 => {
                    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
                }
                _ => {
                    let keep: serde_json::Map<String, Value> = (0..40)
                        .filter(|_| rng.gen_bool(0.3))
                        .map(|i| {
                            let k = format!("f{i:02}");
                            (k.clone(), simple_feature(&k, "on"))
                        })
                        .collect();
                    w.import(keep).await.expect("import");
                }
            }
        }
        if done % 300 < n {
            let _ = replacing.reconnect.send(()).await;
        }
    }
    eprintln!("soak: faults injected {faults:?}");
    assert!((0..6).all(|f| faults.contains(&f)), "every kind of fault was injected: {faults:?}");

    let rev: u64 = redis.cmd(&["GET", "{flagrelay:production}:rev"]).await;
    relay.wait_status(ENV, "the relay at Redis' revision", |s| s["revision"] == rev && s["source"]["state"] == "connected").await;
    let want = within("export", redis.writer(ENV).await.export()).await.unwrap();
    wait_poll(&relay, SERVER_KEY, &want).await;
    upserting.wait_for(&want, "upsert-only").await;
    replacing.wait_for(&want, "replace-on-full-state").await;
    // The SDKs saw those features as exact JSON, feature for feature.
    assert_eq!(exact(&upserting.get()), exact(&want));
    assert_eq!(exact(&replacing.get()), exact(&want));
    upserting.task.abort();
    replacing.task.abort();
    redis.kill();
}

async fn seed_env(redis: &TestRedis) {
    redis.writer(ENV).await.import(serde_json::Map::new()).await.expect("import");
    redis.writer("staging").await.import(serde_json::Map::new()).await.expect("import staging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_still_loading_its_data_is_backed_off_then_followed() {
    let mut redis = TestRedis::start(&["enable-debug-command yes"]).await;
    seed(&redis).await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // Enough data, loaded slowly, that the restarted server answers -LOADING for a while.
    let _: String = redis.cmd(&["DEBUG", "POPULATE", "15000"]).await;
    let _: String = redis.cmd(&["BGREWRITEAOF"]).await;
    within("the AOF rewrite", async {
        loop {
            let info: String = redis.cmd(&["INFO", "persistence"]).await;
            if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Slow loading, with the event loop answering often enough to say -LOADING.
    redis.set_config_lines(&["key-load-delay 150", "loading-process-events-interval-bytes 1024"]);
    let restarting = tokio::spawn(async move {
        redis.restart().await; // returns once the server answers PING, i.e. has loaded
        redis
    });
    let st = relay
        .wait_status(ENV, "the -LOADING answer in /status", |s| {
            s["source"]["last_error"].as_str().unwrap_or("").to_ascii_lowercase().contains("loading")
        })
        .await;
    assert_ne!(st["source"]["state"], "connected", "{st}");
    // Still serving the last good data meanwhile.
    assert_eq!(poll_flags(&relay, SERVER_KEY).await.len(), 3);
    let redis = within("the restart to finish", restarting).await.expect("restart task");
    redis.writer(ENV).await.put(vec![("delta".into(), simple_feature("delta", "on"))]).await.expect("put");
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(want.contains_key("delta"));
    relay.wait_status(ENV, "connected again", |s| s["source"]["state"] == "connected").await;
}
