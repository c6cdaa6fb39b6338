//! The ordering decisions of one environment's Redis supervisor, as pure functions: what a change
//! message means for the data held ([`classify`]), what a revision probe found ([`probe`]), and
//! whether a failed probe ends the session ([`probe_failed`]). The supervisor acts on the answer
//! and does nothing else with the message's revision or epoch; the table tests below have one
//! named row per rule.
//!
//! Also here: the epochs held and recently left ([`Epochs`]), which the stale rule reads, and the
//! reasons a snapshot is taken ([`Reason`], the `reason` label of `upstream_resyncs_total`).

use crate::model::Revision;

use super::message::{ChangeMessage, Op};

/// How many epochs are remembered after leaving them (their late messages are stale, not a new
/// epoch).
const LEFT_EPOCHS: usize = 8;

/// Why a snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first snapshot of the process.
    Initial,
    /// The first snapshot of a later session.
    Reconnect,
    /// The change queue overflowed.
    Overflow,
    /// A message skipped revisions.
    Gap,
    /// The probe found trailing loss.
    ProbeAhead,
    /// The revision went backwards (probe or subscription).
    ProbeBehind,
    /// A message of another epoch.
    Epoch,
    /// A `reset` message.
    Reset,
    /// The first snapshot after a topology change (cluster mode: the slot moved, its primary
    /// failed over).
    Topology,
    /// The periodic retry while not initialised upstream (not counted).
    Retry,
}

impl Reason {
    /// The `reason` label, or `None` for the uncounted retry.
    pub fn label(self) -> Option<&'static str> {
        Some(match self {
            Reason::Initial => "initial",
            Reason::Reconnect => "reconnect",
            Reason::Overflow => "overflow",
            Reason::Gap => "gap",
            Reason::ProbeAhead => "probe_ahead",
            Reason::ProbeBehind => "probe_behind",
            Reason::Epoch => "epoch",
            Reason::Reset => "reset",
            Reason::Topology => "topology",
            Reason::Retry => return None,
        })
    }

    /// For logs and `/status`.
    pub fn name(self) -> &'static str {
        self.label().unwrap_or("retry")
    }
}

/// The epoch of the data held, and the ones left recently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epochs {
    /// Empty: none yet.
    current: String,
    /// Oldest first, at most [`LEFT_EPOCHS`].
    left: Vec<String>,
}

impl Epochs {
    pub fn current(&self) -> &str {
        &self.current
    }

    /// True for the held epoch and for one left recently.
    pub fn knows(&self, epoch: &str) -> bool {
        self.current == epoch || self.left.iter().any(|e| e == epoch)
    }

    /// The held data is now of `epoch` (a snapshot); the previous one, if any, is remembered.
    pub fn enter(&mut self, epoch: String) {
        if epoch != self.current && !self.current.is_empty() {
            self.left.push(std::mem::replace(&mut self.current, epoch));
            if self.left.len() > LEFT_EPOCHS {
                self.left.remove(0);
            }
        } else {
            self.current = epoch;
        }
    }

    /// The epoch of a persisted snapshot served at a warm start (nothing is remembered as left).
    pub fn assume(&mut self, epoch: String) {
        self.current = epoch;
    }
}

/// What the supervisor holds when a message arrives.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// The environment of the channel.
    pub env: &'a str,
    /// Redis holds no complete data set (`meta.inited` missing).
    pub uninitialised: bool,
    /// The revision of the data held, as applied in this session.
    pub rev: Revision,
    pub epochs: &'a Epochs,
    /// The (epoch, revision) of the previous message on this subscription.
    pub last_msg: Option<(&'a str, Revision)>,
}

/// What to do with one change message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It names another environment than its channel's: skipped, counted `malformed`.
    WrongEnv,
    /// Within one epoch its revision is not above the previous message's on this subscription
    /// (messages on one connection arrive in publish order, so the revision went backwards
    /// upstream): resync (`probe_behind`) at once, before writers pass the old revision.
    Rewind { previous: Revision },
    /// Not initialised upstream and not a `reset`: a change alone does not make the set
    /// complete; ignored, counted `ignored`.
    NotInitialised,
    /// At or below the held revision, of the held epoch or one left: already in the data.
    Stale,
    /// `reset`: the environment was replaced: resync (`reset`).
    Reset,
    /// An epoch not held, nor left recently: resync (`epoch`).
    NewEpoch,
    /// Revisions between the held one and this one were lost: resync (`gap`).
    Gap,
    /// The next revision of the held epoch: apply it.
    Apply,
}

