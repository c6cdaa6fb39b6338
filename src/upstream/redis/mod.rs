//! The Redis upstream: an exact, live copy of every environment's flags, kept through every
//! fault (the contract and the design are `docs/upstream.md` and the Redis spec, §A–§D).
//!
//! One supervisor task per environment (span `redis_env{env}`), each with its own subscribed
//! connection and its own snapshot connection. Why one per environment rather than one shared
//! subscription: each environment's state machine, backoff and `/status` then stand alone, a
//! pub/sub output-buffer cut or an overflow costs only that environment a resync, and the
//! trailing-loss probe stays one `GET` ordered with exactly one channel. The cost is two
//! connections per environment, which is small for the handful of environments a relay serves.
//!
//! The state machine ([`Phase`]), per environment, forever until shutdown:
//!
//! ```text
//!  Disconnected --resolve master (Sentinel: asked again on EVERY attempt), open the snapshot
//!       ^          connection, SUBSCRIBE and await the confirmation-->  Resyncing
//!       |                                                                  | MULTI GET rev /
//!       |  any error, Disconnection push, two failed probes                | HGETALL features /
//!       |  (sleep: capped full-jitter backoff, reset after stable_after)   | HGETALL meta EXEC
//!       +------------------------------------------------------------------+
//!                                                                          v
//!             Uninitialised (meta.inited missing: keep last-known-good) <-> Live
//! ```
//!
//! In `Live`, messages are applied by revision: other epoch or `reset` → resync; `rev <= held` →
//! stale (ignored); `rev == held + 1` → applied; `rev > held + 1` → gap → resync. The probe
//! (`GET rev` on the subscribed connection) finds trailing loss (`n > held` after draining the
//! queue) and a revision that went backwards (`n < held before the probe`). A full queue
//! (overflow) → resync. A snapshot is authoritative even when its revision is lower (failover);
//! the store diffs it against the held copy and publishes only what changed, reverts included.
//!
//! Invariants:
//! - Nothing here panics on network input: every error ends in a logged, counted reconnect or a
//!   skipped message, and the last good data keeps being served.
//! - A snapshot without `meta.inited` is never applied (never wipe on a data loss upstream).
//! - `/status` says what is going on: `disconnected` (since when, last error), `resyncing`,
//!   `connected` (with `stale` while the data is not confirmed: warm start, not initialised,
//!   disconnected).

pub mod keys;
pub mod message;
pub mod writer;

mod backoff;
mod events;
mod sentinel;
mod session;
mod snapshot;
mod tls;
mod warm;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::RedisUpstream;
use crate::metrics::Metrics;
use crate::model::{Feature, Revision};
use crate::shutdown::Shutdown;
use crate::store::{EnvStore, Store, Update};
use crate::upstream::EventBatch;

use backoff::Backoff;
use keys::EnvKeys;
use message::{ChangeMessage, Op};
use sentinel::Target;
use session::{Push, Subscription};

pub use sentinel::describe;
pub use tls::install_crypto_provider;

/// Why talking to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    #[error("{0}")]
    Other(String),
}

impl SyncError {
    fn is_timeout(&self) -> bool {
        match self {
            SyncError::Timeout(..) => true,
            SyncError::Redis(e) => e.is_timeout(),
            SyncError::Other(_) => false,
        }
    }
}

/// Starts the events forwarder (see [`events`]).
pub fn event_sink(cfg: &RedisUpstream, metrics: Arc<Metrics>, shutdown: Shutdown) -> mpsc::Sender<EventBatch> {
    events::start(cfg.clone(), metrics, shutdown)
}

/// Runs one supervisor per environment until shutdown.
pub async fn run(cfg: RedisUpstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let target = match Target::new(&cfg) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::error!(error = %e, "the Redis upstream cannot start");
            for env in store.envs() {
                env.record_error("redis", &e.to_string());
                env.update_status(|s| s.state = "disconnected");
            }
            shutdown.wait().await;
            return;
        }
    };
    let cfg = Arc::new(cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for env in store.envs() {
        let span = tracing::info_span!("redis_env", env = %env.id);
        let sync = EnvSync::new(env.clone(), cfg.clone(), target.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(sync.run().instrument(span));
    }
    while tasks.join_next().await.is_some() {}
}

async fn shutdown_wait(s: &Shutdown) {
    s.wait().await
}

/// The phases of one environment's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not connected: connecting, or waiting out the backoff.
    Disconnected,
    /// Subscribed; taking a snapshot.
    Resyncing,
    /// Subscribed, synced, applying messages and probing.
    Live,
    /// Subscribed, but Redis holds no complete data set (`meta.inited` missing): serving the last
    /// good data and retrying the snapshot.
    Uninitialised,
}

