//! SDK event forwarding: batches accepted at `/api/sdk/v1/events`, `/api/sdk/v1/register` (and
//! the thin-client events endpoint) are taken from the byte-bounded queue
//! ([`crate::upstream::events`]) and appended to `{p:env}:events` with
//! `XADD key MAXLEN ~ N * kind <kind> body <json> ts <unix ms>`.
//!
//! Invariants:
//! - The [`Forwarder`] (one task, which `app` spawns and joins) owns its own connection
//!   (re-resolved through Sentinel on every reconnect; in cluster mode redis-rs's cluster client,
//!   which routes each `XADD` to the primary of its environment's slot). While Redis is unreachable, batches are
//!   dropped and counted at once (`reason="unreachable"`) rather than queued behind a reconnect;
//!   how many is logged when it reconnects.
//! - At shutdown the queue is closed (the API answers 503 from then on) and what it holds is
//!   flushed: delivered within the flush deadline (`flush_within` after the trigger; a reconnect
//!   is waited for then, not skipped), and whatever is still queued or in flight at the
//!   deadline is counted `reason="shutdown"`. One line logs how many were delivered and dropped.
//! - A batch in flight is not abandoned for shutdown before the deadline, and an `XADD` that
//!   was sent is never sent again (one that timed out may have been appended: it counts as
//!   dropped, `unreachable`); only an attempt that found no connection is retried, and only
//!   during the flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::Instrument;

use crate::config::RedisUpstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upstream::events::{count_drop, queue, DropReason, EventReceiver, EventSender, Held};
use crate::upstream::EventBatch;

use crate::upstream::backoff::Backoff;
use super::keys::EnvKeys;
use super::sentinel::{Commands, Target};

/// Makes the queue the API hands batches to, and the forwarder that drains it; at shutdown the
/// forwarder flushes for at most `flush_within`.
pub fn channel(cfg: RedisUpstream, metrics: Arc<Metrics>, shutdown: Shutdown, flush_within: Duration) -> (EventSender, Forwarder) {
    let (tx, rx) = queue(cfg.events_queue_bytes, metrics.clone(), shutdown.clone());
    (tx, Forwarder { cfg, rx, metrics, shutdown, flush_within })
}

/// The events forwarder: a future for the caller to run as a task (`app` owns it). It ends
/// after the shutdown flush, or when every sender is gone.
pub struct Forwarder {
    cfg: RedisUpstream,
    rx: EventReceiver,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    flush_within: Duration,
}

/// What became of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Dropped(DropReason),
}

/// An attempt that never sent the batch: there is no connection (none due yet, or the
/// reconnect failed). Unlike a failed `XADD`, it is safe to try again.
struct NotConnected;

impl Forwarder {
    /// Forwards batches until shutdown, then flushes (span `redis_events`).
    pub async fn run(self) {
        let span = tracing::info_span!("redis_events");
        self.forward().instrument(span).await
    }

    async fn forward(mut self) {
        let mut link = Link::new(self.cfg.clone());
        let mut deadline: Option<Instant> = None;
        let (mut delivered, mut dropped) = (0u64, 0u64);
        let shutdown = self.shutdown.clone();
        loop {
            let held = match deadline {
                None => {
                    let next = tokio::select! {
                        _ = shutdown.wait() => None,
                        h = self.rx.recv() => Some(h),
                    };
                    match next {
                        None => {
                            deadline = Some(self.begin_flush());
                            continue;
                        }
                        Some(Some(h)) => h,
                        Some(None) => return,
                    }
                }
                Some(_) => match self.rx.try_recv() {
                    Some(h) => h,
                    None => break,
                },
            };
            let outcome = self.deliver(&mut link, &held, &mut deadline).await;
            if deadline.is_some() {
                match outcome {
                    Outcome::Sent => delivered += 1,
                    Outcome::Dropped(_) => dropped += 1,
                }
            }
            if outcome == Outcome::Dropped(DropReason::Unreachable) {
                link.dropped_while_down += 1;
            }
            self.count(&held.batch, outcome);
        }
        if dropped == 0 {
            tracing::info!(delivered, "event queue flushed at shutdown");
        } else {
            tracing::warn!(delivered, dropped, "event batches dropped at shutdown: not delivered by the flush deadline");
        }
    }

    /// Closes the queue (`send` refuses from now on) and returns the flush deadline.
    fn begin_flush(&mut self) -> Instant {
        self.rx.close();
        Instant::now() + self.flush_within
    }

