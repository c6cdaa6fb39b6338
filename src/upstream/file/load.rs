//! What the flags file says: the format itself ([`parse`], the file taken whole, shared with
//! `flags import --all`), per configured environment ([`parse_wanted`], what the watcher loads),
//! what a start would load ([`check`], for `check-config`), and applying one environment's part
//! to its store ([`apply_features`]).
//!
//! Invariants:
//! - Only a file that is not JSON, or not an object at the top, is refused as a whole. An
//!   environment whose value is not an object is [`EnvPart::Malformed`]: that environment keeps
//!   its last good data and says why, the others load; one the config does not list is ignored
//!   whatever it holds.
//! - An invalid feature is rejected alone: the previous valid version of it (if any) stays. A
//!   rejection is counted and logged when it is new (another feature, or another reason), not
//!   again on every reload of a file that still holds it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::metrics::Metrics;
use crate::model::{Feature, InvalidFeature};
use crate::store::{EnvStore, FeatureMap};

use super::FileError;

/// An environment of the file whose value is not an object of features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment {0:?} in the flags file: expected an object of feature key -> control; its last good data is kept")]
pub(crate) struct MalformedEnv(pub String);

/// One environment's part of the file.
#[derive(Debug)]
pub(crate) enum EnvPart {
    /// Every feature control of it, each validated.
    Features(Vec<(String, Result<Arc<Feature>, InvalidFeature>)>),
    Malformed(MalformedEnv),
}

/// The top level: a JSON object of environment id -> anything.
fn root(bytes: &[u8]) -> Result<Map<String, Value>, FileError> {
    match serde_json::from_slice(bytes).map_err(FileError::Json)? {
        Value::Object(envs) => Ok(envs),
        _ => Err(FileError::NotAnObject),
    }
}

/// The file's format taken whole: a JSON object of environment id -> an object of feature key ->
/// control. Every value of the map returned is a JSON object; the features are not validated.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, FileError> {
    let envs = root(bytes)?;
    if let Some((id, _)) = envs.iter().find(|(_, v)| !v.is_object()) {
        return Err(FileError::EnvNotAnObject(id.clone()));
    }
    Ok(envs)
}

/// Parses the whole file and validates every feature of the environments in `wanted` (the
/// others are listed by id only: the config does not use them).
pub(crate) fn parse_wanted(bytes: &[u8], wanted: &[Arc<str>]) -> Result<Parsed, FileError> {
    let envs = root(bytes)?;
    let mut parsed = Parsed::default();
    for (id, v) in envs {
        if !wanted.iter().any(|w| w.as_ref() == id) {
            parsed.unknown.push(id);
            continue;
        }
        let part = match v {
            Value::Object(features) => EnvPart::Features(features.into_iter().map(|(k, raw)| {
                let f = Feature::from_value(&k, raw);
                (k, f)
            }).collect()),
            _ => EnvPart::Malformed(MalformedEnv(id.clone())),
        };
        parsed.envs.insert(id, part);
    }
    Ok(parsed)
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
    /// Environments of the config whose part is not an object of features.
    pub malformed: Vec<String>,
    /// Features that would be rejected, with their environment.
    pub invalid: Vec<(String, InvalidFeature)>,
}

/// Reads the file as the watcher does (a regular file within `cfg.max_bytes`) and parses it
/// as the watcher does, for the environments `env_ids` (the config's).
pub fn check(cfg: &crate::config::FileUpstream, env_ids: &[&str]) -> Result<FileCheck, FileError> {
    let bytes = match super::read::probe(&cfg.path, cfg.max_bytes, None, true)? {
        super::read::Probe::Read(_, bytes) => bytes,
        super::read::Probe::Unchanged => Vec::new(), // not with `forced` and no previous stamp
    };
    let wanted: Vec<Arc<str>> = env_ids.iter().map(|id| Arc::from(*id)).collect();
    let mut parsed = parse_wanted(&bytes, &wanted)?;
    let mut out = FileCheck { ignored: std::mem::take(&mut parsed.unknown), ..FileCheck::default() };
    for id in env_ids {
        match parsed.envs.remove(*id) {
            None => out.missing.push(id.to_string()),
            Some(EnvPart::Malformed(_)) => out.malformed.push(id.to_string()),
            Some(EnvPart::Features(features)) => {
                let mut valid = 0;
                for (_, f) in features {
                    match f {
                        Ok(_) => valid += 1,
                        Err(e) => out.invalid.push((id.to_string(), e)),
                    }
                }
                out.loaded.push((id.to_string(), valid));
            }
        }
    }
    Ok(out)
}

/// A parsed file: the configured environments it has, and the ids of the others.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub envs: BTreeMap<String, EnvPart>,
    pub unknown: Vec<String>,
}