impl Decision {
    /// True when the message counts as the last one seen on the subscription.
    pub fn seen(self) -> bool {
        self != Decision::WrongEnv
    }
}

/// The rules, first match wins: wrong environment; rewind on the subscription (not for a
/// `reset`); not initialised (only a `reset` resyncs); stale; `reset`; new epoch; gap; apply.
pub fn classify(held: &Held<'_>, msg: &ChangeMessage) -> Decision {
    let reset = msg.op == Op::Reset;
    if msg.env != held.env {
        return Decision::WrongEnv;
    }
    if let Some((epoch, previous)) = held.last_msg {
        if epoch == msg.epoch && msg.rev <= previous && !reset {
            return Decision::Rewind { previous };
        }
    }
    if held.uninitialised {
        return if reset { Decision::Reset } else { Decision::NotInitialised };
    }
    if msg.rev <= held.rev && held.epochs.knows(&msg.epoch) {
        return Decision::Stale;
    }
    if reset {
        return Decision::Reset;
    }
    if msg.epoch != held.epochs.current() {
        return Decision::NewEpoch;
    }
    if msg.rev > held.rev.saturating_add(1) {
        return Decision::Gap;
    }
    Decision::Apply
}

/// What a live session knows once a probe returned and the queue was drained.
#[derive(Debug, Clone, Copy)]
pub struct ProbeView {
    /// The held revision before the probe.
    pub before: Revision,
    /// The held revision after draining the queue.
    pub held: Revision,
    /// What `GET rev` returned.
    pub upstream: Revision,
    /// A snapshot was taken while draining, or the session is no longer live.
    pub superseded: bool,
    /// The probe orders after every message published before it (RESP3).
    pub exact: bool,
    /// RESP2: what the previous probe read (none since the last snapshot: `None`).
    pub last_probe: Option<Revision>,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeDecision {
    /// A snapshot was taken meanwhile (or the session left `Live`): nothing to compare.
    Superseded,
    /// Upstream is below what was held before the probe: resync (`probe_behind`).
    Behind,
    /// Messages at the end were lost: resync (`probe_ahead`). RESP3: upstream is above the held
    /// revision; RESP2: the held revision is still below what the previous probe read.
    TrailingLoss,
    /// The data held is current.
    Current,
}

impl ProbeDecision {
    /// True when the probe's value is to be remembered as the previous probe (RESP2).
    pub fn remembered(self) -> bool {
        matches!(self, ProbeDecision::TrailingLoss | ProbeDecision::Current)
    }
}

pub fn probe(p: &ProbeView) -> ProbeDecision {
    if p.superseded {
        return ProbeDecision::Superseded;
    }
    if p.upstream < p.before {
        return ProbeDecision::Behind;
    }
    let behind = if p.exact { p.upstream > p.held } else { p.last_probe.is_some_and(|prev| p.held < prev) };
    if behind {
        ProbeDecision::TrailingLoss
    } else {
        ProbeDecision::Current
    }
}

/// What a failed probe means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    /// A timeout, the first in a row: keep the session; this many in a row now.
    Tolerated(u32),
    /// The second timeout in a row: reconnect.
    TwoInARow,
    /// Any other error: reconnect.
    Broken,
}