    /// Delivers one batch. Before shutdown: one attempt, and no connection means dropped
    /// (`unreachable`); a shutdown that begins meanwhile starts the flush, and the attempt goes
    /// on under its deadline. During the flush: a missing connection is waited for (reconnects
    /// on the usual backoff) until the deadline; a batch not sent by then is dropped
    /// (`shutdown`). An `XADD` that was sent is never sent again.
    async fn deliver(&mut self, link: &mut Link, held: &Held, deadline: &mut Option<Instant>) -> Outcome {
        if deadline.is_none() {
            let shutdown = self.shutdown.clone();
            let attempt = link.send(&held.batch);
            tokio::pin!(attempt);
            let first = tokio::select! {
                r = &mut attempt => Some(r),
                _ = shutdown.wait() => None,
            };
            match first {
                Some(Ok(o)) => return o,
                Some(Err(NotConnected)) => return Outcome::Dropped(DropReason::Unreachable),
                None => {}
            }
            let d = self.begin_flush();
            *deadline = Some(d);
            match tokio::time::timeout_at(d, attempt).await {
                Ok(Ok(o)) => return o,
                Ok(Err(NotConnected)) => {}
                Err(_) => return Outcome::Dropped(DropReason::Shutdown),
            }
        }
        let Some(d) = *deadline else { return Outcome::Dropped(DropReason::Shutdown) };
        loop {
            let due = link.retry_at.max(Instant::now());
            if due >= d {
                return Outcome::Dropped(DropReason::Shutdown);
            }
            tokio::time::sleep_until(due).await;
            match tokio::time::timeout_at(d, link.send(&held.batch)).await {
                Ok(Ok(o)) => return o,
                Ok(Err(NotConnected)) => continue,
                Err(_) => return Outcome::Dropped(DropReason::Shutdown),
            }
        }
    }

    fn count(&self, batch: &EventBatch, outcome: Outcome) {
        match outcome {
            Outcome::Sent => self.metrics.events_forwarded.with_label_values(&[&batch.env, "sent"]).inc(),
            Outcome::Dropped(reason) => count_drop(&self.metrics, &batch.env, reason),
        }
    }
}

/// The forwarder's connection to Redis and its reconnect schedule.
struct Link {
    cfg: RedisUpstream,
    target: Option<Target>,
    con: Option<Commands>,
    backoff: Backoff,
    /// No reconnect before this.
    retry_at: Instant,
    keys: HashMap<Arc<str>, EnvKeys>,
    /// Dropped as unreachable since the connection was lost (logged at the reconnect).
    dropped_while_down: u64,
    /// The last `XADD` error logged, so a repeated one is logged once.
    last_refusal: Option<String>,
}

impl Link {
    fn new(cfg: RedisUpstream) -> Link {
        let target = match Target::new(&cfg) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "events forwarding disabled: every batch is dropped and counted");
                None
            }
        };
        Link {
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            cfg,
            target,
            con: None,
            retry_at: Instant::now(),
            keys: HashMap::new(),
            dropped_while_down: 0,
            last_refusal: None,
        }
    }

    /// One attempt to append `batch`, connecting first if there is no connection and a
    /// reconnect is due. A disabled forwarder (bad target) drops as `unreachable`.
    async fn send(&mut self, batch: &EventBatch) -> Result<Outcome, NotConnected> {
        let Some(target) = &self.target else { return Ok(Outcome::Dropped(DropReason::Unreachable)) };
        let cfg = &self.cfg;
        if self.con.is_none() {
            if Instant::now() < self.retry_at {
                return Err(NotConnected);
            }
            match target.commands(cfg, cfg.response_timeout).await {
                Ok(c) => {
                    self.backoff.reset();
                    self.con = Some(c);
                    if self.dropped_while_down > 0 {
                        tracing::info!(dropped = self.dropped_while_down, "events connection restored; batches were dropped while Redis was unreachable");
                        self.dropped_while_down = 0;
                    }
                }
                Err(e) => {
                    let wait = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach Redis for events; dropping batches meanwhile");
                    self.retry_at = Instant::now() + wait;
                    return Err(NotConnected);
                }
            }
        }
        let Some(c) = self.con.as_mut() else { return Err(NotConnected) };
        let k = self.keys.entry(batch.env.clone()).or_insert_with(|| EnvKeys::new(&cfg.prefix, &batch.env));
        let res: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&k.events)
            .arg("MAXLEN")
            .arg("~")
            .arg(cfg.events_maxlen)
            .arg("*")
            .arg("kind")
            .arg(batch.kind)
            .arg("body")
            .arg(batch.body.as_ref())
            .arg("ts")
            .arg(now_ms())
            .query_async(c)
            .await;
        Ok(match res {
            Ok(_) => {
                self.last_refusal = None;
                Outcome::Sent
            }
            Err(e) if e.is_unrecoverable_error() || e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
                // Redis may or may not have appended it: counted as dropped, never sent twice.
                tracing::warn!(error = %e, "events connection lost; reconnecting");
                self.con = None;
                self.retry_at = Instant::now() + self.backoff.next_delay();
                Outcome::Dropped(DropReason::Unreachable)
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_refusal.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "XADD refused; dropping the batch");
                    self.last_refusal = Some(msg);
                }
                Outcome::Dropped(DropReason::Refused)
            }
        })
    }
}

/// Unix milliseconds now (the `ts` field of an event entry).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}
