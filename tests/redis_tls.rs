//! The Redis upstream over TLS (`rediss://`) against a real redis-server listening on TLS only
//! (`port 0`, `tls-port`), with a throwaway CA made by the `openssl` CLI: initial sync, writes
//! (the Writer and `flagrelay flags put`) reaching an SSE client, events forwarding; that a
//! server the relay cannot verify is never used (no fallback: the relay is not ready and
//! `/status` says why); `#insecure` only when asked; mutual TLS; a Sentinel failover between
//! TLS masters.

use flagrelay_testkit as support;

use std::time::Duration;

use serde_json::Value;
use support::redis::*;
use support::redis::sentinel::TestSentinel;
use support::redis::server::TestRedis;
use support::redis::tls::TlsFiles;
use support::redis::watcher::{exact, poll_flags, wait_poll, WatchingClient};
use support::*;

const ENV: &str = "production";

fn flags(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), simple_feature(k, v))).collect()
}

async fn seeded_tls(auth_clients: bool) -> TestRedis {
    let r = TestRedis::start_tls(auth_clients, &[]).await;
    r.writer(ENV).await.import(flags(&[("alpha", "on"), ("beta", "off")])).await.expect("import production");
    r.writer("staging").await.import(flags(&[])).await.expect("import staging");
    r
}

fn tls(redis: &TestRedis) -> &TlsFiles {
    redis.tls.as_ref().expect("a TLS server")
}

/// Waits until polling and `clients` hold exactly what Redis holds.
async fn converge_tls(relay: &TestRelay, redis: &TestRedis, clients: &mut [&mut WatchingClient]) -> Flags {
    let want = within("export", redis.writer(ENV).await.export()).await.expect("export");
    wait_poll(relay, SERVER_KEY, &want).await;
    for c in clients.iter_mut() {
        c.wait_for(&want).await;
    }
    want
}

