//! Warm start: the last good snapshot of each environment persisted under `snapshot_dir`, served
//! (marked stale) when the relay starts while its upstream (Redis, or a parent relay) is
//! unreachable. Shared by both followers; the `epoch` is the upstream's (Redis's epoch, or the
//! parent's stream epoch), kept for the follower's own use.
//!
//! File: `<snapshot_dir>/<env>.snapshot.json` =
//! `{"v":1,"env":..,"revision":..,"epoch":..,"saved_at_ms":..,"features":{key: control}}`.
//!
//! Invariants: a file is written to a temporary name in the same directory, synced, then renamed
//! over the old one, so a crash leaves the old or the new file, never a torn one. Writes happen
//! off the async threads. A file that cannot be read or parsed is ignored (logged), never fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::model::{Feature, Revision};
use crate::store::{FeatureMap, Snapshot};

pub fn path_for(dir: &Path, env: &str) -> PathBuf {
    dir.join(format!("{env}.snapshot.json"))
}

/// A persisted snapshot, parsed and validated.
#[derive(Debug)]
pub struct Persisted {
    pub revision: Revision,
    pub epoch: String,
    pub saved_at: SystemTime,
    pub features: FeatureMap,
    /// Features in the file that no longer validate (skipped).
    pub invalid: usize,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn encode(snap: &Snapshot, epoch: &str) -> Vec<u8> {
    let body = &snap.encoded().body;
    let mut out = Vec::with_capacity(body.len() + 160);
    let head = serde_json::json!({"v": 1, "env": snap.env.as_ref(), "revision": snap.revision, "epoch": epoch, "saved_at_ms": unix_ms(SystemTime::now())});
    // `head` is an object: drop its closing brace and append the features.
    let head = head.to_string();
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"features\":");
    out.extend_from_slice(body);
    out.push(b'}');
    out
}

/// Writes `snap` atomically (temp file + fsync + rename). Blocking: call from `spawn_blocking`.
pub fn save_blocking(dir: &Path, snap: &Snapshot, epoch: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = path_for(dir, &snap.env);
    let tmp = dir.join(format!(".{}.snapshot.json.tmp", snap.env));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(snap, epoch))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves in the background; failures are logged only (persistence is best effort).
pub fn save(dir: PathBuf, snap: Arc<Snapshot>, epoch: String, lock: Arc<std::sync::Mutex<()>>) {
    tokio::task::spawn_blocking(move || {
        let _serial = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = save_blocking(&dir, &snap, &epoch) {
            tracing::warn!(env = %snap.env, dir = %dir.display(), error = %e, "could not persist the snapshot for warm start");
        }
    });
}

/// Reads the persisted snapshot of `env`, if there is a usable one.
pub fn load(dir: &Path, env: &str) -> Option<Persisted> {
    let path = path_for(dir, env);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the persisted snapshot");
            return None;
        }
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "persisted snapshot is not valid JSON; ignored");
            return None;
        }
    };
    if parsed["v"] != 1 || parsed["env"] != env {
        tracing::warn!(path = %path.display(), "persisted snapshot is of another version or environment; ignored");
        return None;
    }
    let Some(Value::Object(map)) = parsed.get("features").cloned() else {
        tracing::warn!(path = %path.display(), "persisted snapshot has no features map; ignored");
        return None;
    };
    let mut features = FeatureMap::new();
    let mut invalid = 0;
    for (k, v) in map {
        match Feature::from_value(&k, v) {
            Ok(f) => {
                features.insert(k, f);
            }
            Err(e) => {
                invalid += 1;
                tracing::warn!(feature = %k, reason = %e.reason, "persisted feature no longer valid; skipped");
            }
        }
    }
    Some(Persisted {
        revision: parsed["revision"].as_u64().unwrap_or(0),
        epoch: parsed["epoch"].as_str().unwrap_or_default().to_string(),
        saved_at: UNIX_EPOCH + Duration::from_millis(parsed["saved_at_ms"].as_u64().unwrap_or(0)),
        features,
        invalid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{EnvStore, StoreLimits};

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile_dir();
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        let env = EnvStore::new("production", StoreLimits::default(), metrics);
        let mut m = FeatureMap::new();
        m.insert("a".into(), Feature::from_slice("a", br#"{"key":"a","enabled":true,"version":3}"#).unwrap());
        env.replace(m, Some(3), None);
        save_blocking(&dir, &env.snapshot(), "e1").unwrap();
        let p = load(&dir, "production").unwrap();
        assert_eq!(p.revision, 3);
        assert_eq!(p.epoch, "e1");
        assert_eq!(&p.features["a"].json[..], br#"{"key":"a","enabled":true,"version":3}"#);
        assert!(load(&dir, "staging").is_none());
        std::fs::write(path_for(&dir, "production"), b"{torn").unwrap();
        assert!(load(&dir, "production").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("flagrelay-warm-{}-{}", std::process::id(), unix_ms(SystemTime::now())));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
