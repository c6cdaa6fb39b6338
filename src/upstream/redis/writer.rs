//! The reference writer of the upstream contract ([`Writer`]), used by `flagrelay flags ...`, the
//! load tool and the tests, and the `flags` commands themselves ([`execute`]: input parsing and
//! validation before connecting, then the writes, and the summary printed). `flags import --all`
//! reads a whole flags file with the file source's own parser ([`crate::upstream::file::parse`]).
//!
//! All writes go through one atomic Lua script, `scripts/redis/flagrelay-write.lua` (embedded
//! here with `include_str!`; other writers load the same file). Its contract is in the script's
//! header and in `docs/upstream.md`.
//!
//! Invariants: every feature is validated exactly as the relay validates it before anything is
//! written; one invalid feature refuses the whole command and writes nothing. A `version` field
//! in the input is dropped: the script stamps `version` with the revision of the write.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::RedisUpstream;
use crate::model::{Feature, InvalidFeature, Revision};

use super::keys::EnvKeys;
use super::sentinel::{Commands, Target};
use super::SyncError;

/// The writer script, as shipped in `scripts/redis/flagrelay-write.lua`.
pub const WRITE_SCRIPT: &str = include_str!("../../../scripts/redis/flagrelay-write.lua");

/// Feature documents longer than this are published without their body (the relay `HGET`s them).
pub const INLINE_MAX: usize = 16 * 1024;

/// Why a `flags` command or a write failed. `Redis` shows the Redis error's text (which already
/// includes its own cause) and does not return it as `source()`: a chain printer (anyhow's
/// `{:#}`) would print the same words once per level.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{} invalid feature(s), nothing was written:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<InvalidFeature>),
    #[error("{0}")]
    Input(String),
    #[error("redis: {0}")]
    Redis(SyncError),
}

impl From<SyncError> for WriteError {
    fn from(e: SyncError) -> Self {
        WriteError::Redis(e)
    }
}

impl From<redis::RedisError> for WriteError {
    fn from(e: redis::RedisError) -> Self {
        WriteError::Redis(SyncError::Redis(e))
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// The environment revision after the write.
    pub revision: Revision,
    /// Revisions written (a delete of a missing key writes none).
    pub written: u64,
    /// Whether `meta.inited` is set (the relay ignores an environment until it is: use `import`).
    pub inited: bool,
}

pub struct Writer {
    con: Commands,
    keys: EnvKeys,
    script: redis::Script,
    /// Cluster mode: the script publishes with `SPUBLISH` (sharded pub/sub).
    sharded: bool,
}

/// A feature ready to write: its key and compact JSON without `version`.
type Doc = (String, String);

fn prepare(features: Vec<(String, Value)>) -> Result<Vec<Doc>, WriteError> {
    let mut invalid = Vec::new();
    let mut docs = Vec::with_capacity(features.len());
    for (key, mut value) in features {
        if let Value::Object(o) = &mut value {
            o.remove("version");
        }
        match Feature::from_value(&key, value) {
            Ok(f) => match String::from_utf8(f.json.to_vec()) {
                Ok(s) => docs.push((key, s)),
                Err(_) => invalid.push(InvalidFeature { key, reason: "not UTF-8".into() }),
            },
            Err(e) => invalid.push(e),
        }
    }
    if invalid.is_empty() {
        Ok(docs)
    } else {
        Err(WriteError::Invalid(invalid))
    }
}

/// `flags put` input: one feature (an object with a string `key`), or a map of key -> feature.
pub fn parse_put_input(bytes: &[u8]) -> Result<Vec<(String, Value)>, WriteError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| WriteError::Input(format!("input is not JSON: {e}")))?;
    match v {
        Value::Object(o) if o.get("key").is_some_and(Value::is_string) => {
            let key = o.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            Ok(vec![(key, Value::Object(o))])
        }
        Value::Object(o) => Ok(o.into_iter().collect()),
        _ => Err(WriteError::Input("expected a feature object (with \"key\") or a map of key -> feature".into())),
    }
}

