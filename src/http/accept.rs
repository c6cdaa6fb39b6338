//! The accept loop's decisions, as pure state machines the loop acts on: how long to back off
//! after a failed `accept` ([`AcceptBackoff`]: 5 ms doubling to 1 s), and when a state worth one
//! log line begins or ends ([`Spell`]): accept failing, or the connection cap turning
//! connections away. One line when a spell begins and one when it ends, never one per error or
//! per rejected connection.
//!
//! A spell ends only after [`CALM`] without a failure (rejection) since the first success
//! (admission) that followed it: accept flapping between EMFILE and success, or a cap that frees a
//! slot and fills it again, stays one spell. The loop asks [`Spell::ends_at`] for the moment to
//! check, so the end is logged even if no connection comes after it.

use std::time::Duration;

use tokio::time::Instant;

/// The first back-off after a failed accept.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The longest back-off.
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How long a spell must stay calm to end.
pub const CALM: Duration = Duration::from_secs(1);

/// What the loop should log after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed: log nothing.
    Same,
    /// A spell began (accept started failing; the cap was reached).
    Began,
    /// The failing accept fails differently now (EMFILE became ENFILE, say).
    Changed,
    /// The spell ended after `count` failures (rejections).
    Ended { count: u64 },
}

/// A run of failures (rejections) with its count, ended by a calm [`CALM`].
#[derive(Debug, Default)]
pub struct Spell {
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    count: u64,
    /// The first success since the last failure.
    calm_since: Option<Instant>,
}

impl Spell {
    /// A failure (a rejected connection).
    pub fn hit(&mut self) -> Transition {
        match &mut self.active {
            None => {
                self.active = Some(Active { count: 1, calm_since: None });
                Transition::Began
            }
            Some(a) => {
                a.count += 1;
                a.calm_since = None;
                Transition::Same
            }
        }
    }

    /// A success (an admitted connection) at `now`.
    pub fn calm(&mut self, now: Instant) -> Transition {
        if let Some(a) = &mut self.active {
            a.calm_since.get_or_insert(now);
        }
        self.tick(now)
    }

    /// When the spell will have been calm long enough (`None`: no spell, or not calm).
    pub fn ends_at(&self) -> Option<Instant> {
        self.active.as_ref().and_then(|a| a.calm_since).map(|t| t + CALM)
    }

    /// Ends the spell if it has been calm long enough by `now`.
    pub fn tick(&mut self, now: Instant) -> Transition {
        match (self.ends_at(), &self.active) {
            (Some(end), Some(a)) if now >= end => {
                let count = a.count;
                self.active = None;
                Transition::Ended { count }
            }
            _ => Transition::Same,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

/// The back-off of a failing accept: it doubles while the spell lasts and starts over after.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    spell: Spell,
    /// The OS error code of the last failure (`None`: not an OS error), to log a change once.
    code: Option<i32>,
    delay: Duration,
}

impl AcceptBackoff {
    /// An accept failed with OS error `code`: how long to wait before the next, and whether the
    /// state changed.
    pub fn failed(&mut self, code: Option<i32>) -> (Duration, Transition) {
        let t = match self.spell.hit() {
            Transition::Began => {
                self.delay = BACKOFF_FIRST;
                Transition::Began
            }
            _ => {
                self.delay = (self.delay * 2).min(BACKOFF_CAP);
                if self.code == code {
                    Transition::Same
                } else {
                    Transition::Changed
                }
            }
        };
        self.code = code;
        (self.delay, t)
    }

    /// An accept succeeded at `now`.
    pub fn accepted(&mut self, now: Instant) -> Transition {
        self.spell.calm(now)
    }

    /// See [`Spell::ends_at`].
    pub fn ends_at(&self) -> Option<Instant> {
        self.spell.ends_at()
    }

    /// See [`Spell::tick`].
    pub fn tick(&mut self, now: Instant) -> Transition {
        self.spell.tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMFILE: Option<i32> = Some(24);
    const ENFILE: Option<i32> = Some(23);

    #[test]
    fn the_back_off_doubles_from_5_ms_to_at_most_1_s() {
        let mut b = AcceptBackoff::default();
        let delays: Vec<u64> = (0..11).map(|_| b.failed(EMFILE).0.as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn only_the_first_failure_a_change_of_cause_and_a_calm_end_are_transitions() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = AcceptBackoff::default();
        enum E {
            Fail(Option<i32>),
            Accept(Instant),
            Tick(Instant),
        }
        // (event, transition)
        let table = [
            (E::Fail(EMFILE), Transition::Began),
            (E::Fail(EMFILE), Transition::Same),
            (E::Accept(ms(10)), Transition::Same),
            (E::Fail(EMFILE), Transition::Same),
            (E::Fail(ENFILE), Transition::Changed),
            (E::Accept(ms(100)), Transition::Same),
            (E::Accept(ms(900)), Transition::Same),
            (E::Tick(ms(1099)), Transition::Same),
            (E::Tick(ms(1100)), Transition::Ended { count: 4 }),
            (E::Accept(ms(1200)), Transition::Same),
            (E::Fail(EMFILE), Transition::Began),
        ];
        for (i, (event, want)) in table.into_iter().enumerate() {
            let got = match event {
                E::Fail(code) => b.failed(code).1,
                E::Accept(now) => b.accepted(now),
                E::Tick(now) => b.tick(now),
            };
            assert_eq!(got, want, "step {i}");
        }
    }

    #[test]
    fn the_end_is_due_a_calm_second_after_the_first_success_since_the_last_failure() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        assert_eq!(b.ends_at(), None);
        b.failed(EMFILE);
        assert_eq!(b.ends_at(), None, "not calm yet");
        b.accepted(t0);
        b.accepted(t0 + Duration::from_millis(500));
        assert_eq!(b.ends_at(), Some(t0 + CALM));
        b.failed(EMFILE);
        assert_eq!(b.ends_at(), None, "a failure restarts the calm");
    }

    #[test]
    fn after_a_spell_the_back_off_starts_over() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        for _ in 0..5 {
            b.failed(EMFILE);
        }
        b.accepted(t0);
        assert_eq!(b.tick(t0 + CALM), Transition::Ended { count: 5 });
        assert_eq!(b.failed(EMFILE).0, BACKOFF_FIRST);
    }

    #[test]
    fn a_cap_that_frees_a_slot_and_fills_again_is_one_spell() {
        let t0 = Instant::now();
        let mut cap = Spell::default();
        assert_eq!(cap.calm(t0), Transition::Same);
        assert!(!cap.is_active());
        assert_eq!(cap.hit(), Transition::Began);
        assert_eq!(cap.calm(t0), Transition::Same);
        assert_eq!(cap.hit(), Transition::Same);
        assert_eq!(cap.hit(), Transition::Same);
        assert_eq!(cap.calm(t0 + Duration::from_millis(10)), Transition::Same);
        assert_eq!(cap.calm(t0 + Duration::from_millis(10) + CALM), Transition::Ended { count: 3 });
        assert!(!cap.is_active());
    }
}