/// Publishes one environment's features as one revision. Invalid ones keep their previous
/// version; `rejected` (feature key -> reason, from the last load) is updated, and only a
/// rejection not in it is counted, logged and recorded in `/status`.
pub(super) fn apply_features(
    env: &EnvStore,
    features: Vec<(String, Result<Arc<Feature>, InvalidFeature>)>,
    rejected: &mut BTreeMap<String, String>,
    metrics: &Metrics,
) {
    let current = env.snapshot();
    let mut next: FeatureMap = BTreeMap::new();
    let mut now_rejected = BTreeMap::new();
    for (key, f) in features {
        match f {
            Ok(f) => {
                next.insert(key, f);
            }
            Err(e) => {
                let kept = current.features.get(&key).cloned();
                if rejected.get(&key) != Some(&e.reason) {
                    metrics.invalid_features.with_label_values(&[&env.id]).inc();
                    tracing::warn!(env = %env.id, feature = %key, reason = %e.reason, kept_previous = kept.is_some(), "invalid feature rejected");
                    env.record_error("file", &e.to_string());
                }
                now_rejected.insert(key.clone(), e.reason);
                if let Some(old) = kept {
                    next.insert(key, old);
                }
            }
        }
    }
    *rejected = now_rejected;
    if let Some(change) = env.replace(next, None, None) {
        tracing::info!(env = %env.id, revision = change.revision, upserts = change.upserts.len(), deletes = change.deletes.len(), "flags file change published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Vec<Arc<str>> {
        vec!["production".into(), "staging".into()]
    }

    #[test]
    fn check_reports_what_a_start_would_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let good = serde_json::json!({"key": "a", "enabled": true, "variants": [{"key": "on"}, {"key": "off"}], "offVariantKey": "off",
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]});
        let file = serde_json::json!({"production": {"a": good, "b": {"key": "c"}}, "qa": {}, "dev": 3});
        std::fs::write(&path, file.to_string()).unwrap();
        let cfg = crate::config::FileUpstream {
            path,
            poll_interval: std::time::Duration::from_secs(1),
            max_bytes: 1 << 20,
            rehash_interval: std::time::Duration::from_secs(30),
        };
        let c = check(&cfg, &["production", "staging", "dev"]).unwrap();
        assert_eq!(c.loaded, vec![("production".to_string(), 1)]);
        assert_eq!(c.missing, vec!["staging".to_string()]);
        assert_eq!(c.ignored, vec!["qa".to_string()]);
        assert_eq!(c.malformed, vec!["dev".to_string()]);
        assert_eq!(c.invalid.len(), 1);
        assert_eq!((c.invalid[0].0.as_str(), c.invalid[0].1.key.as_str()), ("production", "b"));
    }

    #[test]
    fn the_whole_file_format_refuses_an_environment_that_is_not_an_object() {
        assert!(parse(br#"{"production": {}, "staging": {"a": {}}}"#).is_ok());
        let e = parse(br#"{"production": {}, "staging": 1}"#).unwrap_err();
        assert!(e.to_string().contains("\"staging\""), "{e}");
        assert!(matches!(parse(b"[1]"), Err(FileError::NotAnObject)));
    }

    #[test]
    fn a_file_level_problem_is_refused_with_its_reason() {
        let rows: [(&str, &[u8], &str); 2] = [
            ("not JSON", b"{torn", "invalid JSON"),
            ("not an object", b"[1]", "must be a JSON object of environment id -> features"),
        ];
        for (name, bytes, reason) in rows {
            let e = parse_wanted(bytes, &wanted()).unwrap_err();
            assert!(e.to_string().contains(reason), "{name}: {e}");
        }
    }

    #[test]
    fn a_malformed_environment_is_refused_alone() {
        let p = parse_wanted(br#"{"production": 1, "staging": {}}"#, &wanted()).unwrap();
        match &p.envs["production"] {
            EnvPart::Malformed(e) => assert!(e.to_string().contains("\"production\"") && e.to_string().contains("last good data"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&p.envs["staging"], EnvPart::Features(f) if f.is_empty()));
    }

    #[test]
    fn an_environment_the_config_does_not_use_is_ignored_whatever_it_holds() {
        let p = parse_wanted(br#"{"production": {}, "other": 5, "more": [1]}"#, &wanted()).unwrap();
        assert_eq!(p.unknown, vec!["other".to_string(), "more".to_string()]);
        assert_eq!(p.envs.keys().collect::<Vec<_>>(), vec!["production"]);
    }

    #[test]
    fn an_environment_missing_from_the_file_is_absent_from_the_parse() {
        let p = parse_wanted(br#"{"production": {}}"#, &wanted()).unwrap();
        assert!(!p.envs.contains_key("staging"));
    }
}
