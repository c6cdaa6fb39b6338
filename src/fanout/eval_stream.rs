//! The per-context evaluation stream (`GET /api/v1/eval/stream/{key}/user/{user}`) and the
//! context groups its streams share.
//!
//! On connect `features.evaluated` with the whole evaluated map (the thin-client format of
//! `/api/js/v1/evaluate`: time conditions left for the client, everything else resolved);
//! afterwards `features.updated` (the entries whose result changed for this context) and
//! `features.deleted` (keys that disappeared or can no longer be evaluated). A change that changes
//! nothing for the context sends nothing. A client that fell more than one evaluation behind gets
//! `features.evaluated` again, which replaces its whole map.
//!
//! Invariants:
//! - Streams whose contexts are identical (same id, same attributes and values, in any order) and
//!   whose environment is the same share one [`ContextGroup`]: a change is evaluated once per group,
//!   and the group's frames are shared by its streams. The registry ([`ContextGroups`], one per
//!   relay, owned by the API state) holds weak references; a group dies with its last stream.
//! - A group holds its context only as the canonical encoding ([`Context::canonical`], which is
//!   also its registry key), never as the parsed context: that is decoded for the length of one
//!   evaluation, when a change touches something thin clients are served. So what an open stream
//!   holds of its context is the encoding's length (capped by `http.max_context_bytes` before a
//!   stream opens), not the parsed form's (one 256-number attribute parses to ~20 kB).
//! - What every group holds is counted ([`ContextGroup::held_bytes`]: the encoding, the encoded
//!   results and frames, the structures) in `flagrelay_context_group_bytes`, and the groups in
//!   `flagrelay_context_groups`; a group takes its share off when it dies.
//! - Only features [`thin::served`] to thin clients are evaluated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use prometheus::IntGauge;

use super::frames::push_event;
use super::thin_streams::thin_keys;
use super::Renderer;
use crate::eval::{thin, Context};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::store::{Catchup, EnvStore, Snapshot};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only assign whole values; a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// (environment id, [`Context::canonical`]); the group and its registry entry share one copy.
type GroupKey = (Arc<str>, Arc<str>);

type Registry = Mutex<HashMap<GroupKey, Weak<ContextGroup>>>;

/// What the groups hold, counted (see the module invariants).
#[derive(Clone)]
struct Held {
    groups: IntGauge,
    bytes: IntGauge,
}

/// One relay's live context groups, by environment and context. It holds weak references: a group
/// lives as long as one of its streams, and removes its own entry when it dies.
pub struct ContextGroups {
    live: Arc<Registry>,
    held: Held,
}

impl ContextGroups {
    /// An empty registry whose groups are counted in `metrics`.
    pub fn new(metrics: &Metrics) -> ContextGroups {
        ContextGroups {
            live: Arc::default(),
            held: Held { groups: metrics.context_groups.clone(), bytes: metrics.context_group_bytes.clone() },
        }
    }

    /// The group for `ctx` in `env`, created if no stream holds one.
    pub fn get(&self, env: &EnvStore, ctx: Context) -> Arc<ContextGroup> {
        let key: GroupKey = (env.id.clone(), Arc::from(ctx.canonical()));
        drop(ctx);
        let mut live = lock(&self.live);
        if let Some(g) = live.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(ContextGroup {
            key: key.clone(),
            state: Mutex::new(GroupState::default()),
            registry: self.live.clone(),
            held: self.held.clone(),
        });
        let counted = g.held_bytes_of(&lock(&g.state));
        lock(&g.state).counted = counted;
        self.held.groups.inc();
        self.held.bytes.add(counted as i64);
        live.insert(key, Arc::downgrade(&g));
        g
    }
}

/// The evaluations of one context in one environment, shared by every stream with that context.
pub struct ContextGroup {
    /// Also the context itself, as its canonical encoding.
    key: GroupKey,
    state: Mutex<GroupState>,
    /// The registry this group is listed in, to leave it on drop.
    registry: Arc<Registry>,
    held: Held,
}

/// What a group counts per result beyond its key and encoded value: the map node's share and
/// the key's and value's handles.
const RESULT_OVERHEAD: usize = std::mem::size_of::<(String, Bytes)>() + 16;