pub fn probe_failed(failed_in_a_row: u32, timeout: bool) -> ProbeFailure {
    if !timeout {
        return ProbeFailure::Broken;
    }
    let failed = failed_in_a_row.saturating_add(1);
    if failed >= 2 {
        ProbeFailure::TwoInARow
    } else {
        ProbeFailure::Tolerated(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(current: &str, left: &[&str]) -> Epochs {
        Epochs { current: current.into(), left: left.iter().map(|s| s.to_string()).collect() }
    }

    fn msg(env: &str, epoch: &str, rev: Revision, reset: bool) -> ChangeMessage {
        let op = if reset { Op::Reset } else { Op::Delete { key: "a".into() } };
        ChangeMessage { env: env.into(), epoch: epoch.into(), rev, op, ts: None }
    }

    struct Row {
        name: &'static str,
        uninitialised: bool,
        rev: Revision,
        epochs: Epochs,
        last_msg: Option<(&'static str, Revision)>,
        msg: ChangeMessage,
        want: Decision,
    }

    fn live(name: &'static str, rev: Revision, last_msg: Option<(&'static str, Revision)>, msg: ChangeMessage, want: Decision) -> Row {
        Row { name, uninitialised: false, rev, epochs: epochs("e1", &["e0"]), last_msg, msg, want }
    }

    #[test]
    fn every_message_rule() {
        let rows = [
            live("the next revision of the held epoch is applied", 5, None, msg("p", "e1", 6, false), Decision::Apply),
            live("the next revision after the previous message is applied", 5, Some(("e1", 5)), msg("p", "e1", 6, false), Decision::Apply),
            live("a message for another environment is skipped", 5, None, msg("q", "e1", 6, false), Decision::WrongEnv),
            live("the wrong environment is found before anything else", 5, Some(("e1", 9)), msg("q", "e1", 1, true), Decision::WrongEnv),
            live("a duplicate of the previous message is a rewind", 5, Some(("e1", 6)), msg("p", "e1", 6, false), Decision::Rewind { previous: 6 }),
            live("a revision below the previous message's is a rewind", 9, Some(("e1", 9)), msg("p", "e1", 4, false), Decision::Rewind { previous: 9 }),
            live("a reset is never a rewind", 9, Some(("e1", 9)), msg("p", "e1", 9, true), Decision::Stale),
            live("a lower revision of another epoch than the previous message is no rewind", 5, Some(("e0", 9)), msg("p", "e1", 6, false), Decision::Apply),
            live("the held revision again is stale", 5, None, msg("p", "e1", 5, false), Decision::Stale),
            live("a revision below the held one is stale", 5, None, msg("p", "e1", 2, false), Decision::Stale),
            live("a late message of an epoch left is stale", 5, None, msg("p", "e0", 3, false), Decision::Stale),
            live("a stale reset is stale", 5, None, msg("p", "e1", 4, true), Decision::Stale),
            live("a reset above the held revision resyncs", 5, None, msg("p", "e1", 6, true), Decision::Reset),
            live("a reset of a new epoch resyncs as a reset", 5, None, msg("p", "e2", 1, true), Decision::Reset),
            live("an unknown epoch resyncs even at a low revision", 5, None, msg("p", "e2", 1, false), Decision::NewEpoch),
            live("an epoch left, above the held revision, resyncs", 5, None, msg("p", "e0", 6, false), Decision::NewEpoch),
            live("a revision beyond the next is a gap", 5, None, msg("p", "e1", 7, false), Decision::Gap),
            Row {
                name: "with no epoch held, any epoch is new",
                uninitialised: false,
                rev: 0,
                epochs: Epochs::default(),
                last_msg: None,
                msg: msg("p", "e1", 1, false),
                want: Decision::NewEpoch,
            },
            Row {
                name: "while not initialised, a change is ignored",
                uninitialised: true,
                rev: 5,
                epochs: epochs("e1", &[]),
                last_msg: None,
                msg: msg("p", "e1", 9, false),
                want: Decision::NotInitialised,
            },
            Row {
                name: "while not initialised, a reset resyncs",
                uninitialised: true,
                rev: 5,
                epochs: epochs("e1", &[]),
                last_msg: None,
                msg: msg("p", "e1", 1, true),
                want: Decision::Reset,
            },
            Row {
                name: "while not initialised, a rewind still resyncs",
                uninitialised: true,
                rev: 5,
                epochs: epochs("e1", &[]),
                last_msg: Some(("", 3)),
                msg: msg("p", "", 3, false),
                want: Decision::Rewind { previous: 3 },
            },
        ];
        for r in &rows {
            let held = Held { env: "p", uninitialised: r.uninitialised, rev: r.rev, epochs: &r.epochs, last_msg: r.last_msg };
            assert_eq!(classify(&held, &r.msg), r.want, "{}", r.name);
        }
    }

    #[test]
    fn every_message_but_one_for_another_environment_counts_as_seen() {
        assert!(!Decision::WrongEnv.seen());
        for d in [Decision::Rewind { previous: 1 }, Decision::NotInitialised, Decision::Stale, Decision::Reset, Decision::NewEpoch, Decision::Gap, Decision::Apply] {
            assert!(d.seen(), "{d:?}");
        }
    }

    #[test]
    fn every_probe_rule() {
        let view = |before, held, upstream, superseded, exact, last_probe| ProbeView { before, held, upstream, superseded, exact, last_probe };
        let rows = [
            ("a snapshot taken while draining supersedes the probe", view(5, 5, 1, true, true, None), ProbeDecision::Superseded),
            ("upstream below the revision held before the probe is behind", view(5, 5, 4, false, true, None), ProbeDecision::Behind),
            ("RESP2 is behind the same way", view(5, 5, 4, false, false, Some(5)), ProbeDecision::Behind),
            ("RESP3: upstream equal to the held revision is current", view(5, 5, 5, false, true, None), ProbeDecision::Current),
            ("RESP3: upstream caught up by the drain is current", view(5, 7, 7, false, true, None), ProbeDecision::Current),
            ("RESP3: upstream above the held revision is trailing loss", view(5, 5, 6, false, true, None), ProbeDecision::TrailingLoss),
            ("RESP2: the first probe of a snapshot never declares loss", view(5, 5, 9, false, false, None), ProbeDecision::Current),
            ("RESP2: held still below the previous probe is trailing loss", view(5, 5, 9, false, false, Some(6)), ProbeDecision::TrailingLoss),
            ("RESP2: held at the previous probe is current", view(5, 6, 9, false, false, Some(6)), ProbeDecision::Current),
        ];
        for (name, v, want) in rows {
            assert_eq!(probe(&v), want, "{name}");
        }
        assert!(ProbeDecision::Current.remembered() && ProbeDecision::TrailingLoss.remembered());
        assert!(!ProbeDecision::Behind.remembered() && !ProbeDecision::Superseded.remembered());
    }

    #[test]
    fn every_probe_failure_rule() {
        let rows = [
            ("a first timeout is tolerated", 0, true, ProbeFailure::Tolerated(1)),
            ("a second timeout in a row reconnects", 1, true, ProbeFailure::TwoInARow),
            ("any other error reconnects at once", 0, false, ProbeFailure::Broken),
        ];
        for (name, failed, timeout, want) in rows {
            assert_eq!(probe_failed(failed, timeout), want, "{name}");
        }
    }

    #[test]
    fn epochs_remember_the_last_ones_left() {
        let mut e = Epochs::default();
        e.enter("e0".into());
        assert_eq!(e, epochs("e0", &[]), "the first epoch leaves none");
        e.enter("e0".into());
        assert_eq!(e, epochs("e0", &[]), "the same epoch again leaves none");
        for i in 1..=10 {
            e.enter(format!("e{i}"));
        }
        assert_eq!(e.current(), "e10");
        assert!(e.knows("e2") && e.knows("e9"), "the last eight left are known");
        assert!(!e.knows("e1") && !e.knows("e0"), "older ones are forgotten");
        e.assume("w".into());
        assert!(e.knows("w") && e.knows("e9"));
    }

    #[test]
    fn every_reason_has_its_label() {
        let rows = [
            (Reason::Initial, Some("initial")),
            (Reason::Reconnect, Some("reconnect")),
            (Reason::Overflow, Some("overflow")),
            (Reason::Gap, Some("gap")),
            (Reason::ProbeAhead, Some("probe_ahead")),
            (Reason::ProbeBehind, Some("probe_behind")),
            (Reason::Epoch, Some("epoch")),
            (Reason::Reset, Some("reset")),
            (Reason::Retry, None),
        ];
        for (r, label) in rows {
            assert_eq!(r.label(), label, "{r:?}");
        }
        assert_eq!(Reason::Retry.name(), "retry");
    }
}
