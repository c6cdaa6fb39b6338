//! What readers of an environment get, and its encoded forms: the immutable [`Snapshot`] of the
//! flag data at one point in time, the [`ChangeRecord`] of each published change, and the caches
//! that let every reader share one encoding of them.
//!
//! Invariants:
//! - A snapshot's JSON map and ETag ([`Snapshot::encoded`]), that map compressed per content
//!   coding ([`Snapshot::encoded_as`]), and the frame of each stream kind ([`FrameSlot`]) on a
//!   snapshot or change are built at most once, lazily, on first use (`OnceLock`), and shared as
//!   `Bytes`.
//! - Catch-up frames into a snapshot are cached per (stream kind, the client's seq), at most
//!   [`CATCHUP_CACHE`] per snapshot; two clients that miss the cache at the same moment may each
//!   build one.
//! - A snapshot at a new revision with the same content keeps the encoded map, its compressed
//!   forms and ETag (they depend on the content only) and starts with empty frame caches (frames carry the revision).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::{lock, weight};
use crate::compress::{self, Coding};
use crate::eval::{thin, CompiledFeature};
use crate::model::{Feature, Revision};

pub type FeatureMap = BTreeMap<String, Arc<Feature>>;
/// Every feature compiled for evaluation, keyed like [`FeatureMap`].
pub type CompiledMap = BTreeMap<String, Arc<CompiledFeature>>;

/// The kinds of stream that cache an encoded frame on snapshots and change records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSlot {
    /// The Featureflow server-SDK stream (`features.updated` / `features.deleted`).
    Featureflow,
    /// The legacy JS thin-client stream (the changed keys).
    LegacyJs,
    /// The OFREP change-notification stream (`refetchEvaluation`).
    Ofrep,
    /// The relay-to-relay stream (`snapshot` / `change`, [`crate::fanout::relay_stream`]).
    Relay,
}

/// One lazily-encoded frame per [`FrameSlot`].
#[derive(Debug, Default)]
struct FrameSlots {
    featureflow: OnceLock<Bytes>,
    legacy_js: OnceLock<Bytes>,
    ofrep: OnceLock<Bytes>,
    relay: OnceLock<Bytes>,
}

impl FrameSlots {
    fn get(&self, slot: FrameSlot) -> &OnceLock<Bytes> {
        match slot {
            FrameSlot::Featureflow => &self.featureflow,
            FrameSlot::LegacyJs => &self.legacy_js,
            FrameSlot::Ofrep => &self.ofrep,
            FrameSlot::Relay => &self.relay,
        }
    }
}

/// How many catch-up frames one snapshot caches.
const CATCHUP_CACHE: usize = 32;

/// One environment's data at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    pub env: Arc<str>,
    pub seq: u64,
    pub revision: Revision,
    pub features: Arc<FeatureMap>,
    /// The same features compiled for evaluation (each compiled once, when it changed).
    pub compiled: Arc<CompiledMap>,
    /// True once the source has delivered data for this environment.
    pub loaded: bool,
    /// When this snapshot was published.
    pub published_at: SystemTime,
    /// The change that produced this snapshot (`None` for the initial, empty one; a
    /// revision-only update keeps the previous snapshot's).
    pub last_change: Option<Arc<ChangeRecord>>,
    body: OnceLock<Encoded>,
    /// `body` compressed: gzip, br (each made once, when first asked for).
    coded: [OnceLock<Bytes>; 2],
    /// Full-state frames, one per stream kind, filled by the fan-out.
    full_frames: FrameSlots,
    /// Catch-up frames into this snapshot, keyed by (stream kind, the client's seq), so lagging
    /// clients at the same position share one encoding. Bounded by [`CATCHUP_CACHE`].
    catchup_frames: Mutex<Vec<(FrameSlot, u64, Bytes)>>,
}

/// The JSON map and its strong ETag.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Bytes,
    pub etag: Arc<str>,
}

impl Snapshot {
    /// The initial snapshot of an environment: empty, not loaded, seq and revision 0.
    pub(super) fn empty(env: Arc<str>) -> Snapshot {
        Snapshot { loaded: false, ..Snapshot::published(env, 0, 0, Arc::default(), Arc::default(), None) }
    }

