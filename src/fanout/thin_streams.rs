//! Renderers for the thin-client change-notification streams (issue 5 §5, OFREP ADR-0008); the
//! per-context evaluation stream is [`super::eval_stream`].
//!
//! - [`LegacyJsRenderer`]: `GET /api/js/v1/stream/{clientKey}` (Featureflow spec §5.3). One unnamed
//!   event per change whose data is the JSON array of changed feature keys (upserted or deleted);
//!   the client then re-fetches those keys from the evaluate endpoint. Nothing is sent on connect
//!   (the client has just fetched); `Last-Event-ID` resumes with the keys changed since.
//! - [`OfrepRenderer`]: the OFREP `eventStreams` endpoint. On every environment change one
//!   `event: message` whose data is `{"type":"refetchEvaluation","etag":..,"lastModified":..}`, with
//!   the environment's content ETag (the same as the server-SDK poll's) and the change time in Unix
//!   seconds. A resuming client whose `Last-Event-ID` is not the current revision gets one at once.
//!
//! Invariants:
//! - Frames shared by every client are encoded once: the legacy frame in slot
//!   [`LegacyJs`](crate::store::FrameSlot::LegacyJs) of the change record, the OFREP frame in slot
//!   [`Ofrep`](crate::store::FrameSlot::Ofrep) of the snapshot.
//! - Hidden features stay hidden ([`crate::eval::thin::served`], the rule of every thin-client
//!   path): a legacy frame only names the change's [`thin_keys`](crate::store::ChangeRecord::thin_keys)
//!   (features served now or before the change), a full state only the features served and the
//!   deletions of served ones; a change that touches only hidden features sends nothing on
//!   either stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::frames::push_event;
use super::Renderer;
use crate::eval::thin::served_control;
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::store::{Catchup, ChangeRecord, EnvStore, Snapshot};

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

/// The keys of a change thin clients may hear of.
pub(super) fn thin_keys(c: &ChangeRecord) -> impl Iterator<Item = &str> {
    c.thin_keys.iter().map(String::as_str)
}

/// True if none of `changes` touches a feature thin clients are or were served.
fn hidden_only(changes: &[Arc<ChangeRecord>]) -> bool {
    changes.iter().all(|c| c.thin_keys.is_empty())
}

/// The legacy thin-client stream (spec §5.3). See the module docs.
#[derive(Debug, Default)]
pub struct LegacyJsRenderer;

impl LegacyJsRenderer {
    fn render(catchup: Catchup, env: &EnvStore, to: &Snapshot) -> Option<Bytes> {
        match catchup {
            Catchup::Current => None,
            Catchup::Changes(c) if hidden_only(&c) => None,
            Catchup::Changes(c) if c.len() == 1 && c[0].seq == to.seq => {
                Some(c[0].frame(crate::store::FrameSlot::LegacyJs).get_or_init(|| keys_frame(thin_keys(&c[0]), c[0].revision)).clone())
            }
            Catchup::Changes(c) => Some(keys_frame(c.iter().flat_map(|c| thin_keys(c)), to.revision)),
            Catchup::FullState { tombstones } => {
                let served = to.features.values().filter(|f| served_control(&f.control)).map(|f| f.key.as_str());
                let deleted = env.served_tombstones(tombstones);
                Some(keys_frame(served.chain(deleted.iter().map(String::as_str)), to.revision))
            }
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
        Self::render(catchup, env, snap).into_iter().collect()
    }

    fn catch_up(&mut self, env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, _metrics: &Metrics) -> Option<Bytes> {
        Self::render(catchup, env, to)
    }
}

// ---- (b) OFREP refetchEvaluation stream -----------------------------------------------------

/// `id: <revision>`, `event: message`, `data: {"type":"refetchEvaluation","etag":..,"lastModified":..}`,
/// encoded once per snapshot.
fn refetch_frame(s: &Snapshot) -> &Bytes {
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
            Catchup::Changes(c) if hidden_only(&c) => None,
            _ => Some(refetch_frame(to).clone()),
        }
    }
}

