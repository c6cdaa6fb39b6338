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
//! The state machine ([`Phase`](supervisor::Phase)), per environment, forever until shutdown:
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
//! stale (ignored); `rev == held + 1` → applied; `rev > held + 1` → gap → resync; a revision
//! that does not go up on the subscription → rewind → resync. The probe (`GET rev` on the
//! subscribed connection; RESP2: on a separate one, see [`session`]) finds trailing loss
//! (`n > held` after draining the queue) and a revision that went backwards (`n < held before
//! the probe`). These rules are pure functions in
//! [`order`], with a table test per rule; the supervisor only acts on their answer. A full queue
//! (overflow) → resync. A snapshot is authoritative even when its revision is lower (failover);
//! the store diffs it against the held copy and publishes only what changed, reverts included.
//!
//! Files: [`supervisor`] runs the state machine (connect, session loop, probes); [`sync`] changes
//! the held data (snapshots, messages, warm start, persistence); [`order`] decides; [`session`]
//! is the subscribed connection; [`events`] forwards SDK events (a task `app` owns).
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

mod cluster;
mod error;
mod events;
mod order;
mod sentinel;
mod session;
mod snapshot;
mod supervisor;
mod sync;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::config::RedisUpstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::upstream::EventSender;

use sentinel::Target;
use supervisor::EnvSync;

pub use cluster::{key_slot, TopologyChange};
pub use error::SyncError;

/// The `reason` labels of `flagrelay_upstream_topology_changes_total`.
pub const TOPOLOGY_CHANGES: [&str; 5] = TopologyChange::LABELS;
pub use events::Forwarder;
pub use tls::install_crypto_provider;

/// The events queue and its forwarder (see [`events`]); the caller runs the forwarder, which
/// flushes for at most `flush_within` at shutdown.
pub fn event_sink(cfg: &RedisUpstream, metrics: Arc<Metrics>, shutdown: Shutdown, flush_within: Duration) -> (EventSender, Forwarder) {
    events::channel(cfg.clone(), metrics, shutdown, flush_within)
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
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, panicked = e.is_panic(), "a Redis environment supervisor ended abnormally");
        }
    }
}
