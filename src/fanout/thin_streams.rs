//! Renderers for the thin-client streams (issue 5 §5, OFREP ADR-0008):
//!
//! - [`LegacyJsRenderer`]: `GET /api/js/v1/stream/{clientKey}` (Featureflow spec §5.3). One unnamed
//!   event per change whose data is the JSON array of changed feature keys (upserted or deleted);
//!   the client then re-fetches those keys from the evaluate endpoint. Nothing is sent on connect
//!   (the client has just fetched); `Last-Event-ID` resumes with the keys changed since.
//! - [`OfrepRenderer`]: the OFREP `eventStreams` endpoint. On every environment change one
//!   `event: message` whose data is `{"type":"refetchEvaluation","etag":..,"lastModified":..}`, with
//!   the environment's content ETag (the same as the server-SDK poll's) and the change time in Unix
//!   seconds. A resuming client whose `Last-Event-ID` is not the current revision gets one at once.
//! - [`EvalRenderer`]: the per-context evaluation stream. On connect `features.evaluated` with the
//!   whole evaluated map (the thin-client format of `/api/js/v1/evaluate`: time conditions left for
//!   the client, everything else resolved); afterwards `features.updated` (the entries whose result
//!   changed for this context) and `features.deleted` (keys that disappeared or can no longer be
//!   evaluated). A change that changes nothing for the context sends nothing. A client that fell more
//!   than one evaluation behind gets `features.evaluated` again, which replaces its whole map.
//!
//! Invariants:
//! - Frames shared by every client are encoded once: the legacy frame in slot
//!   [`LegacyJs`](crate::store::FrameSlot::LegacyJs) of the change record, the OFREP frame in slot
//!   [`Ofrep`](crate::store::FrameSlot::Ofrep) of the snapshot.
//! - Streams whose contexts are identical (same id, same attributes and values, in any order) and
//!   whose environment is the same share one [`ContextGroup`]: a change is evaluated once per group,
//!   and the group's frames are shared by its streams. The group registry holds weak references; a
//!   group dies with its last stream.
//! - A feature marked `deleted: true` is served to no thin client (as if absent), like the Java SDK.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde_json::Value;

use super::frames::push_event;
use super::Renderer;
use crate::eval::{CompiledFeature, Context};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::store::{Catchup, ChangeRecord, EnvStore, Snapshot};

