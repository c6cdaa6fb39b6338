//! The watch loop driven one check at a time on a real file in a temp dir (no inotify: that is
//! `watch`'s own test), and once through `run` for the periodic content check.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::*;
use crate::store::StoreLimits;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

fn fixture(flags: &Value) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, serde_json::to_vec(flags).unwrap()).unwrap();
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
    let store = Arc::new(Store::new(["production", "staging"], StoreLimits::default(), metrics.clone()));
    Fixture { _dir: dir, path, store, metrics }
}

fn config(path: &Path, max_bytes: u64, rehash_interval: Duration) -> FileUpstream {
    FileUpstream { path: path.to_path_buf(), poll_interval: Duration::from_millis(10), max_bytes, rehash_interval }
}

fn watcher(f: &Fixture) -> Watcher {
    Watcher::new(config(&f.path, 1 << 20, Duration::from_secs(3600)), f.store.clone(), f.metrics.clone())
}

/// One check, as the loop does it (`forced`: an event came, or the content check is due).
fn step(w: &mut Watcher, forced: bool) {
    match (w.check(forced))() {
        Ok(c) => w.apply(c),
        Err(e) => w.file_failed(e, None),
    }
}

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

/// The variant `key` serves in `env`, as the store has it.
fn served(f: &Fixture, env: &str, key: &str) -> Option<String> {
    let snap = f.store.get(env)?.snapshot();
    let feat = snap.features.get(key)?;
    feat.control.rules.first()?.variant_splits.first().map(|s| s.variant_key.clone())
}

fn state(f: &Fixture, env: &str) -> (&'static str, Option<String>) {
    let s = f.store.get(env).unwrap().status();
    (s.state, s.last_error)
}

fn reload_errors(f: &Fixture, env: &str) -> u64 {
    f.metrics.source_errors.with_label_values(&[env, "file"]).get()
}

/// Rewrites the file in place (same inode) and sets its mtime to `mtime`.
fn write_in_place(path: &Path, flags: &Value, mtime: SystemTime) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    file.write_all(&serde_json::to_vec(flags).unwrap()).unwrap();
    file.set_modified(mtime).unwrap();
}

fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

#[test]
fn an_edit_that_keeps_size_inode_and_an_old_mtime_is_seen_only_by_a_forced_read() {
    let f = fixture(&json!({}));
    let old = an_hour_ago();
    write_in_place(&f.path, &flags("on", "on"), old);
    let mut w = watcher(&f);
    step(&mut w, false);
    assert_eq!(served(&f, "production", "a").as_deref(), Some("on"));
    // "on" -> "of": same size; the mtime is put back.
    write_in_place(&f.path, &flags("of", "on"), old);
    step(&mut w, false);
    assert_eq!(served(&f, "production", "a").as_deref(), Some("on"), "the metadata cannot tell");
    step(&mut w, true);
    assert_eq!(served(&f, "production", "a").as_deref(), Some("of"), "an event or the content check reads it");
}

#[tokio::test]
async fn without_any_event_the_periodic_content_check_finds_a_same_stamp_edit() {
    let f = fixture(&json!({}));
    let old = an_hour_ago();
    write_in_place(&f.path, &flags("on", "on"), old);
    let shutdown = Shutdown::new();
    let w = Watcher::new(config(&f.path, 1 << 20, Duration::from_millis(50)), f.store.clone(), f.metrics.clone());
    let task = tokio::spawn(w.run(None, shutdown.clone()));
    let wait_for = |variant: &'static str| {
        let store = f.store.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let snap = store.get("production").unwrap().snapshot();
                    if snap.features.get("a").is_some_and(|x| x.control.rules.first().and_then(|r| r.variant_splits.first()).is_some_and(|s| s.variant_key == variant)) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{variant} never served"))
        }
    };
    wait_for("on").await;
    write_in_place(&f.path, &flags("of", "on"), old);
    wait_for("of").await;
    shutdown.trigger();
    task.await.unwrap();
}

