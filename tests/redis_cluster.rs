//! The Redis Cluster upstream (issue 13) against a real cluster the harness starts on loopback
//! ports: 3 primaries + 3 replicas ([`TestCluster`]), "production" and "staging" on different
//! primaries. Each fault ends with an upsert-only SSE client, a replacing SSE client and a poll
//! all equal, as exact JSON, to `flags export`; the other environment keeps its session.
//! Last, "TLS and auth as for single Redis": a cluster with a password, and one on TLS only.

use flagrelay_testkit as support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::redis::faults::hand_made_change;
use support::redis::cluster::{Secured, TestCluster};
use support::redis::server::TestRedis;
use support::redis::watcher::{converge_to, exact, wait_poll, Background, WatchingClient};
use support::redis::*;
use support::*;

use flagrelay::config::RedisUpstream;
use flagrelay::upstream::redis::writer::Writer;

const ENV: &str = "production";
const OTHER: &str = "staging";

fn flags(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), simple_feature(k, v))).collect()
}

/// The writer's settings for the cluster (`--cluster` with every node as a seed; the password
/// in the URLs, and the CA of a TLS cluster).
fn cluster_tool(c: &TestCluster) -> RedisUpstream {
    let urls = c.urls();
    let args = flagrelay::config::Overrides {
        config: "/nonexistent/flagrelay.toml".into(),
        redis_url: Some(urls[0].clone()),
        cluster: true,
        cluster_seeds: urls[1..].iter().map(|u| u.trim_start_matches("redis://").to_string()).collect(),
        ..Default::default()
    };
    let mut cfg = RedisUpstream::for_tool(&args).expect("cluster tool config").0;
    cfg.tls_ca_file = c.tls().map(|t| t.ca.clone());
    cfg
}

async fn writer(c: &TestCluster, env: &str) -> Writer {
    within("the cluster writer to connect", Writer::connect(&cluster_tool(c), env)).await.expect("cluster writer connects")
}

/// The relay on the cluster: one seed only (it must learn the rest), fast fault timings (and
/// the CA of a TLS cluster).
fn relay_on_cluster(c: &TestCluster) -> TestRelayBuilder {
    let tls = c.tls().map(|t| t.upstream_lines()).unwrap_or_default();
    relay_on(&c.seed_url(), &format!("cluster = true\n{tls}"))
}

async fn seed(c: &TestCluster) {
    writer(c, ENV).await.import(flags(&[("alpha", "on"), ("beta", "off"), ("gamma", "on")])).await.expect("import production");
    writer(c, OTHER).await.import(flags(&[("sigma", "on")])).await.expect("import staging");
}

