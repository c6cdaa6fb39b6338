//! The current flag data of every environment: an immutable [`Snapshot`] behind `Arc`, swapped
//! atomically, plus a bounded ring of recent [`ChangeRecord`]s and tombstones for resumes.
//!
//! Invariants:
//! - Readers never block writers: a reader clones the current `Arc<Snapshot>` out of a `watch`
//!   channel and works on it without locks; a writer builds the next snapshot and swaps it in.
//! - `seq` is local to this process and goes up by exactly one per published change; the fan-out
//!   keys on it. `revision` is what clients see (`id:`, `/status`); it increases with every change
//!   in file mode, and follows the upstream `rev` in Redis mode, where a resync may lower it (a
//!   failover). A revision that does not go up breaks the history: the ring is cleared so no
//!   resume can mix two lineages.
//! - A change that changes nothing is not published. A feature is upserted only when its JSON
//!   differs from the stored one.
//! - Encoded forms (the JSON body and ETag, SSE frames) are built at most once per snapshot or
//!   change, lazily, in the `OnceLock` slots, and shared by every reader.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::eval::CompiledFeature;
use crate::metrics::Metrics;
use crate::model::{Feature, Revision};

pub type FeatureMap = BTreeMap<String, Arc<Feature>>;
/// Every feature compiled for evaluation, keyed like [`FeatureMap`].
pub type CompiledMap = BTreeMap<String, Arc<CompiledFeature>>;

/// One environment's data at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    pub env: Arc<str>,
    pub seq: u64,
    pub revision: Revision,
    pub features: Arc<FeatureMap>,
    /// The same features compiled for evaluation (each compiled once, when it changed).
    pub compiled: Arc<CompiledMap>,
    /// True once the source has delivered data for this environment.
    pub loaded: bool,
    /// When this snapshot was published.
    pub published_at: SystemTime,
    /// The change that produced this snapshot (`None` for the initial, empty one and for
    /// revision-only updates).
    pub last_change: Option<Arc<ChangeRecord>>,
    body: OnceLock<Encoded>,
    /// Slots for full-state frames of each stream kind, filled by the fan-out.
    pub full_frames: [OnceLock<Bytes>; FRAME_SLOTS],
    /// Catch-up frames into this snapshot, keyed by (stream kind slot, the client's seq), so
    /// lagging clients at the same position share one encoding. Bounded by [`CATCHUP_CACHE`].
    pub catchup_frames: Mutex<Vec<(usize, u64, Bytes)>>,
}

/// How many catch-up frames one snapshot caches.
pub const CATCHUP_CACHE: usize = 32;

impl Snapshot {
    /// The cached catch-up frame for (`slot`, `from_seq`), or `make()`'s, cached.
    pub fn catchup_frame(&self, slot: usize, from_seq: u64, make: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((_, _, b)) = lock(&self.catchup_frames).iter().find(|(s, f, _)| *s == slot && *f == from_seq) {
            return b.clone();
        }
        let b = make();
        let mut c = lock(&self.catchup_frames);
        if c.len() < CATCHUP_CACHE {
            c.push((slot, from_seq, b.clone()));
        }
        b
    }
}

/// How many kinds of stream may cache encoded frames on a snapshot or change.
pub const FRAME_SLOTS: usize = 4;

/// The JSON map and its strong ETag.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Bytes,
    pub etag: Arc<str>,
}

impl Snapshot {
    fn empty(env: Arc<str>) -> Snapshot {
        Snapshot {
            env,
            seq: 0,
            revision: 0,
            features: Arc::new(FeatureMap::new()),
            compiled: Arc::new(CompiledMap::new()),
            loaded: false,
            published_at: SystemTime::now(),
            last_change: None,
            body: OnceLock::new(),
            full_frames: Default::default(),
            catchup_frames: Mutex::new(Vec::new()),
        }
    }

    /// The bare JSON map `{key: control, ...}` (sorted by key) and its ETag, encoded once.
    pub fn encoded(&self) -> &Encoded {
        self.body.get_or_init(|| {
            let body = encode_map(self.features.values());
            let etag = etag_of(&body);
            Encoded { body, etag: etag.into() }
        })
    }
}

