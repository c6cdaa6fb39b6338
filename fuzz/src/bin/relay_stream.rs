//! Fuzz target `relay_stream`: bytes from a parent relay through a child's SSE parser, cut into
//! chunks by the first byte, then every event through the typed parse and the ordering rules,
//! as the relay follower does.
//!
//! Invariants: the events do not depend on how the bytes were cut (the whole input at once gives
//! the same events when both are read to the end); no event's data is longer than the parser's bound; a
//! typed event's position names itself back (`Last-Event-ID` parses to its epoch and seq when
//! the epoch has no `:` and no surrounding whitespace, as every epoch a relay makes); a snapshot always replaces and a change applies only at the next seq
//! of the same epoch, whatever was held.

use flagrelay::fuzzing::{decide_relay_event, parse_relay_event, parse_stream_position, Position, RelayDecision, RelayEvent, RelayEventKind, SseParser};

const MAX: usize = 64 * 1024;

fn events(data: &[u8], step: usize) -> Result<Vec<flagrelay::fuzzing::SseEvent>, String> {
    let mut p = SseParser::new(MAX);
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        out.extend(p.push(chunk).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let cut = events(rest, usize::from(first % 17) + 1);
    let whole = events(rest, rest.len());
    // Only where both read it all: a line over the bound is refused when a cut leaves it
    // partial, while the whole input may carry it complete.
    if let (Ok(a), Ok(b)) = (&cut, &whole) {
        assert_eq!(a, b, "the events depend on the chunking");
    }
    let Ok(evs) = cut else { return };
    let held = Position { epoch: "e".into(), seq: u64::from(first), revision: 7 };
    for e in &evs {
        assert!(e.data.len() <= MAX);
        let Ok(Some(ev)) = parse_relay_event(e) else { continue };
        let pos = ev.pos().clone();
        if !pos.epoch.contains(':') && pos.epoch.trim() == pos.epoch {
            assert_eq!(parse_stream_position(&pos.last_event_id()), Some((pos.epoch.as_str(), pos.seq)));
        }
        let kind = match ev {
            RelayEvent::Snapshot { .. } => RelayEventKind::Snapshot,
            RelayEvent::Change { .. } => RelayEventKind::Change,
            RelayEvent::Heartbeat { .. } => RelayEventKind::Heartbeat,
        };
        for h in [None, Some(&held)] {
            let d = decide_relay_event(h, kind, &pos);
            match kind {
                RelayEventKind::Snapshot => assert_eq!(d, RelayDecision::Replace),
                RelayEventKind::Change => {
                    let next = h.is_some_and(|h| h.epoch == pos.epoch && h.seq.checked_add(1) == Some(pos.seq));
                    assert_eq!(d == RelayDecision::Apply, next, "{h:?} {pos:?}");
                }
                RelayEventKind::Heartbeat => assert!(!matches!(d, RelayDecision::Apply | RelayDecision::Replace)),
            }
        }
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
