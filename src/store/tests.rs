//! The write path of one environment end to end: what `apply` and `replace` publish, and how
//! resumes see it through `catchup_seq` and `catchup_revision`.

use super::*;
use prometheus::Registry;

fn env() -> EnvStore {
    let m = Arc::new(Metrics::new(Registry::new()).expect("metrics"));
    EnvStore::new("e", StoreLimits { replay_revisions: 3, ..Default::default() }, m)
}

fn f(key: &str, variant: &str) -> Arc<Feature> {
    let v = serde_json::json!({"key": key, "enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}]});
    Feature::from_value(key, v).expect("valid")
}

fn map(fs: &[Arc<Feature>]) -> FeatureMap {
    fs.iter().map(|f| (f.key.clone(), f.clone())).collect()
}

fn keys(c: &Catchup) -> (Vec<String>, Vec<String>) {
    match c {
        Catchup::Changes(v) => (
            v.iter().flat_map(|c| c.upserts.iter().map(|f| f.key.clone())).collect(),
            v.iter().flat_map(|c| c.deletes.clone()).collect(),
        ),
        other => panic!("expected changes, got {other:?}"),
    }
}

#[test]
fn a_change_that_changes_nothing_is_not_published() {
    let e = env();
    assert!(e.replace(map(&[f("a", "on")]), None, None).is_some());
    let rev = e.snapshot().revision;
    assert!(e.replace(map(&[f("a", "on")]), None, None).is_none());
    assert!(e.apply(Update { upserts: vec![f("a", "on")], deletes: vec!["zz".into()], ..Default::default() }).is_none());
    assert_eq!(e.snapshot().revision, rev);
}

#[test]
fn replace_publishes_only_the_difference() {
    let e = env();
    e.replace(map(&[f("a", "on"), f("b", "on")]), None, None);
    let c = e.replace(map(&[f("a", "off"), f("c", "on")]), None, None).expect("a change");
    let mut up: Vec<_> = c.upserts.iter().map(|f| f.key.as_str()).collect();
    up.sort();
    assert_eq!(up, ["a", "c"]);
    assert_eq!(c.deletes, ["b"]);
    assert_eq!(e.snapshot().compiled.len(), 2, "compiled map follows the features");
}

#[test]
fn resume_by_revision_inside_and_beyond_the_ring() {
    let e = env();
    e.replace(map(&[f("a", "on"), f("b", "on")]), Some(10), None);
    e.apply(Update { upserts: vec![f("a", "off")], revision: Some(11), ..Default::default() });
    e.apply(Update { deletes: vec!["b".into()], revision: Some(12), ..Default::default() });
    let s = e.snapshot();
    assert_eq!(keys(&e.catchup_revision(10, &s).expect("not ahead")), (vec!["a".into()], vec!["b".into()]));
    assert!(matches!(e.catchup_revision(12, &s), Some(Catchup::Current)));
    assert!(e.catchup_revision(13, &s).is_none(), "ahead");
    // Before the first load there is no history: full state.
    assert!(matches!(e.catchup_revision(5, &s), Some(Catchup::FullState { .. })));
    // Push the early changes out of the ring (capacity 3).
    for r in 13..=16 {
        e.apply(Update { upserts: vec![f("c", if r % 2 == 0 { "on" } else { "off" })], revision: Some(r), ..Default::default() });
    }
    let s = e.snapshot();
    match e.catchup_revision(11, &s) {
        Some(Catchup::FullState { tombstones }) => assert_eq!(tombstones, ["b"]),
        other => panic!("expected full state with the tombstone, got {other:?}"),
    }
}

#[test]
fn a_lower_revision_starts_a_new_lineage() {
    let e = env();
    e.replace(map(&[f("a", "on")]), Some(248), None);
    e.apply(Update { upserts: vec![f("b", "on")], revision: Some(249), ..Default::default() });
    // Failover: the new master holds revision 32 without b.
    let c = e.replace(map(&[f("a", "on")]), Some(32), None).expect("revert published");
    assert_eq!(c.deletes, ["b"]);
    let s = e.snapshot();
    assert_eq!(s.revision, 32);
    // Connected clients (by seq) still get the exact revert.
    assert_eq!(keys(&e.catchup_seq(s.seq - 1, &s)), (vec![], vec!["b".into()]));
    // A client of the old lineage at 249 is "ahead": full state.
    assert!(e.catchup_revision(249, &s).is_none());
    // A client at 20 (older than the new lineage) gets full state, never a partial replay.
    assert!(matches!(e.catchup_revision(20, &s), Some(Catchup::FullState { .. })));
    // Revisions 32..=249 were used by both lineages: a resume from there is never trusted.
    e.apply(Update { upserts: vec![f("c", "on")], revision: Some(33), ..Default::default() });
    let s = e.snapshot();
    match e.catchup_revision(33, &s) {
        Some(Catchup::FullState { tombstones }) => assert_eq!(tombstones, ["b"], "with every deletion"),
        other => panic!("an ambiguous id must get full state, got {other:?}"),
    }
    // Past the old lineage's last revision, resumes replay again.
    e.apply(Update { upserts: vec![f("d", "on")], revision: Some(250), ..Default::default() });
    e.apply(Update { upserts: vec![f("e", "on")], revision: Some(251), ..Default::default() });
    let s = e.snapshot();
    assert_eq!(keys(&e.catchup_revision(250, &s).expect("in lineage")), (vec!["e".into()], vec![]));
}

#[test]
fn self_numbered_revisions_start_from_the_clock_so_restarts_never_reuse_them() {
    let a = env();
    a.replace(map(&[f("a", "on")]), None, None);
    let first = a.snapshot().revision;
    assert!(first > 1_700_000_000_000_000, "µs since the epoch: {first}");
    a.apply(Update { upserts: vec![f("a", "off")], ..Default::default() });
    assert_eq!(a.snapshot().revision, first + 1);
    let b = env();
    b.replace(map(&[f("a", "on")]), None, None);
    assert!(b.snapshot().revision > first, "a later process starts above");
}

#[test]
fn the_same_key_twice_in_one_update_is_upserted_once() {
    let e = env();
    let c = e.apply(Update { upserts: vec![f("a", "on"), f("a", "off")], ..Default::default() }).expect("change");
    assert_eq!(c.upserts.len(), 1);
    assert_eq!(c.upserts[0].control.rules[0].variant_splits[0].variant_key, "off");
}

#[test]
fn a_resume_from_inside_a_revision_jump_gets_full_state() {
    let e = env();
    e.replace(map(&[f("a", "on")]), Some(10), None);
    // A resync after a gap: 10 -> 20 in one step.
    e.replace(map(&[f("a", "off")]), Some(20), None);
    let s = e.snapshot();
    assert!(matches!(e.catchup_revision(15, &s), Some(Catchup::FullState { .. })), "15 was never seen here");
    assert_eq!(keys(&e.catchup_revision(10, &s).expect("seen")), (vec!["a".into()], vec![]));
    e.apply(Update { upserts: vec![f("b", "on")], revision: Some(21), ..Default::default() });
    let s = e.snapshot();
    assert_eq!(keys(&e.catchup_revision(20, &s).expect("seen")), (vec!["b".into()], vec![]));
}

#[test]
fn a_revision_only_change_is_recorded_without_an_event() {
    let e = env();
    e.replace(map(&[f("a", "on")]), Some(5), None);
    let seq = e.snapshot().seq;
    assert!(e.replace(map(&[f("a", "on")]), Some(9), None).is_none());
    let s = e.snapshot();
    assert_eq!((s.revision, s.seq), (9, seq));
}

fn env_capped(max_feature_bytes: usize) -> (EnvStore, Arc<Metrics>) {
    let m = Arc::new(Metrics::new(Registry::new()).expect("metrics"));
    (EnvStore::new("e", StoreLimits { max_feature_bytes, ..Default::default() }, m.clone()), m)
}

fn padded(key: &str, variant: &str, padding: usize) -> Arc<Feature> {
    let v = serde_json::json!({"key": key, "enabled": true, "padding": "x".repeat(padding), "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}]});
    Feature::from_value(key, v).expect("valid")
}

fn variant(e: &EnvStore, key: &str) -> Option<String> {
    e.snapshot().features.get(key).map(|f| f.control.rules[0].variant_splits[0].variant_key.clone())
}

#[test]
fn an_upsert_over_the_feature_size_cap_is_rejected_counted_and_the_previous_version_stays() {
    let (e, m) = env_capped(1_000);
    e.apply(Update { upserts: vec![padded("a", "on", 10)], ..Default::default() });
    let c = e.apply(Update { upserts: vec![padded("a", "off", 2_000), padded("b", "on", 10)], ..Default::default() }).expect("b changed");
    assert_eq!(c.upserts.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(variant(&e, "a").as_deref(), Some("on"), "the previous version stays");
    assert!(e.apply(Update { upserts: vec![padded("new", "on", 2_000)], ..Default::default() }).is_none());
    assert_eq!(variant(&e, "new"), None, "a new feature over the cap never enters");
    assert_eq!(m.invalid_features.with_label_values(&["e"]).get(), 2);
    assert!(e.status().last_error.is_some_and(|s| s.contains("max_feature_bytes")));
}

#[test]
fn a_replace_with_a_feature_over_the_size_cap_keeps_the_version_held_before() {
    let (e, m) = env_capped(1_000);
    e.replace(map(&[padded("a", "on", 10)]), None, None);
    e.replace(map(&[padded("a", "off", 2_000), padded("new", "on", 2_000), padded("b", "on", 10)]), None, None);
    let s = e.snapshot();
    assert_eq!(s.features.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(variant(&e, "a").as_deref(), Some("on"));
    assert_eq!(m.invalid_features.with_label_values(&["e"]).get(), 2);
}

#[test]
fn the_history_bytes_are_exported_per_environment() {
    let (e, m) = env_capped(1 << 20);
    e.replace(map(&[padded("a", "on", 5_000)]), None, None);
    e.apply(Update { deletes: vec!["a".into()], ..Default::default() });
    assert!(m.replay_bytes.with_label_values(&["e", "ring"]).get() > 5_000);
    assert!(m.replay_bytes.with_label_values(&["e", "tombstones"]).get() > 0);
}

#[test]
fn a_change_records_which_keys_thin_clients_may_hear_of() {
    let e = env();
    let hidden = |k: &str| Feature::from_value(k, serde_json::json!({"key": k, "inClientApi": false})).expect("valid");
    e.replace(map(&[f("a", "on"), hidden("h")]), None, None);
    let c = e.apply(Update { upserts: vec![f("a", "off"), hidden("h2")], deletes: vec!["h".into()], ..Default::default() }).expect("change");
    assert_eq!(c.thin_keys, ["a"]);
    let s = e.snapshot();
    match e.full_state_for_unknown(&s) {
        Catchup::FullState { tombstones } => {
            assert_eq!(tombstones, ["h"], "server SDKs hear of every deletion");
            assert!(e.served_tombstones(tombstones).is_empty(), "thin clients of none of a hidden feature");
        }
        other => panic!("expected full state, got {other:?}"),
    }
}
