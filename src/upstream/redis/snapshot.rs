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
    pub inited: bool,
    /// `meta.epoch`, empty when missing.
    pub epoch: String,
}

type Reply = (Option<String>, HashMap<String, Vec<u8>>, HashMap<String, String>);

pub async fn fetch(con: &mut MultiplexedConnection, keys: &EnvKeys, limit: Duration) -> Result<RawSnapshot, SyncError> {
    let q = async {
        let (rev, features, meta): Reply = redis::pipe().atomic().get(&keys.rev).hgetall(&keys.features).hgetall(&keys.meta).query_async(con).await?;
        Ok::<_, SyncError>((rev, features, meta))
    };
    let (rev, features, meta) = tokio::time::timeout(limit, q).await.map_err(|_| SyncError::Timeout(limit, "taking a snapshot"))??;
    let rev = match rev {
        None => 0,
        Some(s) => s.trim().parse().map_err(|_| SyncError::Other(format!("{} holds {:?}, not a revision", keys.rev, super::message::truncate(&s, 40))))?,
    };
    Ok(RawSnapshot {
        rev,
        features,
        inited: meta.get("inited").is_some_and(|v| v == "1"),
        epoch: meta.get("epoch").cloned().unwrap_or_default(),
    })
}

/// Validates every feature of a snapshot. An invalid one is counted, logged and skipped; the
/// version held before (if any) is kept, as the file source does.
pub fn to_map(raw: RawSnapshot, env: &EnvStore, metrics: &Arc<Metrics>) -> FeatureMap {
    let current = env.snapshot();
    let mut map = FeatureMap::new();
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