/// `flags import` input: a map of key -> feature (an empty map initialises an empty environment).
pub fn parse_import_input(bytes: &[u8]) -> Result<Map<String, Value>, WriteError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(WriteError::Input("expected a JSON object of key -> feature".into())),
        Err(e) => Err(WriteError::Input(format!("input is not JSON: {e}"))),
    }
}

/// A fresh epoch: 16 random bytes in hex.
pub fn new_epoch() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Writer {
    /// Connects to the master (asking Sentinel if configured), or in cluster mode to the
    /// cluster (redis-rs's cluster client routes each call to the primary of the environment's
    /// slot and follows `MOVED`, `ASK` and `TRYAGAIN`).
    pub async fn connect(cfg: &RedisUpstream, env: &str) -> Result<Writer, WriteError> {
        let target = Target::new(cfg)?;
        // Writes may be large (imports): give them the snapshot budget.
        let con = target.commands(cfg, cfg.snapshot_timeout.max(cfg.response_timeout)).await?;
        Ok(Writer { con, keys: EnvKeys::new(&cfg.prefix, env), script: redis::Script::new(WRITE_SCRIPT), sharded: target.is_cluster() })
    }

    fn invocation(&self, mode: &str, epoch: &str) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.keys.rev).key(&self.keys.features).key(&self.keys.meta).key(&self.keys.changes);
        let mode = if self.sharded { format!("{mode}+spublish") } else { mode.to_string() };
        inv.arg(&self.keys.env).arg(mode).arg(INLINE_MAX).arg(epoch);
        inv
    }

    /// Upserts features, one revision each, atomically as a batch.
    pub async fn put(&mut self, features: Vec<(String, Value)>) -> Result<WriteReport, WriteError> {
        let docs = prepare(features)?;
        let mut inv = self.invocation("ops", "");
        for (k, d) in &docs {
            inv.arg("upsert").arg(k).arg(d);
        }
        self.run_owned(inv).await
    }

    /// Deletes features (missing ones are skipped), one revision each, atomically as a batch.
    pub async fn delete(&mut self, keys: &[String]) -> Result<WriteReport, WriteError> {
        if keys.iter().any(String::is_empty) {
            return Err(WriteError::Input("empty feature key".into()));
        }
        let mut inv = self.invocation("ops", "");
        for k in keys {
            inv.arg("delete").arg(k).arg("");
        }
        self.run_owned(inv).await
    }

    /// Upserts and deletes in one atomic batch, in the given order (used by tests and tools).
    pub async fn batch(&mut self, ops: Vec<(String, Option<Value>)>) -> Result<WriteReport, WriteError> {
        let mut upserts = Vec::new();
        for (k, v) in &ops {
            if let Some(v) = v {
                upserts.push((k.clone(), v.clone()));
            }
        }
        let docs: BTreeMap<String, String> = prepare(upserts)?.into_iter().collect();
        let mut inv = self.invocation("ops", "");
        for (k, v) in &ops {
            match (v, docs.get(k)) {
                (Some(_), Some(d)) => inv.arg("upsert").arg(k).arg(d),
                _ => inv.arg("delete").arg(k).arg(""),
            };
        }
        self.run_owned(inv).await
    }

    /// Replaces the whole environment atomically: every feature, `inited`, a new epoch, one
    /// `reset` message.
    pub async fn import(&mut self, features: Map<String, Value>) -> Result<WriteReport, WriteError> {
        let docs = prepare(features.into_iter().collect())?;
        let epoch = new_epoch();
        let mut inv = self.invocation("import", &epoch);
        for (k, d) in &docs {
            inv.arg(k).arg(d);
        }
        let mut report = self.run_owned(inv).await?;
        report.written = docs.len() as u64;
        Ok(report)
    }

    async fn run_owned(&self, inv: redis::ScriptInvocation<'_>) -> Result<WriteReport, WriteError> {
        let mut con = self.con.clone();
        let (revision, written, inited): (u64, u64, u64) = inv.invoke_async(&mut con).await?;
        Ok(WriteReport { revision, written, inited: inited == 1 })
    }

    /// The environment's features as stored, sorted by key. A field that is not JSON is shown
    /// as a string.
    pub async fn export(&mut self) -> Result<BTreeMap<String, Value>, WriteError> {
        let raw: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(&self.keys.features).query_async(&mut self.con).await?;
        Ok(raw
            .into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_slice(&v).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&v).into_owned()));
                (k, value)
            })
            .collect())
    }
}


