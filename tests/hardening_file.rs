//! The flags file, read defensively: only a regular file within `max_file_bytes` is read (a FIFO
//! or `/dev/zero` at the path is refused and wedges nothing), an edit that keeps size, inode and
//! mtime is seen (inotify), a malformed environment blocks no other, and a problem is logged
//! once, not on every poll.

use flagrelay_testkit as support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::process::{file_config, RelayProcess, Stderr};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");

/// A feature whose variants are `on` and `of`, so that switching is a same-size edit.
fn feature(key: &str, variant: &str) -> Value {
    json!({
        "key": key, "enabled": true, "offVariantKey": "of",
        "variants": [{"key": "on", "name": "On"}, {"key": "of", "name": "Of"}],
        "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}]
    })
}

fn flags(prod: &str, staging: &str) -> Value {
    json!({"production": {"a": feature("a", prod)}, "staging": {"b": feature("b", staging)}})
}

/// The variant `feature` serves to the environment of `key` (none if it is not served).
async fn served(relay: &TestRelay, key: &str, feature: &str) -> Option<String> {
    let body: Value = relay.poll(key).await.json().await.ok()?;
    body[feature]["rules"][0]["variantSplits"][0]["variantKey"].as_str().map(str::to_string)
}

async fn wait_served(relay: &TestRelay, key: &str, feature: &str, variant: &str) {
    within(&format!("{feature} = {variant} to be served"), async {
        while served(relay, key, feature).await.as_deref() != Some(variant) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Rewrites the file in place (same inode) and sets its mtime to `mtime`.
fn write_in_place(path: &Path, flags: &Value, mtime: SystemTime) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.write_all(&serde_json::to_vec_pretty(flags).unwrap()).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Puts a FIFO at `path` in one rename (the relay never sees the path missing).
fn replace_with_fifo(path: &Path) {
    let tmp = path.with_extension("fifo");
    let ok = std::process::Command::new("mkfifo").arg(&tmp).status().unwrap();
    assert!(ok.success(), "mkfifo");
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_fifo_at_the_path_is_refused_and_the_watcher_goes_on() {
    let relay = TestRelay::builder().flags(flags("on", "on")).start().await;
    replace_with_fifo(&relay.flags_path);
    let st = relay.wait_status("production", "the FIFO to be refused in /status", |s| s["source"]["state"] == "error").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("a FIFO, not a regular file"), "{st}");
    assert_eq!(served(&relay, SERVER_KEY, "a").await.as_deref(), Some("on"), "the last good data is served");
    relay.write_flags(&flags("of", "on"));
    wait_served(&relay, SERVER_KEY, "a", "of").await;
    relay.wait_status("production", "recovery", |s| s["source"]["state"] == "ok").await;
}

#[tokio::test]
async fn a_symlink_to_dev_zero_is_refused_without_being_read() {
    let relay = TestRelay::builder().flags(flags("on", "on")).start().await;
    let tmp = relay.flags_path.with_extension("link");
    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    std::fs::rename(&tmp, &relay.flags_path).unwrap();
    let st = relay.wait_status("production", "/dev/zero to be refused in /status", |s| s["source"]["state"] == "error").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("a character device, not a regular file"), "{st}");
    relay.write_flags(&flags("of", "on"));
    wait_served(&relay, SERVER_KEY, "a", "of").await;
}

#[tokio::test]
async fn a_flags_file_over_the_size_limit_is_refused_counted_and_the_last_good_data_kept() {
    let relay = TestRelay::builder().flags(flags("on", "on")).file_upstream("max_file_bytes = 4096").start().await;
    let mut big = flags("of", "of");
    big["production"]["padding"] = feature(&"p".repeat(5000), "on");
    relay.write_flags(&big);
    let st = relay.wait_status("production", "the oversize file to be refused", |s| s["source"]["state"] == "error").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("larger than upstream.max_file_bytes (4096 bytes)"), "{st}");
    assert_eq!(served(&relay, SERVER_KEY, "a").await.as_deref(), Some("on"));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_source_reload_errors_total", &[("env", "production"), ("source", "file")]), Some(1.0));
    relay.write_flags(&flags("of", "of"));
    wait_served(&relay, SERVER_KEY, "a", "of").await;
}

#[tokio::test]
async fn an_in_place_edit_that_keeps_size_inode_and_an_old_mtime_is_seen() {
    // The periodic content check is an hour away: only the file-system event can reveal it.
    let relay = TestRelay::builder().flags(flags("on", "on")).file_upstream("rehash_interval_ms = 3600000").start().await;
    let old = SystemTime::now() - Duration::from_secs(3600);
    // A first edit (another size) with an old mtime: the relay now holds that stamp.
    let mut first = flags("on", "on");
    first["production"]["c"] = feature("c", "on");
    write_in_place(&relay.flags_path, &first, old);
    wait_served(&relay, SERVER_KEY, "c", "on").await;
    // "on" -> "of": same size, same inode, and the same old mtime.
    first["production"]["c"] = feature("c", "of");
    write_in_place(&relay.flags_path, &first, old);
    wait_served(&relay, SERVER_KEY, "c", "of").await;
}

#[tokio::test]
async fn a_malformed_environment_the_config_does_not_use_blocks_no_update() {
    let relay = TestRelay::builder().flags(flags("on", "on")).start().await;
    let mut next = flags("of", "of");
    next["unused"] = json!(5);
    relay.write_flags(&next);
    wait_served(&relay, SERVER_KEY, "a", "of").await;
    wait_served(&relay, STAGING_SERVER_KEY, "b", "of").await;
    assert_eq!(relay.env_status("production").await["source"]["state"], "ok");
}

#[tokio::test]
async fn a_malformed_environment_keeps_its_last_good_data_and_says_why_while_the_others_update() {
    let relay = TestRelay::builder().flags(flags("on", "on")).start().await;
    relay.write_flags(&json!({"production": {"a": feature("a", "of")}, "staging": 5}));
    wait_served(&relay, SERVER_KEY, "a", "of").await;
    let st = relay.wait_status("staging", "staging to say why", |s| s["source"]["state"] == "error").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("environment \"staging\" in the flags file"), "{st}");
    assert_eq!(served(&relay, STAGING_SERVER_KEY, "b").await.as_deref(), Some("on"), "its last good data");
    assert_eq!(relay.env_status("production").await["source"]["state"], "ok");
}

