//! The relay binary at its open-files limit (issue 10, item 2): the derived API connection cap
//! keeps descriptors for the admin listener, accept errors back off and are logged once per
//! state change, and the soft limit is raised to the hard one at start. Each test runs the
//! relay under `ulimit -n 512` (or a soft 400), so a few hundred sockets reach the limit.

use flagrelay_testkit as support;

use std::net::SocketAddr;
use std::time::Duration;

use support::process::{write_config, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");
use support::tcp::idle_socket;
use support::*;

/// With `ulimit -n 512` and one environment the derived cap is 512 − min(256 + 4, 512 / 2).
const DERIVED_CAP: f64 = 256.0;

/// Connections the test opens: more than the relay's descriptors.
const FLOOD: usize = 600;

async fn scrape(relay: &RelayProcess) -> String {
    let r = within("/metrics", http().get(relay.admin_url("/metrics")).send()).await.expect("/metrics");
    assert_eq!(r.status(), 200);
    within("/metrics body", r.text()).await.expect("text")
}

async fn flood(relay: &RelayProcess) -> Vec<tokio::net::TcpStream> {
    let addr: SocketAddr = relay.listen.parse().expect("listen address");
    let mut socks = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        socks.push(idle_socket(addr).await);
    }
    socks
}

/// Waits until `n` connections were rejected at the cap.
async fn wait_rejected(relay: &RelayProcess, n: usize) {
    within(&format!("{n} connections to be rejected at the cap"), async {
        loop {
            let s = scrape(relay).await;
            if metric(&s, "flagrelay_http_connections_rejected_total", &[("reason", "cap")]) >= Some(n as f64) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn at_its_open_files_limit_the_relay_still_answers_on_the_admin_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[http]\nheader_read_timeout_ms = 60000");
    let relay = RelayProcess::start_limited(BIN, &cfg, "-n 512").await;
    let _held = flood(&relay).await;
    // Every connection beyond the cap is closed at once and counted.
    wait_rejected(&relay, FLOOD - DERIVED_CAP as usize).await;
    let r = within("/healthz", http().get(relay.admin_url("/healthz")).send()).await.expect("/healthz");
    assert_eq!(r.status(), 200);
    let s = scrape(&relay).await;
    assert_eq!(metric(&s, "flagrelay_http_connection_limit", &[]), Some(DERIVED_CAP));
    assert_eq!(metric(&s, "flagrelay_http_connections", &[]), Some(DERIVED_CAP));
    assert_eq!(metric(&s, "flagrelay_http_accept_errors_total", &[]), Some(0.0), "the reserve kept accept from failing");
}

#[tokio::test]
async fn accept_errors_back_off_and_are_logged_once_per_state_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A configured cap above what the descriptors allow: accept itself fails (EMFILE).
    let cfg = write_config(dir.path(), "[http]\nmax_connections = 5000\nheader_read_timeout_ms = 60000");
    let relay = RelayProcess::start_limited(BIN, &cfg, "-n 512").await;
    let held = flood(&relay).await;
    relay.wait_log("accept to fail", |v| v["message"] == "accepting connections failed; backing off").await;
    // Hold the flood a little so that accept fails several times.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let recovered = relay.wait_log("accept to recover", |v| v["message"] == "accepting connections again").await;
    let failures = recovered["failures"].as_u64().expect("failures field");
    assert!(failures > 1, "accept failed {failures} times");
    assert_eq!(relay.count_logs("accepting connections failed; backing off"), 1, "one warning for {failures} failures");
    assert_eq!(relay.count_logs("accepting connections again"), 1);
    let s = scrape(&relay).await;
    assert!(metric(&s, "flagrelay_http_accept_errors_total", &[]) >= Some(failures as f64), "every failure is counted");
}

#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit_at_start_and_logged() {
    let hard = std::process::Command::new("sh").args(["-c", "ulimit -Hn"]).output().expect("ulimit -Hn");
    let hard: u64 = String::from_utf8_lossy(&hard.stdout).trim().parse().expect("a numeric hard limit");
    assert!(hard > 400, "this test needs a hard open-files limit above 400 (it is {hard})");
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start_limited(BIN, &write_config(dir.path(), ""), "-Sn 400").await;
    let line = relay.wait_log("the raise to be logged", |v| v["message"] == "raised the open-files limit to the hard limit").await;
    assert_eq!((line["from"].as_u64(), line["to"].as_u64()), (Some(400), Some(hard)));
    let cap = metric(&scrape(&relay).await, "flagrelay_http_connection_limit", &[]).expect("the cap gauge");
    assert!(cap > 400.0, "the cap is derived from the raised limit: {cap}");
}

#[tokio::test]
async fn reaching_the_cap_and_leaving_it_are_logged_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[http]\nheader_read_timeout_ms = 60000");
    let relay = RelayProcess::start_limited(BIN, &cfg, "-n 512").await;
    let held = flood(&relay).await;
    wait_rejected(&relay, FLOOD - DERIVED_CAP as usize).await;
    drop(held);
    // A new connection after the flood is admitted; a calm second later the spell ends.
    let _late = idle_socket(relay.listen.parse().expect("listen address")).await;
    let left = relay.wait_log("the cap to be left", |v| v["message"] == "below the connection cap again").await;
    assert_eq!(left["rejected"].as_u64(), Some((FLOOD - DERIVED_CAP as usize) as u64), "{left}");
    assert_eq!(relay.count_logs("connection cap reached; closing new connections at once"), 1);
}