/// `{"k1":{...},"k2":{...}}` from already-encoded features.
pub fn encode_map<'a>(features: impl Iterator<Item = &'a Arc<Feature>>) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    for (i, f) in features.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serializing a String cannot fail.
        let _ = serde_json::to_writer(&mut out, &f.key);
        out.push(b':');
        out.extend_from_slice(&f.json);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A strong ETag: the quoted hex of the content's SHA-1 (deterministic, changes exactly when the
/// body does).
pub fn etag_of(body: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(body);
    format!("\"{}\"", hex::encode(&d[..12]))
}

/// What one revision changed.
#[derive(Debug)]
pub struct ChangeRecord {
    pub seq: u64,
    pub revision: Revision,
    pub upserts: Vec<Arc<Feature>>,
    pub deletes: Vec<String>,
    /// Upstream publish time (Unix ms), for the propagation metric.
    pub upstream_ts_ms: Option<u64>,
    pub at: Instant,
    /// Increments whenever the revision fails to go up (failover, restore).
    pub lineage: u64,
    /// Slots for the encoded frames of this change, one per stream kind, filled by the fan-out.
    pub frames: [OnceLock<Bytes>; FRAME_SLOTS],
    /// Fan-out bookkeeping: connections that have yet to receive this change (armed by the first
    /// delivery), for the "written to every connection" measurement.
    pub pending_deliveries: std::sync::atomic::AtomicI64,
    pub deliveries_armed: std::sync::atomic::AtomicBool,
}

/// A change to apply. `revision: None` means "the next revision".
#[derive(Debug, Default)]
pub struct Update {
    pub upserts: Vec<Arc<Feature>>,
    pub deletes: Vec<String>,
    pub revision: Option<Revision>,
    pub upstream_ts_ms: Option<u64>,
}

/// The state of an environment's source, for `/status` and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// e.g. `loading`, `ok`, `error`, `connected`, `resyncing`, `disconnected`.
    pub state: &'static str,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Free-form note (e.g. "environment missing from the flags file").
    pub detail: Option<String>,
    pub epoch: Option<String>,
    /// True while serving data not confirmed by the source (warm start, upstream not initialised).
    pub stale: bool,
    /// When the source last confirmed the data current (a sync, a message, a file read).
    pub confirmed_at: Option<SystemTime>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            state: "loading",
            since: SystemTime::now(),
            last_error: None,
            last_error_at: None,
            detail: None,
            epoch: None,
            stale: false,
            confirmed_at: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub replay_revisions: usize,
    pub tombstones_max: usize,
    pub tombstone_ttl: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { replay_revisions: 1024, tombstones_max: 10_000, tombstone_ttl: Duration::from_secs(86_400) }
    }
}

#[derive(Debug, Clone)]
pub struct Tombstone {
    pub key: String,
    pub seq: u64,
    pub revision: Revision,
    pub at: Instant,
}

/// Recent changes. The ring covers every change after `base_seq`; resumes by revision are exact
/// from `rev_base` on, within the current lineage (see the module invariants).
#[derive(Debug, Default)]
struct History {
    ring: VecDeque<Arc<ChangeRecord>>,
    tombstones: VecDeque<Tombstone>,
    base_seq: u64,
    rev_base: Revision,
    lineage: u64,
    /// Revision ranges that more than one lineage has used (after a revision went down): a
    /// resume from inside one cannot be trusted and gets full state.
    ambiguous: VecDeque<(Revision, Revision)>,
}

/// How many ambiguous revision ranges are remembered.
const AMBIGUOUS_RANGES: usize = 16;

impl History {
    /// Starts a new lineage at `revision` after `previous` (the revision it replaces).
    fn new_lineage(&mut self, revision: Revision, previous: Option<Revision>) {
        self.lineage += 1;
        self.rev_base = revision;
        if let Some(prev) = previous.filter(|p| *p >= revision) {
            self.mark_ambiguous(revision, prev);
        }
    }