/// Log lines at warn level whose message contains `text`.
fn warnings(logs: &str, text: &str) -> usize {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains(text)))
        .count()
}

async fn admin_json(relay: &RelayProcess, path: &str) -> Value {
    within(path, async { http().get(relay.admin_url(path)).send().await.unwrap().json().await.unwrap() }).await
}

#[tokio::test]
async fn a_flags_file_that_stays_broken_is_logged_once_not_on_every_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = file_config(dir.path(), &json!({"production": {"a": feature("a", "on")}}), "", "");
    let relay = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    std::fs::write(&path, b"{ \"production\": { torn").unwrap();
    within("the broken file in /status", async {
        while admin_json(&relay, "/status").await["environments"][0]["source"]["state"] != "error" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The relay re-reads a file this fresh on every poll (20 ms) for two seconds, and touching it
    // makes it read again: give it that long to repeat itself.
    for _ in 0..5 {
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(SystemTime::now()).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    relay.sigterm();
    let (status, logs) = relay.wait().await;
    assert!(status.success());
    assert_eq!(warnings(&logs, "flags file re"), 1, "one warning for one problem:\n{logs}");
}

#[tokio::test]
async fn an_environment_the_config_does_not_list_is_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let with_other = |v: &str| json!({"production": {"a": feature("a", v)}, "other": {}});
    let (cfg, path) = file_config(dir.path(), &with_other("on"), "", "");
    let relay = RelayProcess::start(BIN, &cfg, &[], Stderr::Collect).await;
    let c = http();
    for v in ["of", "on", "of"] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&with_other(v)).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        within("the change to be served", async {
            loop {
                let body: Value = c.get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send().await.unwrap().json().await.unwrap();
                if body["a"]["rules"][0]["variantSplits"][0]["variantKey"] == v {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    relay.sigterm();
    let (_, logs) = relay.wait().await;
    assert_eq!(warnings(&logs, "an environment the config does not list"), 1, "{logs}");
}
