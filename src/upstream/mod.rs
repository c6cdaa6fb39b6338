//! Sources that feed the [`store`](crate::store): the watched flags file (the default), Redis
//! ([`redis`](self::redis), which also forwards SDK events upstream through the byte-bounded
//! queue of [`events`]) and a parent relay ([`relay`](self::relay), relay chaining); what both
//! followers share: the warm start from `snapshot_dir` ([`warm`]) and the reconnect backoff
//! ([`backoff`]). [`run`] is the source task and [`event_sink`] makes the events queue and
//! forwarder; `app` spawns and joins both.
//!
//! Invariant: a source only ever publishes valid features; anything it cannot parse is counted,
//! logged and skipped, and the last good data keeps being served.

pub mod backoff;
pub mod events;
pub mod file;
pub mod redis;
pub mod relay;
pub mod warm;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Upstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;

pub use events::{Accepted, EventSender, QueueClosed};

/// A batch of SDK events or registrations accepted by the API, on its way upstream.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub env: Arc<str>,
    /// `events`, `register` or `client_events`.
    pub kind: &'static str,
    pub body: bytes::Bytes,
}

/// The queue SDK event batches go to, and the task that forwards them, if the upstream takes
/// them (Redis mode); the caller spawns and joins the forwarder, which flushes the queue for at
/// most `flush_within` once `shutdown` is triggered. In file and relay mode there is none: batches are
/// accepted and counted only.
pub fn event_sink(upstream: &Upstream, metrics: Arc<Metrics>, shutdown: Shutdown, flush_within: Duration) -> Option<(EventSender, self::redis::Forwarder)> {
    match upstream {
        Upstream::File(_) | Upstream::Relay(_) => None,
        Upstream::Redis(cfg) => Some(self::redis::event_sink(cfg, metrics, shutdown, flush_within)),
    }
}

/// Runs the configured source until shutdown.
pub async fn run(upstream: Upstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    match upstream {
        Upstream::File(cfg) => file::run(cfg, store, metrics, shutdown).await,
        Upstream::Redis(cfg) => self::redis::run(cfg, store, metrics, shutdown).await,
        Upstream::Relay(cfg) => self::relay::run(cfg, store, metrics, shutdown).await,
    }
}
