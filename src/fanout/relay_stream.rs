//! The relay-to-relay stream (`GET /api/relay/v1/stream`): what a child relay follows, with
//! events that say exactly what they mean (the wire format is `docs/upstream.md`, relay mode):
//!
//! - `snapshot`: the whole state at a revision, replace everything
//!   (`{"revision","epoch","seq","ts","features":{key: control}}`);
//! - `change`: the next change, exactly one seq after the previous event
//!   (`{"revision","epoch","seq","ts","upserts":{key: control},"deletes":[key]}`);
//! - `heartbeat`: the position the stream is at (`{"revision","epoch","seq","head"}`, `head` the
//!   environment's current revision, for the child's lag), at every
//!   heartbeat tick, after a resume, and when the revision moved without a change (a resync that
//!   found the same content): the child adopts the revision.
//!
//! `id:` is `<epoch>:<seq>`, the environment's [`stream epoch`](crate::store::EnvStore::stream_epoch)
//! and seq: seqs go up by one per change and are exact across lineages, so a resume of this
//! epoch is answered from the ring by seq ([`EnvStore::catchup_seq`]); a position of another
//! epoch, one ahead, or one the ring no longer reaches gets a `snapshot`, never a guess.
//!
//! Invariants: the snapshot and change frames are encoded once and cached on the snapshot and
//! the change record ([`FrameSlot::Relay`]), shared by every child; only heartbeats are built
//! per stream (a few dozen bytes). Nothing is sent before the environment has loaded data (an
//! empty snapshot would wipe the child). A stream with no position yet (a fresh connection, or
//! a resume that could not be placed) gets a `snapshot` before anything else.

use std::sync::Arc;

use bytes::Bytes;

use super::render::Renderer;
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::store::{encode_map, Catchup, ChangeRecord, EnvStore, FrameSlot, Snapshot};

pub use crate::store::parse_stream_position as parse_position;

