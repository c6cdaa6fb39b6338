//! One environment's supervisor: the state machine of [the module](super) (connect with backoff,
//! one session at a time, reconnect on any fault), the session loop that waits on shutdown,
//! the connection's flags, the probe tick and the change queue, and what it does with a probe's
//! answer. What a message or a snapshot does to the held data is [`sync`](super::sync); every
//! ordering rule is [`order`](super::order).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::config::RedisUpstream;
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::shutdown::Shutdown;
use crate::store::EnvStore;

use crate::upstream::backoff::Backoff;
use super::cluster::{self, TopologyChange};
use super::keys::EnvKeys;
use super::order::{self, Epochs, ProbeDecision, ProbeFailure, ProbeView, Reason};
use super::sentinel::{self, describe, Target};
use super::session::{self, Push, Subscription};
use super::SyncError;

/// The phases of one environment's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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

/// The connections of one session.
pub(super) struct Session {
    pub(super) sub: Subscription,
    /// The snapshot connection (not subscribed).
    pub(super) snap: redis::aio::MultiplexedConnection,
    server: String,
    /// Cluster mode: when `cluster_state` was last read for `/status`.
    state_read_at: Option<Instant>,
}

/// How often `/status`'s `cluster_state` is read again while live (cluster mode).
const CLUSTER_STATE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// One environment's supervisor and the state it holds.
pub(super) struct EnvSync {
    pub(super) env: Arc<EnvStore>,
    pub(super) keys: EnvKeys,
    pub(super) cfg: Arc<RedisUpstream>,
    target: Arc<Target>,
    pub(super) metrics: Arc<Metrics>,
    shutdown: Shutdown,
    pub(super) phase: Phase,
    /// The revision of the data held, as applied in this session.
    pub(super) rev: Revision,
    /// The epoch of the data held, and the ones left recently.
    pub(super) epochs: Epochs,
    backoff: Backoff,
    /// Snapshots taken (to notice that a drain of the queue resynced).
    pub(super) snapshots: u64,
    pub(super) synced_once: bool,
    pub(super) warm_tried: bool,
    pub(super) persisted: Option<(Revision, u64)>,
    pub(super) persist_lock: Arc<std::sync::Mutex<()>>,
    last_logged_error: Option<String>,
    /// Uninitialised: when to retry the snapshot, and the retry backoff.
    pub(super) uninit_retry_at: Instant,
    pub(super) uninit_backoff: Backoff,
    /// RESP2 only: the revision read by the previous probe.
    pub(super) last_probe: Option<Revision>,
    /// The (epoch, revision) of the last message received on this subscription (the rewind rule
    /// of [`order::classify`]).
    pub(super) last_msg: Option<(String, Revision)>,
    /// Cluster mode: the primary (`id`, or `host:port`) the last session was served by.
    last_owner: Option<String>,
    /// A topology change seen since the last session began: the next snapshot is counted as
    /// `reason="topology"`.
    topology_changed: bool,
}