    /// A loaded snapshot, published now, with nothing encoded yet.
    pub(super) fn published(
        env: Arc<str>,
        seq: u64,
        revision: Revision,
        features: Arc<FeatureMap>,
        compiled: Arc<CompiledMap>,
        last_change: Option<Arc<ChangeRecord>>,
    ) -> Snapshot {
        Snapshot {
            env,
            seq,
            revision,
            features,
            compiled,
            loaded: true,
            published_at: SystemTime::now(),
            last_change,
            body: OnceLock::new(),
            coded: Default::default(),
            full_frames: FrameSlots::default(),
            catchup_frames: Mutex::new(Vec::new()),
        }
    }

    /// This snapshot's content at `revision`, loaded and published now: the encoded map and ETag
    /// are kept, the frames (which carry the revision) are not.
    pub(super) fn at_revision(&self, revision: Revision) -> Snapshot {
        let (features, compiled) = (self.features.clone(), self.compiled.clone());
        let keep = |c: &OnceLock<Bytes>| c.get().cloned().map(OnceLock::from).unwrap_or_default();
        Snapshot {
            body: self.body.get().cloned().map(OnceLock::from).unwrap_or_default(),
            coded: [keep(&self.coded[0]), keep(&self.coded[1])],
            ..Snapshot::published(self.env.clone(), self.seq, revision, features, compiled, self.last_change.clone())
        }
    }

    /// The bare JSON map `{key: control, ...}` (sorted by key) and its ETag, encoded once.
    pub fn encoded(&self) -> &Encoded {
        self.body.get_or_init(|| {
            let body = encode_map(self.features.values());
            let etag = etag_of(&body);
            Encoded { body, etag: etag.into() }
        })
    }

    /// [`encoded`](Self::encoded) in a content coding, with that representation's strong ETag;
    /// each coding is compressed once per snapshot and shared by every request.
    pub fn encoded_as(&self, coding: Coding) -> (Bytes, String) {
        let enc = self.encoded();
        let body = match coding {
            Coding::Identity => enc.body.clone(),
            Coding::Gzip => self.coded[0].get_or_init(|| compress::compress(coding, &enc.body)).clone(),
            Coding::Br => self.coded[1].get_or_init(|| compress::compress(coding, &enc.body)).clone(),
        };
        (body, compress::coded_etag(&enc.etag, coding))
    }

    /// The cell for this snapshot's full-state frame of one stream kind.
    pub fn full_frame_slot(&self, slot: FrameSlot) -> &OnceLock<Bytes> {
        self.full_frames.get(slot)
    }

    /// The cached catch-up frame for (`slot`, `from_seq`), or `make()`'s, cached.
    pub fn catchup_frame(&self, slot: FrameSlot, from_seq: u64, make: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((_, _, b)) = lock(&self.catchup_frames).iter().find(|(s, f, _)| *s == slot && *f == from_seq) {
            return b.clone();
        }
        let b = make();
        let mut c = lock(&self.catchup_frames);
        if c.len() < CATCHUP_CACHE {
            c.push((slot, from_seq, b.clone()));
        }
        b
    }
}

/// `{"k1":{...},"k2":{...}}` from already-encoded features.
pub fn encode_map<'a>(features: impl Iterator<Item = &'a Arc<Feature>>) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    for (i, f) in features.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serializing a String cannot fail.
        let _ = serde_json::to_writer(&mut out, &f.key);
        out.push(b':');
        out.extend_from_slice(&f.json);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A strong ETag: the quoted hex of the first 12 bytes (96 bits) of the content's SHA-1
/// (deterministic, changes exactly when the body does).
fn etag_of(body: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(body);
    format!("\"{}\"", hex::encode(&d[..12]))
}

/// What one revision changed.
#[derive(Debug)]
pub struct ChangeRecord {
    pub seq: u64,
    pub revision: Revision,
    pub upserts: Vec<Arc<Feature>>,
    pub deletes: Vec<String>,
    /// The keys of this change the thin-client streams announce ([`thin_keys`]), sorted.
    pub thin_keys: Vec<String>,
    /// Upstream publish time (Unix ms), for the propagation metric.
    pub upstream_ts_ms: Option<u64>,
    pub at: Instant,
    /// The history lineage this change belongs to: a new one starts at the first load and whenever
    /// the revision fails to go up (failover, restore).
    pub lineage: u64,
    /// The encoded frames of this change, one per stream kind, filled by the fan-out.
    frames: FrameSlots,
    /// Fan-out bookkeeping: connections that have yet to receive this change (armed by the first
    /// delivery), for the "written to every connection" measurement.
    pub pending_deliveries: AtomicI64,
    pub deliveries_armed: AtomicBool,
}

