//! The Redis side of the test harness, one concern per file: [`server`] (a `redis-server`
//! process), [`tls`] (throwaway certificates), [`sentinel`] (master, replica and sentinel),
//! [`cluster`] (a six-node Redis Cluster), [`watcher`] (what polling and an SDK-like SSE client
//! hold); tests import from each. Here: the settings of the relay and of the writer for a test
//! server, and the `/metrics` counters tests wait on.

pub mod cluster;
pub mod faults;
pub mod sentinel;
pub mod server;
pub mod tls;
pub mod watcher;

use std::collections::BTreeMap;
use std::time::Duration;

use flagrelay::config::RedisUpstream;
use flagrelay::upstream::redis::writer::Writer;
use serde_json::Value;

use super::{within, TestRelay, TestRelayBuilder};

pub type Flags = BTreeMap<String, Value>;

/// Settings for the writer: the relay's defaults for `url`.
pub fn tool_config(url: &str) -> RedisUpstream {
    let args = flagrelay::config::Overrides { config: "/nonexistent/flagrelay.toml".into(), redis_url: Some(url.to_string()), ..Default::default() };
    RedisUpstream::for_tool(&args).expect("tool config").0
}

pub async fn writer_for(url: &str, env: &str) -> Writer {
    within("the writer to connect", Writer::connect(&tool_config(url), env)).await.expect("writer connects")
}

/// The `[upstream]` section for a relay on `url` with fault timings short enough for tests.
/// `extra` lines `key = value` override these defaults; sections (`[upstream.sentinel]`) follow.
pub fn fast_upstream(url: &str, extra: &str) -> String {
    let mut settings: Vec<(String, String)> = [
        ("probe_interval_ms", "100"),
        ("response_timeout_ms", "1000"),
        ("connect_timeout_ms", "1000"),
        ("snapshot_timeout_ms", "2000"),
        ("backoff_base_ms", "20"),
        ("backoff_cap_ms", "300"),
        ("stable_after_secs", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut sections = String::new();
    let mut in_section = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            in_section = true;
        }
        match line.split_once('=') {
            Some((k, v)) if !in_section => {
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                match settings.iter_mut().find(|(sk, _)| *sk == k) {
                    Some(slot) => slot.1 = v,
                    None => settings.push((k, v)),
                }
            }
            _ => {
                sections.push_str(line);
                sections.push('\n');
            }
        }
    }
    let mut t = format!("[upstream]\nkind = \"redis\"\nurl = \"{url}\"\n");
    for (k, v) in settings {
        t.push_str(&format!("{k} = {v}\n"));
    }
    t.push_str(&sections);
    t
}

pub fn relay_on(url: &str, extra: &str) -> TestRelayBuilder {
    TestRelay::builder().upstream(&fast_upstream(url, extra))
}

/// Reads a counter of `/metrics` (0 when absent).
pub async fn counter(relay: &TestRelay, name: &str, labels: &[(&str, &str)]) -> f64 {
    super::metric(&relay.metrics().await, name, labels).unwrap_or(0.0)
}

/// Waits until a counter reaches `at_least`.
pub async fn wait_counter(relay: &TestRelay, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let what = format!("{name}{labels:?} >= {at_least}");
    within(&what, async {
        loop {
            let v = counter(relay, name, labels).await;
            if v >= at_least {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

