use std::sync::Arc;

use super::*;
use crate::model::Feature;
use crate::store::{FeatureMap, StoreLimits, Update};

fn env() -> (Arc<EnvStore>, Metrics) {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
    (Arc::new(EnvStore::new("production", StoreLimits::default(), metrics.clone())), Metrics::new(prometheus::Registry::new()).expect("metrics"))
}

fn feature(key: &str, version: u64) -> Arc<Feature> {
    Feature::from_value(key, serde_json::json!({"key": key, "enabled": true, "version": version})).expect("valid")
}

fn load(env: &EnvStore, revision: u64, keys: &[&str]) {
    let map: FeatureMap = keys.iter().map(|k| (k.to_string(), feature(k, 1))).collect();
    env.replace(map, Some(revision), None);
}

fn events(frames: &[Bytes]) -> Vec<String> {
    let text = String::from_utf8(frames.concat()).expect("utf-8");
    text.lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_string).collect()
}

fn start(env: &Arc<EnvStore>, metrics: &Metrics, resume: Option<String>) -> (RelayRenderer, Vec<Bytes>) {
    let mut r = RelayRenderer::new(env, resume);
    let frames = r.start(env, &env.snapshot(), None, metrics);
    (r, frames)
}

#[test]
fn a_fresh_child_gets_nothing_before_the_first_load_then_a_snapshot() {
    let (env, m) = env();
    let (mut r, frames) = start(&env, &m, None);
    assert!(frames.is_empty());
    load(&env, 5, &["a"]);
    let snap = env.snapshot();
    let c = env.catchup_seq(0, &snap);
    let out = r.catch_up(&env, c, &snap, &m).expect("a frame");
    assert_eq!(events(std::slice::from_ref(&out)), ["snapshot"]);
    let text = String::from_utf8(out.to_vec()).expect("utf-8");
    assert!(text.starts_with(&format!("id: {}:{}\n", env.stream_epoch(), snap.seq)), "{text}");
    assert!(text.contains("\"revision\":5") && text.contains("\"features\":{\"a\":"), "{text}");
}

#[test]
fn a_resume_of_this_epoch_replays_the_changes_then_says_where_it_is() {
    let (env, m) = env();
    load(&env, 5, &["a"]);
    let at = format!("{}:{}", env.stream_epoch(), env.snapshot().seq);
    env.apply(Update { upserts: vec![feature("b", 1)], revision: Some(6), ..Default::default() });
    env.apply(Update { deletes: vec!["a".into()], revision: Some(7), ..Default::default() });
    let (_, frames) = start(&env, &m, Some(at));
    assert_eq!(events(&frames), ["change", "change", "heartbeat"]);
}

#[test]
fn a_resume_at_the_head_gets_only_a_heartbeat() {
    let (env, m) = env();
    load(&env, 5, &["a"]);
    let at = format!("{}:{}", env.stream_epoch(), env.snapshot().seq);
    let (_, frames) = start(&env, &m, Some(at));
    assert_eq!(events(&frames), ["heartbeat"]);
}

#[test]
fn a_position_it_cannot_prove_gets_a_snapshot() {
    let (env, m) = env();
    load(&env, 5, &["a"]);
    let seq = env.snapshot().seq;
    let epoch = env.stream_epoch().to_string();
    for resume in [format!("other:{seq}"), format!("{epoch}:{}", seq + 1), "garbage".to_string(), format!("{epoch}:x")] {
        let (_, frames) = start(&env, &m, Some(resume.clone()));
        assert_eq!(events(&frames), ["snapshot"], "{resume}");
    }
}

#[test]
fn a_resume_the_ring_no_longer_reaches_gets_a_snapshot() {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
    let env = Arc::new(EnvStore::new("production", StoreLimits { replay_revisions: 2, ..StoreLimits::default() }, metrics));
    let m = Metrics::new(prometheus::Registry::new()).expect("metrics");
    load(&env, 5, &["a"]);
    let at = format!("{}:{}", env.stream_epoch(), env.snapshot().seq);
    for rev in 6..10 {
        env.apply(Update { upserts: vec![feature("a", rev)], revision: Some(rev), ..Default::default() });
    }
    let (_, frames) = start(&env, &m, Some(at));
    assert_eq!(events(&frames), ["snapshot"]);
}

#[test]
fn a_revision_that_moves_without_a_change_is_sent_as_a_heartbeat() {
    let (env, m) = env();
    load(&env, 5, &["a"]);
    let (mut r, _) = start(&env, &m, None);
    load(&env, 9, &["a"]);
    let snap = env.snapshot();
    let c = env.catchup_seq(snap.seq, &snap);
    let out = r.catch_up(&env, c, &snap, &m).expect("a frame");
    let text = String::from_utf8(out.to_vec()).expect("utf-8");
    assert!(text.starts_with("event: heartbeat\n") && text.contains("\"revision\":9"), "{text}");
}

#[test]
fn every_child_shares_one_encoding_of_a_change() {
    let (env, _) = env();
    load(&env, 5, &["a"]);
    let c = env.apply(Update { upserts: vec![feature("b", 1)], revision: Some(6), upstream_ts_ms: Some(1234), ..Default::default() }).expect("a change");
    let one = change_frame(env.stream_epoch(), &c);
    let two = change_frame(env.stream_epoch(), &c);
    assert_eq!(one.as_ptr(), two.as_ptr());
    let text = String::from_utf8(one.to_vec()).expect("utf-8");
    assert!(text.contains("\"ts\":1234") && text.contains("\"deletes\":[]"), "{text}");
}

#[test]
fn positions_parse_as_epoch_and_seq() {
    assert_eq!(parse_position("ab12:7"), Some(("ab12", 7)));
    assert_eq!(parse_position(" ab12:7 "), Some(("ab12", 7)));
    assert_eq!(parse_position("7"), None);
    assert_eq!(parse_position("e:-1"), None);
}
