//! One environment's follower of the parent relay: the state machine of [the module](super)
//! (connect with backoff, one stream at a time, reconnect on any fault or on silence longer than
//! `heartbeat_timeout`), what each event does to the store (as [`order::decide`] says), the
//! `/status` it shows, and the warm start and persistence it shares with the Redis follower
//! ([`crate::upstream::warm`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{RelayUpstream, Secret};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{EnvStore, RelayLink, Update};
use crate::upstream::backoff::Backoff;
use crate::upstream::warm;

use super::client::{self, Stream};
use super::event::{self, Position, RelayEvent};
use super::order::{self, Decision, Kind, Why};
use super::sse::Parser;

/// The largest event accepted from the parent (a snapshot of every feature).
const MAX_EVENT_BYTES: usize = 512 << 20;

/// The phases, as `/status` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Disconnected,
    /// Connected, waiting for the snapshot or the resume's confirmation.
    Resyncing,
    Live,
}

/// How a stream ended.
enum Exit {
    Shutdown,
    /// Resync from a full snapshot at once (no backoff: nothing is broken).
    Resync(Why),
    /// A fault: reconnect after the backoff, resuming where the data is.
    Reconnect { why: String, stalled: bool },
}

pub(super) struct Follower {
    env: Arc<EnvStore>,
    key: Secret,
    cfg: Arc<RelayUpstream>,
    tls: Option<Arc<rustls::ClientConfig>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    phase: Phase,
    /// The parent position the held data is at (`None`: resync from a snapshot).
    pos: Option<Position>,
    /// Why the next snapshot is taken (the resyncs counter's label).
    reason: &'static str,
    backoff: Backoff,
    synced_once: bool,
    warm_tried: bool,
    link: RelayLink,
    persisted: Option<String>,
    persist_lock: Arc<std::sync::Mutex<()>>,
    last_logged_error: Option<String>,
    /// Resyncs in a row that did not get as far as a snapshot: past [`QUICK_RESYNCS`] they wait
    /// out the backoff like a fault (a parent that keeps breaking its own stream).
    quick_resyncs: u32,
}