/// The keys of a change that thin clients may hear of: an upsert whose new or previous version
/// is served to them ([`thin::served_control`]; a feature being hidden is announced, so clients
/// refetch and drop it), and a delete whose deleted version was. A feature hidden before and
/// after never appears. Sorted, each once.
pub fn thin_keys(upserts: &[Arc<Feature>], deletes: &[String], previous: &FeatureMap) -> Vec<String> {
    let was_served = |k: &str| previous.get(k).is_some_and(|f| thin::served_control(&f.control));
    let mut keys: Vec<String> = upserts
        .iter()
        .filter(|f| thin::served_control(&f.control) || was_served(&f.key))
        .map(|f| f.key.clone())
        .chain(deletes.iter().filter(|k| was_served(k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl ChangeRecord {
    /// A change at (`seq`, `revision`) of `lineage`, made at `at`, with nothing encoded or
    /// delivered yet; `thin_keys` as [`thin_keys`] computes them.
    #[allow(clippy::too_many_arguments)] // one per field the store knows at publication
    pub(super) fn new(
        seq: u64,
        revision: Revision,
        upserts: Vec<Arc<Feature>>,
        deletes: Vec<String>,
        thin_keys: Vec<String>,
        upstream_ts_ms: Option<u64>,
        at: Instant,
        lineage: u64,
    ) -> ChangeRecord {
        ChangeRecord {
            seq,
            revision,
            upserts,
            deletes,
            thin_keys,
            upstream_ts_ms,
            at,
            lineage,
            frames: FrameSlots::default(),
            pending_deliveries: AtomicI64::new(0),
            deliveries_armed: AtomicBool::new(false),
        }
    }

    /// The cell for this change's frame of one stream kind.
    pub fn frame(&self, slot: FrameSlot) -> &OnceLock<Bytes> {
        self.frames.get(slot)
    }

    /// What this change counts against the replay ring's byte budget: the memory its upserted
    /// feature versions hold ([`weight::feature_bytes`]; in the ring they may be superseded, so
    /// nothing else holds them), the frame its stream kinds encode of them (about their encoded
    /// size) and its keys, plus the record itself.
    pub fn weight(&self) -> usize {
        let upserts: usize = self.upserts.iter().map(|f| weight::feature_bytes(f) + f.json.len() + f.key.len()).sum();
        let keys: usize = self.deletes.iter().chain(&self.thin_keys).map(|k| 2 * k.len()).sum();
        std::mem::size_of::<ChangeRecord>() + upserts + keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(key: &str, variant: &str) -> Arc<Feature> {
        let v = serde_json::json!({"key": key, "enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}]});
        Feature::from_value(key, v).expect("valid")
    }

    fn snapshot(features: &[Arc<Feature>]) -> Snapshot {
        let map: FeatureMap = features.iter().map(|f| (f.key.clone(), f.clone())).collect();
        Snapshot::published("e".into(), 1, 7, Arc::new(map), Arc::default(), None)
    }

    #[test]
    fn the_encoded_map_is_every_feature_by_key_in_key_order() {
        let s = snapshot(&[f("b", "on"), f("a", "off")]);
        let v: serde_json::Value = serde_json::from_slice(&s.encoded().body).expect("JSON");
        let keys: Vec<&str> = v.as_object().expect("a map").keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(v["a"], serde_json::from_slice::<serde_json::Value>(&f("a", "off").json).expect("JSON"));
    }

    #[test]
    fn the_etag_is_strong_and_changes_exactly_when_the_body_does() {
        assert_eq!(etag_of(b"{}"), etag_of(b"{}"));
        assert_ne!(etag_of(b"{}"), etag_of(b"{\"a\":1}"));
        let e = etag_of(b"{}");
        assert!(e.starts_with('"') && e.ends_with('"') && e.len() == 26, "quoted 24 hex digits: {e}");
    }

    #[test]
    fn a_new_revision_of_the_same_content_keeps_the_etag_but_not_the_frames() {
        let s = snapshot(&[f("a", "on")]);
        let etag = s.encoded().etag.clone();
        s.full_frame_slot(FrameSlot::Featureflow).get_or_init(|| Bytes::from_static(b"rev 7"));
        let next = s.at_revision(8);
        assert_eq!((next.seq, next.revision, next.loaded), (1, 8, true));
        assert!(next.body.get().is_some(), "the encoded map is carried over");
        assert_eq!(next.encoded().etag, etag);
        assert!(next.full_frame_slot(FrameSlot::Featureflow).get().is_none());
    }

    #[test]
    fn each_stream_kind_has_its_own_frame_slot() {
        let s = snapshot(&[]);
        s.full_frame_slot(FrameSlot::Ofrep).get_or_init(|| Bytes::from_static(b"ofrep"));
        assert!(s.full_frame_slot(FrameSlot::Featureflow).get().is_none());
        assert!(s.full_frame_slot(FrameSlot::LegacyJs).get().is_none());
        let c = ChangeRecord::new(1, 7, Vec::new(), vec!["a".into()], Vec::new(), None, Instant::now(), 1);
        c.frame(FrameSlot::LegacyJs).get_or_init(|| Bytes::from_static(b"legacy"));
        assert_eq!(c.frame(FrameSlot::LegacyJs).get().map(|b| &b[..]), Some(&b"legacy"[..]));
        assert!(c.frame(FrameSlot::Featureflow).get().is_none());
    }

    #[test]
    fn a_catchup_frame_is_built_once_per_stream_kind_and_client_position() {
        let s = snapshot(&[]);
        let built = std::cell::Cell::new(0);
        let make = || {
            built.set(built.get() + 1);
            Bytes::from_static(b"frame")
        };
        s.catchup_frame(FrameSlot::Featureflow, 3, make);
        s.catchup_frame(FrameSlot::Featureflow, 3, make);
        assert_eq!(built.get(), 1, "the same position shares one encoding");
        s.catchup_frame(FrameSlot::LegacyJs, 3, make);
        s.catchup_frame(FrameSlot::Featureflow, 4, make);
        assert_eq!(built.get(), 3, "another kind or position is another frame");
    }

    fn hidden(key: &str, extra: serde_json::Value) -> Arc<Feature> {
        let mut v = serde_json::json!({"key": key, "enabled": false});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        Feature::from_value(key, v).expect("valid")
    }

    #[test]
    fn thin_clients_hear_of_a_change_to_a_feature_they_are_or_were_served_and_of_nothing_else() {
        let previous: FeatureMap = [
            ("shown", f("shown", "on")),
            ("hidden", hidden("hidden", serde_json::json!({"inClientApi": false}))),
            ("soft-deleted", hidden("soft-deleted", serde_json::json!({"deleted": true}))),
            ("to-hide", f("to-hide", "on")),
        ]
        .into_iter()
        .map(|(k, f)| (k.to_string(), f))
        .collect();
        let upserts = [
            f("shown", "off"),
            hidden("hidden", serde_json::json!({"inClientApi": false, "enabled": true})),
            hidden("to-hide", serde_json::json!({"inClientApi": false})),
            f("new", "on"),
            hidden("new-hidden", serde_json::json!({"deleted": true})),
        ];
        let deletes = ["soft-deleted".to_string(), "shown-gone".to_string()];
        let mut previous = previous;
        previous.insert("shown-gone".into(), f("shown-gone", "on"));
        assert_eq!(thin_keys(&upserts, &deletes, &previous), ["new", "shown", "shown-gone", "to-hide"]);
    }

    #[test]
    fn a_change_weighs_what_its_features_hold_and_its_keys() {
        let a = f("a", "on");
        let c = ChangeRecord::new(1, 7, vec![a.clone()], vec!["gone".into()], vec!["a".into()], None, Instant::now(), 1);
        let feature = weight::feature_bytes(&a) + a.json.len() + 1;
        assert_eq!(c.weight(), std::mem::size_of::<ChangeRecord>() + feature + 2 * (4 + 1));
        assert!(weight::feature_bytes(&a) > a.json.len());
    }

    #[test]
    fn the_catchup_cache_stops_growing_at_its_bound() {
        let s = snapshot(&[]);
        for seq in 0..(CATCHUP_CACHE as u64 + 8) {
            s.catchup_frame(FrameSlot::Featureflow, seq, || Bytes::from_static(b"frame"));
        }
        assert_eq!(lock(&s.catchup_frames).len(), CATCHUP_CACHE);
        let built = std::cell::Cell::new(false);
        let b = s.catchup_frame(FrameSlot::Featureflow, CATCHUP_CACHE as u64 + 1, || {
            built.set(true);
            Bytes::from_static(b"uncached")
        });
        assert!(built.get() && &b[..] == b"uncached", "beyond the bound frames are built, not cached");
    }
}