/// Writes until one succeeds (a write may fail while the cluster fails over or migrates).
async fn put_retrying(c: &TestCluster, env: &str, key: &str, variant: &str) -> u64 {
    within("a write to succeed", async {
        loop {
            match writer(c, env).await.put(vec![(key.into(), simple_feature(key, variant))]).await {
                Ok(r) => return r.revision,
                Err(e) => {
                    eprintln!("write failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
}

/// On the environment's primary, by hand: a change without its message (trailing loss).
async fn trailing_loss(node: &TestRedis, key: &str) {
    hand_made_change(&mut node.con().await, ENV, simple_feature(key, "on"), 1, None).await;
}

/// On the environment's primary, by hand: two revisions, only the second one published (sharded).
async fn gap(node: &TestRedis, key: &str) {
    hand_made_change(&mut node.con().await, ENV, simple_feature(key, "off"), 2, Some("SPUBLISH")).await;
}

/// The cluster (both environments seeded), a relay on it, and both SSE clients converged.
async fn converged() -> (TestCluster, TestRelay, Clients) {
    let c = TestCluster::start(&[ENV, OTHER]).await;
    seed(&c).await;
    let relay = relay_on_cluster(&c).start().await;
    let mut clients = Clients::open(&relay).await;
    clients.converge(&relay, &c).await;
    (c, relay, clients)
}

struct Clients {
    upserting: WatchingClient,
    replacing: WatchingClient,
}

impl Clients {
    async fn open(relay: &TestRelay) -> Clients {
        Clients { upserting: WatchingClient::upsert_only(relay, SERVER_KEY).await, replacing: WatchingClient::replacing(relay, SERVER_KEY).await }
    }

    /// Both SSE clients and polling equal `flags export` of the environment.
    async fn converge(&mut self, relay: &TestRelay, c: &TestCluster) -> Flags {
        converge_to(relay, &cluster_tool(c), ENV, SERVER_KEY, &mut [&mut self.upserting, &mut self.replacing]).await
    }
}

/// The other environment was never reconnected and serves what the cluster holds.
async fn other_untouched(relay: &TestRelay, c: &TestCluster) {
    assert_eq!(counter(relay, "flagrelay_upstream_reconnects_total", &[("env", OTHER)]).await, 0.0, "staging was reconnected");
    let want = within("export staging", writer(c, OTHER).await.export()).await.expect("export");
    wait_poll(relay, STAGING_SERVER_KEY, &want).await;
}

/// `/status` names `port`'s node as the environment's server, with the cluster state ok.
async fn served_by(relay: &TestRelay, env: &str, port: u16) {
    served_as(relay, env, &format!("127.0.0.1:{port}")).await
}

/// [`served_by`] with the server as `/status` spells it (`127.0.0.1:<port> (tls)` over TLS).
async fn served_as(relay: &TestRelay, env: &str, addr: &str) {
    relay.wait_status(env, &format!("served by {addr}"), |s| s["source"]["server"] == addr && s["source"]["cluster_state"] == "ok" && s["source"]["state"] == "connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_environment_is_followed_on_its_own_primary_over_sharded_pubsub() {
    let (c, relay, mut clients) = converged().await;
    let (p, s) = (c.primary_of_env(ENV).await, c.primary_of_env(OTHER).await);
    assert_ne!(p, s);
    served_by(&relay, ENV, c.node(p).port).await;
    served_by(&relay, OTHER, c.node(s).port).await;

    put_retrying(&c, ENV, "delta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("delta"));
    // The relay holds a sharded subscription on the slot's primary, and no plain one.
    let channels: Vec<String> = c.node(p).cmd(&["PUBSUB", "SHARDCHANNELS"]).await;
    assert!(channels.iter().any(|ch| ch == "{flagrelay:production}:changes"), "{channels:?}");
    let plain: Vec<String> = c.node(p).cmd(&["PUBSUB", "CHANNELS"]).await;
    assert!(plain.is_empty(), "no plain subscription in cluster mode: {plain:?}");
    assert!(counter(&relay, "flagrelay_upstream_messages_total", &[("env", ENV), ("result", "applied")]).await >= 1.0);
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_its_replica_and_writes_continue() {
    let (mut c, relay, mut clients) = converged().await;
    let old = c.primary_of_env(ENV).await;
    c.wait_replicated(old).await;

    let killed = std::time::Instant::now();
    c.kill(old);
    let new = c.wait_promoted(ENV, old).await;
    let promoted = killed.elapsed();
    assert_ne!(new, old);
    served_by(&relay, ENV, c.node(new).port).await;
    // For docs/operations.md (what a failover costs), not asserted.
    eprintln!("failover: replica promoted {promoted:?} after the kill, relay live on it {:?} after the kill", killed.elapsed());
    put_retrying(&c, ENV, "alpha", "off").await;
    let want = clients.converge(&relay, &c).await;
    assert_eq!(want["alpha"]["rules"], simple_feature("alpha", "off")["rules"]);
    served_by(&relay, ENV, c.node(new).port).await;
    assert!(wait_counter(&relay, "flagrelay_upstream_topology_changes_total", &[("env", ENV), ("reason", "owner_changed")], 1.0).await >= 1.0);
    assert!(counter(&relay, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "topology")]).await >= 1.0);
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_before_its_replica_had_the_last_write_is_followed_backwards() {
    let (mut c, relay, mut clients) = converged().await;
    let old = c.primary_of_env(ENV).await;
    let replica = c.replica_of(old).await;
    c.wait_replicated(old).await;

    // The primary takes (and the relay serves) a write that is never replicated, as
    // asynchronous replication loses one when a primary dies: a script that opts out of
    // replication (`redis.set_repl(redis.REPL_NONE)`) but still publishes. Then the primary dies.
    let epoch: String = c.node(old).cmd(&["HGET", "{flagrelay:production}:meta", "epoch"]).await;
    let doc = simple_feature("doomed", "on").to_string();
    let script = r#"
        redis.set_repl(redis.REPL_NONE)
        local rev = redis.call('INCR', KEYS[1])
        local doc = string.sub(ARGV[1], 1, -2) .. ',"version":' .. rev .. '}'
        redis.call('HSET', KEYS[2], 'doomed', doc)
        redis.call('SPUBLISH', KEYS[3], '{"v":1,"env":"production","epoch":"' .. ARGV[2] .. '","rev":' .. rev ..
          ',"op":"upsert","key":"doomed","feature":' .. doc .. ',"ts":1}')
        return rev"#;
    let high: u64 = c
        .node(old)
        .cmd(&["EVAL", script, "3", "{flagrelay:production}:rev", "{flagrelay:production}:features", "{flagrelay:production}:changes", &doc, &epoch])
        .await;
    relay.wait_status(ENV, "the doomed write applied", |s| s["revision"] == high).await;
    let held = clients.converge(&relay, &c).await;
    assert!(held.contains_key("doomed"));
    c.kill(old);
    let new = c.wait_promoted(ENV, old).await;
    assert_eq!(new, replica);
    let want = clients.converge(&relay, &c).await;
    assert!(!want.contains_key("doomed"), "the write lost in the failover is reverted for every client");
    let st = relay.wait_status(ENV, "a lower revision", |s| s["revision"].as_u64().is_some_and(|r| r < high)).await;
    assert_eq!(st["source"]["state"], "connected");
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_and_a_takeover_are_both_followed() {
    let (c, relay, mut clients) = converged().await;
    for takeover in [false, true] {
        let old = c.primary_of_env(ENV).await;
        c.wait_replicated(old).await;
        let replica = c.replica_of(old).await;
        c.failover(replica, takeover).await;
        let variant = if takeover { "off" } else { "on" };
        put_retrying(&c, ENV, "beta", variant).await;
        let want = clients.converge(&relay, &c).await;
        assert_eq!(want["beta"]["rules"], simple_feature("beta", variant)["rules"], "takeover: {takeover}");
        served_by(&relay, ENV, c.node(replica).port).await;
    }
    assert!(counter(&relay, "flagrelay_upstream_topology_changes_total", &[("env", ENV), ("reason", "owner_changed")]).await >= 2.0);
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_while_writes_go_on_is_followed_to_its_new_primary() {
    let (c, relay, mut clients) = converged().await;
    let from = c.primary_of_env(ENV).await;
    let to = c.primary_of_env(OTHER).await;

    // Writes keep going during the whole migration (some are refused with TRYAGAIN/ASK and
    // retried by the cluster client or by us).
    let tool = cluster_tool(&c);
    let writing = tokio::spawn(async move {
        let mut written = 0u32;
        for i in 0..60u32 {
            let Ok(mut w) = Writer::connect(&tool, ENV).await else { continue };
            let key = format!("m{:02}", i % 12);
            if w.put(vec![(key.clone(), simple_feature(&key, if i % 2 == 0 { "on" } else { "off" }))]).await.is_ok() {
                written += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        written
    });
    c.migrate_env(ENV, to).await;
    let written = within("the writer to finish", writing).await.expect("writer task");
    assert!(written > 0);
    put_retrying(&c, ENV, "after", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("after"));
    assert_eq!(c.primary_of_env(ENV).await, to);
    assert_ne!(from, to);
    served_by(&relay, ENV, c.node(to).port).await;
    assert!(counter(&relay, "flagrelay_upstream_topology_changes_total", &[("env", ENV), ("reason", "owner_changed")]).await >= 1.0);
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_failed_over_and_the_relay_follows_the_replica() {
    let (mut c, relay, mut clients) = converged().await;
    let old = c.primary_of_env(ENV).await;
    c.wait_replicated(old).await;

    c.stop(old);
    let new = c.wait_promoted(ENV, old).await;
    put_retrying(&c, ENV, "gamma", "off").await;
    clients.converge(&relay, &c).await;
    served_by(&relay, ENV, c.node(new).port).await;
    // Thawed, the old primary rejoins as a replica; nothing changes for the clients.
    c.cont(old);
    c.wait_ok().await;
    put_retrying(&c, ENV, "epsilon", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("epsilon"));
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_gap_and_a_trailing_loss_on_the_slots_primary_are_resynced() {
    let (c, relay, mut clients) = converged().await;
    let p = c.primary_of_env(ENV).await;
    let node = c.node(p);

    trailing_loss(node, "trailing").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("trailing"));
    wait_counter(&relay, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "probe_ahead")], 1.0).await;

    gap(node, "gapped").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("gapped"));
    wait_counter(&relay, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "gap")], 1.0).await;
    other_untouched(&relay, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_events_are_appended_on_the_environments_primary() {
    let c = TestCluster::start(&[ENV, OTHER]).await;
    seed(&c).await;
    let relay = relay_on_cluster(&c).start().await;
    let r = http()
        .post(relay.url("/api/sdk/v1/events"))
        .header("Authorization", format!("Bearer {SERVER_KEY}"))
        .json(&json!([{"featureKey": "alpha", "evaluatedVariant": "on", "user": {"id": "u1"}}]))
        .send()
        .await
        .expect("post events");
    assert!(r.status().is_success(), "{}", r.status());
    let p = c.primary_of_env(ENV).await;
    within("the events on the primary", async {
        loop {
            let n: u64 = c.node(p).cmd(&["XLEN", "{flagrelay:production}:events"]).await;
            if n >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Every fault above, interleaved at seeded random points with ≥ 500 writes across both
/// environments; every client ends equal to `flags export`, both environments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_soak_every_client_ends_equal_to_the_cluster() {
    let seed_value: u64 = std::env::var("FLAGRELAY_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261202);
    let writes: usize = std::env::var("FLAGRELAY_CLUSTER_SOAK_WRITES").ok().and_then(|s| s.parse().ok()).unwrap_or(520);
    eprintln!("cluster soak: seed {seed_value}, {writes} writes (FLAGRELAY_SOAK_SEED / FLAGRELAY_CLUSTER_SOAK_WRITES to change)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value);
    let mut c = TestCluster::start(&[ENV, OTHER]).await;
    seed(&c).await;
    let relay = relay_on_cluster(&c).config("[sse]\nheartbeat_secs = 1\n").start().await;
    let upserting = Background::spawn(WatchingClient::upsert_only(&relay, SERVER_KEY).await);
    let replacing = Background::spawn(WatchingClient::replacing(&relay, SERVER_KEY).await);
    let other = Background::spawn(WatchingClient::upsert_only(&relay, STAGING_SERVER_KEY).await);

    let tool = cluster_tool(&c);
    let mut w = [writer(&c, ENV).await, writer(&c, OTHER).await];
    let mut done = 0usize;
    let mut faults = Vec::new();
    let mut cycle: Vec<u32> = Vec::new();
    let mut next_fault = rng.gen_range(20..60);
    while done < writes {
        let which = usize::from(rng.gen_bool(0.3));
        let n = rng.gen_range(1..=3);
        let ops: Vec<(String, Option<Value>)> = (0..n)
            .map(|_| {
                let key = format!("f{:02}", rng.gen_range(0..30));
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
        if let Err(e) = w[which].batch(ops).await {
            eprintln!("cluster soak: write failed ({e}); reconnecting the writer");
            if let Ok(fresh) = Writer::connect(&tool, if which == 0 { ENV } else { OTHER }).await {
                w[which] = fresh;
            }
        }
        if done >= next_fault {
            next_fault = done + rng.gen_range(20..60);
            if cycle.is_empty() {
                cycle = (0..7).collect();
                rand::seq::SliceRandom::shuffle(&mut cycle[..], &mut rng);
            }
            let fault = cycle.pop().unwrap_or(0);
            faults.push(fault);
            let p = c.primary_of_env(ENV).await;
            match fault {
                0 => {
                    // kill -9 the slot's primary, its replica takes over; restart it as a replica.
                    c.wait_replicated(p).await;
                    c.kill(p);
                    c.wait_promoted(ENV, p).await;
                    c.restart(p).await;
                    c.wait_ok().await;
                }
                1 | 2 => {
                    c.wait_replicated(p).await;
                    let r = c.replica_of(p).await;
                    c.failover(r, fault == 2).await;
                }
                3 => {
                    let primaries = c.primaries().await;
                    let to = primaries.into_iter().find(|i| *i != p).expect("another primary");
                    c.migrate_env(ENV, to).await;
                }
                5 => trailing_loss(c.node(p), &format!("t{done}")).await,
                6 => gap(c.node(p), &format!("g{done}")).await,
                _ => {
                    // SIGSTOP long enough for a failover, then SIGCONT (it rejoins as a replica).
                    c.wait_replicated(p).await;
                    c.stop(p);
                    c.wait_promoted(ENV, p).await;
                    c.cont(p);
                    c.wait_ok().await;
                }
            }
        }
        if done % 200 < n {
            let _ = replacing.reconnect.send(()).await;
        }
    }
    eprintln!("cluster soak: faults injected {faults:?}");
    assert!((0..7).all(|f| faults.contains(&f)), "every kind of fault was injected: {faults:?}");

    let want = within("export production", writer(&c, ENV).await.export()).await.expect("export");
    wait_poll(&relay, SERVER_KEY, &want).await;
    upserting.wait_for(&want, "upsert-only").await;
    replacing.wait_for(&want, "replace-on-full-state").await;
    assert_eq!(exact(&upserting.get()), exact(&want));
    assert_eq!(exact(&replacing.get()), exact(&want));
    let want_other = within("export staging", writer(&c, OTHER).await.export()).await.expect("export");
    wait_poll(&relay, STAGING_SERVER_KEY, &want_other).await;
    other.wait_for(&want_other, "staging").await;
    upserting.task.abort();
    replacing.task.abort();
    other.task.abort();
}

const PASSWORD: &str = "cluster-s3cret";

/// An SDK event posted to the relay is appended to the environment's stream on its primary.
async fn an_event_reaches_the_primary(relay: &TestRelay, c: &TestCluster) {
    let r = http()
        .post(relay.url("/api/sdk/v1/events"))
        .header("Authorization", format!("Bearer {SERVER_KEY}"))
        .json(&json!([{"featureKey": "alpha", "evaluatedVariant": "on", "user": {"id": "u1"}}]))
        .send()
        .await
        .expect("post events");
    assert!(r.status().is_success(), "{}", r.status());
    wait_counter(relay, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "sent")], 1.0).await;
    let p = c.primary_of_env(ENV).await;
    let n: u64 = c.node(p).cmd(&["XLEN", "{flagrelay:production}:events"]).await;
    assert!(n >= 1, "no event on node {p}");
}

/// "Auth as for single Redis": every node has `requirepass` (and `masterauth`); the relay is
/// given one seed `redis://:<password>@...` and authenticates on every connection it makes
/// itself (the slot owner's sync session, `CLUSTER SLOTS` of the nodes it learned) and through
/// redis-rs's cluster client (the writer, the events forwarder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_password_is_followed_through_a_failover() {
    let c = TestCluster::start_secured(&[ENV, OTHER], Secured { password: Some(PASSWORD), tls: false }).await;
    assert_eq!(c.seed_url(), format!("redis://:{PASSWORD}@127.0.0.1:{}", c.node(c.live()[0]).port));
    // Without the password a node refuses every command.
    let bare = ::redis::Client::open(format!("redis://127.0.0.1:{}", c.node(0).port)).unwrap();
    let refused: ::redis::RedisResult<String> = within("an unauthenticated PING", async {
        let mut con = bare.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async(&mut con).await
    })
    .await;
    assert_eq!(refused.as_ref().err().and_then(|e| e.code()), Some("NOAUTH"), "{refused:?}");

    seed(&c).await;
    let relay = relay_on_cluster(&c).start().await;
    let mut clients = Clients::open(&relay).await;
    clients.converge(&relay, &c).await;
    let (p, s) = (c.primary_of_env(ENV).await, c.primary_of_env(OTHER).await);
    served_by(&relay, ENV, c.node(p).port).await;
    served_by(&relay, OTHER, c.node(s).port).await;
    put_retrying(&c, ENV, "delta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("delta"));

    // A graceful failover: the relay resolves the new owner (authenticating) and follows it.
    c.wait_replicated(p).await;
    let replica = c.replica_of(p).await;
    c.failover(replica, false).await;
    put_retrying(&c, ENV, "beta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert_eq!(want["beta"]["rules"], simple_feature("beta", "on")["rules"]);
    served_by(&relay, ENV, c.node(replica).port).await;
    assert!(wait_counter(&relay, "flagrelay_upstream_topology_changes_total", &[("env", ENV), ("reason", "owner_changed")], 1.0).await >= 1.0);
    an_event_reaches_the_primary(&relay, &c).await;
    let st = relay.env_status(ENV).await;
    assert!(!st.to_string().contains(PASSWORD), "the password is not shown: {st}");
    other_untouched(&relay, &c).await;
}

/// "TLS as for single Redis": every node listens on TLS only (bus and replication on TLS too,
/// one CA); the relay is given one seed `rediss://...` and `tls_ca_file`, and verifies every
/// node it reaches (the seed, the nodes `CLUSTER SLOTS` names, those of redis-rs's cluster
/// client) against that CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_followed_over_tls() {
    let c = TestCluster::start_secured(&[ENV, OTHER], Secured { password: None, tls: true }).await;
    assert!(c.seed_url().starts_with("rediss://127.0.0.1:"), "{}", c.seed_url());
    // The nodes speak TLS only: a plain connection gets no answer.
    let plain = ::redis::Client::open(format!("redis://127.0.0.1:{}", c.node(0).port)).unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), async {
        let mut con = plain.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut con).await
    })
    .await;
    assert!(!matches!(pong, Ok(Ok(_))), "a plain connection was answered: {pong:?}");

    seed(&c).await;
    // Without the CA the nodes cannot be verified (the system roots do not know it): nothing
    // is served, and nothing falls back.
    let unverified = relay_on(&c.seed_url(), "cluster = true").start_unready().await;
    let st = unverified
        .wait_status(ENV, "a TLS error in /status", |s| s["source"]["last_error"].as_str().is_some_and(|e| e.contains("UnknownIssuer")))
        .await;
    assert_eq!(st["source"]["state"], "disconnected", "{st}");
    assert_eq!(unverified.poll(SERVER_KEY).await.status(), 503, "nothing served from an unverified cluster");
    drop(unverified);

    let relay = relay_on_cluster(&c).start().await;
    let mut clients = Clients::open(&relay).await;
    clients.converge(&relay, &c).await;
    let (p, s) = (c.primary_of_env(ENV).await, c.primary_of_env(OTHER).await);
    assert_ne!(p, s);
    served_as(&relay, ENV, &format!("127.0.0.1:{} (tls)", c.node(p).port)).await;
    served_as(&relay, OTHER, &format!("127.0.0.1:{} (tls)", c.node(s).port)).await;
    put_retrying(&c, ENV, "delta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("delta"));
    let channels: Vec<String> = c.node(p).cmd(&["PUBSUB", "SHARDCHANNELS"]).await;
    assert!(channels.iter().any(|ch| ch == "{flagrelay:production}:changes"), "{channels:?}");
    an_event_reaches_the_primary(&relay, &c).await;

    // A graceful failover over TLS: the new owner is reached with the same certificates.
    c.wait_replicated(p).await;
    let replica = c.replica_of(p).await;
    c.failover(replica, false).await;
    put_retrying(&c, ENV, "beta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert_eq!(want["beta"]["rules"], simple_feature("beta", "on")["rules"]);
    served_as(&relay, ENV, &format!("127.0.0.1:{} (tls)", c.node(replica).port)).await;
    other_untouched(&relay, &c).await;
}

/// Both at once: a password over TLS (`rediss://:<password>@...` + `tls_ca_file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_a_password_is_followed() {
    let c = TestCluster::start_secured(&[ENV, OTHER], Secured { password: Some(PASSWORD), tls: true }).await;
    assert!(c.seed_url().starts_with(&format!("rediss://:{PASSWORD}@127.0.0.1:")), "{}", c.seed_url());
    seed(&c).await;
    let relay = relay_on_cluster(&c).start().await;
    let mut clients = Clients::open(&relay).await;
    clients.converge(&relay, &c).await;
    let (p, s) = (c.primary_of_env(ENV).await, c.primary_of_env(OTHER).await);
    served_as(&relay, ENV, &format!("127.0.0.1:{} (tls)", c.node(p).port)).await;
    served_as(&relay, OTHER, &format!("127.0.0.1:{} (tls)", c.node(s).port)).await;
    put_retrying(&c, ENV, "delta", "on").await;
    let want = clients.converge(&relay, &c).await;
    assert!(want.contains_key("delta"));
    an_event_reaches_the_primary(&relay, &c).await;
    let st = relay.env_status(ENV).await;
    assert!(!st.to_string().contains(PASSWORD), "the password is not shown: {st}");
    other_untouched(&relay, &c).await;
}
