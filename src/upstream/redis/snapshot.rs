//! The atomic snapshot: `MULTI GET rev / HGETALL features / HGETALL meta EXEC`, taken on a
//! connection that is **not** subscribed (a big reply on a subscribed connection counts against
//! the pub/sub output-buffer limit and can get it killed).
//!
//! Invariant: a snapshot is authoritative for what it contains, including a revision lower than
//! the one held (a failover); but a snapshot without `meta.inited` is never applied (the relay
//! keeps its last-known-good data).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::metrics::Metrics;
use crate::model::{Feature, Revision};
use crate::store::{EnvStore, FeatureMap};

use super::keys::EnvKeys;
use super::SyncError;

/// What Redis held at one instant.
#[derive(Debug)]
pub struct RawSnapshot {
    pub rev: Revision,
    pub features: HashMap<String, Vec<u8>>,
    /// Fields of the features hash whose names are not UTF-8 (skipped and counted).
    pub bad_keys: usize,
    pub inited: bool,
    /// `meta.epoch`, empty when missing.
    pub epoch: String,
}

/// Field names and values as bytes: one non-UTF-8 field must cost that field, not the snapshot.
type Reply = (Option<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>);

pub async fn fetch(con: &mut MultiplexedConnection, keys: &EnvKeys, limit: Duration) -> Result<RawSnapshot, SyncError> {
    let q = async {
        let (rev, features, meta): Reply = redis::pipe().atomic().get(&keys.rev).hgetall(&keys.features).hgetall(&keys.meta).query_async(con).await?;
        Ok::<_, SyncError>((rev, features, meta))
    };
    let (rev, features, meta) = tokio::time::timeout(limit, q).await.map_err(|_| SyncError::Timeout(limit, "taking a snapshot"))??;
    let rev = match rev {
        None => 0,
        Some(b) => {
            let s = String::from_utf8_lossy(&b);
            s.trim().parse().map_err(|_| SyncError::NotARevision { key: keys.rev.clone(), shown: super::message::truncate(&s, 40).to_string() })?
        }
    };
    let mut map = HashMap::with_capacity(features.len());
    let mut bad_keys = 0usize;
    for (k, v) in features {
        match String::from_utf8(k) {
            Ok(k) => {
                map.insert(k, v);
            }
            Err(_) => bad_keys += 1,
        }
    }
    let meta: HashMap<String, String> =
        meta.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())).collect();
    Ok(RawSnapshot {
        rev,
        features: map,
        bad_keys,
        inited: meta.get("inited").is_some_and(|v| v == "1"),
        epoch: meta.get("epoch").cloned().unwrap_or_default(),
    })
}

/// Validates every feature of a snapshot. An invalid one is counted, logged and skipped; the
/// version held before (if any) is kept, as the file source does.
pub fn to_map(raw: RawSnapshot, env: &EnvStore, metrics: &Arc<Metrics>) -> FeatureMap {
    let current = env.snapshot();
    let mut map = FeatureMap::new();
    if raw.bad_keys > 0 {
        metrics.invalid_features.with_label_values(&[&env.id]).inc_by(raw.bad_keys as u64);
        tracing::warn!(count = raw.bad_keys, "features hash fields whose names are not UTF-8 skipped");
        env.record_error("redis", &format!("{} feature key(s) in the upstream hash are not UTF-8; skipped", raw.bad_keys));
    }
    for (key, bytes) in raw.features {
        match Feature::from_slice(&key, &bytes) {
            Ok(f) => {
                map.insert(key, f);
            }
            Err(e) => {
                metrics.invalid_features.with_label_values(&[&env.id]).inc();
                let kept = current.features.get(&key).cloned();
                tracing::warn!(feature = %key, reason = %e.reason, kept_previous = kept.is_some(), "invalid feature in the upstream hash skipped");
                env.record_error("redis", &e.to_string());
                if let Some(old) = kept {
                    map.insert(key, old);
                }
            }
        }
    }
    map
}