impl Phase {
    fn state(self) -> &'static str {
        match self {
            Phase::Disconnected => "disconnected",
            Phase::Resyncing => "resyncing",
            Phase::Live | Phase::Uninitialised => "connected",
        }
    }
}

/// How a session ended.
enum Exit {
    Shutdown,
    Reconnect(String),
}

struct Session {
    sub: Subscription,
    snap: redis::aio::MultiplexedConnection,
    server: String,
}

/// How many epochs we remember having left (their late messages are stale, not a new epoch).
const LEFT_EPOCHS: usize = 8;

struct EnvSync {
    env: Arc<EnvStore>,
    keys: EnvKeys,
    cfg: Arc<RedisUpstream>,
    target: Arc<Target>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    phase: Phase,
    /// The revision of the data held, as applied in this session.
    rev: Revision,
    /// The epoch of the data held (empty: none).
    epoch: String,
    left_epochs: VecDeque<String>,
    backoff: Backoff,
    /// Snapshots taken (to notice that a drain of the queue resynced).
    snapshots: u64,
    synced_once: bool,
    warm_tried: bool,
    persisted: Option<(Revision, u64)>,
    persist_lock: Arc<std::sync::Mutex<()>>,
    last_logged_error: Option<String>,
    /// Uninitialised: when to retry the snapshot, and the retry backoff.
    uninit_retry_at: Instant,
    uninit_backoff: Backoff,
    /// RESP2 only: the revision read by the previous probe.
    last_probe: Option<Revision>,
    /// The (epoch, revision) of the last message received on this subscription. Messages on one
    /// connection arrive in publish order, so within an epoch the revision only goes up; one
    /// that does not reveals a rewind at once, before writers can pass the old revision.
    last_msg: Option<(String, Revision)>,
}

impl EnvSync {
    fn new(env: Arc<EnvStore>, cfg: Arc<RedisUpstream>, target: Arc<Target>, metrics: Arc<Metrics>, shutdown: Shutdown) -> EnvSync {
        EnvSync {
            keys: EnvKeys::new(&cfg.prefix, &env.id),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            uninit_backoff: Backoff::new(cfg.probe_interval, cfg.backoff_cap),
            env,
            cfg,
            target,
            metrics,
            shutdown,
            phase: Phase::Disconnected,
            rev: 0,
            epoch: String::new(),
            left_epochs: VecDeque::new(),
            snapshots: 0,
            synced_once: false,
            warm_tried: false,
            persisted: None,
            persist_lock: Arc::new(std::sync::Mutex::new(())),
            last_logged_error: None,
            uninit_retry_at: Instant::now(),
            last_probe: None,
            last_msg: None,
        }
    }

    fn set_phase(&mut self, phase: Phase, detail: Option<String>) {
        if phase != self.phase {
            tracing::debug!(from = ?self.phase, to = ?phase, "phase");
        }
        self.phase = phase;
        let epoch = self.epoch.clone();
        let synced = self.synced_once;
        self.env.update_status(|s| {
            s.state = phase.state();
            s.detail = detail;
            match phase {
                Phase::Live => {
                    s.stale = false;
                    s.epoch = Some(epoch);
                }
                Phase::Uninitialised | Phase::Disconnected => s.stale = true,
                Phase::Resyncing => s.stale = s.stale || !synced,
            }
        });
        self.metrics.upstream_connected.with_label_values(&[&self.env.id]).set(i64::from(phase == Phase::Live));
    }

    fn error(&mut self, msg: &str) {
        self.env.record_error("redis", msg);
        if self.last_logged_error.as_deref() != Some(msg) {
            tracing::warn!(error = %msg, "redis upstream error; serving the last good data");
            self.last_logged_error = Some(msg.to_string());
        } else {
            tracing::debug!(error = %msg, "redis upstream error (repeated)");
        }
    }

