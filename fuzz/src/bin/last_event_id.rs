//! Fuzz target `last_event_id`: a `Last-Event-ID` header through `util::last_event_id`, then the
//! resume it leads to on a store with a fuzzed history (`EnvStore::catchup_revision`, and the
//! Featureflow renderer's `start`, which SSE streams run when they open).
//!
//! Input: one byte of ring size and op count, 3 bytes per op (kind, key, revision: upserts,
//! deletes, replacements and revision-only updates of four keys; revision byte 0 means none,
//! as the file source gives, else that revision, so it can go down as after a failover), then
//! the header value.
//!
//! Invariants: the id is `None` exactly for a blank header, the number for a decimal one,
//! `u64::MAX` for anything else, and a number written back reads the same. A resume is `None`
//! exactly when the id is ahead; `Current` only at the current revision; `Changes` are in order,
//! newer than the id, end at the current change, and applied to the state the store published
//! at that revision give the current state; a full state's tombstones are keys it lacks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use flagrelay::fuzzing::{last_event_id, Catchup, EnvStore, Feature, FeatureMap, FeatureflowRenderer, Metrics, Renderer, Revision, StoreLimits, Update};
use hyper::header::{HeaderMap, HeaderValue};
use serde_json::json;

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

fn metrics() -> Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new(prometheus::Registry::new()).unwrap())).clone()
}

/// Key -> encoded feature JSON: what a client holds after a revision.
type State = BTreeMap<String, Vec<u8>>;

fn state(features: &FeatureMap) -> State {
    features.iter().map(|(k, f)| (k.clone(), f.json.to_vec())).collect()
}

fn feature(key: &str, version: u8) -> Arc<Feature> {
    Feature::from_value(key, json!({"key": key, "enabled": version % 2 == 0, "version": version})).unwrap()
}

fn check_id(value: &[u8], id: Option<u64>) {
    let Ok(v) = HeaderValue::from_bytes(value) else { return };
    let want = match v.to_str().map(str::trim) {
        Ok("") => None,
        Ok(s) => Some(s.parse().unwrap_or(u64::MAX)),
        Err(_) => Some(u64::MAX),
    };
    assert_eq!(id, want, "{value:?}");
    if let Some(n) = id {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from(n));
        assert_eq!(last_event_id(&h), Some(n));
    }
}

fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else { return };
    let ops = usize::from(head & 0x0f).min(rest.len() / 3);
    let (script, value) = rest.split_at(ops * 3);
    let limits = StoreLimits { replay_revisions: usize::from(head >> 4) % 6 + 1, ..StoreLimits::default() };
    let env = EnvStore::new("production", limits, metrics());
    // Revision -> the state published at it; `None` once two states were published at it.
    let mut seen: HashMap<Revision, Option<State>> = HashMap::new();
    for op in script.chunks_exact(3) {
        let (kind, k, r) = (op[0], KEYS[usize::from(op[1]) % KEYS.len()], op[2]);
        let revision = (r != 0).then_some(u64::from(r));
        let update = |upserts: Vec<Arc<Feature>>, deletes: Vec<String>| Update { upserts, deletes, revision, upstream_ts_ms: None };
        match kind % 4 {
            0 => drop(env.apply(update(vec![feature(k, op[1] / 4)], Vec::new()))),
            1 => drop(env.apply(update(Vec::new(), vec![k.to_string()]))),
            2 => {
                let map: FeatureMap = KEYS.iter().enumerate().filter(|(i, _)| op[1] & (1 << i) != 0).map(|(_, k)| (k.to_string(), feature(k, op[1] >> 4))).collect();
                drop(env.replace(map, revision, None));
            }
            _ => drop(env.apply(update(Vec::new(), Vec::new()))),
        }
        let snap = env.snapshot();
        if snap.loaded {
            let now = state(&snap.features);
            seen.entry(snap.revision).and_modify(|s| if s.as_ref() != Some(&now) { *s = None }).or_insert(Some(now));
        }
    }

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert("last-event-id", v);
    }
    let id = last_event_id(&headers);
    check_id(value, id);
    let snap = env.snapshot();
    let frames = FeatureflowRenderer.start(&env, &snap, id, &metrics());
    if id.is_none() {
        assert_eq!(frames.len(), usize::from(snap.loaded), "a fresh stream's first frames");
    }
    let Some(last) = id else { return };
    let current = state(&snap.features);
    match env.catchup_revision(last, &snap) {
        None => assert!(last > snap.revision),
        Some(Catchup::Current) => {
            assert_eq!(last, snap.revision);
            if let Some(Some(s)) = seen.get(&last) {
                assert_eq!(s, &current, "Current at {last} but the state differs");
            }
        }
        Some(Catchup::Changes(changes)) => {
            assert!(last < snap.revision || changes.is_empty());
            assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
            assert!(changes.iter().all(|c| c.revision > last), "a change at or before {last}");
            if let Some(c) = changes.last() {
                assert_eq!(c.seq, snap.seq);
            }
            if let Some(Some(s)) = seen.get(&last) {
                let mut s = s.clone();
                for c in &changes {
                    for f in &c.upserts {
                        s.insert(f.key.clone(), f.json.to_vec());
                    }
                    for k in &c.deletes {
                        s.remove(k);
                    }
                }
                assert_eq!(s, current, "replaying {} changes from {last} does not reach revision {}", changes.len(), snap.revision);
            }
        }
        Some(Catchup::FullState { tombstones }) => {
            assert!(tombstones.iter().all(|t| !current.contains_key(t)), "tombstone of a key held: {tombstones:?}");
        }
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
