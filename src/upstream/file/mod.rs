//! The watched flags file: `{ "<env id>": { "<feature key>": <control>, ... }, ... }`.
//!
//! The file is checked every `poll_interval` (`read::probe`, on a blocking thread): its
//! metadata (mtime, size, inode, type) is compared with the last read; the content is read
//! again when the metadata changed, while the mtime is too recent to prove it unchanged, when
//! an inotify event came for the file (`watch`), and every `rehash_interval` in any case (a
//! same-size edit that keeps the mtime, on a file system without events). When the content
//! (SHA-1) differs from the last one parsed, it is parsed (`load::parse`) and each
//! environment of the config is diffed against its snapshot; only what changed is published,
//! as one revision per environment. Otherwise the data is confirmed current.
//!
//! Invariants:
//! - A file that cannot be read, is not a regular file, is over `max_file_bytes`, or is not a
//!   JSON object of environments changes nothing: every environment shows the error in
//!   `/status`, it is counted (`source_reload_errors_total`), and the last good data is served.
//! - An environment whose part is malformed keeps its last good data and shows why; the other
//!   environments still update. An environment the config does not list is ignored.
//! - A problem is logged (and counted) once when it appears or changes, not on every poll; its
//!   end is logged once too.
//! - An environment of the config that the file lacks serves an empty set, and `/status` says so.

mod load;
mod read;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::config::FileUpstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{EnvStore, FeatureMap, Store};

pub use load::{check, parse, FileCheck};
/// `parse_wanted` and its types are also the fuzz facade's ([`crate::fuzzing`]).
pub(crate) use load::{parse_wanted, EnvPart, Parsed};
use read::{Probe, Stamp};

/// Why the flags file changed nothing (shown in `/status` and logged). The messages include
/// their cause, so no variant also returns it as `source()` (a chain printer would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{} is {kind}, not a regular file; refused", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is larger than upstream.max_file_bytes ({limit} bytes); refused", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("the flags file must be a JSON object of environment id -> features")]
    NotAnObject,
    /// Only from [`parse`], which takes the file whole (`flags import --all`); the watcher keeps
    /// such an environment's last good data instead.
    #[error("environment {0:?}: expected an object of feature key -> control")]
    EnvNotAnObject(String),
}

/// Loads the file once, then watches it until shutdown.
pub async fn run(cfg: FileUpstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let span = tracing::info_span!("file_source", path = %cfg.path.display());
    async {
        let changes = match watch::Changes::watch(&cfg.path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the flags file's directory for events; relying on the metadata poll and the periodic content check");
                None
            }
        };
        Watcher::new(cfg, store, metrics).run(changes, shutdown).await
    }
    .instrument(span)
    .await
}

/// What one check of the file found, off the runtime: nothing to load, or a parse of new content.
enum Checked {
    Unchanged,
    /// The content is the one last parsed.
    Same(Stamp),
    New(Stamp, [u8; 20], Result<Parsed, FileError>),
}

/// The watch loop's memory: what was read last and which problems were already reported.
struct Watcher {
    cfg: FileUpstream,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// The stamp of the last content read (none after a failure: the next check reads).
    last_stamp: Option<Stamp>,
    /// The hash of the last content parsed, valid or not (none after a read failure).
    last_hash: Option<[u8; 20]>,
    last_read: Option<Instant>,
    /// The file-level problem in force, as logged.
    problem: Option<String>,
    /// Environments whose part of the file is malformed, with the reason logged.
    malformed: BTreeMap<Arc<str>, String>,
    /// Per environment: the features rejected by the last load, with the reason.
    rejected: BTreeMap<Arc<str>, BTreeMap<String, String>>,
    /// Environments of the file the config does not list, as last logged.
    unknown: BTreeSet<String>,
}

impl Watcher {
    fn new(cfg: FileUpstream, store: Arc<Store>, metrics: Arc<Metrics>) -> Watcher {
        Watcher {
            cfg,
            store,
            metrics,
            last_stamp: None,
            last_hash: None,
            last_read: None,
            problem: None,
            malformed: BTreeMap::new(),
            rejected: BTreeMap::new(),
            unknown: BTreeSet::new(),
        }
    }

