//! SSE frame encoding (the Featureflow server-SDK stream, spec §2.5).
//!
//! Invariant: every frame that many clients receive (a change, a full state, a heartbeat) is
//! encoded once and shared as `Bytes`; only catch-up frames for lagging or resuming clients are
//! built per client. `id:` is set only on the last frame of a change, so a client that drops
//! mid-change resumes from the previous revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::model::{Feature, Revision};
use crate::store::{encode_map, ChangeRecord, Snapshot};

pub(crate) fn push_event(out: &mut Vec<u8>, event: &str, data: &[u8], id: Option<Revision>) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

fn encode_deleted(keys: &[String]) -> Vec<u8> {
    // Serializing strings cannot fail.
    serde_json::to_vec(keys).unwrap_or_else(|_| b"[]".to_vec())
}

/// `features.updated` with `upserts` and/or `features.deleted` with `deletes`, as one chunk.
pub fn encode_change<'a>(
    upserts: impl Iterator<Item = &'a Arc<Feature>>,
    has_upserts: bool,
    deletes: &[String],
    revision: Revision,
) -> Bytes {
    let mut out = Vec::with_capacity(256);
    if has_upserts {
        let map = encode_map(upserts);
        let id = if deletes.is_empty() { Some(revision) } else { None };
        push_event(&mut out, "features.updated", &map, id);
    }
    if !deletes.is_empty() {
        push_event(&mut out, "features.deleted", &encode_deleted(deletes), Some(revision));
    }
    Bytes::from(out)
}

/// The frame for one change, encoded once and cached on the record.
pub fn change_frame(c: &ChangeRecord) -> &Bytes {
    c.frame(crate::store::FrameSlot::Featureflow).get_or_init(|| encode_change(c.upserts.iter(), !c.upserts.is_empty(), &c.deletes, c.revision))
}

/// The full-state frame of a snapshot, encoded once and cached on the snapshot.
pub fn full_frame(s: &Snapshot) -> &Bytes {
    s.full_frame_slot(crate::store::FrameSlot::Featureflow).get_or_init(|| {
        let mut out = Vec::with_capacity(s.encoded().body.len() + 64);
        push_event(&mut out, "features.updated", &s.encoded().body, Some(s.revision));
        Bytes::from(out)
    })
}

/// One coalesced frame for several changes: the latest version of every touched feature that
/// still exists, and one deletion list for the rest (taken from the target snapshot, so it is
/// exactly the target state for those keys).
pub fn coalesced_frame(changes: &[Arc<ChangeRecord>], to: &Snapshot) -> Bytes {
    let mut touched: BTreeMap<&str, ()> = BTreeMap::new();
    for c in changes {
        for f in &c.upserts {
            touched.insert(&f.key, ());
        }
        for k in &c.deletes {
            touched.insert(k, ());
        }
    }
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for k in touched.keys() {
        match to.features.get(*k) {
            Some(f) => upserts.push(f),
            None => deletes.push((*k).to_string()),
        }
    }
    encode_change(upserts.iter().copied(), !upserts.is_empty(), &deletes, to.revision)
}

/// `features.deleted` for keys a resuming client may still hold, after a full state.
pub fn deleted_frame(keys: &[String], revision: Revision) -> Bytes {
    let mut out = Vec::with_capacity(64);
    push_event(&mut out, "features.deleted", &encode_deleted(keys), Some(revision));
    Bytes::from(out)
}

/// `retry: ms` (the reconnect delay hint).
pub fn retry_frame(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A heartbeat that the Java SDK accepts: data starting with `{"heartbeat"`.
pub fn heartbeat_frame(unix_ms: u128) -> Bytes {
    Bytes::from(format!("data: {{\"heartbeat\":{unix_ms}}}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_with_deletes_puts_id_last() {
        let f = Feature::from_slice("a", br#"{"key":"a","enabled":false}"#).unwrap();
        let b = encode_change([f].iter(), true, &["b".to_string()], 7);
        let s = std::str::from_utf8(&b).unwrap();
        assert_eq!(
            s,
            "event: features.updated\ndata: {\"a\":{\"key\":\"a\",\"enabled\":false}}\n\nid: 7\nevent: features.deleted\ndata: [\"b\"]\n\n"
        );
    }

    #[test]
    fn heartbeat_prefix() {
        assert!(heartbeat_frame(5).starts_with(b"data: {\"heartbeat\""));
    }
}
