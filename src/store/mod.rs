//! The current flag data of every configured environment ([`Store`] of [`EnvStore`]s): each
//! environment's [`Snapshot`] behind a `watch` channel, its history of recent changes for resumes
//! and its [`SourceStatus`], wired together by one write path ([`EnvStore::apply`],
//! [`EnvStore::replace`]).
//!
//! - `snapshot`: the snapshot and change record and their encoded-once forms ([`FrameSlot`]).
//! - `history`: the change ring, lineages, ambiguous revisions, tombstones and [`Catchup`]
//!   decisions, pure.
//! - `status`: the source's reported state.
//! - `weight`: what a feature version holds in memory, which the ring's byte budget counts.
//!
//! Invariants:
//! - Readers never wait while a writer builds: a reader clones the current `Arc<Snapshot>` out of
//!   the `watch` channel and works on it without locks; a writer builds the next snapshot and
//!   swaps it in. The history has its own lock, held by a writer for one push and by a resume
//!   that needs the history for one slice or scan.
//! - Writes are serialised (one write lock per environment); the history is updated before the
//!   snapshot it leads to is published.
//! - `seq` is local to this process and goes up by exactly one per published change; the fan-out
//!   keys on it. `revision` is what clients see (`id:`, `/status`); it increases with every change
//!   in file mode, and follows the upstream `rev` in Redis mode, where a resync may lower it (a
//!   failover). A revision that does not go up starts a new lineage: resumes by revision replay
//!   only the new lineage, and one from a revision both lineages used gets full state.
//! - A change that changes nothing is not published. A feature is upserted only when its JSON
//!   differs from the stored one. A new revision with the same content (or the first load of an
//!   empty set) is published as a new snapshot without a new change record.
//! - A feature longer than `max_feature_bytes` encoded ([`crate::model::check_size`]) never
//!   enters: whichever source delivered it, it is rejected like an invalid feature (counted in
//!   `flagrelay_invalid_features_total`, logged, the last error of the status) and the version held
//!   before, if any, stays.
//! - Each change record says which of its keys thin clients may hear of
//!   ([`snapshot::thin_keys`]), and each tombstone whether its feature was served to them.
//! - Each environment has a random `stream_epoch`, fixed for the life of the process: with a
//!   seq it names a position exactly (the relay stream's `Last-Event-ID`), and a position of
//!   another epoch (another process, a restart) is never taken for one of this store.

mod history;
mod snapshot;
mod status;
pub mod weight;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::eval::CompiledFeature;
use crate::metrics::Metrics;
use crate::model::{check_size, Feature, Revision};

use history::{History, Target};
pub use history::{Catchup, StoreLimits};
pub use snapshot::{encode_map, thin_keys, ChangeRecord, CompiledMap, Encoded, FeatureMap, FrameSlot, Snapshot};
pub use status::{RelayLink, SourceStatus};

/// A change to apply. `revision: None` means "the next revision".
#[derive(Debug, Default)]
pub struct Update {
    pub upserts: Vec<Arc<Feature>>,
    pub deletes: Vec<String>,
    pub revision: Option<Revision>,
    pub upstream_ts_ms: Option<u64>,
}