#[derive(Default)]
struct GroupState {
    /// What this group has added to the held-bytes gauge.
    counted: usize,
    /// The sum of the results' keys, encoded values and [`RESULT_OVERHEAD`]s.
    results_bytes: usize,
    /// Store seq the results are for (0: not evaluated yet).
    seq: u64,
    /// The environment revision of that seq.
    revision: Revision,
    /// Goes up by one whenever `results` change.
    version: u64,
    /// Encoded thin result per served feature.
    results: BTreeMap<String, Bytes>,
    /// `features.evaluated` for `version`, built on demand.
    full: Option<Bytes>,
    /// The frame from `version - 1` to `version`.
    diff: Option<Bytes>,
}

impl std::fmt::Debug for ContextGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextGroup").field("context", &self.key.1).finish()
    }
}

impl ContextGroup {
    /// What this group holds, in bytes: the group and its registry entry, its context's
    /// canonical encoding, its results and its cached frames.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes_of(&lock(&self.state))
    }

    fn held_bytes_of(&self, st: &GroupState) -> usize {
        let frames = st.full.as_ref().map_or(0, Bytes::len) + st.diff.as_ref().map_or(0, Bytes::len);
        let fixed = std::mem::size_of::<ContextGroup>() + 16 // the Arc's counts
            + std::mem::size_of::<(GroupKey, Weak<ContextGroup>)>() + 16; // the registry entry
        fixed + 16 + self.key.1.len() + st.results_bytes + frames
    }

    /// Moves the gauge to what the group holds now.
    fn recount(&self, st: &mut GroupState) {
        let now = self.held_bytes_of(st);
        self.held.bytes.add(now as i64 - st.counted as i64);
        st.counted = now;
    }

    /// Brings the results to `snap` (once per group and change); returns the state locked.
    fn advance(&self, env: &EnvStore, snap: &Snapshot, metrics: &Metrics) -> MutexGuard<'_, GroupState> {
        let mut st = lock(&self.state);
        if st.seq != 0 && snap.seq <= st.seq {
            return st;
        }
        let touched: BTreeSet<String> = match (st.seq, env.catchup_seq(st.seq, snap)) {
            (0, _) | (_, Catchup::FullState { .. }) => {
                snap.compiled.keys().chain(st.results.keys()).cloned().collect()
            }
            (_, Catchup::Current) => BTreeSet::new(),
            (_, Catchup::Changes(changes)) => {
                changes.iter().flat_map(|c| thin_keys(c)).map(str::to_string).collect()
            }
        };
        metrics.evaluations.with_label_values(&[&env.id, "stream"]).inc();
        // The context is decoded for this evaluation only (see the module invariants).
        let ctx = if touched.is_empty() {
            Context::default()
        } else {
            match Context::from_canonical(&self.key.1) {
                Ok(ctx) => ctx,
                Err(e) => {
                    // Impossible (the encoding is the relay's own); stay at the old results.
                    tracing::error!(env = %env.id, error = %e, "a context group could not read its own context");
                    return st;
                }
            }
        };
        let mut updated: Vec<(&str, Bytes)> = Vec::new();
        let mut deleted: Vec<&str> = Vec::new();
        for k in &touched {
            let new = snap.compiled.get(k).filter(|f| thin::served(f)).and_then(|f| match f.evaluate_thin(&ctx) {
                // Held for the group's life: without serde_json's spare capacity.
                Ok(r) => serde_json::to_vec(&r).ok().map(|v| Bytes::from(v.into_boxed_slice())),
                Err(_) => {
                    metrics.evaluation_errors.with_label_values(&[&env.id, "PARSE_ERROR"]).inc();
                    None
                }
            });
            match (new, st.results.get(k)) {
                (Some(n), Some(o)) if n == *o => {}
                (Some(n), _) => updated.push((k, n)),
                (None, Some(_)) => deleted.push(k),
                (None, None) => {}
            }
        }
        st.seq = snap.seq;
        st.revision = snap.revision;
        if updated.is_empty() && deleted.is_empty() && st.version > 0 {
            return st;
        }
        let mut out = Vec::with_capacity(64 + updated.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
        if !updated.is_empty() {
            let map = encode_entries(updated.iter().map(|(k, v)| (*k, v)));
            push_event(&mut out, "features.updated", &map, deleted.is_empty().then_some(snap.revision));
        }
        if !deleted.is_empty() {
            let list = serde_json::to_vec(&deleted).unwrap_or_else(|_| b"[]".to_vec());
            push_event(&mut out, "features.deleted", &list, Some(snap.revision));
        }
        for (k, v) in updated {
            st.results_bytes += k.len() + v.len() + RESULT_OVERHEAD;
            if let Some(old) = st.results.insert(k.to_string(), v) {
                st.results_bytes -= k.len() + old.len() + RESULT_OVERHEAD;
            }
        }
        for k in deleted {
            if let Some(old) = st.results.remove(k) {
                st.results_bytes -= k.len() + old.len() + RESULT_OVERHEAD;
            }
        }
        st.version += 1;
        st.diff = Some(Bytes::from(out));
        st.full = None;
        self.recount(&mut st);
        st
    }
}