/// Where `flags put` / `flags import` read their JSON.
#[derive(Debug, Clone)]
pub enum Source {
    Stdin,
    File(std::path::PathBuf),
}

impl Source {
    /// `-` is standard input.
    pub fn from_arg(arg: &std::path::Path) -> Source {
        if arg.as_os_str() == "-" {
            Source::Stdin
        } else {
            Source::File(arg.to_path_buf())
        }
    }

    fn read(&self) -> Result<Vec<u8>, WriteError> {
        match self {
            Source::Stdin => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| WriteError::Input(format!("cannot read standard input: {e}")))?;
                Ok(buf)
            }
            Source::File(p) => std::fs::read(p).map_err(|e| WriteError::Input(format!("cannot read {}: {e}", p.display()))),
        }
    }
}

/// One `flagrelay flags ...` command.
#[derive(Debug, Clone)]
pub enum Action {
    Put { env: String, source: Source },
    Delete { env: String, keys: Vec<String> },
    /// Replace one environment with a map of key -> feature.
    Import { env: String, source: Source },
    /// Replace every environment of a flags file (`{env: {key: feature}}`, the file upstream's
    /// format), one after the other, each atomically.
    ImportAll(Source),
    Export { env: String },
}

/// Refuses an environment id that is not well-formed or, when the config was read, not in it.
fn check_env(env: &str, known_envs: Option<&[String]>) -> Result<(), WriteError> {
    if let Some(known) = known_envs {
        if !known.iter().any(|e| e == env) {
            return Err(WriteError::Input(format!("environment {env:?} is not in the config (known: {})", known.join(", "))));
        }
    }
    if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(WriteError::Input(format!("{env:?} is not an environment id (letters, digits, '-', '_', '.')")));
    }
    Ok(())
}

/// One environment of a flags file and its map of key -> feature.
type EnvFeatures = (String, Map<String, Value>);

/// `flags import --all` input: every environment of a flags file, each checked as an id, each
/// feature validated. Invalid features of all environments are reported together.
fn parse_import_all(bytes: &[u8], known_envs: Option<&[String]>) -> Result<Vec<EnvFeatures>, WriteError> {
    let envs = crate::upstream::file::parse(bytes).map_err(|e| WriteError::Input(format!("not a flags file: {e}")))?;
    if envs.is_empty() {
        return Err(WriteError::Input("the flags file has no environment".into()));
    }
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    for (env, features) in envs {
        check_env(&env, known_envs)?;
        let Value::Object(features) = features else { continue };
        if let Err(WriteError::Invalid(errors)) = prepare(features.clone().into_iter().collect()) {
            invalid.extend(errors.into_iter().map(|e| InvalidFeature { key: format!("{env}/{}", e.key), reason: e.reason }));
        }
        out.push((env, features));
    }
    if invalid.is_empty() {
        Ok(out)
    } else {
        Err(WriteError::Invalid(invalid))
    }
}

/// Runs a `flags` command and returns what to print on standard output. `known_envs` (from the
/// config file, when one was read) guards against a mistyped environment.
pub async fn execute(cfg: &RedisUpstream, known_envs: Option<&[String]>, action: Action) -> Result<String, WriteError> {
    // Parse and validate before connecting: bad input never needs Redis.
    let (env, input) = match &action {
        Action::ImportAll(src) => return import_all(cfg, known_envs, parse_import_all(&src.read()?, known_envs)?).await,
        Action::Put { env, source } => (env, Some(parse_put_input(&source.read()?)?)),
        Action::Import { env, source } => (env, Some(parse_import_input(&source.read()?)?.into_iter().collect())),
        Action::Delete { env, .. } | Action::Export { env } => (env, None),
    };
    check_env(env, known_envs)?;
    if let Some(features) = &input {
        prepare(features.clone())?;
    }
    let mut w = Writer::connect(cfg, env).await?;
    match (action, input) {
        (Action::Put { env, .. }, Some(features)) => {
            let n = features.len();
            let r = w.put(features).await?;
            Ok(summary(cfg, &env, &format!("{n} feature(s) written"), &r))
        }
        (Action::Import { env, .. }, Some(features)) => {
            let r = w.import(features.into_iter().collect()).await?;
            Ok(summary(cfg, &env, &imported(&r), &r))
        }
        (Action::Delete { env, keys }, _) => {
            let r = w.delete(&keys).await?;
            Ok(summary(cfg, &env, &format!("{} of {} feature(s) deleted", r.written, keys.len()), &r))
        }
        (Action::Export { .. }, _) => {
            let map = w.export().await?;
            let mut out = serde_json::to_string_pretty(&map).map_err(|e| WriteError::Input(e.to_string()))?;
            out.push('\n');
            Ok(out)
        }
        _ => Err(WriteError::Input("nothing to write".into())),
    }
}