/// The first revision of a file-sourced (self-numbered) environment: the start time in
/// microseconds, so revisions never repeat across restarts and rarely overlap across replicas.
fn initial_revision() -> Revision {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1).max(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-written (every critical
    // section only assigns whole values), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One environment.
pub struct EnvStore {
    pub id: Arc<str>,
    /// Random, per process: the epoch of this environment's seqs (see the module invariants).
    stream_epoch: Arc<str>,
    max_feature_bytes: usize,
    tx: watch::Sender<Arc<Snapshot>>,
    write: Mutex<()>,
    history: Mutex<History>,
    status: Mutex<SourceStatus>,
    metrics: Arc<Metrics>,
}

impl EnvStore {
    pub fn new(id: &str, limits: StoreLimits, metrics: Arc<Metrics>) -> EnvStore {
        let id: Arc<str> = id.into();
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty(id.clone())));
        EnvStore {
            id,
            stream_epoch: format!("{:016x}", rand::random::<u64>()).into(),
            max_feature_bytes: limits.max_feature_bytes,
            tx,
            write: Mutex::new(()),
            history: Mutex::new(History::new(limits)),
            status: Mutex::new(SourceStatus::default()),
            metrics,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// The epoch of this environment's seqs: random, fixed for the life of the process.
    pub fn stream_epoch(&self) -> &Arc<str> {
        &self.stream_epoch
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
        lock(&self.status).update(f, SystemTime::now());
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

    /// False for a feature over `max_feature_bytes`, which is counted, logged and recorded as
    /// the status's last error (see the module invariants).
    fn admits(&self, f: &Feature, held_before: bool) -> bool {
        let Err(e) = check_size(f, self.max_feature_bytes) else { return true };
        self.metrics.invalid_features.with_label_values(&[&self.id]).inc();
        tracing::warn!(env = %self.id, feature = %f.key, bytes = f.json.len(), limit = self.max_feature_bytes, kept_previous = held_before, "feature over the size cap rejected");
        self.update_status(|s| {
            s.last_error = Some(e.to_string());
            s.last_error_at = Some(SystemTime::now());
        });
        false
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
            if !self.admits(&f, features.contains_key(&f.key)) {
                continue;
            }
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
    pub fn replace(&self, mut new: FeatureMap, revision: Option<Revision>, upstream_ts_ms: Option<u64>) -> Option<Arc<ChangeRecord>> {
        let _w = lock(&self.write);
        let cur = self.snapshot();
        let oversized: Vec<String> = new.iter().filter(|(k, f)| !self.admits(f, cur.features.contains_key(*k))).map(|(k, _)| k.clone()).collect();
        for k in oversized {
            match cur.features.get(&k) {
                Some(old) => new.insert(k, old.clone()),
                None => new.remove(&k),
            };
        }
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
        self.metrics.features.with_label_values(&[&self.id]).set(features.len() as i64);
        self.metrics.revision.with_label_values(&[&self.id]).set(revision.min(i64::MAX as u64) as i64);
        let from = cur.loaded.then_some(cur.revision);
        if !changed {
            if revision != cur.revision || !cur.loaded {
                // Same content, new revision (or first load of an empty set): swap silently.
                lock(&self.history).advance(from, revision);
                self.tx.send_replace(Arc::new(cur.at_revision(revision)));
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
        let thin = thin_keys(&upserts, &deletes, &cur.features);
        let record = {
            let mut h = lock(&self.history);
            h.advance(from, revision);
            let now = Instant::now();
            let record = Arc::new(ChangeRecord::new(seq, revision, upserts, deletes, thin, upstream_ts_ms, now, h.lineage()));
            h.record(record.clone(), now);
            let (ring, tombstones) = h.bytes();
            self.metrics.replay_bytes.with_label_values(&[&self.id, "ring"]).set(ring as i64);
            self.metrics.replay_bytes.with_label_values(&[&self.id, "tombstones"]).set(tombstones as i64);
            record
        };
        let (features, compiled) = (Arc::new(features), Arc::new(compiled));
        self.tx.send_replace(Arc::new(Snapshot::published(self.id.clone(), seq, revision, features, compiled, Some(record.clone()))));
        Some(record)
    }

    /// What a client that has everything up to `from_seq` needs to reach `to`.
    pub fn catchup_seq(&self, from_seq: u64, to: &Snapshot) -> Catchup {
        // The common cases (current, one change behind) are answered without the history lock.
        if let Some(c) = history::catchup_from_snapshot(from_seq, to) {
            return c;
        }
        lock(&self.history).catchup_seq(from_seq, Target::of(to))
    }

    /// What a client resuming with `Last-Event-ID: last_revision` needs to reach `to`. `None`
    /// when the id is ahead of this relay (the caller sends [`EnvStore::full_state_for_unknown`]
    /// and counts it).
    pub fn catchup_revision(&self, last_revision: Revision, to: &Snapshot) -> Option<Catchup> {
        if last_revision > to.revision {
            return None; // ahead: answered without the history lock
        }
        lock(&self.history).catchup_revision(last_revision, Target::of(to))
    }

    /// Of a full state's `tombstones`, those thin clients may hear of (their deleted version was
    /// served to them).
    pub fn served_tombstones(&self, tombstones: Vec<String>) -> Vec<String> {
        if tombstones.is_empty() {
            return tombstones;
        }
        lock(&self.history).served_tombstones(tombstones)
    }

    /// Full state for a client whose position this relay cannot place (ahead of it, or an id
    /// it cannot parse): with every remembered deletion, so upsert-only SDKs drop them too.
    pub fn full_state_for_unknown(&self, to: &Snapshot) -> Catchup {
        lock(&self.history).full_state(Target::of(to))
    }
}

/// A position `<stream epoch>:<seq>` (the relay stream's `Last-Event-ID`), split.
pub fn parse_stream_position(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.trim().rsplit_once(':')?;
    Some((epoch, seq.parse().ok()?))
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
}

#[cfg(test)]
mod tests;