fn push(out: &mut Vec<u8>, id: Option<(&str, u64)>, event: &str, data: &[u8]) {
    if let Some((epoch, seq)) = id {
        out.extend_from_slice(format!("id: {epoch}:{seq}\n").as_bytes());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

fn ts_json(ts: Option<u64>) -> String {
    ts.map_or_else(|| "null".to_string(), |t| t.to_string())
}

/// The `snapshot` frame of `s`, encoded once and cached on it.
pub fn snapshot_frame(epoch: &str, s: &Snapshot) -> Bytes {
    s.full_frame_slot(FrameSlot::Relay)
        .get_or_init(|| {
            let body = &s.encoded().body;
            let ts = s.last_change.as_ref().and_then(|c| c.upstream_ts_ms);
            let mut data = Vec::with_capacity(body.len() + 128);
            data.extend_from_slice(format!("{{\"revision\":{},\"epoch\":\"{epoch}\",\"seq\":{},\"ts\":{},\"features\":", s.revision, s.seq, ts_json(ts)).as_bytes());
            data.extend_from_slice(body);
            data.push(b'}');
            let mut out = Vec::with_capacity(data.len() + 64);
            push(&mut out, Some((epoch, s.seq)), "snapshot", &data);
            Bytes::from(out)
        })
        .clone()
}

/// The `change` frame of `c`, encoded once and cached on it.
pub fn change_frame(epoch: &str, c: &ChangeRecord) -> Bytes {
    c.frame(FrameSlot::Relay)
        .get_or_init(|| {
            let upserts = encode_map(c.upserts.iter());
            // Serializing strings cannot fail.
            let deletes = serde_json::to_vec(&c.deletes).unwrap_or_else(|_| b"[]".to_vec());
            let mut data = Vec::with_capacity(upserts.len() + deletes.len() + 128);
            data.extend_from_slice(format!("{{\"revision\":{},\"epoch\":\"{epoch}\",\"seq\":{},\"ts\":{},\"upserts\":", c.revision, c.seq, ts_json(c.upstream_ts_ms)).as_bytes());
            data.extend_from_slice(&upserts);
            data.extend_from_slice(b",\"deletes\":");
            data.extend_from_slice(&deletes);
            data.push(b'}');
            let mut out = Vec::with_capacity(data.len() + 64);
            push(&mut out, Some((epoch, c.seq)), "change", &data);
            Bytes::from(out)
        })
        .clone()
}

/// The `heartbeat` frame of a stream at (`seq`, `revision`), with the environment's current
/// revision `head` (the child's lag).
pub fn heartbeat_frame(epoch: &str, seq: u64, revision: Revision, head: Revision) -> Bytes {
    let mut out = Vec::with_capacity(112);
    push(&mut out, None, "heartbeat", format!("{{\"revision\":{revision},\"epoch\":\"{epoch}\",\"seq\":{seq},\"head\":{head}}}").as_bytes());
    Bytes::from(out)
}

/// Renders one child's relay stream. `pos` is the (seq, revision) the child holds on this
/// stream; `None` until it has been sent a snapshot or resumed exactly.
pub struct RelayRenderer {
    resume: Option<String>,
    env: Arc<EnvStore>,
    epoch: Arc<str>,
    pos: Option<(u64, Revision)>,
}

impl RelayRenderer {
    /// A renderer for a child resuming from `last_event_id` (as sent), if any.
    pub fn new(env: &Arc<EnvStore>, last_event_id: Option<String>) -> RelayRenderer {
        RelayRenderer { resume: last_event_id, env: env.clone(), epoch: env.stream_epoch().clone(), pos: None }
    }

    fn heartbeat_at(&self, seq: u64, revision: Revision) -> Bytes {
        heartbeat_frame(&self.epoch, seq, revision, self.env.snapshot().revision)
    }

    fn snapshot(&mut self, to: &Arc<Snapshot>) -> Vec<Bytes> {
        self.pos = Some((to.seq, to.revision));
        vec![snapshot_frame(&self.epoch, to)]
    }

    /// The frames that take a child at `self.pos` to `to`.
    fn render(&mut self, catchup: Catchup, to: &Arc<Snapshot>) -> Vec<Bytes> {
        let Some((_, revision)) = self.pos else {
            return if to.loaded { self.snapshot(to) } else { Vec::new() };
        };
        let (mut out, reached) = match catchup {
            Catchup::FullState { .. } => return self.snapshot(to),
            Catchup::Current => (Vec::new(), revision),
            Catchup::Changes(c) => (c.iter().map(|c| change_frame(&self.epoch, c)).collect(), c.last().map_or(revision, |c| c.revision)),
        };
        self.pos = Some((to.seq, to.revision));
        if reached != to.revision {
            out.push(self.heartbeat_at(to.seq, to.revision));
        }
        out
    }
}

impl Renderer for RelayRenderer {
    fn start(&mut self, env: &EnvStore, snap: &Arc<Snapshot>, _last_event_id: Option<Revision>, metrics: &Metrics) -> Vec<Bytes> {
        if !snap.loaded {
            return Vec::new();
        }
        let Some(resume) = self.resume.take() else { return self.snapshot(snap) };
        let (outcome, frames) = match parse_position(&resume) {
            Some((epoch, seq)) if epoch == &*self.epoch && seq <= snap.seq => {
                let catchup = env.catchup_seq(seq, snap);
                let outcome = match &catchup {
                    Catchup::Current => "current",
                    Catchup::Changes(_) => "replayed",
                    Catchup::FullState { .. } => "full_state",
                };
                // The revision the child holds at `seq` is not known here: a heartbeat after the
                // replay says where the stream is, so a revision-only move is not missed.
                self.pos = Some((seq, snap.revision));
                let mut frames = self.render(catchup, snap);
                if outcome != "full_state" {
                    frames.push(self.heartbeat_at(snap.seq, snap.revision));
                }
                (outcome, frames)
            }
            Some((epoch, _)) if epoch == &*self.epoch => ("ahead", self.snapshot(snap)),
            _ => ("full_state", self.snapshot(snap)),
        };
        metrics.sse_resumes.with_label_values(&[&env.id, outcome]).inc();
        frames
    }

    fn catch_up(&mut self, _env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, _metrics: &Metrics) -> Option<Bytes> {
        let mut frames = self.render(catchup, to);
        match frames.len() {
            0 => None,
            1 => frames.pop(),
            _ => Some(Bytes::from(frames.concat())),
        }
    }

    fn heartbeat(&self) -> Option<Bytes> {
        Some(match self.pos {
            Some((seq, revision)) => self.heartbeat_at(seq, revision),
            None => Bytes::from_static(b": heartbeat\n\n"),
        })
    }
}

#[cfg(test)]
#[path = "relay_stream_tests.rs"]
mod tests;
