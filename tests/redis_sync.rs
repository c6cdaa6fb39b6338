//! The Redis upstream against a real redis-server: initial sync, propagation, resyncs on lost
//! messages, malformed input, resets, large features, the not-initialised guard, warm start,
//! events forwarding, RESP2 and the write commands. Faults (kill, freeze, failover, soak) are in
//! `redis_faults.rs`.

use flagrelay_testkit as support;

use std::time::Duration;

use ::redis::AsyncCommands;
use serde_json::{json, Value};
use support::redis::*;
use support::redis::server::TestRedis;
use support::redis::watcher::{converge, poll_flags, wait_poll, WatchingClient};
use support::*;

const ENV: &str = "production";

fn flags(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), simple_feature(k, v))).collect()
}

async fn seeded() -> TestRedis {
    let r = TestRedis::start(&[]).await;
    r.writer(ENV).await.import(flags(&[("alpha", "on"), ("beta", "off")])).await.expect("import production");
    r.writer("staging").await.import(flags(&[("gamma", "on")])).await.expect("import staging");
    r
}

fn labels(reason: &str) -> [(&str, &str); 2] {
    [("env", ENV), ("reason", reason)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_serves_exactly_what_redis_holds() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert_eq!(want.len(), 2);
    assert_eq!(want["alpha"]["version"], 1, "the script stamps the revision");
    let staging = redis.writer("staging").await.export().await.unwrap();
    wait_poll(&relay, STAGING_SERVER_KEY, &staging).await;

    let st = relay.wait_status(ENV, "connected", |s| s["source"]["state"] == "connected").await;
    assert_eq!(st["revision"], 1);
    assert_eq!(st["source"]["kind"], "redis");
    assert_eq!(st["source"]["stale"], false);
    let epoch: String = redis.cmd(&["HGET", "{flagrelay:production}:meta", "epoch"]).await;
    assert_eq!(st["source"]["epoch"], epoch.as_str());
    assert!(st["source"]["data_age_seconds"].as_f64().is_some());
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_upstream_connected", &[("env", ENV)]), Some(1.0));
    assert_eq!(metric(&m, "flagrelay_upstream_resyncs_total", &labels("initial")), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_and_deletes_propagate_with_the_revision_as_event_id() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;

    let mut w = redis.writer(ENV).await;
    let r = w.put(vec![("alpha".into(), simple_feature("alpha", "off")), ("delta".into(), simple_feature("delta", "on"))]).await.unwrap();
    assert_eq!((r.revision, r.written), (3, 2));
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert_eq!(want["alpha"]["version"], 2);
    assert_eq!(sse.last_id, Some(3), "the SSE id is the upstream revision");

    w.delete(&["beta".into()]).await.unwrap();
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(!want.contains_key("beta"));
    assert_eq!(sse.last_id, Some(4));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_upstream_messages_total", &[("env", ENV), ("result", "applied")]), Some(3.0));
    assert_eq!(metric(&m, "flagrelay_upstream_resyncs_total", &labels("gap")).unwrap_or(0.0), 0.0, "no resync was needed");
    assert!(metric(&m, "flagrelay_propagation_seconds_count", &[("env", ENV)]).unwrap_or(0.0) >= 1.0);
}

/// Writes a feature to the hash and bumps `rev` by `jump` without publishing (a lost message).
async fn write_behind_the_relays_back(redis: &TestRedis, key: &str, variant: &str, jump: i64) -> u64 {
    let mut con = redis.con().await;
    let rev: u64 = con.incr("{flagrelay:production}:rev", jump).await.unwrap();
    let mut f = simple_feature(key, variant);
    f["version"] = json!(rev);
    let _: () = con.hset("{flagrelay:production}:features", key, f.to_string()).await.unwrap();
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_shows_as_a_gap_and_resyncs() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "probe_interval_ms = 60000").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // Two changes whose messages were lost, then one message published by hand with the jump.
    write_behind_the_relays_back(&redis, "lost-1", "on", 1).await;
    let rev = write_behind_the_relays_back(&redis, "lost-2", "off", 1).await;
    let msg = json!({"v":1,"env":ENV,"epoch":redis.cmd::<String>(&["HGET","{flagrelay:production}:meta","epoch"]).await,"rev":rev,"op":"upsert","key":"lost-2","ts":1});
    let _: i64 = redis.cmd(&["PUBLISH", "{flagrelay:production}:changes", &msg.to_string()]).await;
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(want.contains_key("lost-1") && want.contains_key("lost-2"));
    assert_eq!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("gap")).await, 1.0);
    assert_eq!(relay.env_status(ENV).await["revision"], rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_loss_is_found_by_the_probe() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // The last change's message never arrives: nothing else will ever show a gap.
    write_behind_the_relays_back(&redis, "alpha", "off", 1).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("probe_ahead")).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_goes_backwards_is_found_by_the_probe() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    redis.writer(ENV).await.put(vec![("alpha".into(), simple_feature("alpha", "off"))]).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // A restore under the relay: older content, lower revision, same epoch, no message.
    let mut con = redis.con().await;
    let mut old = simple_feature("alpha", "on");
    old["version"] = json!(1);
    let _: () = ::redis::pipe().atomic().set("{flagrelay:production}:rev", 1).hset("{flagrelay:production}:features", "alpha", old.to_string()).query_async(&mut con).await.unwrap();
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert_eq!(want["alpha"], old, "the revert reached the clients");
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("probe_behind")).await >= 1.0);
    relay.wait_status(ENV, "revision 1", |s| s["revision"] == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_and_invalid_features_are_counted_and_skipped() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "probe_interval_ms = 60000").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    let epoch: String = redis.cmd(&["HGET", "{flagrelay:production}:meta", "epoch"]).await;
    for junk in [
        "not json at all".to_string(),
        json!({"v": 1, "env": ENV}).to_string(),
        json!({"v": 9, "env": ENV, "epoch": epoch, "rev": 2, "op": "delete", "key": "alpha"}).to_string(),
        json!({"v": 1, "env": "staging", "epoch": epoch, "rev": 2, "op": "delete", "key": "alpha"}).to_string(),
        json!({"v": 1, "env": ENV, "epoch": epoch, "rev": 2, "op": "explode", "key": "alpha"}).to_string(),
    ] {
        let _: i64 = redis.cmd(&["PUBLISH", "{flagrelay:production}:changes", &junk]).await;
    }
    wait_counter(&relay, "flagrelay_upstream_messages_total", &[("env", ENV), ("result", "malformed")], 5.0).await;

    // An invalid feature written into the hash with its message: skipped, the old version stays.
    let bad = json!({"key": "alpha", "enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 60}]}], "version": 2});
    let mut con = redis.con().await;
    let _: () = ::redis::pipe().atomic().incr("{flagrelay:production}:rev", 1).hset("{flagrelay:production}:features", "alpha", bad.to_string()).query_async(&mut con).await.unwrap();
    let msg = json!({"v": 1, "env": ENV, "epoch": epoch, "rev": 2, "op": "upsert", "key": "alpha", "feature": bad, "ts": 1});
    let _: i64 = redis.cmd(&["PUBLISH", "{flagrelay:production}:changes", &msg.to_string()]).await;
    wait_counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)], 1.0).await;

    // The relay keeps serving the rest and applies the next good change without a resync.
    redis.writer(ENV).await.put(vec![("beta".into(), simple_feature("beta", "on"))]).await.unwrap();
    let served = poll_flags(&relay, SERVER_KEY).await;
    let mut want = within("export", redis.writer(ENV).await.export()).await.unwrap();
    want.insert("alpha".into(), served["alpha"].clone());
    assert_eq!(served["alpha"]["version"], 1, "the previous valid alpha is kept");
    wait_poll(&relay, SERVER_KEY, &want).await;
    sse.wait_for(&want).await;
    assert_eq!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("gap")).await, 0.0);
    assert!(relay.env_status(ENV).await["source"]["last_error"].as_str().unwrap_or("").contains("alpha"));

    // A resync meets the invalid feature in the hash too: still skipped, still the old version.
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_counter(&relay, "flagrelay_upstream_resyncs_total", &labels("reconnect"), 1.0).await;
    wait_counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)], 2.0).await;
    wait_poll(&relay, SERVER_KEY, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_resets_every_client_to_the_new_set_including_deletions() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut upserting = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let mut replacing = WatchingClient::replacing(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut upserting, &mut replacing]).await;
    let epoch_before = relay.env_status(ENV).await["source"]["epoch"].clone();
    redis.writer(ENV).await.import(flags(&[("beta", "on"), ("omega", "off")])).await.unwrap();
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut upserting, &mut replacing]).await;
    assert_eq!(want.keys().collect::<Vec<_>>(), vec!["beta", "omega"], "alpha was deleted for everyone");
    assert_eq!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("reset")).await, 1.0);
    let st = relay.env_status(ENV).await;
    assert_ne!(st["source"]["epoch"], epoch_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_feature_published_without_its_body_is_read_with_hget() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "probe_interval_ms = 60000").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    let big: Vec<String> = (0..3000).map(|i| format!("user-{i:05}")).collect();
    let mut f = role_feature("big", &[]);
    f["rules"][0]["audience"]["conditions"][0]["values"] = json!(big);
    let mut w = redis.writer(ENV).await;
    // Watch the channel to see the body left out of the message.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut watch = within("pubsub", client.get_async_pubsub()).await.unwrap();
    within("subscribe", watch.subscribe("{flagrelay:production}:changes")).await.unwrap();
    w.put(vec![("big".into(), f)]).await.unwrap();
    let msg = within("the change message", futures_util::StreamExt::next(&mut watch.on_message())).await.unwrap();
    let msg: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(msg["op"], "upsert");
    assert!(msg.get("feature").is_none(), "published without its body: {msg}");
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(serde_json::to_string(&want["big"]).unwrap().len() > 16 * 1024);
    assert_eq!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("gap")).await, 0.0);
    assert_eq!(counter(&relay, "flagrelay_upstream_messages_total", &[("env", ENV), ("result", "applied")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_not_initialised_upstream_keeps_its_last_good_data() {
    let redis = seeded().await;
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let before = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // Redis loses everything (restart without persistence), then comes back empty.
    let _: () = redis.cmd(&["FLUSHALL"]).await;
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let st = relay.wait_status(ENV, "not initialised", |s| s["source"]["detail"].as_str().unwrap_or("").contains("not initialised")).await;
    assert_eq!(st["source"]["stale"], true);
    assert_eq!(poll_flags(&relay, SERVER_KEY).await, before, "never wiped");
    let ready = within("readyz", http().get(relay.admin_url("/readyz")).send()).await.unwrap();
    assert_eq!(ready.status(), 200, "still ready: the data was loaded");
    // A put alone does not make the set complete; an import does.
    let ignored = [("env", ENV), ("result", "ignored")];
    let seen = counter(&relay, "flagrelay_upstream_messages_total", &ignored).await;
    redis.writer(ENV).await.put(vec![("zeta".into(), simple_feature("zeta", "on"))]).await.unwrap();
    wait_counter(&relay, "flagrelay_upstream_messages_total", &ignored, seen + 1.0).await; // the relay has the put's message
    assert_eq!(poll_flags(&relay, SERVER_KEY).await, before);
    redis.writer(ENV).await.import(flags(&[("zeta", "off")])).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    relay.wait_status(ENV, "connected, not stale", |s| s["source"]["stale"] == false && s["source"]["state"] == "connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_an_empty_redis_is_not_ready_and_says_why() {
    let redis = TestRedis::start(&[]).await;
    redis.writer("staging").await.import(flags(&[])).await.unwrap();
    let relay = relay_on(&redis.url(), "").start_unready().await;
    relay.wait_status(ENV, "not initialised", |s| s["source"]["detail"].as_str().unwrap_or("").contains("not initialised")).await;
    let ready = within("readyz", http().get(relay.admin_url("/readyz")).send()).await.unwrap();
    assert_eq!(ready.status(), 503);
    redis.writer(ENV).await.import(flags(&[("alpha", "on")])).await.unwrap();
    relay.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_serves_the_persisted_snapshot_while_redis_is_down() {
    let mut redis = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("snapshot_dir = {:?}", dir.path().display().to_string());
    let relay = relay_on(&redis.url(), &extra).start().await;
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut []).await;
    within("the snapshot file", async {
        while !dir.path().join("production.snapshot.json").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    relay.stop().await;
    redis.kill();

    let relay = relay_on(&redis.url(), &extra).start().await; // ready from the persisted data
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    sse.wait_for(&want).await;
    wait_poll(&relay, SERVER_KEY, &want).await;
    let st = relay.env_status(ENV).await;
    assert_eq!(st["source"]["stale"], true);
    assert_eq!(st["source"]["state"], "disconnected");
    assert!(st["source"]["detail"].as_str().unwrap_or("").contains("reconnecting") || st["source"]["last_error"].is_string());

    redis.restart().await;
    redis.writer(ENV).await.put(vec![("alpha".into(), simple_feature("alpha", "off"))]).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    relay.wait_status(ENV, "synced", |s| s["source"]["stale"] == false && s["source"]["state"] == "connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_events_are_appended_to_the_events_stream_and_dropped_when_redis_is_down() {
    let mut redis = seeded().await;
    let relay = relay_on(&redis.url(), "events_maxlen = 1000").start().await;
    let body = r#"[{"featureKey":"alpha","evaluatedVariant":"on","user":{"id":"u1"}}]"#;
    let r = within("events", http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).header("content-type", "application/json").body(body).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    wait_counter(&relay, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "sent")], 1.0).await;
    let entries: Vec<(String, Vec<(String, String)>)> = {
        let mut con = redis.con().await;
        let v: ::redis::streams::StreamRangeReply = con.xrange_all("{flagrelay:production}:events").await.unwrap();
        v.ids.into_iter().map(|e| (e.id.clone(), e.map.iter().map(|(k, v)| (k.clone(), ::redis::from_redis_value_ref::<String>(v).unwrap())).collect())).collect()
    };
    assert_eq!(entries.len(), 1);
    let fields: std::collections::HashMap<_, _> = entries[0].1.iter().cloned().collect();
    assert_eq!(fields["kind"], "events");
    assert_eq!(fields["body"], body);

    redis.kill();
    for _ in 0..3 {
        let r = within("events while down", http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).header("content-type", "application/json").body(body).send()).await.unwrap();
        assert_eq!(r.status(), 200, "requests never wait on Redis");
    }
    wait_counter(&relay, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "dropped")], 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_resp3_is_followed_over_resp2() {
    let redis = TestRedis::start(&["rename-command HELLO \"\""]).await;
    redis.writer(ENV).await.import(flags(&[("alpha", "on")])).await.unwrap();
    redis.writer("staging").await.import(flags(&[])).await.unwrap();
    let relay = relay_on(&redis.url(), "").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    redis.writer(ENV).await.put(vec![("beta".into(), simple_feature("beta", "on"))]).await.unwrap();
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // Trailing loss is still found (one probe later than over RESP3).
    write_behind_the_relays_back(&redis, "alpha", "off", 1).await;
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("probe_ahead")).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_commands_write_read_and_refuse_invalid_features() {
    let redis = TestRedis::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_flagrelay");
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--redis-url".to_string(), redis.url(), "--config".to_string(), "/nonexistent.toml".into()]);
        std::process::Command::new(bin).args(&all).output().expect("run flagrelay")
    };
    let import = dir.path().join("import.json");
    std::fs::write(&import, serde_json::to_vec(&flags(&[("alpha", "on"), ("beta", "off")])).unwrap()).unwrap();
    let out = run(&["flags", "import", "--env", ENV, import.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let one = dir.path().join("one.json");
    std::fs::write(&one, simple_feature("gamma", "on").to_string()).unwrap();
    assert!(run(&["flags", "put", "--env", ENV, one.to_str().unwrap()]).status.success());
    assert!(run(&["flags", "delete", "--env", ENV, "beta"]).status.success());

    let bad = dir.path().join("bad.json");
    let mut invalid = simple_feature("delta", "on");
    invalid["rules"][0]["variantSplits"][0]["split"] = json!(60);
    std::fs::write(&bad, json!({"delta": invalid, "epsilon": simple_feature("epsilon", "on")}).to_string()).unwrap();
    let out = run(&["flags", "put", "--env", ENV, bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delta") && err.contains("nothing was written"), "{err}");

    let out = run(&["flags", "export", "--env", ENV]);
    assert!(out.status.success());
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = exported.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["alpha", "gamma"], "sorted, beta deleted, nothing of the refused put");
    assert_eq!(exported["gamma"]["version"], 2);
    let rev: u64 = redis.cmd(&["GET", "{flagrelay:production}:rev"]).await;
    assert_eq!(rev, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_revision_is_caught_by_the_next_message_even_between_probes() {
    let redis = seeded().await;
    // Probes far apart: only the message path can notice.
    let relay = relay_on(&redis.url(), "probe_interval_ms = 60000").start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let mut w = redis.writer(ENV).await;
    for i in 0..5 {
        w.put(vec![(format!("x{i}"), simple_feature(&format!("x{i}"), "on"))]).await.expect("put");
    }
    converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    // An operator restores older data without a reset (spec §E): the counter goes back and a
    // feature disappears, silently; the next write reuses an old revision.
    let _: String = redis.cmd(&["SET", "{flagrelay:production}:rev", "1"]).await;
    let _: i64 = redis.cmd(&["HDEL", "{flagrelay:production}:features", "x4"]).await;
    w.put(vec![("y".into(), simple_feature("y", "on"))]).await.expect("put");
    let want = converge(&relay, &redis.url(), ENV, SERVER_KEY, &mut [&mut sse]).await;
    assert!(want.contains_key("y") && !want.contains_key("x4"));
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &labels("probe_behind")).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_script_refuses_documents_that_are_not_one_feature_object() {
    let redis = seeded().await;
    let script = ::redis::Script::new(include_str!("../scripts/redis/flagrelay-write.lua"));
    let mut con = redis.con().await;
    let rev_before: u64 = redis.cmd(&["GET", "{flagrelay:production}:rev"]).await;
    let keys = ["{flagrelay:production}:rev", "{flagrelay:production}:features", "{flagrelay:production}:meta", "{flagrelay:production}:changes"];
    for bad in [r#"{x}"#, r#"{"a":1}{"b":2}"#, r#"{"key":"other","enabled":false}"#, r#"{"key":"f","version":7}"#, "[1]"] {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(ENV).arg("ops").arg(16384).arg("").arg("upsert").arg("f").arg(bad);
        let r: ::redis::RedisResult<Vec<i64>> = within("EVALSHA", inv.invoke_async(&mut con)).await;
        assert!(r.is_err(), "accepted {bad}");
    }
    let rev_after: u64 = redis.cmd(&["GET", "{flagrelay:production}:rev"]).await;
    assert_eq!(rev_before, rev_after, "nothing was written");
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    inv.arg(ENV).arg("ops").arg(16384).arg("").arg("upsert").arg("f").arg(r#"{"key":"f","enabled":false}"#);
    let r: Vec<i64> = within("EVALSHA", inv.invoke_async(&mut con)).await.expect("a valid document is written");
    assert_eq!(r[0] as u64, rev_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_key_that_is_not_utf8_is_skipped_not_fatal() {
    let redis = seeded().await;
    let mut con = redis.con().await;
    let _: i64 = within(
        "HSET",
        ::redis::cmd("HSET").arg("{flagrelay:production}:features").arg(&b"bad-\xff\xfe"[..]).arg(r#"{"enabled":false}"#).query_async(&mut con),
    )
    .await
    .expect("HSET");
    let relay = relay_on(&redis.url(), "").start().await;
    let flags = poll_flags(&relay, SERVER_KEY).await;
    assert_eq!(flags.len(), 2, "the rest of the environment syncs");
    let st = relay.env_status(ENV).await;
    assert!(st["source"]["last_error"].as_str().unwrap_or("").contains("not UTF-8"), "{st}");
    assert!(counter(&relay, "flagrelay_invalid_features_total", &[("env", ENV)]).await >= 1.0);
}