    /// Revisions `lo..=hi` cannot be placed in this history: a resume from there gets full state.
    fn mark_ambiguous(&mut self, lo: Revision, hi: Revision) {
        self.ambiguous.push_back((lo, hi));
        while self.ambiguous.len() > AMBIGUOUS_RANGES {
            self.ambiguous.pop_front();
        }
    }

    fn is_ambiguous(&self, r: Revision) -> bool {
        self.ambiguous.iter().any(|(lo, hi)| (*lo..=*hi).contains(&r))
    }

    /// Every remembered deletion of a key `to` does not hold.
    fn tombstones_absent(&self, to: &Snapshot, after: impl Fn(&Tombstone) -> bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.tombstones.iter().filter(|t| t.seq <= to.seq && after(t) && !to.features.contains_key(&t.key)) {
            if !out.contains(&t.key) {
                out.push(t.key.clone());
            }
        }
        out
    }
}

/// The first revision of a file-sourced (self-numbered) environment: the start time in
/// microseconds, so revisions never repeat across restarts and rarely overlap across replicas.
fn initial_revision() -> Revision {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1).max(1)
}

/// One environment.
pub struct EnvStore {
    pub id: Arc<str>,
    tx: watch::Sender<Arc<Snapshot>>,
    write: Mutex<()>,
    history: Mutex<History>,
    status: Mutex<SourceStatus>,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-written (every critical
    // section only assigns whole values), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a resume from a client's last seen position needs.
#[derive(Debug)]
pub enum Catchup {
    /// Nothing missed.
    Current,
    /// The changes after the client's position, oldest first.
    Changes(Vec<Arc<ChangeRecord>>),
    /// History does not reach back far enough: send full state plus these deletions.
    FullState { tombstones: Vec<String> },
}

impl EnvStore {
    pub fn new(id: &str, limits: StoreLimits, metrics: Arc<Metrics>) -> EnvStore {
        let id: Arc<str> = id.into();
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty(id.clone())));
        EnvStore {
            id,
            tx,
            write: Mutex::new(()),
            history: Mutex::new(History::default()),
            status: Mutex::new(SourceStatus::default()),
            limits,
            metrics,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every published snapshot (intermediate ones may be skipped).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn status(&self) -> SourceStatus {
        lock(&self.status).clone()
    }

    /// Changes the source status; `state` changes reset `since`.
    pub fn update_status(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut s = lock(&self.status);
        let before = s.state;
        f(&mut s);
        if s.state != before {
            s.since = SystemTime::now();
        }
    }

    /// Records a source error (the data keeps being served).
    pub fn record_error(&self, source: &str, error: &str) {
        self.metrics.source_errors.with_label_values(&[&self.id, source]).inc();
        self.update_status(|s| {
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(SystemTime::now());
        });
    }

    /// Notes that the source confirmed the data current now.
    pub fn confirm(&self) {
        self.update_status(|s| s.confirmed_at = Some(SystemTime::now()));
    }

    /// Applies upserts and deletes as one revision. Returns the published change, or `None` when
    /// nothing changed (a differing `revision` is still recorded, without a change event).
    pub fn apply(&self, update: Update) -> Option<Arc<ChangeRecord>> {
        let _w = lock(&self.write);
        let cur = self.snapshot();
        let mut features: FeatureMap = (*cur.features).clone();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for f in update.upserts {
            match features.get(&f.key) {
                Some(old) if old.json == f.json => {}
                _ => {
                    features.insert(f.key.clone(), f.clone());
                    // The same key twice in one update: the later version wins, once.
                    upserts.retain(|u: &Arc<Feature>| u.key != f.key);
                    upserts.push(f);
                }
            }
        }
        for k in update.deletes {
            if features.remove(&k).is_some() && !deletes.contains(&k) {
                upserts.retain(|f: &Arc<Feature>| f.key != k);
                deletes.push(k);
            }
        }
        self.publish(&cur, features, upserts, deletes, update.revision, update.upstream_ts_ms)
    }

    /// Replaces the whole data set, publishing only the difference as one revision.
    pub fn replace(&self, new: FeatureMap, revision: Option<Revision>, upstream_ts_ms: Option<u64>) -> Option<Arc<ChangeRecord>> {
        let _w = lock(&self.write);
        let cur = self.snapshot();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (k, f) in &new {
            match cur.features.get(k) {
                Some(old) if old.json == f.json => {}
                _ => upserts.push(f.clone()),
            }
        }
        for k in cur.features.keys() {
            if !new.contains_key(k) {
                deletes.push(k.clone());
            }
        }
        self.publish(&cur, new, upserts, deletes, revision, upstream_ts_ms)
    }

    fn publish(
        &self,
        cur: &Arc<Snapshot>,
        features: FeatureMap,
        upserts: Vec<Arc<Feature>>,
        deletes: Vec<String>,
        revision: Option<Revision>,
        upstream_ts_ms: Option<u64>,
    ) -> Option<Arc<ChangeRecord>> {
        let changed = !upserts.is_empty() || !deletes.is_empty();
        let revision = match revision {
            Some(r) => r,
            None if !cur.loaded => initial_revision(),
            None if changed => cur.revision.saturating_add(1),
            None => cur.revision,
        };
        if cur.loaded && revision > cur.revision.saturating_add(1) {
            // A jump (a resync after a gap, or a warm start's first sync): this relay never saw
            // the states in between, so it cannot replay from them (a client there may hold a
            // feature that came and went inside the jump).
            lock(&self.history).mark_ambiguous(cur.revision + 1, revision - 1);
        }
        self.metrics.features.with_label_values(&[&self.id]).set(features.len() as i64);
        self.metrics.revision.with_label_values(&[&self.id]).set(revision.min(i64::MAX as u64) as i64);
        if !changed {
            if revision != cur.revision || !cur.loaded {
                // Same content, new revision (or first load of an empty set): swap silently.
                if revision < cur.revision || !cur.loaded {
                    let previous = cur.loaded.then_some(cur.revision);
                    lock(&self.history).new_lineage(revision, previous);
                }
                self.tx.send_replace(Arc::new(Snapshot {
                    env: self.id.clone(),
                    seq: cur.seq,
                    revision,
                    features: cur.features.clone(),
                    compiled: cur.compiled.clone(),
                    loaded: true,
                    published_at: SystemTime::now(),
                    last_change: cur.last_change.clone(),
                    body: cur.body.get().cloned().map(OnceLock::from).unwrap_or_default(),
                    full_frames: Default::default(),
                    catchup_frames: Mutex::new(Vec::new()),
                }));
            }
            return None;
        }
        let mut compiled: CompiledMap = (*cur.compiled).clone();
        for f in &upserts {
            compiled.insert(f.key.clone(), Arc::new(CompiledFeature::compile(f)));
        }
        for k in &deletes {
            compiled.remove(k);
        }
        let seq = cur.seq + 1;
        let record = {
            let mut h = lock(&self.history);
            // The first load has no history before it; later, a revision that did not go up
            // starts a new lineage too.
            let new_lineage = !cur.loaded || revision <= cur.revision;
            if new_lineage {
                // The revision did not go up: a new lineage. Revision resumes restart from here.
                h.new_lineage(revision, cur.loaded.then_some(cur.revision));
            }
            let record = Arc::new(ChangeRecord {
                seq,
                revision,
                upserts,
                deletes,
                upstream_ts_ms,
                at: Instant::now(),
                lineage: h.lineage,
                frames: Default::default(),
                pending_deliveries: std::sync::atomic::AtomicI64::new(0),
                deliveries_armed: std::sync::atomic::AtomicBool::new(false),
            });
            h.ring.push_back(record.clone());
            while h.ring.len() > self.limits.replay_revisions.max(1) {
                if let Some(old) = h.ring.pop_front() {
                    h.base_seq = old.seq;
                    if old.lineage == h.lineage {
                        h.rev_base = h.rev_base.max(old.revision);
                    }
                }
            }
            for k in &record.deletes {
                h.tombstones.push_back(Tombstone { key: k.clone(), seq, revision, at: record.at });
            }
            let ttl = self.limits.tombstone_ttl;
            while h.tombstones.len() > self.limits.tombstones_max
                || h.tombstones.front().is_some_and(|t| t.at.elapsed() > ttl)
            {
                h.tombstones.pop_front();
            }
            record
        };
        self.tx.send_replace(Arc::new(Snapshot {
            env: self.id.clone(),
            seq,
            revision,
            features: Arc::new(features),
            compiled: Arc::new(compiled),
            loaded: true,
            published_at: SystemTime::now(),
            last_change: Some(record.clone()),
            body: OnceLock::new(),
            full_frames: Default::default(),
            catchup_frames: Mutex::new(Vec::new()),
        }));
        Some(record)
    }

    /// What a client that has everything up to `from_seq` needs to reach `to`.
    pub fn catchup_seq(&self, from_seq: u64, to: &Snapshot) -> Catchup {
        if from_seq >= to.seq {
            return Catchup::Current;
        }
        if let Some(c) = &to.last_change {
            if c.seq == to.seq && from_seq + 1 == to.seq {
                return Catchup::Changes(vec![c.clone()]);
            }
        }
        let h = lock(&self.history);
        if from_seq >= h.base_seq {
            // Ring seqs are contiguous from base_seq + 1: slice instead of scanning.
            let start = usize::try_from(from_seq - h.base_seq).unwrap_or(usize::MAX);
            let count = usize::try_from(to.seq - from_seq).unwrap_or(usize::MAX);
            return Catchup::Changes(h.ring.range(start.min(h.ring.len())..).take(count).cloned().collect());
        }
        Catchup::FullState { tombstones: h.tombstones_absent(to, |t| t.seq > from_seq) }
    }

    /// What a client resuming with `Last-Event-ID: last_revision` needs to reach `to`. `None`
    /// when the id is ahead of this relay (the caller sends [`EnvStore::full_state_for_unknown`]
    /// and counts it).
    pub fn catchup_revision(&self, last_revision: Revision, to: &Snapshot) -> Option<Catchup> {
        if last_revision > to.revision {
            return None;
        }
        let h = lock(&self.history);
        if h.is_ambiguous(last_revision) {
            // Two lineages used this revision: when in doubt, full state and every deletion.
            return Some(Catchup::FullState { tombstones: h.tombstones_absent(to, |_| true) });
        }
        if last_revision == to.revision {
            return Some(Catchup::Current);
        }
        if last_revision >= h.rev_base {
            let lineage = h.lineage;
            return Some(Catchup::Changes(
                h.ring
                    .iter()
                    .filter(|c| c.lineage == lineage && c.revision > last_revision && c.seq <= to.seq)
                    .cloned()
                    .collect(),
            ));
        }
        Some(Catchup::FullState { tombstones: h.tombstones_absent(to, |t| t.revision > last_revision) })
    }

    /// Full state for a client whose position this relay cannot place (ahead of it, or an id
    /// it cannot parse): with every remembered deletion, so upsert-only SDKs drop them too.
    pub fn full_state_for_unknown(&self, to: &Snapshot) -> Catchup {
        Catchup::FullState { tombstones: lock(&self.history).tombstones_absent(to, |_| true) }
    }
}

/// Every configured environment.
pub struct Store {
    envs: Vec<Arc<EnvStore>>,
    by_id: HashMap<String, Arc<EnvStore>>,
}

impl Store {
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>, limits: StoreLimits, metrics: Arc<Metrics>) -> Store {
        let envs: Vec<Arc<EnvStore>> =
            ids.into_iter().map(|id| Arc::new(EnvStore::new(id, limits.clone(), metrics.clone()))).collect();
        let by_id = envs.iter().map(|e| (e.id.to_string(), e.clone())).collect();
        Store { envs, by_id }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<EnvStore>> {
        self.by_id.get(id)
    }

    pub fn envs(&self) -> &[Arc<EnvStore>] {
        &self.envs
    }

    /// True once every environment has loaded data.
    pub fn all_loaded(&self) -> bool {
        self.envs.iter().all(|e| e.snapshot().loaded)
    }
}

#[cfg(test)]
mod tests {
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
}