/// Resyncs in a row taken at once, before the backoff applies.
const QUICK_RESYNCS: u32 = 2;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Follower {
    pub(super) fn new(env: Arc<EnvStore>, key: Secret, cfg: Arc<RelayUpstream>, tls: Option<Arc<rustls::ClientConfig>>, metrics: Arc<Metrics>, shutdown: Shutdown) -> Follower {
        Follower {
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            link: RelayLink { parent: cfg.url.text.clone(), hops: 1, lag_revisions: 0, lag_ms: None },
            env,
            key,
            cfg,
            tls,
            metrics,
            shutdown,
            phase: Phase::Disconnected,
            pos: None,
            reason: "initial",
            synced_once: false,
            warm_tried: false,
            persisted: None,
            persist_lock: Arc::new(std::sync::Mutex::new(())),
            last_logged_error: None,
            quick_resyncs: 0,
        }
    }

    fn set_phase(&mut self, phase: Phase, detail: Option<String>) {
        self.phase = phase;
        let link = self.link.clone();
        let epoch = self.pos.as_ref().map(|p| p.epoch.clone());
        let synced = self.synced_once;
        self.env.update_status(|s| {
            s.state = match phase {
                Phase::Disconnected => "disconnected",
                Phase::Resyncing => "resyncing",
                Phase::Live => "connected",
            };
            s.detail = detail;
            s.server = Some(link.parent.clone());
            s.relay = Some(link);
            match phase {
                Phase::Live => {
                    s.stale = false;
                    s.epoch = epoch;
                }
                Phase::Disconnected => s.stale = true,
                Phase::Resyncing => s.stale = s.stale || !synced,
            }
        });
        self.metrics.upstream_connected.with_label_values(&[&self.env.id]).set(i64::from(phase == Phase::Live));
    }

    fn error(&mut self, msg: &str) {
        self.env.record_error("relay", msg);
        if self.last_logged_error.as_deref() != Some(msg) {
            let serving = if self.env.snapshot().loaded { "serving the last good data" } else { "no data loaded yet" };
            tracing::warn!(error = %msg, "relay upstream error; {serving}");
            self.last_logged_error = Some(msg.to_string());
        }
    }

    /// The state machine, until shutdown.
    pub(super) async fn run(mut self) {
        self.set_phase(Phase::Disconnected, Some("connecting".into()));
        let shutdown = self.shutdown.clone();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let resume = self.pos.as_ref().map(Position::last_event_id);
            let opened = tokio::select! {
                _ = shutdown.wait() => break,
                s = client::open(&self.cfg.url, self.tls.as_ref(), &self.key.0, resume.as_deref(), self.cfg.connect_timeout) => s,
            };
            let mut pause = true;
            match opened {
                Ok(stream) => {
                    let started = Instant::now();
                    self.link.hops = stream.parent_hops.saturating_add(1);
                    tracing::info!(parent = %self.cfg.url.text, hops = self.link.hops, resume = ?resume, "following the parent relay");
                    self.set_phase(Phase::Resyncing, Some(if resume.is_some() { "resuming".into() } else { "awaiting the snapshot".into() }));
                    let exit = tokio::select! {
                        _ = shutdown.wait() => Exit::Shutdown,
                        e = self.follow(stream) => e,
                    };
                    if started.elapsed() >= self.cfg.stable_after {
                        self.backoff.reset();
                    }
                    match exit {
                        Exit::Shutdown => break,
                        Exit::Resync(why) => {
                            tracing::info!(why = ?why, "resyncing from a full snapshot of the parent");
                            self.pos = None;
                            self.reason = why.label();
                            self.quick_resyncs += 1;
                            pause = self.quick_resyncs > QUICK_RESYNCS;
                        }
                        Exit::Reconnect { why, stalled } => {
                            self.reason = if stalled { "stalled" } else { "reconnect" };
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
            if !pause {
                continue;
            }
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

    /// Reads one stream until it ends, stalls or asks for a resync.
    async fn follow(&mut self, mut stream: Stream) -> Exit {
        let mut parser = Parser::new(MAX_EVENT_BYTES);
        let limit = self.cfg.heartbeat_timeout;
        loop {
            let chunk = match tokio::time::timeout(limit, stream.chunk()).await {
                Err(_) => return Exit::Reconnect { why: format!("no event from the parent for {} ms", limit.as_millis()), stalled: true },
                Ok(Err(e)) => return Exit::Reconnect { why: format!("reading the stream: {e}"), stalled: false },
                Ok(Ok(None)) => return Exit::Reconnect { why: "the parent ended the stream".into(), stalled: false },
                Ok(Ok(Some(c))) => c,
            };
            let parsed = match parser.push(&chunk) {
                Ok(p) => p,
                Err(e) => return Exit::Reconnect { why: e.to_string(), stalled: false },
            };
            for e in parsed {
                let ev = match event::parse(&e) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => continue,
                    Err(err) => {
                        self.metrics.upstream_messages.with_label_values(&[&self.env.id, "malformed"]).inc();
                        tracing::warn!(error = %err, "malformed relay event; resyncing");
                        self.env.record_error("relay", &err.to_string());
                        return Exit::Resync(Why::Gap);
                    }
                };
                if let Some(why) = self.on_event(ev) {
                    return Exit::Resync(why);
                }
            }
        }
    }

    /// Acts on one event; `Some` when the position cannot be continued.
    fn on_event(&mut self, ev: RelayEvent) -> Option<Why> {
        let kind = match &ev {
            RelayEvent::Snapshot { .. } => Kind::Snapshot,
            RelayEvent::Change { .. } => Kind::Change,
            RelayEvent::Heartbeat { .. } => Kind::Heartbeat,
        };
        match order::decide(self.pos.as_ref(), kind, ev.pos()) {
            Decision::Resync(why) => return Some(why),
            Decision::Current(known) => {
                if let RelayEvent::Heartbeat { pos, head } = &ev {
                    if known {
                        self.link.lag_revisions = head.map_or(0, |h| h.saturating_sub(pos.revision));
                        self.live();
                        self.persist();
                    }
                }
            }
            Decision::AdoptRevision => {
                let pos = ev.pos().clone();
                self.env.apply(Update { revision: Some(pos.revision), ..Default::default() });
                self.pos = Some(pos);
                self.live();
                self.persist();
            }
            Decision::Replace | Decision::Apply => self.store(ev),
        }
        None
    }

    /// A snapshot or a change into the store.
    fn store(&mut self, ev: RelayEvent) {
        let now = unix_ms();
        match ev {
            RelayEvent::Snapshot { pos, ts, features, invalid } => {
                self.skipped(&invalid, pos.revision);
                self.metrics.upstream_resyncs.with_label_values(&[&self.env.id, self.reason]).inc();
                let before = self.env.snapshot().revision;
                let change = self.env.replace(features, Some(pos.revision), None);
                match &change {
                    Some(c) => tracing::info!(reason = self.reason, revision = pos.revision, previous = before, upserts = c.upserts.len(), deletes = c.deletes.len(), "resynced from the parent"),
                    None => tracing::info!(reason = self.reason, revision = pos.revision, previous = before, "resynced from the parent; nothing changed"),
                }
                self.link.lag_ms = ts.map(|t| now.saturating_sub(t));
                self.pos = Some(pos);
                self.synced_once = true;
                self.quick_resyncs = 0;
                self.reason = "reconnect";
                self.link.lag_revisions = 0;
                self.live();
                self.persist();
                return;
            }
            RelayEvent::Change { pos, ts, upserts, deletes, invalid } => {
                self.skipped(&invalid, pos.revision);
                self.env.apply(Update { upserts, deletes, revision: Some(pos.revision), upstream_ts_ms: ts });
                self.metrics.upstream_messages.with_label_values(&[&self.env.id, "applied"]).inc();
                self.link.lag_ms = ts.map(|t| now.saturating_sub(t));
                self.pos = Some(pos);
            }
            RelayEvent::Heartbeat { .. } => return,
        }
        self.reason = "reconnect";
        self.link.lag_revisions = 0;
        self.live();
    }

    fn skipped(&self, invalid: &[crate::model::InvalidFeature], revision: u64) {
        for e in invalid {
            self.metrics.invalid_features.with_label_values(&[&self.env.id]).inc();
            tracing::warn!(feature = %e.key, revision, reason = %e.reason, "invalid feature from the parent skipped; the previous version stays");
            self.env.record_error("relay", &e.to_string());
        }
    }

    /// The data is the parent's at `self.pos`: live and confirmed. (It is persisted at a
    /// snapshot, a heartbeat and the end, not at every change: a save writes every feature.)
    fn live(&mut self) {
        if self.phase != Phase::Live {
            self.set_phase(Phase::Live, None);
        } else {
            let link = self.link.clone();
            self.env.update_status(|s| s.relay = Some(link));
        }
        self.env.confirm();
    }

    /// Serves the persisted snapshot (marked stale) if nothing is loaded yet; its position is
    /// resumed from if the parent can prove it.
    fn try_warm_start(&mut self) {
        if self.warm_tried || self.env.snapshot().loaded {
            return;
        }
        self.warm_tried = true;
        let Some(dir) = &self.cfg.snapshot_dir else { return };
        let Some(p) = warm::load(dir, &self.env.id) else { return };
        let n = p.features.len();
        self.env.replace(p.features, Some(p.revision), None);
        self.pos = crate::store::parse_stream_position(&p.epoch).map(|(epoch, seq)| Position { epoch: epoch.to_string(), seq, revision: p.revision });
        self.persisted = Some(p.epoch.clone());
        let saved_at = p.saved_at;
        let detail = format!("warm start: serving the snapshot persisted at revision {} until the parent answers", p.revision);
        self.env.update_status(|s| {
            s.stale = true;
            s.detail = Some(detail);
            s.confirmed_at = Some(saved_at);
        });
        tracing::warn!(features = n, revision = p.revision, invalid = p.invalid, "warm start from the persisted snapshot (stale until the parent answers)");
    }

    /// Persists the held data with its parent position, when it moved since the last save.
    fn persist(&mut self) {
        let (Some(dir), Some(pos)) = (self.cfg.snapshot_dir.clone(), self.pos.as_ref()) else { return };
        let at = pos.last_event_id();
        if self.persisted.as_deref() == Some(at.as_str()) {
            return;
        }
        let snap = self.env.snapshot();
        if !snap.loaded {
            return;
        }
        self.persisted = Some(at.clone());
        warm::save(dir, snap, at, self.persist_lock.clone());
    }
}
