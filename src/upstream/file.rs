//! The watched flags file: `{ "<env id>": { "<feature key>": <control>, ... }, ... }`.
//!
//! The file's metadata (mtime, size, inode) is polled; when it changes, or while the mtime is too
//! recent to prove the content unchanged, the file is re-read. When its content (SHA-1) differs
//! from the last good load, or the last attempt failed, each environment is diffed against its
//! current snapshot and only what changed is published, as one new revision per environment;
//! otherwise the data is confirmed current. A file-level failure is a [`FileError`].
//!
//! Invariants:
//! - A file that cannot be read or parsed changes nothing: it is logged, counted and shown in
//!   `/status`, and the last good data keeps being served.
//! - An invalid feature is rejected alone: the previous valid version of it (if any) stays.
//! - An environment of the config that the file lacks serves an empty set, and `/status` says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use tracing::Instrument;

use crate::config::FileUpstream;
use crate::metrics::Metrics;
use crate::model::Feature;
use crate::shutdown::Shutdown;
use crate::store::{EnvStore, FeatureMap, Store};

/// Why the flags file changed nothing (shown in `/status` and logged).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the flags file must be a JSON object of environment id -> features")]
    NotAnObject,
    #[error("environment {0:?}: expected an object of feature key -> control")]
    EnvNotAnObject(String),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp { modified: m.modified().ok(), len: m.len(), ino })
}

/// Loads the file once, then watches it until shutdown.
pub async fn run(cfg: FileUpstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let span = tracing::info_span!("file_source", path = %cfg.path.display());
    watch(cfg, store, metrics, shutdown).instrument(span).await
}

async fn watch(cfg: FileUpstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut last: Option<Stamp> = None;
    let mut last_error: Option<String> = None;
    let mut last_hash: Option<[u8; 20]> = None;
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let now = match stamp(&cfg.path) {
            Ok(s) => s,
            Err(source) => {
                let msg = FileError::Read { path: cfg.path.clone(), source }.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}; serving the last good data");
                    fail_all(&store, &msg);
                    last_error = Some(msg);
                }
                last = None;
                continue;
            }
        };
        // A stamp that was taken within the file system's timestamp granularity of a write
        // ("racy", as git calls it) cannot prove the content is unchanged: re-read then, and let
        // the content hash decide.
        if last == Some(now) && !is_racy(&now) {
            if last_error.is_none() {
                confirm_all(&store);
            }
            continue;
        }
        last = Some(now);
        match tokio::fs::read(&cfg.path).await {
            Ok(bytes) if Some(content_hash(&bytes)) == last_hash && last_error.is_none() => confirm_all(&store),
            Ok(bytes) => match load(&bytes, &store, &metrics) {
                Ok(()) => {
                    last_error = None;
                    last_hash = Some(content_hash(&bytes));
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::warn!(error = %msg, "flags file rejected; serving the last good data");
                    fail_all(&store, &msg);
                    last_error = Some(msg);
                }
            },
            Err(source) => {
                let msg = FileError::Read { path: cfg.path.clone(), source }.to_string();
                tracing::warn!("{msg}");
                fail_all(&store, &msg);
                last_error = Some(msg);
                last = None;
            }
        }
    }
}

/// True while the file's mtime is within two seconds of now.
fn is_racy(s: &Stamp) -> bool {
    s.modified.is_none_or(|m| SystemTime::now().duration_since(m).map_or(true, |d| d < std::time::Duration::from_secs(2)))
}

fn content_hash(bytes: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes).into()
}

/// The file still holds what is served: the data is current as of now.
fn confirm_all(store: &Store) {
    for env in store.envs() {
        env.confirm();
    }
}

fn fail_all(store: &Store, msg: &str) {
    for env in store.envs() {
        env.record_error("file", msg);
        env.update_status(|s| s.state = "error");
    }
}

/// Parses the whole file and applies it to every environment. Errors only for a file-level
/// problem (bad JSON, wrong shape); invalid features are handled per feature.
fn load(bytes: &[u8], store: &Store, metrics: &Metrics) -> Result<(), FileError> {
    let root: Value = serde_json::from_slice(bytes)?;
    let Value::Object(mut envs) = root else {
        return Err(FileError::NotAnObject);
    };
    for (id, v) in &envs {
        if !v.is_object() {
            return Err(FileError::EnvNotAnObject(id.clone()));
        }
        if store.get(id).is_none() {
            tracing::warn!(env = %id, "the flags file has an environment the config does not list; ignored");
        }
    }
    for env in store.envs() {
        match envs.remove(env.id.as_ref()) {
            Some(Value::Object(features)) => {
                apply_env(env, features, metrics);
                env.update_status(|s| {
                    s.state = "ok";
                    s.detail = None;
                });
            }
            _ => {
                env.replace(FeatureMap::new(), None, None);
                env.update_status(|s| {
                    s.state = "ok";
                    s.detail = Some("environment missing from the flags file; serving an empty set".into());
                });
            }
        }
        env.confirm();
    }
    Ok(())
}

fn apply_env(env: &EnvStore, features: serde_json::Map<String, Value>, metrics: &Metrics) {
    let current = env.snapshot();
    let mut next: FeatureMap = BTreeMap::new();
    for (key, raw) in features {
        match Feature::from_value(&key, raw) {
            Ok(f) => {
                next.insert(key, f);
            }
            Err(e) => {
                metrics.invalid_features.with_label_values(&[&env.id]).inc();
                let kept = current.features.get(&key).cloned();
                tracing::warn!(env = %env.id, feature = %key, reason = %e.reason, kept_previous = kept.is_some(), "invalid feature rejected");
                env.record_error("file", &e.to_string());
                if let Some(old) = kept {
                    next.insert(key, old);
                }
            }
        }
    }
    if let Some(change) = env.replace(next, None, None) {
        tracing::info!(env = %env.id, revision = change.revision, upserts = change.upserts.len(), deletes = change.deletes.len(), "flags file change published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreLimits;

    fn store() -> (Store, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        (Store::new(["production"], StoreLimits::default(), metrics.clone()), metrics)
    }

    #[test]
    fn a_file_level_problem_is_refused_with_its_reason() {
        let (store, metrics) = store();
        let rows: [(&str, &[u8], &str); 3] = [
            ("not JSON", b"{torn", "invalid JSON"),
            ("not an object", b"[1]", "must be a JSON object of environment id -> features"),
            ("an environment that is not an object", br#"{"production": 1}"#, "environment \"production\": expected an object"),
        ];
        for (name, bytes, reason) in rows {
            let e = load(bytes, &store, &metrics).unwrap_err();
            assert!(e.to_string().contains(reason), "{name}: {e}");
        }
        assert!(!store.envs()[0].snapshot().loaded, "nothing was applied");
    }
}
