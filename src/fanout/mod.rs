//! Fan-out: per-client SSE streams (initial state, changes, heartbeats, lag policy, connection
//! cap, maximum age, shutdown drain). No HTTP types here: a stream is a `Stream<Item = Bytes>`.
//!
//! Invariants:
//! - Frames sent to many clients are encoded once (cached on the snapshot or change record).
//! - One slow client never delays another: a current stream is written by its environment's
//!   writer pass, which never waits on a socket ([`pass`]); any other is pulled by its own
//!   connection, and a client that fell behind catches up with one coalesced frame, not a
//!   backlog.
//! - A client that stays behind the environment for longer than `slow_client_timeout` is
//!   disconnected by the reaper (through the connection's kill switch, which the writer pass
//!   also honours at its next pass) and counted.
//! - The number of open streams never exceeds `max_connections` (when set).

pub mod eval_stream;
pub mod frames;
mod pass;
mod render;
pub mod relay_stream;
mod stream;
pub mod thin_streams;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter};
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;

pub use pass::{EnvPass, Handoff, Member, Owner, Parked, PassKind, Refused};
pub use render::{FeatureflowRenderer, Renderer};
pub use stream::SseStream;

use crate::config::SseConfig;
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::shutdown::Shutdown;
use crate::store::{ChangeRecord, EnvStore};

/// Per-connection state shared between a stream, the reaper and the HTTP connection task.
#[derive(Debug, Default)]
pub struct ConnState {
    pub delivered_seq: AtomicU64,
    pub killed: AtomicBool,
    /// Notified to make the HTTP layer drop the connection (a stalled client is never polled).
    pub kill: Notify,
    behind_target: AtomicU64,
    behind_since_ms: AtomicU64,
    /// The connection's TCP peer, for per-client limits (`None` when not known).
    pub peer: Option<std::net::SocketAddr>,
}

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        Arc::new(ConnState::default())
    }

    /// The state of a connection accepted from `peer`.
    pub fn for_peer(peer: std::net::SocketAddr) -> Arc<ConnState> {
        Arc::new(ConnState { peer: Some(peer), ..ConnState::default() })
    }
}

/// The connection cap was reached.
#[derive(Debug, thiserror::Error)]
#[error("too many SSE connections on this relay")]
pub struct Rejected;

/// What a new stream needs besides the environment.
pub struct OpenOptions {
    /// `Last-Event-ID` of a resuming client.
    pub last_event_id: Option<Revision>,
    /// Metrics label: `featureflow`, `js_legacy`, `ofrep`, `eval`.
    pub protocol: &'static str,
    /// The connection's kill switch (from the HTTP layer), so the reaper can drop it.
    pub conn: Arc<ConnState>,
}

/// One environment's hot-path metric handles and client count, resolved once so that no label
/// is hashed per frame.
pub(crate) struct EnvHandles {
    clients: AtomicI64,
    ev_initial: IntCounter,
    ev_change: IntCounter,
    ev_heartbeat: IntCounter,
    ev_retry: IntCounter,
    bytes: IntCounter,
    lagged: IntCounter,
    delivery: Histogram,
    change_delivery: Histogram,
    propagation: Histogram,
}

impl EnvHandles {
    fn new(m: &Metrics, env: &str) -> EnvHandles {
        EnvHandles {
            clients: AtomicI64::new(0),
            ev_initial: m.sse_events.with_label_values(&[env, "initial"]),
            ev_change: m.sse_events.with_label_values(&[env, "change"]),
            ev_heartbeat: m.sse_events.with_label_values(&[env, "heartbeat"]),
            ev_retry: m.sse_events.with_label_values(&[env, "retry"]),
            bytes: m.sse_bytes.with_label_values(&[env]),
            lagged: m.sse_lagged.with_label_values(&[env]),
            delivery: m.delivery_seconds.with_label_values(&[env]),
            change_delivery: m.change_delivery_seconds.with_label_values(&[env]),
            propagation: m.propagation_seconds.with_label_values(&[env]),
        }
    }
}

/// Kinds of frame, for the events counter.
#[derive(Clone, Copy)]
pub(crate) enum FrameKind {
    Initial,
    Change,
    Heartbeat,
    Retry,
}