/// Waits until `/status` of production shows a connection error containing one of `needles`,
/// then checks the relay is not ready and never connected.
async fn assert_refused(relay: &TestRelay, needles: &[&str]) -> String {
    let st = relay
        .wait_status(ENV, "a TLS error in /status", |s| {
            let e = s["source"]["last_error"].as_str().unwrap_or("").to_ascii_lowercase();
            needles.iter().any(|n| e.contains(&n.to_ascii_lowercase()))
        })
        .await;
    let err = st["source"]["last_error"].as_str().unwrap().to_string();
    assert_eq!(st["source"]["state"], "disconnected", "{st}");
    let ready = within("readyz", http().get(relay.admin_url("/readyz")).send()).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without data");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_upstream_connected", &[("env", ENV)]), Some(0.0));
    assert_eq!(metric(&m, "flagrelay_upstream_resyncs_total", &[("env", ENV), ("reason", "initial")]).unwrap_or(0.0), 0.0, "never synced");
    let poll = relay.poll(SERVER_KEY).await;
    assert_eq!(poll.status(), 503, "nothing served from an unverified server");
    let body: Value = within("poll body", poll.json()).await.unwrap();
    assert_eq!(body["error"], "not_ready");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_and_events_over_tls() {
    let redis = seeded_tls(false).await;
    assert!(redis.url().starts_with("rediss://"));
    // The server speaks TLS only: a plain connection to its port gets no answer.
    let plain = ::redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), async {
        let mut con = plain.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut con).await
    })
    .await;
    assert!(!matches!(pong, Ok(Ok(_))), "a plain connection was answered: {pong:?}");
    let relay = relay_on(&redis.url(), &tls(&redis).upstream_lines()).start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    let want = converge_tls(&relay, &redis, &mut [&mut sse]).await;
    assert_eq!(want.len(), 2);
    let st = relay.wait_status(ENV, "connected", |s| s["source"]["state"] == "connected").await;
    assert_eq!(st["revision"], 1);
    assert_eq!(st["source"]["stale"], false);

    // A write through the Writer (what `flags put` runs) reaches the SSE client.
    redis.writer(ENV).await.put(vec![("gamma".into(), simple_feature("gamma", "on"))]).await.unwrap();
    let want = converge_tls(&relay, &redis, &mut [&mut sse]).await;
    assert!(want.contains_key("gamma"));

    // `flagrelay flags put` with the relay's own config file (rediss:// + tls_ca_file).
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.json");
    std::fs::write(&one, simple_feature("delta", "off").to_string()).unwrap();
    let out = within(
        "flagrelay flags put",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_flagrelay"))
            .args(["flags", "put", "--config", relay.config_path.to_str().unwrap(), "--env", ENV, one.to_str().unwrap()])
            .env_remove("FLAGRELAY_REDIS_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run flagrelay");
    assert!(out.status.success(), "flags put over TLS failed: {}", String::from_utf8_lossy(&out.stderr));
    let want = converge_tls(&relay, &redis, &mut [&mut sse]).await;
    assert_eq!(want["delta"]["version"], 3);
    assert_eq!(sse.last_id, Some(3), "streamed with the revision as the event id");

    // SDK events go upstream over the same TLS settings.
    let body = r#"[{"featureKey":"alpha","evaluatedVariant":"on","user":{"id":"u1"}}]"#;
    let r = within("events", http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).header("content-type", "application/json").body(body).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    wait_counter(&relay, "flagrelay_events_forwarded_total", &[("env", ENV), ("result", "sent")], 1.0).await;
    let n: u64 = redis.cmd(&["XLEN", "{flagrelay:production}:events"]).await;
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_verification_fails_and_nothing_falls_back() {
    let redis = seeded_tls(false).await;
    // The system roots do not know the test CA: the handshake must fail, and keep failing.
    let relay = relay_on(&redis.url(), "").start_unready().await;
    let err = assert_refused(&relay, &["invalid peer certificate: UnknownIssuer"]).await;
    assert!(err.contains("connecting"), "{err}");
    // Still refused after several more attempts.
    let failures = [("env", ENV)];
    let seen = counter(&relay, "flagrelay_upstream_connect_failures_total", &failures).await;
    wait_counter(&relay, "flagrelay_upstream_connect_failures_total", &failures, seen + 3.0).await;
    assert!(counter(&relay, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await == 0.0, "never connected, so never reconnected");
    let st = relay.env_status(ENV).await;
    assert_eq!(st["source"]["state"], "disconnected", "{st}");

    // The same server and relay settings with the CA: works (the failure was verification).
    let relay2 = relay_on(&redis.url(), &tls(&redis).upstream_lines()).start().await;
    converge_tls(&relay2, &redis, &mut []).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_url_skips_verification_only_when_asked() {
    let redis = seeded_tls(false).await;
    let relay = relay_on(&format!("{}/#insecure", redis.url()), "").start().await;
    converge_tls(&relay, &redis, &mut []).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let redis = seeded_tls(true).await;
    let files = tls(&redis).clone();

    // The CA alone: the server refuses the handshake without a client certificate.
    let ca_only = format!("tls_ca_file = {:?}\n", files.ca.display().to_string());
    let refused = relay_on(&redis.url(), &ca_only).start_unready().await;
    // (TLS 1.3: the server checks the client after the client's handshake completed, so the
    // alert, CertificateRequired, may also surface as the connection being cut.)
    assert_refused(&refused, &["CertificateRequired", "reset", "closed", "broken pipe", "eof"]).await;

    let relay = relay_on(&redis.url(), &files.upstream_lines()).start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge_tls(&relay, &redis, &mut [&mut sse]).await;
    redis.writer(ENV).await.delete(&["beta".into()]).await.unwrap();
    let want = converge_tls(&relay, &redis, &mut [&mut sse]).await;
    assert!(!want.contains_key("beta"));
}

#[test]
fn a_bad_tls_file_is_refused_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let cfg = dir.path().join("flagrelay.toml");
        let text = format!(
            "[upstream]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:1\"\n{extra}\n[[environments]]\nid = \"production\"\nserver_keys = [\"k\"]\n"
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let check = |cfg: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flagrelay")).args(["check-config", "--config", cfg.to_str().unwrap()]).output().expect("run flagrelay");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let missing = dir.path().join("nope.pem");
    let (ok, err) = check(&write(&format!("tls_ca_file = {:?}", missing.display().to_string())));
    assert!(!ok);
    assert!(err.contains("upstream.tls_ca_file") && err.contains("nope.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (ok, err) = check(&write(&format!("tls_ca_file = {:?}", garbage.display().to_string())));
    assert!(!ok);
    assert!(err.contains("upstream.tls_ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_a_tls_master_and_a_failover_is_followed_over_tls() {
    let sentinel = TestSentinel::start_tls().await;
    assert!(sentinel.master.url().starts_with("rediss://"));
    sentinel.master.writer(ENV).await.import(flags(&[("alpha", "on")])).await.unwrap();
    sentinel.master.writer("staging").await.import(flags(&[])).await.unwrap();
    let relay = TestRelay::builder().upstream(&sentinel.upstream()).start().await;
    let mut sse = WatchingClient::upsert_only(&relay, SERVER_KEY).await;
    converge_tls(&relay, &sentinel.master, &mut [&mut sse]).await;
    sentinel.wait_replica_synced("production").await;

    // After the failover the relay asks the sentinel again and reaches the new master (another
    // port, the same CA) over TLS; a write there reaches the SSE client.
    sentinel.failover().await;
    let mut w = within("the new master to take writes", async {
        loop {
            let mut w = sentinel.replica.writer(ENV).await;
            if w.put(vec![("beta".into(), simple_feature("beta", "on"))]).await.is_ok() {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let want = w.export().await.unwrap();
    assert!(want.contains_key("beta"));
    let r = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if exact(&poll_flags(&relay, SERVER_KEY).await) == exact(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "the relay never followed the failover: {}", relay.env_status(ENV).await);
    sse.wait_for(&want).await;
    // It got there by reconnecting (the sentinel cut the old master's clients, and the relay only
    // accepts a node answering ROLE master), not through the demoted old master's replication.
    assert!(counter(&relay, "flagrelay_upstream_reconnects_total", &[("env", ENV)]).await >= 1.0);
}
