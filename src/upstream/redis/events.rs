//! SDK event forwarding: batches accepted at `/api/sdk/v1/events`, `/api/sdk/v1/register` (and
//! the thin-client events endpoint) are appended to `{p:env}:events` with
//! `XADD key MAXLEN ~ N * kind <kind> body <json> ts <unix ms>`.
//!
//! Invariants: requests never wait on Redis: they `try_send` into a bounded queue and a full
//! queue drops and counts (`events_forwarded_total{result="dropped"}`). The [`Forwarder`] (one
//! task, which `app` spawns and joins) owns its own connection (re-resolved through Sentinel on
//! every reconnect); while Redis is unreachable, batches are dropped and counted at once rather
//! than queued behind a reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::RedisUpstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upstream::EventBatch;

use super::backoff::Backoff;
use super::keys::EnvKeys;
use super::sentinel::{self, Target};

/// Batches waiting to be forwarded, at most.
pub const QUEUE: usize = 4096;

/// Makes the queue the API hands batches to, and the forwarder that drains it.
pub fn channel(cfg: RedisUpstream, metrics: Arc<Metrics>, shutdown: Shutdown) -> (mpsc::Sender<EventBatch>, Forwarder) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, Forwarder { cfg, rx, metrics, shutdown })
}

/// The events forwarder: a future for the caller to run as a task (`app` owns it). It ends at
/// shutdown, or when every sender is gone.
pub struct Forwarder {
    cfg: RedisUpstream,
    rx: mpsc::Receiver<EventBatch>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Forwarder {
    /// Forwards batches until shutdown (span `redis_events`).
    pub async fn run(self) {
        let span = tracing::info_span!("redis_events");
        forward(self.cfg, self.rx, self.metrics, self.shutdown).instrument(span).await
    }
}

async fn forward(cfg: RedisUpstream, mut rx: mpsc::Receiver<EventBatch>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let target = match Target::new(&cfg) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "events forwarding disabled");
            None
        }
    };
    let mut keys: HashMap<Arc<str>, EnvKeys> = HashMap::new();
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
    let mut retry_at = Instant::now();
    loop {
        let batch = tokio::select! {
            _ = shutdown.wait() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        let dropped = || metrics.events_forwarded.with_label_values(&[&batch.env, "dropped"]).inc();
        let Some(target) = &target else {
            dropped();
            continue;
        };
        if con.is_none() {
            if Instant::now() < retry_at {
                dropped();
                continue;
            }
            let c = async {
                let info = target.resolve().await?;
                sentinel::connect(&info, cfg.connect_timeout, cfg.response_timeout, None).await
            };
            match c.await {
                Ok(c) => {
                    backoff.reset();
                    con = Some(c);
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach Redis for events; dropping batches meanwhile");
                    retry_at = Instant::now() + wait;
                    dropped();
                    continue;
                }
            }
        }
        let Some(c) = con.as_mut() else { continue };
        let k = keys.entry(batch.env.clone()).or_insert_with(|| EnvKeys::new(&cfg.prefix, &batch.env));
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
        match res {
            Ok(_) => metrics.events_forwarded.with_label_values(&[&batch.env, "sent"]).inc(),
            Err(e) => {
                dropped();
                if e.is_unrecoverable_error() || e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
                    tracing::warn!(error = %e, "events connection lost; reconnecting");
                    con = None;
                    retry_at = Instant::now() + backoff.next_delay();
                } else {
                    tracing::warn!(error = %e, "XADD refused");
                }
            }
        }
    }
}

/// Unix milliseconds now (the `ts` field of an event entry).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}