impl EnvSync {
    pub(super) fn new(env: Arc<EnvStore>, cfg: Arc<RedisUpstream>, target: Arc<Target>, metrics: Arc<Metrics>, shutdown: Shutdown) -> EnvSync {
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
            epochs: Epochs::default(),
            snapshots: 0,
            synced_once: false,
            warm_tried: false,
            persisted: None,
            persist_lock: Arc::new(std::sync::Mutex::new(())),
            last_logged_error: None,
            uninit_retry_at: Instant::now(),
            last_probe: None,
            last_msg: None,
            last_owner: None,
            topology_changed: false,
        }
    }

    /// Counts and logs a topology change of this environment's slot.
    fn topology(&mut self, change: TopologyChange, detail: &str) {
        self.topology_changed = true;
        self.metrics.upstream_topology_changes.with_label_values(&[&self.env.id, change.label()]).inc();
        tracing::info!(change = change.label(), detail, "cluster topology changed for this environment; re-resolving its primary and resyncing");
    }

    /// The session ends on `e`: a reconnect (counted as a topology change when `e` is one, or
    /// when the server ended the sharded subscription meanwhile: redis-rs then hands the
    /// `sunsubscribe` push to the command in flight as its reply, which fails).
    fn reconnect(&mut self, sess: &Session, context: &str, e: SyncError) -> Exit {
        let e = if sess.sub.signals.unsubscribed.load(Ordering::SeqCst) { SyncError::Unsubscribed } else { e };
        let change = match &e {
            SyncError::Unsubscribed => Some(TopologyChange::Unsubscribed),
            other => cluster::change_of(other),
        };
        let why = if context.is_empty() { e.to_string() } else { format!("{context}: {e}") };
        if let Some(c) = change {
            self.topology(c, &why);
        }
        Exit::Reconnect(why)
    }

    pub(super) fn set_phase(&mut self, phase: Phase, detail: Option<String>) {
        if phase != self.phase {
            tracing::debug!(from = ?self.phase, to = ?phase, "phase");
        }
        self.phase = phase;
        let epoch = self.epochs.current().to_string();
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

    /// What the relay serves meanwhile, for the warnings: the last good data, or nothing yet.
    pub(super) fn serving(&self) -> &'static str {
        if self.env.snapshot().loaded {
            "serving the last good data"
        } else {
            "no data loaded yet"
        }
    }

    fn error(&mut self, msg: &str) {
        self.env.record_error("redis", msg);
        if self.last_logged_error.as_deref() != Some(msg) {
            tracing::warn!(error = %msg, "redis upstream error; {}", self.serving());
            self.last_logged_error = Some(msg.to_string());
        } else {
            tracing::debug!(error = %msg, "redis upstream error (repeated)");
        }
    }

    /// The state machine, until shutdown.
    pub(super) async fn run(mut self) {
        self.set_phase(Phase::Disconnected, Some("connecting".into()));
        let mut reason = Reason::Initial;
        let shutdown = self.shutdown.clone();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let connected = tokio::select! {
                _ = shutdown.wait() => break,
                c = self.connect() => c,
            };
            match connected {
                Ok(mut sess) => {
                    let started = Instant::now();
                    tracing::info!(server = %sess.server, protocol = sess.sub.protocol(), "subscribed");
                    if std::mem::take(&mut self.topology_changed) && reason == Reason::Reconnect {
                        reason = Reason::Topology;
                    }
                    // Shutdown ends a session at any await (a snapshot can take snapshot_timeout).
                    let exit = tokio::select! {
                        _ = shutdown.wait() => Exit::Shutdown,
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
                Err(e) => {
                    self.metrics.upstream_connect_failures.with_label_values(&[&self.env.id]).inc();
                    self.error(&format!("connecting: {e}"));
                }
            }
            if !self.synced_once {
                self.try_warm_start();
            }
            reason = Reason::Reconnect;
            let delay = self.backoff.next_delay();
            self.set_phase(Phase::Disconnected, Some(format!("reconnecting in {} ms (attempt {})", delay.as_millis(), self.backoff.attempts())));
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.metrics.upstream_connected.with_label_values(&[&self.env.id]).set(0);
        self.persist();
    }

    /// Resolves the master (cluster mode: the primary of the environment's slot), opens the
    /// snapshot connection, subscribes (confirmed).
    async fn connect(&mut self) -> Result<Session, SyncError> {
        let resolved = self.target.resolve_for(&self.keys.rev).await?;
        let info = resolved.info;
        let server = describe(&info);
        let mut snap = sentinel::connect(&info, self.cfg.connect_timeout, self.cfg.snapshot_timeout, None).await?;
        if let Some(named_by) = self.target.named_by() {
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut snap).await?;
            let is_master = matches!(&role, redis::Value::Array(a) if matches!(a.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
            if !is_master {
                return Err(SyncError::NotMaster(server, named_by));
            }
        }
        if let Some(owner) = &resolved.owner {
            let node = if owner.id.is_empty() { owner.addr() } else { owner.id.clone() };
            if let Some(before) = self.last_owner.replace(node.clone()) {
                if before != node {
                    self.topology(TopologyChange::OwnerChanged, &format!("now served by {} ({node})", owner.addr()));
                }
            }
        }
        let sub = Subscription::open(&info, &self.keys.changes, &self.cfg, session::QUEUE, self.target.is_cluster()).await?;
        let mut sess = Session { sub, snap, server, state_read_at: None };
        self.show_server(&mut sess).await;
        Ok(sess)
    }

    /// `/status`: the node serving this environment and, in cluster mode, the cluster's state
    /// (read again at most every [`CLUSTER_STATE_EVERY`]; a failed read shows `unknown`).
    async fn show_server(&mut self, sess: &mut Session) {
        let state = if self.target.is_cluster() {
            if sess.state_read_at.is_some_and(|t| t.elapsed() < CLUSTER_STATE_EVERY) {
                return;
            }
            sess.state_read_at = Some(Instant::now());
            let limit = self.cfg.response_timeout;
            let info: Option<String> = tokio::time::timeout(limit, redis::cmd("CLUSTER").arg("INFO").query_async(&mut sess.snap)).await.ok().and_then(Result::ok);
            Some(info.as_deref().and_then(cluster::cluster_state).unwrap_or("unknown").to_string())
        } else {
            None
        };
        let server = sess.server.clone();
        self.env.update_status(|s| {
            s.server = Some(server);
            s.cluster_state = state;
        });
    }

    /// One connected session: snapshot, then messages and probes until something breaks.
    async fn session(&mut self, sess: &mut Session, reason: Reason) -> Exit {
        self.last_probe = None;
        self.last_msg = None;
        if let Err(e) = self.resync(sess, reason).await {
            return self.reconnect(sess, "resync", e);
        }
        let mut tick = tokio::time::interval(self.cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut failed_probes = 0u32;
        let live_since = Instant::now();
        let mut stable_noted = false;
        let shutdown = self.shutdown.clone();
        loop {
            if let Some(exit) = self.check_signals(sess).await {
                return exit;
            }
            if !stable_noted && live_since.elapsed() >= self.cfg.stable_after {
                stable_noted = true;
                self.backoff.reset();
            }
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Exit::Shutdown,
                _ = sess.sub.signals.notify.notified() => {}
                // The probe before messages: a steady stream of messages must not starve it.
                _ = tick.tick() => match self.probe(sess).await {
                    Ok(()) => failed_probes = 0,
                    Err(e) => match order::probe_failed(failed_probes, e.is_timeout()) {
                        ProbeFailure::Tolerated(n) => {
                            failed_probes = n;
                            tracing::info!(failed_probes, error = %e, "revision probe failed");
                        }
                        ProbeFailure::TwoInARow => {
                            tracing::info!(failed_probes = failed_probes + 1, error = %e, "revision probe failed");
                            return Exit::Reconnect(format!("two revision probes failed in a row ({e})"));
                        }
                        ProbeFailure::Broken => return self.reconnect(sess, "probe", e),
                    },
                },
                m = sess.sub.rx.recv() => match m {
                    Some(Push::Message(p)) => {
                        if let Err(e) = self.on_message(sess, &p).await {
                            return self.reconnect(sess, "", e);
                        }
                    }
                    Some(Push::Disconnected) | None => return Exit::Reconnect(SyncError::Closed.to_string()),
                },
            }
        }
    }

    /// Acts on the flags raised by the connection side.
    async fn check_signals(&mut self, sess: &mut Session) -> Option<Exit> {
        if sess.sub.signals.unsubscribed.load(Ordering::SeqCst) {
            return Some(self.reconnect(sess, "", SyncError::Unsubscribed));
        }
        if sess.sub.signals.disconnected.load(Ordering::SeqCst) {
            return Some(Exit::Reconnect(SyncError::Closed.to_string()));
        }
        if sess.sub.signals.overflow.swap(false, Ordering::SeqCst) {
            // Everything queued was published before the snapshot we are about to take.
            let mut discarded = 0usize;
            while let Ok(m) = sess.sub.rx.try_recv() {
                match m {
                    Push::Message(_) => discarded += 1,
                    Push::Disconnected => return Some(Exit::Reconnect(SyncError::Closed.to_string())),
                }
            }
            tracing::warn!(discarded, "change queue overflowed; resyncing");
            if let Err(e) = self.resync(sess, Reason::Overflow).await {
                return Some(self.reconnect(sess, "resync", e));
            }
        }
        None
    }

    /// The revision probe, and what its answer asks for ([`order::probe`]). Errors are probe
    /// failures (the session loop weighs them with [`order::probe_failed`]).
    async fn probe(&mut self, sess: &mut Session) -> Result<(), SyncError> {
        if self.phase == Phase::Uninitialised {
            sess.sub.probe(&self.keys.rev).await?;
            if Instant::now() >= self.uninit_retry_at {
                self.resync(sess, Reason::Retry).await?;
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
                Push::Disconnected => return Err(SyncError::Closed),
            }
        }
        let view = ProbeView {
            before,
            held: self.rev,
            upstream: n,
            superseded: self.snapshots != snapshots || self.phase != Phase::Live,
            exact: sess.sub.exact_probe(),
            last_probe: self.last_probe,
        };
        let decision = order::probe(&view);
        if decision.remembered() {
            self.last_probe = Some(n);
        }
        match decision {
            ProbeDecision::Superseded => Ok(()),
            ProbeDecision::Behind => {
                tracing::warn!(held = before, upstream = n, "the upstream revision went backwards; resyncing");
                self.resync(sess, Reason::ProbeBehind).await
            }
            ProbeDecision::TrailingLoss => {
                tracing::warn!(held = self.rev, upstream = n, "trailing change(s) lost; resyncing");
                self.resync(sess, Reason::ProbeAhead).await
            }
            ProbeDecision::Current => {
                self.env.confirm();
                self.persist();
                self.show_server(sess).await;
                Ok(())
            }
        }
    }
}
