//! SDK event forwarding: batches accepted at `/api/sdk/v1/events`, `/api/sdk/v1/register` (and
//! the thin-client events endpoint) are appended to `{p:env}:events` with
//! `XADD key MAXLEN ~ N * kind <kind> body <json> ts <unix ms>`.
//!
//! Invariants: requests never wait on Redis: they `try_send` into a bounded queue and a full
//! queue drops and counts (`events_forwarded_total{result="dropped"}`). This task owns its own
//! connection (re-resolved through Sentinel on every reconnect); while Redis is unreachable,
//! batches are dropped and counted at once rather than queued behind a reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

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

/// Starts the forwarder; returns the queue the API hands batches to.
pub fn start(cfg: RedisUpstream, metrics: Arc<Metrics>, shutdown: Shutdown) -> mpsc::Sender<EventBatch> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let span = tracing::info_span!("redis_events");
    tokio::spawn(run(cfg, rx, metrics, shutdown).instrument(span));
    tx
}

async fn run(cfg: RedisUpstream, mut rx: mpsc::Receiver<EventBatch>, metrics: Arc<Metrics>, shutdown: Shutdown) {
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
            .arg(super::writer::now_ms())
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
