//! The relay stream's events as types ([`RelayEvent`]), parsed from the SSE events of
//! [`super::sse`]: `snapshot`, `change` and `heartbeat` (the wire format is
//! [`crate::fanout::relay_stream`]'s). An event of another name is skipped (a newer parent may
//! send more); one that does not parse is an [`EventError`] (the follower resyncs: applying a
//! change it cannot read would leave a hole). A feature inside an event that does not validate
//! here (a smaller `max_feature_bytes`, say) is returned apart, to be counted and skipped, as the
//! Redis follower does.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::sse::Event;
use crate::model::{Feature, InvalidFeature, Revision};
use crate::store::FeatureMap;

/// A position on the parent: its stream epoch, its seq, and the revision there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
    pub revision: Revision,
}

impl Position {
    /// The `Last-Event-ID` that resumes from here.
    pub fn last_event_id(&self) -> String {
        format!("{}:{}", self.epoch, self.seq)
    }
}

#[derive(Debug)]
pub enum RelayEvent {
    /// The whole state: replace.
    Snapshot { pos: Position, ts: Option<u64>, features: FeatureMap, invalid: Vec<InvalidFeature> },
    /// The change that leads to `pos`.
    Change { pos: Position, ts: Option<u64>, upserts: Vec<Arc<Feature>>, deletes: Vec<String>, invalid: Vec<InvalidFeature> },
    /// Where the stream is; `head` is the parent's current revision.
    Heartbeat { pos: Position, head: Option<Revision> },
}

impl RelayEvent {
    pub fn pos(&self) -> &Position {
        match self {
            RelayEvent::Snapshot { pos, .. } | RelayEvent::Change { pos, .. } | RelayEvent::Heartbeat { pos, .. } => pos,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("malformed `{event}` event from the parent: {error}")]
    Json { event: String, error: serde_json::Error },
    #[error("malformed `{0}` event from the parent: a field is missing")]
    Missing(String),
}

#[derive(Deserialize)]
struct Wire<'a> {
    revision: Revision,
    epoch: String,
    seq: u64,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    head: Option<Revision>,
    #[serde(borrow, default)]
    features: Option<BTreeMap<String, &'a RawValue>>,
    #[serde(borrow, default)]
    upserts: Option<BTreeMap<String, &'a RawValue>>,
    #[serde(default)]
    deletes: Option<Vec<String>>,
}

fn features(raw: BTreeMap<String, &RawValue>) -> (Vec<Arc<Feature>>, Vec<InvalidFeature>) {
    let mut ok = Vec::with_capacity(raw.len());
    let mut invalid = Vec::new();
    for (k, v) in raw {
        match Feature::from_slice(&k, v.get().as_bytes()) {
            Ok(f) => ok.push(f),
            Err(e) => invalid.push(e),
        }
    }
    (ok, invalid)
}

/// The typed event, or `None` for an event this relay does not know.
pub fn parse(e: &Event) -> Result<Option<RelayEvent>, EventError> {
    if !matches!(e.event.as_str(), "snapshot" | "change" | "heartbeat") {
        return Ok(None);
    }
    let w: Wire<'_> = serde_json::from_str(&e.data).map_err(|error| EventError::Json { event: e.event.clone(), error })?;
    let pos = Position { epoch: w.epoch, seq: w.seq, revision: w.revision };
    let missing = || EventError::Missing(e.event.clone());
    Ok(Some(match e.event.as_str() {
        "snapshot" => {
            let (ok, invalid) = features(w.features.ok_or_else(missing)?);
            RelayEvent::Snapshot { pos, ts: w.ts, features: ok.into_iter().map(|f| (f.key.clone(), f)).collect(), invalid }
        }
        "change" => {
            let (upserts, invalid) = features(w.upserts.ok_or_else(missing)?);
            RelayEvent::Change { pos, ts: w.ts, upserts, deletes: w.deletes.ok_or_else(missing)?, invalid }
        }
        _ => RelayEvent::Heartbeat { pos, head: w.head },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> Event {
        Event { event: event.into(), data: data.into(), id: None }
    }

    #[test]
    fn a_snapshot_carries_its_position_publish_time_and_features() {
        let e = ev("snapshot", r#"{"revision":7,"epoch":"ab","seq":3,"ts":1234,"features":{"a":{"key":"a","enabled":true}}}"#);
        let Some(RelayEvent::Snapshot { pos, ts, features, invalid }) = parse(&e).expect("parses") else { panic!("a snapshot") };
        assert_eq!(pos, Position { epoch: "ab".into(), seq: 3, revision: 7 });
        assert_eq!((ts, features.len(), invalid.len()), (Some(1234), 1, 0));
        assert_eq!(pos.last_event_id(), "ab:3");
    }

    #[test]
    fn a_change_carries_upserts_and_deletes_and_keeps_invalid_features_apart() {
        let e = ev("change", r#"{"revision":8,"epoch":"ab","seq":4,"ts":null,"upserts":{"b":{"key":"b"},"bad":[1]},"deletes":["a"]}"#);
        let Some(RelayEvent::Change { upserts, deletes, invalid, ts, .. }) = parse(&e).expect("parses") else { panic!("a change") };
        assert_eq!((upserts.len(), deletes, invalid.len(), ts), (1, vec!["a".to_string()], 1, None));
    }

    #[test]
    fn a_heartbeat_is_a_position() {
        let e = ev("heartbeat", r#"{"revision":8,"epoch":"ab","seq":4,"head":9}"#);
        assert!(matches!(parse(&e).expect("parses"), Some(RelayEvent::Heartbeat { head: Some(9), .. })));
    }

    #[test]
    fn unknown_events_are_skipped_and_malformed_ones_are_errors() {
        assert!(parse(&ev("something-new", "{}")).expect("skipped").is_none());
        assert!(parse(&ev("change", "{not json")).is_err());
        assert!(parse(&ev("change", r#"{"revision":8,"epoch":"ab","seq":4,"upserts":{}}"#)).is_err(), "no deletes");
        assert!(parse(&ev("snapshot", r#"{"revision":8,"epoch":"ab","seq":4}"#)).is_err(), "no features");
    }
}
