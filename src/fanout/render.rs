//! Renderers turn store changes into one kind of stream's frames. The Featureflow server-SDK
//! stream lives here; the thin-client streams add their own renderers.
//!
//! Invariant: a renderer never copies the flag set per client; shared frames come from the
//! caches on snapshots and change records.

use std::sync::Arc;

use bytes::Bytes;

use super::frames;
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::store::{Catchup, EnvStore, Snapshot};

pub trait Renderer: Send + 'static {
    /// Frames sent after `retry:` when the client connects (resuming from `last_event_id` if given).
    fn start(&mut self, env: &EnvStore, snap: &Arc<Snapshot>, last_event_id: Option<Revision>, metrics: &Metrics) -> Vec<Bytes>;
    /// One chunk that brings the client to `to`, or nothing if it needs nothing.
    fn catch_up(&mut self, env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, metrics: &Metrics) -> Option<Bytes>;

    /// Heartbeats as SSE comments (`: heartbeat`), which every EventSource ignores, instead of
    /// the Featureflow `data: {"heartbeat":ms}` event (which clients of other streams would
    /// take for a message).
    fn comment_heartbeats(&self) -> bool {
        false
    }

    /// A heartbeat of this stream's own (the relay stream's carries its position), instead of
    /// the shared one.
    fn heartbeat(&self) -> Option<Bytes> {
        None
    }

    /// A per-context renderer's group and the group version its client has, which the writer
    /// pass takes over while the stream is in it (`None` for every other renderer).
    fn context_group(&self) -> Option<(Arc<super::eval_stream::ContextGroup>, u64)> {
        None
    }

    /// Back from the writer pass, which brought the client to group version `have`.
    fn set_group_version(&mut self, _have: u64) {}
}

/// `features.updated` / `features.deleted`, spec §2.5.
#[derive(Debug, Default)]
pub struct FeatureflowRenderer;

impl FeatureflowRenderer {
    fn render(catchup: Catchup, env: &EnvStore, to: &Arc<Snapshot>, metrics: &Metrics) -> Vec<Bytes> {
        match catchup {
            Catchup::Current => Vec::new(),
            Catchup::Changes(c) if c.is_empty() => Vec::new(),
            Catchup::Changes(c) if c.len() == 1 && c[0].seq == to.seq => vec![frames::change_frame(&c[0]).clone()],
            Catchup::Changes(c) => {
                metrics.sse_coalesced.with_label_values(&[&env.id]).inc();
                // Clients behind by the same changes share one encoding.
                let from_seq = c[0].seq.saturating_sub(1);
                vec![to.catchup_frame(crate::store::FrameSlot::Featureflow, from_seq, || frames::coalesced_frame(&c, to))]
            }
            Catchup::FullState { tombstones } => {
                let mut out = vec![frames::full_frame(to).clone()];
                if !tombstones.is_empty() {
                    out.push(frames::deleted_frame(&tombstones, to.revision));
                }
                out
            }
        }
    }
}

impl Renderer for FeatureflowRenderer {
    fn start(&mut self, env: &EnvStore, snap: &Arc<Snapshot>, last_event_id: Option<Revision>, metrics: &Metrics) -> Vec<Bytes> {
        let Some(last) = last_event_id else {
            // Before the first load there is nothing to send: the load itself arrives as a
            // change holding every feature. An empty map would wipe replacing SDKs.
            return if snap.loaded { vec![frames::full_frame(snap).clone()] } else { Vec::new() };
        };
        let outcome;
        let catchup = match env.catchup_revision(last, snap) {
            None => {
                outcome = "ahead";
                env.full_state_for_unknown(snap)
            }
            Some(c) => {
                outcome = match &c {
                    Catchup::Current => "current",
                    Catchup::Changes(_) => "replayed",
                    Catchup::FullState { .. } => "full_state",
                };
                c
            }
        };
        metrics.sse_resumes.with_label_values(&[&env.id, outcome]).inc();
        Self::render(catchup, env, snap, metrics)
    }

    fn catch_up(&mut self, env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, metrics: &Metrics) -> Option<Bytes> {
        let mut frames = Self::render(catchup, env, to, metrics);
        match frames.len() {
            0 => None,
            1 => frames.pop(),
            _ => Some(Bytes::from(frames.concat())),
        }
    }
}