/// True if thin clients (thin-client API, its streams, OFREP) may see this feature.
pub fn served(f: &CompiledFeature) -> bool {
    let c = &f.feature().control;
    // `deleted: true` is hidden as the Java SDK hides it; `inClientApi: false` means upstream
    // keeps the feature out of the client (JS) API, so browsers never see it. Absent = served.
    !c.deleted && c.in_client_api != Some(false)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only assign whole values; a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- (a) legacy featureflow-client 1.3.x stream ---------------------------------------------

/// `id: <revision>` + `data: ["k1","k2"]` (an unnamed, i.e. `message`, event).
fn keys_frame<'a>(keys: impl IntoIterator<Item = &'a str>, revision: Revision) -> Bytes {
    let keys: BTreeSet<&str> = keys.into_iter().collect();
    let mut out = Vec::with_capacity(32 + keys.iter().map(|k| k.len() + 3).sum::<usize>());
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing strings cannot fail.
    let _ = serde_json::to_writer(&mut out, &keys);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn change_keys(c: &ChangeRecord) -> impl Iterator<Item = &str> {
    c.upserts.iter().map(|f| f.key.as_str()).chain(c.deletes.iter().map(String::as_str))
}

/// The legacy thin-client stream (spec §5.3). See the module docs.
#[derive(Debug, Default)]
pub struct LegacyJsRenderer;

impl LegacyJsRenderer {
    fn render(catchup: Catchup, to: &Snapshot) -> Option<Bytes> {
        match catchup {
            Catchup::Current => None,
            Catchup::Changes(c) if c.is_empty() => None,
            Catchup::Changes(c) if c.len() == 1 && c[0].seq == to.seq => {
                Some(c[0].frame(crate::store::FrameSlot::LegacyJs).get_or_init(|| keys_frame(change_keys(&c[0]), c[0].revision)).clone())
            }
            Catchup::Changes(c) => Some(keys_frame(c.iter().flat_map(|c| change_keys(c)), to.revision)),
            Catchup::FullState { tombstones } => Some(keys_frame(
                to.features.keys().map(String::as_str).chain(tombstones.iter().map(String::as_str)),
                to.revision,
            )),
        }
    }
}

impl Renderer for LegacyJsRenderer {
    fn comment_heartbeats(&self) -> bool {
        true
    }

    fn start(&mut self, env: &EnvStore, snap: &Arc<Snapshot>, last_event_id: Option<Revision>, metrics: &Metrics) -> Vec<Bytes> {
        let Some(last) = last_event_id else { return Vec::new() };
        let (outcome, catchup) = match env.catchup_revision(last, snap) {
            None => ("ahead", Catchup::FullState { tombstones: Vec::new() }),
            Some(c @ Catchup::Current) => ("current", c),
            Some(c @ Catchup::Changes(_)) => ("replayed", c),
            Some(c @ Catchup::FullState { .. }) => ("full_state", c),
        };
        metrics.sse_resumes.with_label_values(&[&env.id, outcome]).inc();
        Self::render(catchup, snap).into_iter().collect()
    }

    fn catch_up(&mut self, _env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, _metrics: &Metrics) -> Option<Bytes> {
        Self::render(catchup, to)
    }
}

// ---- (b) OFREP refetchEvaluation stream -----------------------------------------------------

/// `id: <revision>`, `event: message`, `data: {"type":"refetchEvaluation","etag":..,"lastModified":..}`,
/// encoded once per snapshot.
pub fn refetch_frame(s: &Snapshot) -> &Bytes {
    s.full_frame_slot(crate::store::FrameSlot::Ofrep).get_or_init(|| {
        let last_modified = s.published_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let data = serde_json::json!({
            "type": "refetchEvaluation",
            "etag": &*s.encoded().etag,
            "lastModified": last_modified,
        });
        let mut out = Vec::with_capacity(128);
        push_event(&mut out, "message", data.to_string().as_bytes(), Some(s.revision));
        Bytes::from(out)
    })
}

/// The OFREP change-notification stream (ADR-0008). See the module docs.
#[derive(Debug, Default)]
pub struct OfrepRenderer;

impl Renderer for OfrepRenderer {
    fn comment_heartbeats(&self) -> bool {
        true
    }

    fn start(&mut self, _env: &EnvStore, snap: &Arc<Snapshot>, last_event_id: Option<Revision>, _metrics: &Metrics) -> Vec<Bytes> {
        match last_event_id {
            Some(last) if last != snap.revision => vec![refetch_frame(snap).clone()],
            _ => Vec::new(),
        }
    }

    fn catch_up(&mut self, _env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, _metrics: &Metrics) -> Option<Bytes> {
        match catchup {
            Catchup::Current => None,
            Catchup::Changes(c) if c.is_empty() => None,
            _ => Some(refetch_frame(to).clone()),
        }
    }
}

// ---- (c) per-context evaluation stream ------------------------------------------------------

/// The stable identity of a context: id plus attributes sorted by name (values keep their order).
pub fn context_key(ctx: &Context) -> String {
    let attrs: BTreeMap<&String, &Vec<Value>> = ctx.attributes.iter().collect();
    // Serializing strings and JSON values cannot fail.
    serde_json::to_string(&(&ctx.id, attrs)).unwrap_or_default()
}

type GroupKey = (usize, String);

/// Live groups by (environment address, context key). The address identifies the environment: a
/// live group's streams hold the `Arc<EnvStore>`, so the address cannot be reused while the entry
/// can still be upgraded.
static GROUPS: Mutex<Option<HashMap<GroupKey, Weak<ContextGroup>>>> = Mutex::new(None);

fn env_addr(env: &EnvStore) -> usize {
    env as *const EnvStore as usize
}

/// The evaluations of one context in one environment, shared by every stream with that context.
pub struct ContextGroup {
    key: GroupKey,
    ctx: Context,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
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
    /// The group for `ctx` in `env`, created if no stream holds one.
    pub fn get(env: &EnvStore, ctx: Context) -> Arc<ContextGroup> {
        let key = (env_addr(env), context_key(&ctx));
        let mut groups = lock(&GROUPS);
        let map = groups.get_or_insert_with(HashMap::new);
        if let Some(g) = map.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(ContextGroup { key: key.clone(), ctx, state: Mutex::new(GroupState::default()) });
        map.insert(key, Arc::downgrade(&g));
        g
    }

    /// How many groups are alive (for tests and debugging).
    pub fn live() -> usize {
        lock(&GROUPS).as_ref().map_or(0, |m| m.values().filter(|w| w.strong_count() > 0).count())
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
                changes.iter().flat_map(|c| change_keys(c)).map(str::to_string).collect()
            }
        };
        metrics.evaluations.with_label_values(&[&env.id, "stream"]).inc();
        let mut updated: Vec<(&str, Bytes)> = Vec::new();
        let mut deleted: Vec<&str> = Vec::new();
        for k in &touched {
            let new = snap.compiled.get(k).filter(|f| served(f)).and_then(|f| match f.evaluate_thin(&self.ctx) {
                Ok(r) => serde_json::to_vec(&r).ok().map(Bytes::from),
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
            st.results.insert(k.to_string(), v);
        }
        for k in deleted {
            st.results.remove(k);
        }
        st.version += 1;
        st.diff = Some(Bytes::from(out));
        st.full = None;
        st
    }
}

impl Drop for ContextGroup {
    fn drop(&mut self) {
        let mut groups = lock(&GROUPS);
        if let Some(map) = groups.as_mut() {
            // Only remove the entry if it is still ours (dead): a new group may have replaced it.
            if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.key);
            }
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

fn full_frame(st: &mut GroupState) -> Bytes {
    let revision = st.revision;
    st.full
        .get_or_insert_with(|| {
            let map = encode_entries(st.results.iter().map(|(k, v)| (k.as_str(), v)));
            let mut out = Vec::with_capacity(map.len() + 64);
            push_event(&mut out, "features.evaluated", &map, Some(revision));
            Bytes::from(out)
        })
        .clone()
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
        vec![full_frame(&mut st)]
    }

    fn catch_up(&mut self, env: &EnvStore, _catchup: Catchup, to: &Arc<Snapshot>, metrics: &Metrics) -> Option<Bytes> {
        let group = self.group.clone();
        let mut st = group.advance(env, to, metrics);
        let have = std::mem::replace(&mut self.have, st.version);
        if have == st.version {
            None
        } else if have + 1 == st.version {
            st.diff.clone()
        } else {
            Some(full_frame(&mut st))
        }
    }
}
