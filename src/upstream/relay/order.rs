//! The relay follower's ordering rules, pure: what an event of the parent's relay stream does,
//! given the position held ([`decide`]). The follower only acts on the answer.
//!
//! - A `snapshot` always replaces (authoritative, even at a lower revision or in a new epoch).
//! - Before any position (a fresh connection that has not had its snapshot yet), a `change` has
//!   no base: resync; a heartbeat says nothing (the parent has no data yet).
//! - A position of another epoch than the one held: the parent is another process (a restart, a
//!   second parent behind the same address) and its seqs mean nothing here: resync.
//! - A `change` applies exactly at the next seq; any other seq is a gap (or a replay from before
//!   the position): resync. Never a guess.
//! - A heartbeat at the held seq with another revision: adopt the revision (the parent moved it
//!   without a change); at another seq: a gap.

use super::event::Position;

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Replace,
    Apply,
    AdoptRevision,
    /// Nothing to do; the data is confirmed current (`false`: nothing is known yet).
    Current(bool),
    Resync(Why),
}

/// Why the held position cannot be continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A change with no snapshot before it on this stream.
    NoBase,
    /// Another epoch than the held one.
    Epoch,
    /// A seq that does not follow the held one.
    Gap,
}

impl Why {
    /// The `reason` label of `flagrelay_upstream_resyncs_total` for the snapshot that follows.
    pub fn label(self) -> &'static str {
        match self {
            Why::NoBase | Why::Gap => "gap",
            Why::Epoch => "epoch",
        }
    }
}

/// The kinds of event, as [`decide`] needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Change,
    Heartbeat,
}

pub fn decide(held: Option<&Position>, kind: Kind, at: &Position) -> Decision {
    if kind == Kind::Snapshot {
        return Decision::Replace;
    }
    let Some(held) = held else {
        return match kind {
            Kind::Change => Decision::Resync(Why::NoBase),
            _ => Decision::Current(false),
        };
    };
    if held.epoch != at.epoch {
        return Decision::Resync(Why::Epoch);
    }
    match kind {
        Kind::Change if Some(at.seq) == held.seq.checked_add(1) => Decision::Apply,
        Kind::Heartbeat if at.seq == held.seq && at.revision == held.revision => Decision::Current(true),
        Kind::Heartbeat if at.seq == held.seq => Decision::AdoptRevision,
        _ => Decision::Resync(Why::Gap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: &str, seq: u64, revision: u64) -> Position {
        Position { epoch: epoch.into(), seq, revision }
    }

    #[test]
    fn a_snapshot_always_replaces() {
        for held in [None, Some(p("a", 5, 50)), Some(p("b", 9, 90))] {
            assert_eq!(decide(held.as_ref(), Kind::Snapshot, &p("a", 1, 3)), Decision::Replace, "{held:?}");
        }
    }

    #[test]
    fn without_a_position_a_change_has_no_base_and_a_heartbeat_says_nothing() {
        assert_eq!(decide(None, Kind::Change, &p("a", 6, 51)), Decision::Resync(Why::NoBase));
        assert_eq!(decide(None, Kind::Heartbeat, &p("a", 0, 0)), Decision::Current(false));
    }

    #[test]
    fn changes_apply_exactly_at_the_next_seq() {
        let held = p("a", 5, 50);
        let cases = [
            (p("a", 6, 51), Decision::Apply),
            (p("a", 6, 40), Decision::Apply), // a failover upstream: lower revision, next seq
            (p("a", 7, 52), Decision::Resync(Why::Gap)),
            (p("a", 5, 50), Decision::Resync(Why::Gap)),
            (p("a", 3, 48), Decision::Resync(Why::Gap)),
            (p("b", 6, 51), Decision::Resync(Why::Epoch)),
        ];
        for (at, want) in cases {
            assert_eq!(decide(Some(&held), Kind::Change, &at), want, "{at:?}");
        }
    }

    #[test]
    fn heartbeats_confirm_adopt_a_moved_revision_or_reveal_a_gap() {
        let held = p("a", 5, 50);
        let cases = [
            (p("a", 5, 50), Decision::Current(true)),
            (p("a", 5, 57), Decision::AdoptRevision),
            (p("a", 6, 51), Decision::Resync(Why::Gap)),
            (p("b", 5, 50), Decision::Resync(Why::Epoch)),
        ];
        for (at, want) in cases {
            assert_eq!(decide(Some(&held), Kind::Heartbeat, &at), want, "{at:?}");
        }
    }

    #[test]
    fn a_seq_at_the_end_of_its_range_is_never_followed() {
        assert_eq!(decide(Some(&p("a", u64::MAX, 1)), Kind::Change, &p("a", 0, 2)), Decision::Resync(Why::Gap));
    }
}