/// A writer pass's key: its environment and stream kind.
type PassKey = (Arc<str>, PassKind);

/// The open streams of one environment, for the reaper.
struct EnvConns {
    env: Arc<EnvStore>,
    conns: HashMap<u64, Arc<ConnState>>,
    /// The environment's seq at the last reap, and whether any stream was behind then: an
    /// environment with no new change and nobody behind is skipped without a scan.
    reaped_seq: u64,
    any_behind: bool,
}

pub struct Fanout {
    cfg: SseConfig,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    retry_frame: Bytes,
    heartbeat_tx: watch::Sender<Bytes>,
    conns: Mutex<HashMap<Arc<str>, EnvConns>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    envs: Mutex<HashMap<Arc<str>, Arc<EnvHandles>>>,
    /// The writer pass of each environment's streams of each kind, made with its first member.
    passes: Mutex<HashMap<PassKey, Arc<EnvPass>>>,
    /// The passes' shard tasks, joined by [`Fanout::run`].
    pass_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Shards per pass: `[sse] writer_shards`, or the runtime's worker threads.
    shards: usize,
    epoch: Instant,
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

impl Fanout {
    pub fn new(cfg: SseConfig, metrics: Arc<Metrics>, shutdown: Shutdown) -> Arc<Fanout> {
        let (heartbeat_tx, _) = watch::channel(frames::heartbeat_frame(unix_ms()));
        let shards = match cfg.writer_shards {
            0 => tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()),
            n => n,
        }
        .max(1);
        Arc::new(Fanout {
            retry_frame: frames::retry_frame(cfg.retry_ms),
            cfg,
            metrics,
            shutdown,
            heartbeat_tx,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            envs: Mutex::new(HashMap::new()),
            passes: Mutex::new(HashMap::new()),
            pass_tasks: Mutex::new(Vec::new()),
            shards,
            epoch: Instant::now(),
        })
    }

    /// True when the connection cap is reached (a new stream would be rejected).
    pub fn at_capacity(&self) -> bool {
        self.cfg.max_connections > 0 && self.open.load(Ordering::Relaxed) >= self.cfg.max_connections
    }

