//! The Redis Cluster harness alone (`support::redis::cluster::TestCluster`), against real
//! `redis-server` processes and no relay: placement of the environments, a killed primary
//! replaced by its replica, graceful and forced failovers, slot migration (whole, in halves,
//! under a writer), what sharded subscribers of a moved slot receive, and a cluster secured
//! with a password and TLS.

use flagrelay_testkit as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::redis::cluster::{env_tag, key_slot, Role, Secured, TestCluster};
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(cluster: &TestCluster, node: usize, key: &str) -> redis::RedisResult<Option<String>> {
    let mut con = cluster.node(node).con().await;
    within("GET", redis::cmd("GET").arg(key).query_async(&mut con)).await
}

fn code(r: &redis::RedisResult<Option<String>>) -> Option<String> {
    r.as_ref().err().and_then(|e| e.code()).map(str::to_string)
}

/// The redis-cli layout of three primaries: which third of the slots `slot` is in.
fn third(slot: u16) -> u16 {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_each_environment_a_primary_of_its_own() {
    let t = Instant::now();
    let c = TestCluster::start(&["production", "staging"]).await;
    eprintln!("cluster up in {:?}", t.elapsed());
    for env in ["production", "staging"] {
        let server: i64 = c.node(0).cmd(&["CLUSTER", "KEYSLOT", &env_tag(env)]).await;
        assert_eq!(i64::from(c.slot_of_env(env)), server, "CRC16 of the hash tag of {env}");
        let key: i64 = c.node(0).cmd(&["CLUSTER", "KEYSLOT", &format!("{}:rev", env_tag(env))]).await;
        assert_eq!(key, server, "the keys of {env} share the tag's slot");
    }
    let (p, s) = (c.primary_of_env("production").await, c.primary_of_env("staging").await);
    assert_ne!(p, s, "production and staging share primary {p}");
    let primaries = c.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut replicas = Vec::new();
    for &pr in &primaries {
        assert_eq!(c.role(pr).await, Role::Primary);
        let r = c.replica_of(pr).await;
        assert_eq!(c.role(r).await, Role::Replica { of: pr, connected: true });
        replicas.push(r);
    }
    let mut all: Vec<usize> = primaries.iter().chain(&replicas).copied().collect();
    all.sort();
    assert_eq!(all, (0..6).collect::<Vec<_>>(), "every node is a primary or a replica of one");
    assert_eq!(c.urls().len(), 6);
    assert!(c.urls().contains(&c.seed_url()));
    let ids: std::collections::BTreeSet<&str> = (0..6).map(|i| c.node_id(i)).collect();
    assert_eq!(ids.len(), 6, "six distinct node ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_moves_an_environment_off_a_primary_another_one_holds() {
    let prod = key_slot(env_tag("production").as_bytes());
    let twin = (0..)
        .map(|n| format!("env-{n}"))
        .find(|e| {
            let s = key_slot(env_tag(e).as_bytes());
            s != prod && third(s) == third(prod)
        })
        .expect("an env on production's third");
    let c = TestCluster::start(&["production", &twin, "staging"]).await;
    let owners = [c.primary_of_env("production").await, c.primary_of_env(&twin).await, c.primary_of_env("staging").await];
    assert!(owners[0] != owners[1] && owners[1] != owners[2] && owners[0] != owners[2], "three envs, three primaries: {owners:?}");
    let mut sorted = owners.to_vec();
    sorted.sort();
    assert_eq!(sorted, c.primaries().await);
    // The twin's slot alone moved: its neighbour (same third) is still with production's primary.
    let slot = c.slot_of_env(&twin);
    let neighbour = if third(slot + 1) == third(slot) && slot + 1 != prod { slot + 1 } else { slot - 1 };
    assert_eq!(c.primary_of_slot(neighbour).await, owners[0], "slot {neighbour} stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_its_replica_and_rejoins_as_a_replica() {
    let env = "production";
    let key = format!("{}:rev", env_tag(env));
    let mut c = TestCluster::start(&[env]).await;
    let p = c.primary_of_env(env).await;
    let r = c.replica_of(p).await;
    // WAIT on the connection that wrote: on another one it has nothing to wait for.
    let mut con = c.node(p).con().await;
    let (acked,): (i64,) = within("SET + WAIT", redis::pipe().cmd("SET").arg(&key).arg("7").ignore().cmd("WAIT").arg(1).arg(5000).query_async(&mut con))
        .await
        .expect("SET + WAIT");
    assert_eq!(acked, 1, "the replica acknowledged the write");

    c.kill(p);
    let t = Instant::now();
    let np = c.wait_promoted(env, p).await;
    eprintln!("failover after SIGKILL took {:?}", t.elapsed());
    assert_eq!(np, r, "the former replica is the new primary");
    assert_eq!(c.role(np).await, Role::Primary);
    assert_eq!(get(&c, np, &key).await.unwrap().as_deref(), Some("7"));

    let t = Instant::now();
    c.restart(p).await;
    eprintln!("rejoin after restart took {:?}", t.elapsed());
    assert_eq!(c.role(p).await, Role::Replica { of: np, connected: true });
    assert_eq!(c.primary_of_env(env).await, np);
    assert_eq!(c.replica_of(np).await, p);
    assert_eq!(code(&get(&c, p, &key).await).as_deref(), Some("MOVED"), "the old primary redirects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_replaced_and_comes_back_as_a_replica() {
    let env = "staging";
    let mut c = TestCluster::start(&[env]).await;
    let p = c.primary_of_env(env).await;
    let r = c.replica_of(p).await;
    c.stop(p);
    assert!(!c.is_live(p) && c.node(p).is_running(), "stopped: not live, still running");
    let t = Instant::now();
    assert_eq!(c.wait_promoted(env, p).await, r);
    eprintln!("failover after SIGSTOP took {:?}", t.elapsed());
    c.cont(p);
    let t = Instant::now();
    c.wait_ok().await;
    eprintln!("the frozen primary rejoined {:?} after SIGCONT", t.elapsed());
    assert_eq!(c.role(p).await, Role::Replica { of: r, connected: true });
    assert_eq!(c.primary_of_env(env).await, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_failover_and_takeover_flip_the_roles() {
    let env = "production";
    let key = format!("{}:rev", env_tag(env));
    let c = TestCluster::start(&[env]).await;
    let p = c.primary_of_env(env).await;
    let r = c.replica_of(p).await;
    let _: () = c.node(p).cmd(&["SET", &key, "1"]).await;

    let t = Instant::now();
    c.failover(r, false).await;
    eprintln!("graceful failover took {:?}", t.elapsed());
    assert_eq!(c.primary_of_env(env).await, r);
    assert_eq!(c.role(r).await, Role::Primary);
    assert_eq!(c.role(p).await, Role::Replica { of: r, connected: true });
    assert_eq!(get(&c, r, &key).await.unwrap().as_deref(), Some("1"), "a graceful failover loses nothing");

    let t = Instant::now();
    c.failover(p, true).await;
    eprintln!("takeover took {:?}", t.elapsed());
    assert_eq!(c.primary_of_env(env).await, p);
    assert_eq!(c.role(p).await, Role::Primary);
    assert_eq!(c.role(r).await, Role::Replica { of: p, connected: true });
    assert_eq!(get(&c, p, &key).await.unwrap().as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_env_moves_the_slot_with_its_keys() {
    let c = TestCluster::start(&["production", "staging"]).await;
    let env = "production";
    let from = c.primary_of_env(env).await;
    let staging = c.primary_of_env("staging").await;
    let to = c.primaries().await.into_iter().find(|&p| p != from && p != staging).expect("a third primary");
    let tag = env_tag(env);
    for k in 0..250 {
        let _: () = c.node(from).cmd(&["SET", &format!("{tag}:k{k}"), &k.to_string()]).await;
    }
    let mut sub = ShardSub::subscribe(c.node(from).port, &format!("{tag}:changes")).await;

    let t = Instant::now();
    c.migrate_env(env, to).await;
    eprintln!("migration of 250 keys took {:?}", t.elapsed());
    assert_eq!(c.primary_of_env(env).await, to);
    for k in [0, 99, 100, 249] {
        assert_eq!(get(&c, to, &format!("{tag}:k{k}")).await.unwrap(), Some(k.to_string()), "key {k} on the new owner");
    }
    let n: i64 = c.node(to).cmd(&["CLUSTER", "COUNTKEYSINSLOT", &c.slot_of_env(env).to_string()]).await;
    assert_eq!(n, 250);
    assert_eq!(code(&get(&c, from, &format!("{tag}:k0")).await).as_deref(), Some("MOVED"));
    let seen = sub.wait_for(b"sunsubscribe", Duration::from_secs(3)).await;
    eprintln!("sharded subscriber on the source after SETSLOT NODE: {seen:?}");
    assert_eq!(seen, Seen::Found, "Redis 7.0 unsubscribes the source's sharded subscribers of a slot it gives away");
    // The other environment did not move.
    assert_eq!(c.primary_of_env("staging").await, staging);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_in_halves_redirects_new_keys_with_ask() {
    let c = TestCluster::start(&["production"]).await;
    let env = "production";
    let tag = env_tag(env);
    let (old, new) = (format!("{tag}:old"), format!("{tag}:new"));
    let from = c.primary_of_env(env).await;
    let to = c.primaries().await.into_iter().find(|&p| p != from).expect("another primary");
    let _: () = c.node(from).cmd(&["SET", &old, "a"]).await;
    let mut sub = ShardSub::subscribe(c.node(from).port, &format!("{tag}:changes")).await;

    let m = c.begin_migration(env, to).await;
    assert_eq!((m.from, m.to, m.slot), (from, to, c.slot_of_env(env)));
    let _: () = c.node(from).cmd(&["SET", &old, "b"]).await;
    assert_eq!(code(&get(&c, from, &new).await).as_deref(), Some("ASK"), "a key the source lacks is asked of the target");
    assert_eq!(code(&get(&c, to, &new).await).as_deref(), Some("MOVED"), "the target serves it only after ASKING");
    let mut con = c.node(to).con().await;
    let _: () = within("ASKING + SET", redis::pipe().cmd("ASKING").ignore().cmd("SET").arg(&new).arg("n").ignore().query_async(&mut con)).await.expect("ASKING + SET on the target");
    assert_eq!(sub.wait_for(b"sunsubscribe", Duration::from_millis(300)).await, Seen::Nothing, "MIGRATING leaves the subscribers be");
    c.finish_migration(&m).await;
    assert_eq!(sub.wait_for(b"sunsubscribe", Duration::from_secs(3)).await, Seen::Found, "SETSLOT NODE unsubscribes them");

    assert_eq!(c.primary_of_env(env).await, to);
    assert_eq!(get(&c, to, &old).await.unwrap().as_deref(), Some("b"));
    assert_eq!(get(&c, to, &new).await.unwrap().as_deref(), Some("n"));
    assert_eq!(code(&get(&c, from, &old).await).as_deref(), Some("MOVED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_env_under_a_writer_loses_no_acknowledged_write() {
    let c = TestCluster::start(&["production"]).await;
    let env = "production";
    let key = format!("{}:rev", env_tag(env));
    let from = c.primary_of_env(env).await;
    let to = c.primaries().await.into_iter().find(|&p| p != from).expect("another primary");
    for k in 0..300 {
        let _: () = c.node(from).cmd(&["SET", &format!("{}:k{k}", env_tag(env)), "x"]).await;
    }
    let done = AtomicBool::new(false);
    let migrate = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.migrate_env(env, to).await;
        done.store(true, Ordering::SeqCst);
    };
    let (_, w) = tokio::join!(migrate, incr_until(&c, &key, from, &done));
    eprintln!("writer: {w:?}");
    let v: i64 = c.node(to).cmd(&["GET", &key]).await;
    assert_eq!(v, w.acked, "every acknowledged INCR is in the new owner's value");
    assert!(w.acked > 10, "the writer kept writing: {w:?}");
    assert!(w.moved > 0, "the writer was sent to the new owner: {w:?}");
}

#[derive(Debug, Default)]
struct Writes {
    acked: i64,
    moved: u32,
    asked: u32,
    retried: u32,
}

/// INCRs `key` one at a time until `done` (plus one more), following MOVED and ASK; checks each
/// reply is the next integer (no write lost or doubled).
async fn incr_until(c: &TestCluster, key: &str, mut node: usize, done: &AtomicBool) -> Writes {
    let mut w = Writes::default();
    let mut last_round = false;
    loop {
        if done.load(Ordering::SeqCst) {
            if last_round {
                return w;
            }
            last_round = true;
        }
        let mut con = c.node(node).con().await;
        let r: redis::RedisResult<i64> = within("INCR", redis::cmd("INCR").arg(key).query_async(&mut con)).await;
        let r = match r {
            Err(e) if e.code() == Some("ASK") => {
                w.asked += 1;
                let port = redirect_port(&e);
                let target = c.index_of_port(port).expect("ASK to a node of ours");
                let mut con = c.node(target).con().await;
                within("ASKING + INCR", redis::pipe().cmd("ASKING").ignore().cmd("INCR").arg(key).query_async::<(i64,)>(&mut con)).await.map(|(v,)| v)
            }
            other => other,
        };
        match r {
            Ok(v) => {
                w.acked += 1;
                assert_eq!(v, w.acked, "INCR #{} answered {v}", w.acked);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) if e.code() == Some("MOVED") => {
                w.moved += 1;
                node = c.index_of_port(redirect_port(&e)).expect("MOVED to a node of ours");
            }
            Err(e) if e.code() == Some("TRYAGAIN") || e.code() == Some("ASK") => {
                w.retried += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("INCR failed: {e}"),
        }
    }
}

fn redirect_port(e: &redis::RedisError) -> u16 {
    let (addr, _) = e.redirect_node().unwrap_or_else(|| panic!("no redirect in {e}"));
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("bad redirect address {addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscribers_of_a_failed_over_primary() {
    let env = "production";
    let channel = format!("{}:changes", env_tag(env));
    let c = TestCluster::start(&[env]).await;
    let p = c.primary_of_env(env).await;
    let r = c.replica_of(p).await;
    let mut sub = ShardSub::subscribe(c.node(p).port, &channel).await;
    c.failover(r, false).await;
    let seen = sub.wait_for(b"sunsubscribe", Duration::from_secs(3)).await;
    eprintln!("sharded subscriber on the old primary after a graceful failover: {seen:?}");
    assert_eq!(seen, Seen::Found);
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Found,
    Closed,
    Nothing,
}

/// A raw RESP2 connection in sharded subscribe mode (bytes matched, not parsed).
struct ShardSub {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl ShardSub {
    async fn subscribe(port: u16, channel: &str) -> ShardSub {
        let stream = within("connect", TcpStream::connect(("127.0.0.1", port))).await.expect("connect");
        let mut s = ShardSub { stream, buf: Vec::new() };
        let cmd = format!("*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n", channel.len());
        within("send SSUBSCRIBE", s.stream.write_all(cmd.as_bytes())).await.expect("write");
        assert_eq!(s.wait_for(b"ssubscribe", Duration::from_secs(5)).await, Seen::Found, "SSUBSCRIBE confirmed: {:?}", String::from_utf8_lossy(&s.buf));
        s.buf.clear();
        s
    }

    async fn wait_for(&mut self, needle: &[u8], dur: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if self.buf.windows(needle.len()).any(|w| w == needle) {
                return Seen::Found;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Seen::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A cluster with a password and TLS only: the nodes refuse a connection without either, the
/// harness's own connections carry both, a slot migrates with its keys (`MIGRATE ... AUTH`,
/// over TLS) and a graceful failover works (replication over TLS, `masterauth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_migrates_and_fails_over() {
    let password = "harness-s3cret";
    let env = "production";
    let c = TestCluster::start_secured(&[env], Secured { password: Some(password), tls: true }).await;
    assert_eq!(c.password(), Some(password));
    let ca = c.tls().expect("a TLS cluster").clone();
    for (i, url) in c.urls().iter().enumerate() {
        assert_eq!(url, &format!("rediss://:{password}@127.0.0.1:{}", c.node(i).port));
    }
    let port = c.node(0).port;
    // TLS without the password: NOAUTH; plain TCP: no answer.
    let no_auth: redis::RedisResult<String> = within("a PING without the password", async {
        let mut con = ca.client(&format!("rediss://127.0.0.1:{port}")).get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut con).await
    })
    .await;
    assert_eq!(no_auth.as_ref().err().and_then(|e| e.code()), Some("NOAUTH"), "{no_auth:?}");
    let plain = redis::Client::open(format!("redis://:{password}@127.0.0.1:{port}")).unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), async {
        let mut con = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    })
    .await;
    assert!(!matches!(pong, Ok(Ok(_))), "a plain connection was answered: {pong:?}");

    let key = format!("{}:rev", env_tag(env));
    let from = c.primary_of_env(env).await;
    let _: i64 = c.node(from).cmd(&["INCR", &key]).await;
    let to = c.primaries().await.into_iter().find(|&i| i != from).expect("another primary");
    c.migrate_env(env, to).await;
    assert_eq!(get(&c, to, &key).await.unwrap().as_deref(), Some("1"), "the key moved with its slot");
    c.wait_replicated(to).await;
    let replica = c.replica_of(to).await;
    c.failover(replica, false).await;
    assert_eq!(c.role(replica).await, Role::Primary);
    assert_eq!(c.role(to).await, Role::Replica { of: replica, connected: true });
    assert_eq!(get(&c, replica, &key).await.unwrap().as_deref(), Some("1"));
}