impl ContextGroup {
    /// The frame that brings a client at group version `have` to the group's version for `snap`
    /// (the diff when it is one version behind, else the whole map; nothing when current), and
    /// that version. The group is evaluated once per change however many clients ask.
    pub fn frame_for(&self, env: &EnvStore, snap: &Snapshot, metrics: &Metrics, have: u64) -> (Option<Bytes>, u64) {
        let mut st = self.advance(env, snap, metrics);
        let version = st.version;
        let frame = if have == version {
            None
        } else if have + 1 == version {
            st.diff.clone()
        } else {
            Some(full_frame(self, &mut st))
        };
        (frame, version)
    }
}

impl Drop for ContextGroup {
    fn drop(&mut self) {
        let counted = lock(&self.state).counted;
        self.held.bytes.sub(counted as i64);
        self.held.groups.dec();
        let mut live = lock(&self.registry);
        // Only remove the entry if it is still ours (dead): a new group may have replaced it.
        if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            live.remove(&self.key);
        }
    }
}

/// `{"k":<encoded>,...}`.
fn encode_entries<'a>(entries: impl Iterator<Item = (&'a str, &'a Bytes)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

/// `features.evaluated` for the group's current version, built once and counted as held.
fn full_frame(group: &ContextGroup, st: &mut GroupState) -> Bytes {
    if let Some(f) = &st.full {
        return f.clone();
    }
    let map = encode_entries(st.results.iter().map(|(k, v)| (k.as_str(), v)));
    let mut out = Vec::with_capacity(map.len() + 64);
    push_event(&mut out, "features.evaluated", &map, Some(st.revision));
    let frame = Bytes::from(out);
    st.full = Some(frame.clone());
    group.recount(st);
    frame
}

/// One client of the per-context evaluation stream. See the module docs.
#[derive(Debug)]
pub struct EvalRenderer {
    group: Arc<ContextGroup>,
    /// The group version this client has.
    have: u64,
}

impl EvalRenderer {
    pub fn new(group: Arc<ContextGroup>) -> EvalRenderer {
        EvalRenderer { group, have: 0 }
    }
}

impl Renderer for EvalRenderer {
    fn comment_heartbeats(&self) -> bool {
        true
    }

    fn start(&mut self, env: &EnvStore, snap: &Arc<Snapshot>, _last_event_id: Option<Revision>, metrics: &Metrics) -> Vec<Bytes> {
        let group = self.group.clone();
        let mut st = group.advance(env, snap, metrics);
        self.have = st.version;
        vec![full_frame(&group, &mut st)]
    }

    fn catch_up(&mut self, env: &EnvStore, _catchup: Catchup, to: &Arc<Snapshot>, metrics: &Metrics) -> Option<Bytes> {
        let (frame, version) = self.group.frame_for(env, to, metrics, self.have);
        self.have = version;
        frame
    }

    fn context_group(&self) -> Option<(Arc<ContextGroup>, u64)> {
        Some((self.group.clone(), self.have))
    }

    fn set_group_version(&mut self, have: u64) {
        self.have = have;
    }
}

#[cfg(test)]
#[path = "eval_stream_tests.rs"]
mod tests;
