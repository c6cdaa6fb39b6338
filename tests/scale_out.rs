//! Scale-out: several relays on one Redis all converge to exactly what Redis holds, and a relay
//! started later catches up.

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::redis::*;
use support::redis::server::TestRedis;
use support::redis::watcher::{converge, wait_poll, WatchingClient};
use support::*;

const ENV: &str = "production";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_on_one_redis_converge_and_a_fourth_started_later_catches_up() {
    let redis = TestRedis::start(&[]).await;
    let initial: serde_json::Map<String, Value> =
        (0..10).map(|i| (format!("f{i}"), simple_feature(&format!("f{i}"), "on"))).collect();
    redis.writer(ENV).await.import(initial).await.expect("import");
    redis.writer("staging").await.import(serde_json::Map::new()).await.expect("import staging");

    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(relay_on(&redis.url(), "").start().await);
    }
    let mut upsert_only = Vec::new();
    let mut replacing = Vec::new();
    for r in &relays {
        upsert_only.push(WatchingClient::upsert_only(r, SERVER_KEY).await);
        replacing.push(WatchingClient::replacing(r, SERVER_KEY).await);
    }

    // Changes through the reference writer: upserts, new features, deletes, a role rule.
    let mut w = redis.writer(ENV).await;
    for i in 0..40 {
        let key = format!("f{}", i % 13);
        if i % 7 == 3 {
            w.delete(&[key]).await.expect("delete");
        } else if i % 5 == 0 {
            w.put(vec![(key.clone(), role_feature(&key, &["pvt_user", "beta"]))]).await.expect("put");
        } else {
            let variant = if i % 2 == 0 { "on" } else { "off" };
            w.put(vec![(key.clone(), simple_feature(&key, variant))]).await.expect("put");
        }
    }
    w.put(vec![("late".into(), json!({"key": "late", "enabled": false, "offVariantKey": "off", "rules": []}))]).await.expect("put");

    for (i, r) in relays.iter().enumerate() {
        let mut clients = [&mut upsert_only[i], &mut replacing[i]];
        let want = converge(r, &redis.url(), ENV, SERVER_KEY, &mut clients).await;
        assert!(want.contains_key("late"));
    }
    // Every relay reports Redis's revision.
    let rev: u64 = redis.cmd(&["GET", "{flagrelay:production}:rev"]).await;
    for r in &relays {
        r.wait_status(ENV, "Redis's revision", |s| s["revision"].as_u64() == Some(rev)).await;
    }

    // A fourth relay, started after all of it, catches up; so do its clients.
    let late = relay_on(&redis.url(), "").start().await;
    let mut c = WatchingClient::upsert_only(&late, SERVER_KEY).await;
    converge(&late, &redis.url(), ENV, SERVER_KEY, &mut [&mut c]).await;
    // And it follows later changes like the others.
    w.delete(&["late".to_string()]).await.expect("delete");
    let mut all: Vec<&TestRelay> = relays.iter().collect();
    all.push(&late);
    for r in all {
        let want = within("export", writer_for(&redis.url(), ENV).await.export()).await.expect("export");
        assert!(!want.contains_key("late"));
        wait_poll(r, SERVER_KEY, &want).await;
    }
    c.wait_for(&within("export", writer_for(&redis.url(), ENV).await.export()).await.expect("export")).await;
}
