//! The history's rules, one table or behaviour per test, on a [`History`] driven the way the
//! store drives it (advance, then record the change), with the flag set each step leads to.

use super::*;
use crate::model::Feature;

/// A history and the position it has reached.
struct Env {
    h: History,
    seq: u64,
    revision: Option<Revision>,
    features: FeatureMap,
    now: Instant,
}

/// What a catch-up amounts to: the revisions of the changes, or the deletions of a full state.
#[derive(Debug, PartialEq)]
enum Got {
    Current,
    Changes(Vec<Revision>),
    Full(Vec<String>),
}

fn full(keys: &[&str]) -> Got {
    Got::Full(keys.iter().map(|k| k.to_string()).collect())
}

fn got(c: Catchup) -> Got {
    match c {
        Catchup::Current => Got::Current,
        Catchup::Changes(v) => Got::Changes(v.iter().map(|c| c.revision).collect()),
        Catchup::FullState { tombstones } => Got::Full(tombstones),
    }
}

fn feature(key: &str) -> Arc<Feature> {
    sized(key, 0)
}

/// A feature whose encoded JSON carries `padding` more bytes.
fn sized(key: &str, padding: usize) -> Arc<Feature> {
    let v = serde_json::json!({"key": key, "enabled": true, "padding": "x".repeat(padding), "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]});
    Feature::from_value(key, v).expect("valid")
}

impl Env {
    fn new(replay_revisions: usize) -> Env {
        Env::with(StoreLimits { replay_revisions, ..Default::default() })
    }

    fn with(limits: StoreLimits) -> Env {
        Env { h: History::new(limits), seq: 0, revision: None, features: FeatureMap::new(), now: Instant::now() }
    }

    /// Publishes a change at `revision` that upserts `upserts` and deletes `deletes`.
    fn change(&mut self, revision: Revision, upserts: &[&str], deletes: &[&str]) -> &mut Env {
        let upserts: Vec<Arc<Feature>> = upserts.iter().map(|k| feature(k)).collect();
        self.change_of(revision, upserts, deletes)
    }

    /// [`Env::change`] with the features given.
    fn change_of(&mut self, revision: Revision, upserts: Vec<Arc<Feature>>, deletes: &[&str]) -> &mut Env {
        self.h.advance(self.revision, revision);
        self.seq += 1;
        for f in &upserts {
            self.features.insert(f.key.clone(), f.clone());
        }
        let deletes: Vec<String> = deletes.iter().map(|k| k.to_string()).collect();
        for k in &deletes {
            self.features.remove(k);
        }
        let thin_keys = deletes.clone();
        let c = ChangeRecord::new(self.seq, revision, upserts, deletes, thin_keys, None, self.now, self.h.lineage());
        self.h.record(Arc::new(c), self.now);
        self.revision = Some(revision);
        self
    }

    /// Publishes the same content at another revision (no change is recorded).
    fn revision_only(&mut self, revision: Revision) -> &mut Env {
        self.h.advance(self.revision, revision);
        self.revision = Some(revision);
        self
    }

    fn later(&mut self, by: Duration) -> &mut Env {
        self.now += by;
        self
    }

    fn to(&self) -> Target<'_> {
        Target { seq: self.seq, revision: self.revision.unwrap_or(0), features: &self.features }
    }

    fn by_seq(&self, from_seq: u64) -> Got {
        got(self.h.catchup_seq(from_seq, self.to()))
    }

    fn by_revision(&self, last: Revision) -> Option<Got> {
        self.h.catchup_revision(last, self.to()).map(got)
    }
}

#[test]
fn a_seq_resume_replays_from_the_ring_while_it_reaches_back_and_sends_full_state_beyond() {
    let mut e = Env::new(3);
    // Revisions equal seqs here; the ring keeps seqs 3..=5.
    e.change(1, &["a", "b"], &[]).change(2, &[], &["b"]).change(3, &["c"], &[]).change(4, &["a"], &[]).change(5, &[], &["c"]);
    let cases = [
        (6, Got::Current),
        (5, Got::Current),
        (4, Got::Changes(vec![5])),
        (2, Got::Changes(vec![3, 4, 5])),
        (1, full(&["b", "c"])),
        (0, full(&["b", "c"])),
    ];
    for (from_seq, want) in cases {
        assert_eq!(e.by_seq(from_seq), want, "from seq {from_seq}");
    }
}

#[test]
fn a_seq_resume_stops_at_the_target_when_the_history_has_moved_past_it() {
    let mut e = Env::new(8);
    e.change(1, &["a"], &[]).change(2, &["b"], &[]).change(3, &["c"], &[]).change(4, &["d"], &[]);
    let to = Target { seq: 3, revision: 3, ..e.to() };
    assert_eq!(got(e.h.catchup_seq(1, to)), Got::Changes(vec![2, 3]));
}

#[test]
fn a_full_state_names_each_key_deleted_after_the_client_and_absent_from_the_target_once() {
    let mut e = Env::new(1);
    e.change(1, &["a", "b", "c"], &[])
        .change(2, &[], &["a"])
        .change(3, &["a"], &["b"])
        .change(4, &["b"], &[])
        .change(5, &[], &["b", "c"])
        .change(6, &["x"], &[]);
    let cases = [
        // "a" came back at 3; "b" was deleted twice; "c" was deleted at 5.
        (0, full(&["b", "c"])),
        (4, full(&["b", "c"])),
        (5, Got::Changes(vec![6])),
    ];
    for (from_seq, want) in cases {
        assert_eq!(e.by_seq(from_seq), want, "from seq {from_seq}");
    }
}

#[test]
fn a_revision_resume_replays_the_current_lineage_after_the_id() {
    let mut e = Env::new(3);
    // The ring keeps revisions 12..=14; resumes by revision are exact from 11 on.
    e.change(10, &["a", "b"], &[]).change(11, &[], &["b"]).change(12, &["c"], &[]).change(13, &["a"], &[]).change(14, &["d"], &[]);
    let cases = [
        (15, None),
        (14, Some(Got::Current)),
        (13, Some(Got::Changes(vec![14]))),
        (11, Some(Got::Changes(vec![12, 13, 14]))),
        (10, Some(full(&["b"]))),
        (5, Some(full(&["b"]))),
    ];
    for (last, want) in cases {
        assert_eq!(e.by_revision(last), want, "Last-Event-ID {last}");
    }
}

#[test]
fn a_resume_from_before_the_first_load_gets_full_state() {
    let mut e = Env::new(8);
    e.change(10, &["a"], &[]).change(11, &["b"], &[]);
    assert_eq!(e.by_revision(9), Some(full(&[])));
    assert_eq!(e.by_revision(10), Some(Got::Changes(vec![11])));
}

#[test]
fn a_revision_that_goes_down_starts_a_new_lineage_and_makes_the_reused_revisions_ambiguous() {
    let mut e = Env::new(8);
    e.change(248, &["a"], &[]).change(249, &["b"], &[]);
    // Failover: the new master holds revision 32 without "b".
    e.change(32, &[], &["b"]).change(33, &["c"], &[]);
    let cases = [
        (249, None),
        (20, Some(full(&["b"]))),
        (32, Some(full(&["b"]))),
        (33, Some(full(&["b"]))),
    ];
    for (last, want) in cases {
        assert_eq!(e.by_revision(last), want, "Last-Event-ID {last}");
    }
    // By seq, connected clients still get the exact revert.
    assert_eq!(e.by_seq(2), Got::Changes(vec![32, 33]));
    // Past the old lineage's last revision, revision resumes replay again (this lineage only).
    e.change(250, &["d"], &[]).change(251, &["e"], &[]);
    assert_eq!(e.by_revision(250), Some(Got::Changes(vec![251])));
}

#[test]
fn a_change_at_the_same_revision_starts_a_new_lineage() {
    let mut e = Env::new(8);
    e.change(10, &["a"], &[]).change(11, &["b"], &[]).change(11, &[], &["b"]);
    assert_eq!(e.by_revision(10), Some(full(&["b"])), "before the new lineage");
    assert_eq!(e.by_revision(11), Some(full(&["b"])), "used by both lineages");
    e.change(12, &["c"], &[]);
    assert_eq!(e.by_revision(12), Some(Got::Current));
}

#[test]
fn a_jump_makes_the_skipped_revisions_ambiguous() {
    let mut e = Env::new(8);
    // A resync after a gap: 10 -> 20 in one step.
    e.change(10, &["a"], &[]).change(20, &["a"], &[]).change(21, &["b"], &[]);
    let cases = [
        (10, Some(Got::Changes(vec![20, 21]))),
        (11, Some(full(&[]))),
        (19, Some(full(&[]))),
        (20, Some(Got::Changes(vec![21]))),
    ];
    for (last, want) in cases {
        assert_eq!(e.by_revision(last), want, "Last-Event-ID {last}");
    }
}

#[test]
fn a_revision_only_update_places_its_revision_like_a_change() {
    let mut e = Env::new(8);
    e.change(10, &["a"], &[]).revision_only(15);
    assert_eq!(e.by_revision(12), Some(full(&[])), "skipped by the jump");
    assert_eq!(e.by_revision(10), Some(Got::Changes(vec![])), "seen: nothing to replay");
    e.revision_only(5);
    assert_eq!(e.by_revision(5), Some(full(&[])), "used by both lineages");
    e.change(16, &["b"], &[]).change(17, &["c"], &[]);
    assert_eq!(e.by_revision(16), Some(Got::Changes(vec![17])), "the new lineage replays");
}

#[test]
fn only_the_latest_ambiguous_ranges_are_remembered() {
    let mut e = Env::new(1);
    // Each step down marks one range: 100..=100, then 99..=100, ... (AMBIGUOUS_RANGES + 1 of them).
    e.change(100, &["a"], &[]);
    for r in 0..=AMBIGUOUS_RANGES as u64 {
        e.change(100 - r, &[if r % 2 == 0 { "b" } else { "c" }], &[]);
    }
    assert_eq!(e.h.ambiguous.len(), AMBIGUOUS_RANGES);
    assert_eq!(e.h.ambiguous.front(), Some(&(99, 100)), "the oldest range was forgotten");
}

#[test]
fn an_unplaceable_client_gets_full_state_with_every_deletion_the_target_lacks() {
    let mut e = Env::new(8);
    e.change(1, &["a", "b", "c"], &[]).change(2, &[], &["a", "b"]).change(3, &["a"], &[]);
    assert_eq!(got(e.h.full_state(e.to())), full(&["b"]));
}

#[test]
fn tombstones_beyond_the_count_limit_are_forgotten_oldest_first() {
    let mut e = Env::with(StoreLimits { replay_revisions: 1, tombstones_max: 2, ..Default::default() });
    e.change(1, &["a", "b", "c"], &[]).change(2, &[], &["a"]).change(3, &[], &["b"]).change(4, &[], &["c"]);
    assert_eq!(e.by_seq(0), full(&["b", "c"]));
}

#[test]
fn tombstones_older_than_their_ttl_are_forgotten_at_the_next_change() {
    let ttl = Duration::from_secs(60);
    let mut e = Env::with(StoreLimits { replay_revisions: 1, tombstone_ttl: ttl, ..Default::default() });
    e.change(1, &["a", "b"], &[]).change(2, &[], &["a"]).later(ttl);
    e.change(3, &[], &["b"]);
    assert_eq!(e.by_seq(0), full(&["a", "b"]), "exactly the ttl old: kept");
    e.later(Duration::from_secs(1)).change(4, &["c"], &[]);
    assert_eq!(e.by_seq(0), full(&["b"]));
}

#[test]
fn a_resume_that_falls_out_of_the_byte_bounded_ring_gets_full_state_like_one_beyond_the_revision_ring() {
    // Each change of a 10 kB feature weighs a little over 20 kB (the feature and its frame): a
    // 70 kB budget keeps three.
    let mut e = Env::with(StoreLimits { replay_bytes: 70_000, ..Default::default() });
    e.change(1, &["a", "gone"], &[]).change(2, &[], &["gone"]);
    for r in 3..=8 {
        e.change_of(r, vec![sized("big", 10_000 + r as usize)], &[]);
    }
    let (ring, _) = e.h.bytes();
    assert!(ring <= 70_000, "the ring holds {ring} bytes");
    assert_eq!(e.h.ring.len(), 3, "changes 6..=8");
    let cases = [
        (7, Some(Got::Changes(vec![8]))),
        (5, Some(Got::Changes(vec![6, 7, 8]))),
        (4, Some(full(&[]))),
        (1, Some(full(&["gone"]))),
    ];
    for (last, want) in cases {
        assert_eq!(e.by_revision(last), want, "Last-Event-ID {last}");
    }
    assert_eq!(e.by_seq(5), Got::Changes(vec![6, 7, 8]));
    assert_eq!(e.by_seq(4), full(&[]));
    assert_eq!(e.by_seq(1), full(&["gone"]));
}

#[test]
fn a_change_larger_than_the_byte_budget_is_still_kept_alone() {
    let mut e = Env::with(StoreLimits { replay_bytes: 1_000, ..Default::default() });
    e.change(1, &["a"], &[]).change_of(2, vec![sized("big", 5_000)], &[]);
    assert_eq!(e.h.ring.len(), 1);
    assert_eq!(e.by_revision(1), Some(Got::Changes(vec![2])));
    e.change_of(3, vec![sized("big", 6_000)], &[]);
    assert_eq!(e.h.ring.len(), 1);
    assert_eq!(e.by_revision(1), Some(full(&[])));
    assert_eq!(e.h.bytes().0, e.h.ring[0].weight(), "the count follows what is held");
}

#[test]
fn tombstones_beyond_the_byte_budget_are_forgotten_oldest_first() {
    let key = |c: char| c.to_string().repeat(400);
    let (a, b, c) = (key('a'), key('b'), key('c'));
    let budget = 2 * (400 + std::mem::size_of::<Tombstone>());
    let mut e = Env::with(StoreLimits { replay_revisions: 1, replay_bytes: budget, ..Default::default() });
    e.change(1, &[&a, &b, &c], &[]).change(2, &[], &[&a]).change(3, &[], &[&b]).change(4, &[], &[&c]);
    assert_eq!(e.by_seq(0), full(&[&b, &c]));
    assert_eq!(e.h.bytes().1, budget);
}

#[test]
fn only_tombstones_of_features_served_to_thin_clients_are_announced_to_them() {
    let mut e = Env::new(8);
    e.change(1, &["a", "b"], &[]);
    e.h.advance(Some(1), 2);
    e.seq += 1;
    // "a" was hidden from thin clients when it was deleted; "b" was served.
    let c = ChangeRecord::new(e.seq, 2, Vec::new(), vec!["a".into(), "b".into()], vec!["b".into()], None, e.now, e.h.lineage());
    e.h.record(Arc::new(c), e.now);
    assert_eq!(e.h.served_tombstones(vec!["a".into(), "b".into(), "c".into()]), ["b"]);
}

#[test]
fn the_ring_keeps_the_last_change_even_with_a_zero_limit() {
    let mut e = Env::new(0);
    e.change(1, &["a"], &[]).change(2, &["b"], &[]);
    assert_eq!(e.by_seq(1), Got::Changes(vec![2]));
    assert_eq!(e.by_seq(0), full(&[]));
}

#[test]
fn a_snapshot_answers_a_current_client_and_one_a_single_change_behind_on_its_own() {
    let change = Arc::new(ChangeRecord::new(5, 50, Vec::new(), Vec::new(), Vec::new(), None, Instant::now(), 1));
    let made = Snapshot::published("e".into(), 5, 50, Arc::default(), Arc::default(), Some(change));
    let initial = Snapshot::published("e".into(), 5, 50, Arc::default(), Arc::default(), None);
    let cases = [
        (&made, 6, Some(Got::Current)),
        (&made, 5, Some(Got::Current)),
        (&made, 4, Some(Got::Changes(vec![50]))),
        (&made, 3, None),
        (&initial, 4, None),
    ];
    for (i, (to, from_seq, want)) in cases.into_iter().enumerate() {
        assert_eq!(catchup_from_snapshot(from_seq, to).map(got), want, "case {i}: from seq {from_seq}");
    }
}
