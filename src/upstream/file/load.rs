//! What the flags file says, per environment ([`parse`], pure), and applying one environment's
//! part to its store ([`apply_features`]).
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

use serde_json::Value;

use crate::metrics::Metrics;
use crate::model::{Feature, InvalidFeature};
use crate::store::{EnvStore, FeatureMap};

use super::FileError;

/// An environment of the file whose value is not an object of features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment {0:?} in the flags file: expected an object of feature key -> control; its last good data is kept")]
pub(super) struct MalformedEnv(pub String);

/// One environment's part of the file.
#[derive(Debug)]
pub(super) enum EnvPart {
    /// Every feature control of it, each validated.
    Features(Vec<(String, Result<Arc<Feature>, InvalidFeature>)>),
    Malformed(MalformedEnv),
}

/// Parses the whole file and validates every feature of the environments in `wanted` (the
/// others are listed by id only: the config does not use them).
pub(super) fn parse(bytes: &[u8], wanted: &[Arc<str>]) -> Result<Parsed, FileError> {
    let root: Value = serde_json::from_slice(bytes)?;
    let Value::Object(envs) = root else {
        return Err(FileError::NotAnObject);
    };
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

/// A parsed file: the configured environments it has, and the ids of the others.
#[derive(Debug, Default)]
pub(super) struct Parsed {
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
    fn a_file_level_problem_is_refused_with_its_reason() {
        let rows: [(&str, &[u8], &str); 2] = [
            ("not JSON", b"{torn", "invalid JSON"),
            ("not an object", b"[1]", "must be a JSON object of environment id -> features"),
        ];
        for (name, bytes, reason) in rows {
            let e = parse(bytes, &wanted()).unwrap_err();
            assert!(e.to_string().contains(reason), "{name}: {e}");
        }
    }

    #[test]
    fn a_malformed_environment_is_refused_alone() {
        let p = parse(br#"{"production": 1, "staging": {}}"#, &wanted()).unwrap();
        match &p.envs["production"] {
            EnvPart::Malformed(e) => assert!(e.to_string().contains("\"production\"") && e.to_string().contains("last good data"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&p.envs["staging"], EnvPart::Features(f) if f.is_empty()));
    }

    #[test]
    fn an_environment_the_config_does_not_use_is_ignored_whatever_it_holds() {
        let p = parse(br#"{"production": {}, "other": 5, "more": [1]}"#, &wanted()).unwrap();
        assert_eq!(p.unknown, vec!["other".to_string(), "more".to_string()]);
        assert_eq!(p.envs.keys().collect::<Vec<_>>(), vec!["production"]);
    }

    #[test]
    fn an_environment_missing_from_the_file_is_absent_from_the_parse() {
        let p = parse(br#"{"production": {}}"#, &wanted()).unwrap();
        assert!(!p.envs.contains_key("staging"));
    }
}
