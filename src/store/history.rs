//! The recent history of one environment and the catch-up decisions taken from it, as plain data
//! and pure functions: no locks, no metrics, no clock reads (the store holds the lock and passes
//! the time in).
//!
//! - The ring of recent [`ChangeRecord`]s: every change after `base_seq`, contiguous by seq,
//!   bounded by [`StoreLimits::replay_revisions`] and by [`StoreLimits::replay_bytes`] of
//!   [`ChangeRecord::weight`] (the last change is always kept, whatever its size).
//! - Lineages: the first load, and every revision that does not go up (a failover, a restore),
//!   start a new one. A resume by revision replays only changes of the current lineage, from its
//!   revision base on; a resume by seq is exact across lineages.
//! - Ambiguous revisions: the ones that two lineages used, or that a jump skipped. A resume from
//!   one of them cannot be placed and gets full state with every remembered deletion.
//! - Tombstones: deleted keys, bounded in count, age and bytes (their keys, within
//!   `replay_bytes` of their own), so that a full state tells upsert-only clients what to drop.
//!   Each remembers whether the deleted version was served to thin clients.
//! - [`Catchup`]: what a client resuming from a seq or a revision needs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::snapshot::{ChangeRecord, FeatureMap, Snapshot};
use crate::model::Revision;

/// How much history each environment keeps, and the largest feature it accepts.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Changes kept in the ring for resumes (at least one is always kept).
    pub replay_revisions: usize,
    /// The ring's byte budget ([`ChangeRecord::weight`]s: the memory its changes hold), and
    /// separately the tombstones'.
    pub replay_bytes: usize,
    pub tombstones_max: usize,
    pub tombstone_ttl: Duration,
    /// A feature whose encoded JSON is longer is rejected by the write path.
    pub max_feature_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            replay_revisions: 1024,
            replay_bytes: 64 << 20,
            tombstones_max: 10_000,
            tombstone_ttl: Duration::from_secs(86_400),
            max_feature_bytes: 1 << 20,
        }
    }
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

/// Where a catch-up leads: a published snapshot's position and the keys it holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub seq: u64,
    pub revision: Revision,
    pub features: &'a FeatureMap,
}

impl<'a> Target<'a> {
    pub(super) fn of(s: &'a Snapshot) -> Target<'a> {
        Target { seq: s.seq, revision: s.revision, features: &s.features }
    }
}

/// The answers a snapshot gives on its own, without the history (so without its lock): a client
/// at or past `to` is current; one exactly one change behind gets the change that made `to`.
pub(super) fn catchup_from_snapshot(from_seq: u64, to: &Snapshot) -> Option<Catchup> {
    if from_seq >= to.seq {
        return Some(Catchup::Current);
    }
    match &to.last_change {
        Some(c) if c.seq == to.seq && from_seq + 1 == to.seq => Some(Catchup::Changes(vec![c.clone()])),
        _ => None,
    }
}

#[derive(Debug)]
struct Tombstone {
    key: String,
    seq: u64,
    revision: Revision,
    at: Instant,
    /// The deleted version was served to thin clients (so they may hear of its deletion).
    served: bool,
}

impl Tombstone {
    /// What it counts against the tombstones' byte budget.
    fn weight(&self) -> usize {
        self.key.len() + std::mem::size_of::<Tombstone>()
    }
}

/// How many ambiguous revision ranges are remembered.
const AMBIGUOUS_RANGES: usize = 16;

/// Recent changes of one environment. See the module docs.
#[derive(Debug)]
pub(super) struct History {
    limits: StoreLimits,
    ring: VecDeque<Arc<ChangeRecord>>,
    /// The sum of the ring's [`ChangeRecord::weight`]s.
    ring_bytes: usize,
    tombstones: VecDeque<Tombstone>,
    /// The sum of the tombstones' weights.
    tombstone_bytes: usize,
    /// The seq of the last change no longer in the ring (0: none was dropped).
    base_seq: u64,
    /// Resumes by revision are exact from here on, within the current lineage.
    rev_base: Revision,
    lineage: u64,
    /// Revision ranges `lo..=hi` that cannot be placed in this history, oldest first.
    ambiguous: VecDeque<(Revision, Revision)>,
}

impl History {
    pub(super) fn new(limits: StoreLimits) -> History {
        History {
            limits,
            ring: VecDeque::new(),
            ring_bytes: 0,
            tombstones: VecDeque::new(),
            tombstone_bytes: 0,
            base_seq: 0,
            rev_base: 0,
            lineage: 0,
            ambiguous: VecDeque::new(),
        }
    }

    /// The bytes the ring and the tombstones count against their budgets.
    pub(super) fn bytes(&self) -> (usize, usize) {
        (self.ring_bytes, self.tombstone_bytes)
    }