    async fn run(mut self, changes: Option<watch::Changes>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let evented = changes.as_ref().is_some_and(watch::Changes::take);
            let rehash = self.last_read.is_none_or(|t| t.elapsed() >= self.cfg.rehash_interval);
            let check = self.check(evented || rehash);
            let checked = tokio::select! {
                _ = shutdown.wait() => return,
                c = tokio::task::spawn_blocking(check) => c,
            };
            match checked {
                Ok(Ok(c)) => self.apply(c),
                Ok(Err(e)) => self.file_failed(e, None),
                Err(e) => tracing::error!(error = %e, "the flags file check panicked"),
            }
        }
    }

    /// The blocking part of one check: stat, bounded read, hash, parse.
    fn check(&self, forced: bool) -> impl FnOnce() -> Result<Checked, FileError> + Send + 'static {
        let path = self.cfg.path.clone();
        let (limit, prev, last_hash) = (self.cfg.max_bytes, self.last_stamp, self.last_hash);
        let wanted: Vec<Arc<str>> = self.store.envs().iter().map(|e| e.id.clone()).collect();
        move || match read::probe(&path, limit, prev.as_ref(), forced)? {
            Probe::Unchanged => Ok(Checked::Unchanged),
            Probe::Read(stamp, bytes) => {
                let hash = read::content_hash(&bytes);
                if Some(hash) == last_hash {
                    return Ok(Checked::Same(stamp));
                }
                Ok(Checked::New(stamp, hash, load::parse_wanted(&bytes, &wanted)))
            }
        }
    }

    fn apply(&mut self, checked: Checked) {
        match checked {
            Checked::Unchanged => {}
            Checked::Same(stamp) => {
                self.last_stamp = Some(stamp);
                self.last_read = Some(Instant::now());
            }
            Checked::New(stamp, hash, parsed) => {
                self.last_stamp = Some(stamp);
                self.last_read = Some(Instant::now());
                self.last_hash = Some(hash);
                match parsed {
                    Ok(p) => self.load(p),
                    Err(e) => return self.file_failed(e, Some(hash)),
                }
            }
        }
        if self.problem.is_none() {
            self.confirm_healthy();
        }
    }

    /// A file-level failure: reported once per distinct problem; every environment keeps its
    /// data. `hash` is the content that failed to parse (kept so it is not parsed again); a
    /// failure to read forgets the content, so the next good read loads again.
    fn file_failed(&mut self, e: FileError, hash: Option<[u8; 20]>) {
        let msg = e.to_string();
        if hash.is_none() {
            self.last_stamp = None;
            self.last_hash = None;
        }
        if self.problem.as_deref() == Some(msg.as_str()) {
            return;
        }
        tracing::warn!(error = %msg, "flags file refused; serving the last good data");
        for env in self.store.envs() {
            env.record_error("file", &msg);
            env.update_status(|s| s.state = "error");
        }
        // What each environment showed is overwritten: report it afresh after recovery.
        self.malformed.clear();
        self.problem = Some(msg);
    }

    /// Applies a parsed file to every environment of the config.
    fn load(&mut self, p: Parsed) {
        if let Some(was) = self.problem.take() {
            tracing::info!(previous_error = %was, "flags file accepted again");
        }
        let Parsed { mut envs, unknown } = p;
        let unknown: BTreeSet<String> = unknown.into_iter().collect();
        for id in unknown.difference(&self.unknown) {
            tracing::warn!(env = %id, "the flags file has an environment the config does not list; ignored");
        }
        self.unknown = unknown;
        let store = self.store.clone();
        for env in store.envs() {
            match envs.remove(env.id.as_ref()) {
                Some(EnvPart::Features(features)) => {
                    let rejected = self.rejected.entry(env.id.clone()).or_default();
                    load::apply_features(env, features, rejected, &self.metrics);
                    if self.malformed.remove(&env.id).is_some() {
                        tracing::info!(env = %env.id, "environment accepted again from the flags file");
                    }
                    env.update_status(|s| {
                        s.state = "ok";
                        s.detail = None;
                    });
                }
                Some(EnvPart::Malformed(e)) => self.env_malformed(env, e.to_string()),
                None => {
                    self.malformed.remove(&env.id);
                    env.replace(FeatureMap::new(), None, None);
                    env.update_status(|s| {
                        s.state = "ok";
                        s.detail = Some("environment missing from the flags file; serving an empty set".into());
                    });
                }
            }
        }
    }

    /// One environment's part is malformed: it keeps its data; reported once per reason.
    fn env_malformed(&mut self, env: &EnvStore, msg: String) {
        env.update_status(|s| {
            s.state = "error";
            s.detail = Some("its part of the flags file is malformed; serving its last good data".into());
        });
        if self.malformed.get(&env.id) == Some(&msg) {
            return;
        }
        tracing::warn!(env = %env.id, error = %msg, "environment refused from the flags file; serving its last good data");
        env.record_error("file", &msg);
        self.malformed.insert(env.id.clone(), msg);
    }

    /// The file still holds what is served: confirmed current as of now, for every environment
    /// that loaded from it.
    fn confirm_healthy(&self) {
        for env in self.store.envs() {
            if !self.malformed.contains_key(&env.id) {
                env.confirm();
            }
        }
    }
}

#[cfg(test)]
mod tests;