    async fn run(mut self) {
        self.set_phase(Phase::Disconnected, Some("connecting".into()));
        let mut reason = "initial";
        loop {
            if self.shutdown.is_triggered() {
                break;
            }
            let shutdown = self.shutdown.clone();
            let connected = tokio::select! {
                _ = shutdown.wait() => break,
                c = self.connect() => c,
            };
            match connected {
                Ok(mut sess) => {
                    let started = Instant::now();
                    tracing::info!(server = %sess.server, protocol = sess.sub.protocol(), "subscribed");
                    // Shutdown ends a session at any await (a snapshot can take snapshot_timeout).
                    let stop = self.shutdown.clone();
                    let exit = tokio::select! {
                        _ = stop.wait() => Exit::Shutdown,
                        e = self.session(&mut sess, reason) => e,
                    };
                    drop(sess);
                    match exit {
                        Exit::Shutdown => break,
                        Exit::Reconnect(why) => {
                            if started.elapsed() >= self.cfg.stable_after {
                                self.backoff.reset();
                            }
                            self.error(&why);
                            self.metrics.upstream_reconnects.with_label_values(&[&self.env.id]).inc();
                        }
                    }
                }
                Err(e) => self.error(&format!("connecting: {e}")),
            }
            if !self.synced_once {
                self.try_warm_start();
            }
            reason = "reconnect";
            let delay = self.backoff.next_delay();
            self.set_phase(Phase::Disconnected, Some(format!("reconnecting in {} ms (attempt {})", delay.as_millis(), self.backoff.attempts())));
            tokio::select! {
                _ = shutdown_wait(&self.shutdown) => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.metrics.upstream_connected.with_label_values(&[&self.env.id]).set(0);
        self.persist();
    }

    /// Resolves the master, opens the snapshot connection, subscribes (confirmed).
    async fn connect(&mut self) -> Result<Session, SyncError> {
        let info = self.target.resolve().await?;
        let server = describe(&info);
        let mut snap = sentinel::connect(&info, self.cfg.connect_timeout, self.cfg.snapshot_timeout, None).await?;
        if self.target.uses_sentinel() {
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut snap).await?;
            let is_master = matches!(&role, redis::Value::Array(a) if matches!(a.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
            if !is_master {
                return Err(SyncError::Other(format!("{server}, named by Sentinel, is not a master (yet)")));
            }
        }
        let sub = Subscription::open(&info, &self.keys.changes, &self.cfg, session::QUEUE).await?;
        Ok(Session { sub, snap, server })
    }

    /// One connected session: snapshot, then messages and probes until something breaks.
    async fn session(&mut self, sess: &mut Session, reason: &'static str) -> Exit {
        self.last_probe = None;
        self.last_msg = None;
        if let Err(e) = self.resync(sess, reason).await {
            return Exit::Reconnect(format!("resync: {e}"));
        }
        let mut tick = tokio::time::interval(self.cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut failed_probes = 0u32;
        let live_since = Instant::now();
        let mut stable_noted = false;
        loop {
            if let Some(exit) = self.check_signals(sess).await {
                return exit;
            }
            if !stable_noted && live_since.elapsed() >= self.cfg.stable_after {
                stable_noted = true;
                self.backoff.reset();
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Exit::Shutdown,
                _ = sess.sub.signals.notify.notified() => {}
                // The probe before messages: a steady stream of messages must not starve it.
                _ = tick.tick() => match self.probe(sess).await {
                    Ok(()) => failed_probes = 0,
                    Err(e) if e.is_timeout() => {
                        failed_probes += 1;
                        tracing::info!(failed_probes, error = %e, "revision probe failed");
                        if failed_probes >= 2 {
                            return Exit::Reconnect(format!("two revision probes failed in a row ({e})"));
                        }
                    }
                    Err(e) => return Exit::Reconnect(format!("probe: {e}")),
                },
                m = sess.sub.rx.recv() => match m {
                    Some(Push::Message(p)) => {
                        if let Err(e) = self.on_message(sess, &p).await {
                            return Exit::Reconnect(e.to_string());
                        }
                    }
                    Some(Push::Disconnected) | None => return Exit::Reconnect("the subscribed connection was closed".into()),
                },
            }
        }
    }

    /// Acts on the flags raised by the connection side.
    async fn check_signals(&mut self, sess: &mut Session) -> Option<Exit> {
        use std::sync::atomic::Ordering;
        if sess.sub.signals.disconnected.load(Ordering::SeqCst) {
            return Some(Exit::Reconnect("the subscribed connection was closed".into()));
        }
        if sess.sub.signals.overflow.swap(false, Ordering::SeqCst) {
            // Everything queued was published before the snapshot we are about to take.
            let mut discarded = 0usize;
            while let Ok(m) = sess.sub.rx.try_recv() {
                match m {
                    Push::Message(_) => discarded += 1,
                    Push::Disconnected => return Some(Exit::Reconnect("the subscribed connection was closed".into())),
                }
            }
            tracing::warn!(discarded, "change queue overflowed; resyncing");
            if let Err(e) = self.resync(sess, "overflow").await {
                return Some(Exit::Reconnect(format!("resync: {e}")));
            }
        }
        None
    }

    /// Takes a snapshot and makes it the held data (authoritative, even if its revision is lower).
    async fn resync(&mut self, sess: &mut Session, reason: &'static str) -> Result<(), SyncError> {
        // RESP2: a probe from before the resync must not be compared with the new revision.
        self.last_probe = None;
        if !reason.is_empty() {
            self.metrics.upstream_resyncs.with_label_values(&[&self.env.id, reason]).inc();
        }
        self.set_phase(Phase::Resyncing, Some(format!("resyncing ({})", if reason.is_empty() { "retry" } else { reason })));
        let raw = snapshot::fetch(&mut sess.snap, &self.keys, self.cfg.snapshot_timeout).await?;
        self.snapshots += 1;
        if !raw.inited {
            if self.phase != Phase::Uninitialised {
                tracing::warn!(meta = %self.keys.meta, upstream_rev = raw.rev, "environment not initialised upstream (meta.inited missing); serving the last good data");
            }
            if !self.synced_once {
                self.try_warm_start();
            }
            self.uninit_retry_at = Instant::now() + self.uninit_backoff.ceiling();
            let _ = self.uninit_backoff.next_delay();
            self.set_phase(
                Phase::Uninitialised,
                Some(format!("not initialised upstream ({}.inited missing): serving the last good data; run `flagrelay flags import`", self.keys.meta)),
            );
            return Ok(());
        }
        self.uninit_backoff.reset();
        let (rev, epoch) = (raw.rev, raw.epoch.clone());
        let map = snapshot::to_map(raw, &self.env, &self.metrics);
        let before = self.env.snapshot().revision;
        let change = self.env.replace(map, Some(rev), None);
        if epoch != self.epoch && !self.epoch.is_empty() {
            self.left_epochs.push_back(std::mem::take(&mut self.epoch));
            if self.left_epochs.len() > LEFT_EPOCHS {
                self.left_epochs.pop_front();
            }
        }
        self.rev = rev;
        self.epoch = epoch;
        self.synced_once = true;
        match &change {
            Some(c) => tracing::info!(reason, revision = rev, previous = before, upserts = c.upserts.len(), deletes = c.deletes.len(), "resynced"),
            None => tracing::info!(reason, revision = rev, previous = before, "resynced; nothing changed"),
        }
        self.set_phase(Phase::Live, None);
        self.env.confirm();
        self.persist();
        Ok(())
    }

    fn malformed(&self, why: &str, payload: &[u8]) {
        self.metrics.upstream_messages.with_label_values(&[&self.env.id, "malformed"]).inc();
        let shown = String::from_utf8_lossy(payload);
        tracing::warn!(reason = %why, payload = %message::truncate(&shown, 200), "malformed change message skipped");
        self.env.record_error("redis", why);
    }

    async fn on_message(&mut self, sess: &mut Session, payload: &[u8]) -> Result<(), SyncError> {
        let msg = match ChangeMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(&e.to_string(), payload);
                return Ok(());
            }
        };
        if msg.env != *self.env.id {
            self.malformed(&format!("malformed change message: for environment {:?} on the channel of {:?}", message::truncate(&msg.env, 64), self.env.id), payload);
            return Ok(());
        }
        let previous = self.last_msg.replace((msg.epoch.clone(), msg.rev));
        if let Some((epoch, rev)) = previous {
            if epoch == msg.epoch && msg.rev <= rev && msg.op != Op::Reset {
                tracing::warn!(previous = rev, got = msg.rev, "the revision went backwards on the subscription; resyncing");
                return self.resync(sess, "probe_behind").await;
            }
        }
        if self.phase == Phase::Uninitialised {
            if msg.op == Op::Reset {
                return self.resync(sess, "reset").await;
            }
            return Ok(());
        }
        let known_epoch = msg.epoch == self.epoch || self.left_epochs.contains(&msg.epoch);
        if msg.rev <= self.rev && known_epoch {
            self.metrics.upstream_messages.with_label_values(&[&self.env.id, "stale"]).inc();
            return Ok(());
        }
        if msg.op == Op::Reset {
            return self.resync(sess, "reset").await;
        }
        if msg.epoch != self.epoch {
            return self.resync(sess, "epoch").await;
        }
        if msg.rev > self.rev + 1 {
            tracing::info!(held = self.rev, got = msg.rev, "revision gap; resyncing");
            return self.resync(sess, "gap").await;
        }
        self.apply(sess, msg).await
    }

    async fn apply(&mut self, sess: &mut Session, msg: ChangeMessage) -> Result<(), SyncError> {
        let mut update = Update { revision: Some(msg.rev), upstream_ts_ms: msg.ts, ..Default::default() };
        let parsed = match msg.op {
            Op::Upsert { key, feature: Some(raw) } => Some((key.clone(), Feature::from_slice(&key, raw.as_bytes()))),
            Op::Upsert { key, feature: None } => {
                let limit = self.cfg.response_timeout.max(self.cfg.snapshot_timeout);
                let body: Option<Vec<u8>> = tokio::time::timeout(limit, redis::cmd("HGET").arg(&self.keys.features).arg(&key).query_async(&mut sess.snap))
                    .await
                    .map_err(|_| SyncError::Timeout(limit, "reading a large feature"))??;
                match body {
                    Some(b) => Some((key.clone(), Feature::from_slice(&key, &b))),
                    None => {
                        // Deleted since: a later message says so too; applying the deletion now is the same end state.
                        update.deletes.push(key);
                        None
                    }
                }
            }
            Op::Delete { key } => {
                update.deletes.push(key);
                None
            }
            Op::Reset => None,
        };
        match parsed {
            Some((_, Ok(f))) => update.upserts.push(f),
            Some((key, Err(e))) => {
                self.metrics.invalid_features.with_label_values(&[&self.env.id]).inc();
                self.metrics.upstream_messages.with_label_values(&[&self.env.id, "malformed"]).inc();
                tracing::warn!(feature = %key, revision = msg.rev, reason = %e.reason, "invalid feature in a change message skipped; the previous version stays");
                self.env.record_error("redis", &e.to_string());
            }
            None => {}
        }
        self.env.apply(update);
        self.rev = msg.rev;
        self.metrics.upstream_messages.with_label_values(&[&self.env.id, "applied"]).inc();
        self.env.confirm();
        Ok(())
    }

    /// The revision probe. Errors are probe failures (the caller counts timeouts).
    async fn probe(&mut self, sess: &mut Session) -> Result<(), SyncError> {
        if self.phase == Phase::Uninitialised {
            sess.sub.probe(&self.keys.rev).await?;
            if Instant::now() >= self.uninit_retry_at {
                self.resync(sess, "").await?;
            }
            return Ok(());
        }
        let before = self.rev;
        let snapshots = self.snapshots;
        let n = sess.sub.probe(&self.keys.rev).await?;
        // (RESP3) every message with a revision <= n is queued now: apply them first.
        while let Ok(m) = sess.sub.rx.try_recv() {
            match m {
                Push::Message(p) => self.on_message(sess, &p).await?,
                Push::Disconnected => return Err(SyncError::Other("the subscribed connection was closed".into())),
            }
        }
        if self.snapshots != snapshots || self.phase != Phase::Live {
            return Ok(());
        }
        if n < before {
            tracing::warn!(held = before, upstream = n, "the upstream revision went backwards; resyncing");
            return self.resync(sess, "probe_behind").await;
        }
        let behind = if sess.sub.exact_probe() { n > self.rev } else { self.last_probe.is_some_and(|p| self.rev < p) };
        self.last_probe = Some(n);
        if behind {
            tracing::warn!(held = self.rev, upstream = n, "trailing change(s) lost; resyncing");
            return self.resync(sess, "probe_ahead").await;
        }
        self.env.confirm();
        self.persist();
        Ok(())
    }

    /// Serves the persisted snapshot (marked stale) if nothing is loaded yet.
    fn try_warm_start(&mut self) {
        if self.warm_tried || self.env.snapshot().loaded {
            return;
        }
        self.warm_tried = true;
        let Some(dir) = &self.cfg.snapshot_dir else { return };
        let Some(p) = warm::load(dir, &self.env.id) else { return };
        let n = p.features.len();
        self.env.replace(p.features, Some(p.revision), None);
        self.epoch = p.epoch.clone();
        let saved_at = p.saved_at;
        let detail = format!("warm start: serving the snapshot persisted at revision {} until the first sync", p.revision);
        self.env.update_status(|s| {
            s.stale = true;
            s.epoch = Some(p.epoch);
            s.confirmed_at = Some(saved_at);
            s.detail = Some(detail);
        });
        tracing::warn!(revision = p.revision, features = n, skipped = p.invalid, "Redis unavailable: serving the persisted snapshot (stale) until the first sync");
    }

    /// Persists the held data for a warm start, when it changed (best effort, off-thread).
    fn persist(&mut self) {
        let Some(dir) = self.cfg.snapshot_dir.clone() else { return };
        if !self.synced_once {
            return;
        }
        let snap = self.env.snapshot();
        if self.persisted == Some((snap.revision, snap.seq)) {
            return;
        }
        self.persisted = Some((snap.revision, snap.seq));
        warm::save(dir, snap, self.epoch.clone(), self.persist_lock.clone());
    }
}