    /// Open streams on this relay.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn env_handles(&self, env: &Arc<str>) -> Arc<EnvHandles> {
        let mut m = self.envs.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(env.clone()).or_insert_with(|| Arc::new(EnvHandles::new(&self.metrics, env))).clone()
    }

    /// The writer pass of `env`'s streams of `kind` (started with its first use).
    pub fn pass_for(self: &Arc<Self>, env: &Arc<EnvStore>, kind: PassKind) -> Arc<EnvPass> {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = passes.get(&(env.id.clone(), kind)) {
            return p.clone();
        }
        let (pass, tasks) = EnvPass::start(self, kind, env.clone(), self.env_handles(&env.id), self.shards);
        self.pass_tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
        passes.insert((env.id.clone(), kind), pass.clone());
        pass
    }

    /// Opens a stream for `env`, rendered by `renderer`. Fails when the cap is reached.
    pub fn open(
        self: &Arc<Self>,
        env: Arc<EnvStore>,
        mut renderer: Box<dyn Renderer>,
        opts: OpenOptions,
    ) -> Result<SseStream, Rejected> {
        let cap = self.cfg.max_connections;
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if cap > 0 && prev >= cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.sse_rejected.with_label_values(&[&env.id]).inc();
            return Err(Rejected);
        }
        let mut rx = env.subscribe();
        let snap = rx.borrow_and_update().clone();
        let initial = renderer.start(&env, &snap, opts.last_event_id, &self.metrics);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = id, env = %env.id, protocol = opts.protocol, revision = snap.revision, resume = ?opts.last_event_id, "SSE stream opened");
        self.metrics.sse_clients.with_label_values(&[&env.id, opts.protocol]).inc();
        let handles = self.env_handles(&env.id);
        handles.clients.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(env.id.clone())
            .or_insert_with(|| EnvConns { env: env.clone(), conns: HashMap::new(), reaped_seq: 0, any_behind: true })
            .conns
            .insert(id, opts.conn.clone());
        Ok(SseStream::new(
            self.clone(),
            env,
            handles,
            renderer,
            opts.protocol,
            opts.conn,
            id,
            snap.seq,
            initial,
            WatchStream::from_changes(rx),
        ))
    }

    fn unregister(&self, id: u64, env: &EnvStore, handles: &EnvHandles, protocol: &'static str) {
        if let Some(e) = self.conns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&env.id) {
            e.conns.remove(&id);
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sse_clients.with_label_values(&[&env.id, protocol]).dec();
        handles.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one delivery of `change`; the last connection to receive it records how long the
    /// change took to reach every connection (and, with an upstream timestamp, the propagation).
    fn delivered(h: &EnvHandles, change: &ChangeRecord) {
        let now = Instant::now();
        h.delivery.observe(now.saturating_duration_since(change.at).as_secs_f64());
        Fanout::delivered_n(h, change, 1, now);
    }

    /// Counts `n` deliveries of `change` made by `now` toward "written to every connection"
    /// (the delivery histogram is observed by the caller, once per delivery).
    fn delivered_n(h: &EnvHandles, change: &ChangeRecord, n: i64, now: Instant) {
        if n <= 0 {
            return;
        }
        if !change.deliveries_armed.swap(true, Ordering::AcqRel) {
            let clients = h.clients.load(Ordering::Relaxed);
            change.pending_deliveries.fetch_add(clients, Ordering::AcqRel);
        }
        let before = change.pending_deliveries.fetch_sub(n, Ordering::AcqRel);
        if before > 0 && before <= n {
            h.change_delivery.observe(now.saturating_duration_since(change.at).as_secs_f64());
            if let Some(ts) = change.upstream_ts_ms {
                let now_ms = unix_ms() as i128;
                let secs = (now_ms - ts as i128).max(0) as f64 / 1000.0;
                h.propagation.observe(secs);
            }
        }
    }

    /// Heartbeats and the slow-client reaper, until shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let reap_every = (self.cfg.slow_client_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut reaper = tokio::time::interval(reap_every);
        reaper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => break,
                _ = heartbeat.tick() => {
                    self.heartbeat_tx.send_replace(frames::heartbeat_frame(unix_ms()));
                }
                _ = reaper.tick() => self.reap(),
            }
        }
        // The passes' shards end at shutdown, giving every connection back to a task of its
        // own, which drains its stream and follows the store until then. (A pass first used
        // after this point has shards nothing joins; they see the shutdown and end at once.)
        let tasks = std::mem::take(&mut *self.pass_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(task = "fanout pass shard", error = %e, "task panicked or was cancelled");
            }
        }
    }

    /// Disconnects clients that stayed behind their environment for too long. An environment
    /// with no change since the last pass and nobody behind then costs nothing.
    fn reap(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        let timeout_ms = self.cfg.slow_client_timeout.as_millis() as u64;
        let mut envs = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for e in envs.values_mut() {
            let env_seq = e.env.snapshot().seq;
            if env_seq == e.reaped_seq && !e.any_behind {
                continue;
            }
            e.reaped_seq = env_seq;
            e.any_behind = false;
            for c in e.conns.values() {
                let delivered = c.delivered_seq.load(Ordering::Relaxed);
                if delivered >= env_seq {
                    c.behind_since_ms.store(0, Ordering::Relaxed);
                    continue;
                }
                e.any_behind = true;
                let since = c.behind_since_ms.load(Ordering::Relaxed);
                let target = c.behind_target.load(Ordering::Relaxed);
                if since == 0 || delivered >= target {
                    // Newly behind, or made progress since last time: (re)start the clock.
                    c.behind_target.store(env_seq, Ordering::Relaxed);
                    c.behind_since_ms.store(now_ms, Ordering::Relaxed);
                } else if now_ms.saturating_sub(since) > timeout_ms && !c.killed.swap(true, Ordering::Relaxed) {
                    self.metrics.sse_slow_disconnects.with_label_values(&[&e.env.id]).inc();
                    tracing::debug!(env = %e.env.id, delivered, env_seq, "slow SSE client disconnected");
                    c.kill.notify_one();
                }
            }
        }
    }
}
