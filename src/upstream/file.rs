//! The watched flags file: `{ "<env id>": { "<feature key>": <control>, ... }, ... }`.
//!
//! The file's metadata (mtime, size, inode) is polled; when it changes, or while the mtime is too
//! recent to prove the content unchanged, the file is re-read. When its content (SHA-1) differs
//! from the last good load, or the last attempt failed, each environment is diffed against its
//! current snapshot and only what changed is published, as one new revision per environment;
//! otherwise the data is confirmed current. A file-level failure is a [`FileError`].
//!
//! [`parse`] is the file's format, shared with `flags import --all` (which writes a whole flags
//! file to Redis); [`check`] is what `check-config` reports about the file before a start.
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

use serde_json::{Map, Value};
use tracing::Instrument;

use crate::config::FileUpstream;
use crate::metrics::Metrics;
use crate::model::{Feature, InvalidFeature};
use crate::shutdown::Shutdown;
use crate::store::{EnvStore, FeatureMap, Store};

/// Why the flags file changed nothing (shown in `/status` and logged). The messages include
/// their cause, so no variant also returns it as `source()` (a chain printer would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
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
            Err(error) => {
                let msg = FileError::Read { path: cfg.path.clone(), error }.to_string();
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
            Err(error) => {
                let msg = FileError::Read { path: cfg.path.clone(), error }.to_string();
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

/// The file's format: a JSON object of environment id -> an object of feature key -> control.
/// Every value of the map returned is a JSON object; the features in it are not validated here.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, FileError> {
    let root: Value = serde_json::from_slice(bytes).map_err(FileError::Json)?;
    let Value::Object(envs) = root else {
        return Err(FileError::NotAnObject);
    };
    if let Some((id, _)) = envs.iter().find(|(_, v)| !v.is_object()) {
        return Err(FileError::EnvNotAnObject(id.clone()));
    }
    Ok(envs)
}

/// What the relay would load from the file now, for `check-config`.
#[derive(Debug, Default, PartialEq)]
pub struct FileCheck {
    /// Each environment of the config that the file has, and how many valid features it holds.
    pub loaded: Vec<(String, usize)>,
    /// Environments of the config that the file lacks (each would serve an empty set).
    pub missing: Vec<String>,
    /// Environments of the file that the config does not list (ignored).
    pub ignored: Vec<String>,
    /// Features that would be rejected, with their environment.
    pub invalid: Vec<(String, InvalidFeature)>,
}

/// Reads and parses the file as the relay does at start, and validates every feature of the
/// environments `env_ids` (the config's).
pub fn check(path: &Path, env_ids: &[&str]) -> Result<FileCheck, FileError> {
    let bytes = std::fs::read(path).map_err(|error| FileError::Read { path: path.to_path_buf(), error })?;
    let mut envs = parse(&bytes)?;
    let mut out = FileCheck { ignored: envs.keys().filter(|id| !env_ids.contains(&id.as_str())).cloned().collect(), ..FileCheck::default() };
    for id in env_ids {
        let Some(Value::Object(features)) = envs.remove(*id) else {
            out.missing.push(id.to_string());
            continue;
        };
        let mut valid = 0;
        for (key, raw) in features {
            match Feature::from_value(&key, raw) {
                Ok(_) => valid += 1,
                Err(e) => out.invalid.push((id.to_string(), e)),
            }
        }
        out.loaded.push((id.to_string(), valid));
    }
    Ok(out)
}

/// Parses the whole file and applies it to every environment. Errors only for a file-level
/// problem (bad JSON, wrong shape); invalid features are handled per feature.
fn load(bytes: &[u8], store: &Store, metrics: &Metrics) -> Result<(), FileError> {
    let mut envs = parse(bytes)?;
    for id in envs.keys() {
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

    #[test]
    fn check_reports_what_a_start_would_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let good = serde_json::json!({"key": "a", "enabled": true, "variants": [{"key": "on"}, {"key": "off"}], "offVariantKey": "off",
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]});
        let file = serde_json::json!({"production": {"a": good, "b": {"key": "c"}}, "qa": {}});
        std::fs::write(&path, file.to_string()).unwrap();
        let c = check(&path, &["production", "staging"]).unwrap();
        assert_eq!(c.loaded, vec![("production".to_string(), 1)]);
        assert_eq!(c.missing, vec!["staging".to_string()]);
        assert_eq!(c.ignored, vec!["qa".to_string()]);
        assert_eq!(c.invalid.len(), 1);
        assert_eq!((c.invalid[0].0.as_str(), c.invalid[0].1.key.as_str()), ("production", "b"));
    }

    #[test]
    fn check_names_a_missing_file_once() {
        let e = check(Path::new("/nonexistent/flags.json"), &["production"]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/flags.json: No such file"), "{e}");
        assert!(std::error::Error::source(&e).is_none(), "the cause is in the message, not also in the chain");
    }
}