#[test]
fn a_malformed_environment_keeps_its_last_good_data_and_says_why_while_the_others_update() {
    let f = fixture(&flags("on", "on"));
    let mut w = watcher(&f);
    step(&mut w, true);
    std::fs::write(&f.path, serde_json::to_vec(&json!({"production": {"a": feature("a", "of")}, "staging": 5})).unwrap()).unwrap();
    step(&mut w, true);
    assert_eq!(served(&f, "production", "a").as_deref(), Some("of"), "the other environment updates");
    assert_eq!(served(&f, "staging", "b").as_deref(), Some("on"), "the last good data is kept");
    let (st, err) = state(&f, "staging");
    assert_eq!(st, "error");
    assert!(err.unwrap_or_default().contains("environment \"staging\" in the flags file"));
    assert_eq!(state(&f, "production").0, "ok");
    // Fixed: loaded again.
    std::fs::write(&f.path, serde_json::to_vec(&flags("of", "of")).unwrap()).unwrap();
    step(&mut w, true);
    assert_eq!((served(&f, "staging", "b").as_deref(), state(&f, "staging").0), (Some("of"), "ok"));
}

#[test]
fn a_malformed_environment_the_config_does_not_use_blocks_nothing() {
    let f = fixture(&flags("on", "on"));
    let mut w = watcher(&f);
    step(&mut w, true);
    let mut next = flags("of", "of");
    next["unused"] = json!(5);
    std::fs::write(&f.path, serde_json::to_vec(&next).unwrap()).unwrap();
    step(&mut w, true);
    assert_eq!((served(&f, "production", "a").as_deref(), served(&f, "staging", "b").as_deref()), (Some("of"), Some("of")));
    assert_eq!((state(&f, "production").0, state(&f, "staging").0), ("ok", "ok"));
}

#[test]
fn a_problem_that_persists_is_counted_once_and_a_new_one_again() {
    let f = fixture(&flags("on", "on"));
    let mut w = watcher(&f);
    step(&mut w, true);
    std::fs::write(&f.path, b"{ torn").unwrap();
    for _ in 0..5 {
        step(&mut w, true);
    }
    assert_eq!(reload_errors(&f, "production"), 1);
    std::fs::remove_file(&f.path).unwrap();
    for _ in 0..5 {
        step(&mut w, true);
    }
    assert_eq!(reload_errors(&f, "production"), 2, "a missing file is another problem");
    std::fs::write(&f.path, serde_json::to_vec(&flags("of", "on")).unwrap()).unwrap();
    step(&mut w, true);
    assert_eq!((served(&f, "production", "a").as_deref(), state(&f, "production").0), (Some("of"), "ok"));
}

#[test]
fn a_file_over_the_limit_is_refused_and_the_last_good_data_kept() {
    let f = fixture(&flags("on", "on"));
    let mut w = Watcher::new(config(&f.path, 1000, Duration::from_secs(3600)), f.store.clone(), f.metrics.clone());
    step(&mut w, true);
    let mut big = flags("of", "of");
    big["production"]["pad"] = feature(&"p".repeat(1000), "on");
    std::fs::write(&f.path, serde_json::to_vec(&big).unwrap()).unwrap();
    step(&mut w, true);
    assert_eq!(served(&f, "production", "a").as_deref(), Some("on"));
    let (st, err) = state(&f, "production");
    assert_eq!(st, "error");
    assert!(err.unwrap_or_default().contains("larger than upstream.max_file_bytes (1000 bytes)"));
    assert_eq!(reload_errors(&f, "production"), 1);
}

#[test]
fn a_file_that_comes_back_with_the_same_content_is_ok_again() {
    let f = fixture(&flags("on", "on"));
    let mut w = watcher(&f);
    step(&mut w, true);
    let bytes = std::fs::read(&f.path).unwrap();
    std::fs::remove_file(&f.path).unwrap();
    step(&mut w, false);
    assert_eq!(state(&f, "production").0, "error");
    std::fs::write(&f.path, bytes).unwrap();
    step(&mut w, false);
    assert_eq!(state(&f, "production").0, "ok");
}