/// Imports each environment in turn on one connection; notes the config's environments that
/// the file lacks (they stay as they are in Redis).
async fn import_all(cfg: &RedisUpstream, known_envs: Option<&[String]>, envs: Vec<EnvFeatures>) -> Result<String, WriteError> {
    let Some((first, _)) = envs.first() else { return Err(WriteError::Input("the flags file has no environment".into())) };
    let mut w = Writer::connect(cfg, first).await?;
    let mut out = String::new();
    for (env, features) in &envs {
        w.keys = EnvKeys::new(&cfg.prefix, env);
        let r = w.import(features.clone()).await?;
        out.push_str(&summary(cfg, env, &imported(&r), &r));
    }
    for env in known_envs.unwrap_or_default().iter().filter(|k| !envs.iter().any(|(e, _)| e == *k)) {
        out.push_str(&format!("note: {env} (in the config) is not in the file: not written\n"));
    }
    Ok(out)
}

fn imported(r: &WriteReport) -> String {
    format!("imported {} feature(s), replacing the environment (new epoch, reset published)", r.written)
}

/// One line saying what a write did, and a note when the environment is still not initialised.
fn summary(cfg: &RedisUpstream, env: &str, verb: &str, r: &WriteReport) -> String {
    let mut s = format!("{env}: {verb}; revision {}\n", r.revision);
    if !r.inited {
        s.push_str(&format!(
            "note: {env} is not initialised ({}.inited missing): relays keep their last good data until `flagrelay flags import --env {env} FILE`\n",
            EnvKeys::new(&cfg.prefix, env).meta
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(key: &str) -> Value {
        serde_json::json!({"key": key, "enabled": true, "offVariantKey": "off", "variants": [{"key": "on"}, {"key": "off"}],
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]})
    }

    #[test]
    fn import_all_takes_every_environment_of_a_flags_file() {
        let file = serde_json::json!({"production": {"a": feature("a")}, "staging": {}}).to_string();
        let envs = parse_import_all(file.as_bytes(), Some(&["production".into(), "staging".into()])).unwrap();
        let names: Vec<(&str, usize)> = envs.iter().map(|(e, f)| (e.as_str(), f.len())).collect();
        assert_eq!(names, [("production", 1), ("staging", 0)]);
    }

    #[test]
    fn import_all_refuses_before_writing_anything() {
        let known = ["production".to_string()];
        let rows: [(&str, String, &str); 5] = [
            ("not a flags file", "[1]".into(), "not a flags file"),
            ("no environment", "{}".into(), "no environment"),
            ("an environment the config lacks", serde_json::json!({"prod": {}}).to_string(), "not in the config"),
            ("a malformed id", serde_json::json!({"pro duction": {}}).to_string(), "not in the config"),
            ("an invalid feature, named with its environment", serde_json::json!({"production": {"a": {"key": "b"}}}).to_string(), "production/a"),
        ];
        for (name, file, says) in rows {
            let e = parse_import_all(file.as_bytes(), Some(&known)).unwrap_err();
            assert!(e.to_string().contains(says), "{name}: {e}");
        }
        let e = parse_import_all(br#"{"pro duction": {}}"#, None).unwrap_err();
        assert!(e.to_string().contains("not an environment id"), "without a config: {e}");
    }
}