    /// The current lineage, for the next change's record.
    pub(super) fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Places a publication that takes the environment from revision `from` (`None` before its
    /// first load) to `to`, before its change, if any, is recorded:
    /// - the first load starts a lineage (nothing before it can be replayed);
    /// - a revision that does not go up starts a new lineage, and the revisions `to..=from`,
    ///   which both lineages used, become ambiguous;
    /// - a jump (a resync after a gap, a warm start's first sync) makes the revisions it skipped
    ///   ambiguous: this relay never saw those states, and a client there may hold a feature that
    ///   came and went inside the jump.
    pub(super) fn advance(&mut self, from: Option<Revision>, to: Revision) {
        match from {
            None => self.new_lineage(to),
            Some(prev) if to <= prev => {
                self.new_lineage(to);
                self.mark_ambiguous(to, prev);
            }
            Some(prev) if to > prev.saturating_add(1) => self.mark_ambiguous(prev + 1, to - 1),
            Some(_) => {}
        }
    }

    fn new_lineage(&mut self, revision: Revision) {
        self.lineage += 1;
        self.rev_base = revision;
    }

    fn mark_ambiguous(&mut self, lo: Revision, hi: Revision) {
        self.ambiguous.push_back((lo, hi));
        while self.ambiguous.len() > AMBIGUOUS_RANGES {
            self.ambiguous.pop_front();
        }
    }

    fn is_ambiguous(&self, r: Revision) -> bool {
        self.ambiguous.iter().any(|(lo, hi)| (*lo..=*hi).contains(&r))
    }

    /// Appends `change` (the next seq, after [`History::advance`]) and forgets, as of `now`, what
    /// the limits no longer hold: the oldest changes beyond `replay_revisions` or `replay_bytes`
    /// (moving the bases up; the newest change stays), the oldest tombstones beyond
    /// `tombstones_max` or `replay_bytes` and those older than `tombstone_ttl`.
    pub(super) fn record(&mut self, change: Arc<ChangeRecord>, now: Instant) {
        for k in &change.deletes {
            let t = Tombstone {
                key: k.clone(),
                seq: change.seq,
                revision: change.revision,
                at: change.at,
                served: change.thin_keys.contains(k),
            };
            self.tombstone_bytes += t.weight();
            self.tombstones.push_back(t);
        }
        self.ring_bytes += change.weight();
        self.ring.push_back(change);
        let limits = &self.limits;
        while self.ring.len() > limits.replay_revisions.max(1) || (self.ring_bytes > limits.replay_bytes && self.ring.len() > 1) {
            let Some(old) = self.ring.pop_front() else { break };
            self.ring_bytes -= old.weight();
            self.base_seq = old.seq;
            if old.lineage == self.lineage {
                self.rev_base = self.rev_base.max(old.revision);
            }
        }
        let ttl = limits.tombstone_ttl;
        while self.tombstones.len() > limits.tombstones_max
            || self.tombstone_bytes > limits.replay_bytes
            || self.tombstones.front().is_some_and(|t| now.saturating_duration_since(t.at) > ttl)
        {
            let Some(t) = self.tombstones.pop_front() else { break };
            self.tombstone_bytes -= t.weight();
        }
    }

    /// What a client that has everything up to `from_seq` needs to reach `to`: nothing, the
    /// changes after its position (up to `to`) while the ring reaches back to it, else full state
    /// with the keys deleted after it that `to` does not hold.
    pub(super) fn catchup_seq(&self, from_seq: u64, to: Target<'_>) -> Catchup {
        if from_seq >= to.seq {
            return Catchup::Current;
        }
        if from_seq >= self.base_seq {
            // Ring seqs are contiguous from base_seq + 1: slice instead of scanning.
            let start = usize::try_from(from_seq - self.base_seq).unwrap_or(usize::MAX);
            let count = usize::try_from(to.seq - from_seq).unwrap_or(usize::MAX);
            return Catchup::Changes(self.ring.range(start.min(self.ring.len())..).take(count).cloned().collect());
        }
        Catchup::FullState { tombstones: self.tombstones_absent(to, |t| t.seq > from_seq) }
    }

    /// What a client resuming with `Last-Event-ID: last_revision` needs to reach `to`. `None`
    /// when the id is ahead of `to`.
    pub(super) fn catchup_revision(&self, last_revision: Revision, to: Target<'_>) -> Option<Catchup> {
        if last_revision > to.revision {
            return None;
        }
        if self.is_ambiguous(last_revision) {
            // Two lineages used this revision, or this relay never saw it: full state and every
            // deletion.
            return Some(self.full_state(to));
        }
        if last_revision == to.revision {
            return Some(Catchup::Current);
        }
        if last_revision >= self.rev_base {
            let lineage = self.lineage;
            return Some(Catchup::Changes(
                self.ring
                    .iter()
                    .filter(|c| c.lineage == lineage && c.revision > last_revision && c.seq <= to.seq)
                    .cloned()
                    .collect(),
            ));
        }
        Some(Catchup::FullState { tombstones: self.tombstones_absent(to, |t| t.revision > last_revision) })
    }

    /// Of `keys` (tombstones of a full state), those whose deleted version was served to thin
    /// clients: the only deletions the thin-client streams announce.
    pub(super) fn served_tombstones(&self, mut keys: Vec<String>) -> Vec<String> {
        keys.retain(|k| self.tombstones.iter().any(|t| t.served && &t.key == k));
        keys
    }

    /// Full state for a client whose position cannot be placed, with every remembered deletion
    /// that `to` does not hold.
    pub(super) fn full_state(&self, to: Target<'_>) -> Catchup {
        Catchup::FullState { tombstones: self.tombstones_absent(to, |_| true) }
    }

    /// Every remembered deletion, up to `to`, of a key `to` does not hold, once each.
    fn tombstones_absent(&self, to: Target<'_>, after: impl Fn(&Tombstone) -> bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.tombstones.iter().filter(|t| t.seq <= to.seq && after(t) && !to.features.contains_key(&t.key)) {
            if !out.contains(&t.key) {
                out.push(t.key.clone());
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
