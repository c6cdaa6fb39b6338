//! The relay upstream (`[upstream] kind = "relay"`): relay chaining. This relay follows another
//! relay's relay stream (`GET /api/relay/v1/stream`, rendered by
//! [`crate::fanout::relay_stream`]), one follower task per environment (span `relay_env{env}`),
//! each with its own connection and its environment's server key on the parent. The contract and
//! the tree sizing are `docs/upstream.md` (relay mode) and `docs/operations.md`.
//!
//! The state machine ([`follower`]), per environment, forever until shutdown:
//!
//! ```text
//!  Disconnected --connect, GET the stream (Last-Event-ID: the held position, if any)--> Resyncing
//!       ^                                                                                   |
//!       |  connect/HTTP error, stream end, no event for heartbeat_timeout                   | snapshot,
//!       |  (sleep: capped full-jitter backoff, reset after stable_after)                    | or resume
//!       +---------------------------------- Live <------------------------------------------+ confirmed
//!                                            |  gap, other epoch, malformed event:
//!                                            +--> drop the position, reconnect at once (snapshot)
//! ```
//!
//! Exactness: a `snapshot` replaces the store (authoritative, even at a lower revision); a
//! `change` applies only at the next seq of the held epoch; anything else resyncs from a full
//! snapshot ([`order`], pure, with a table test per rule). The parent's revisions and publish
//! times are applied as they are, so SDKs of this relay see the parent's revisions and the
//! propagation histogram measures from the original publish at the root.
//!
//! Files: [`follower`] runs it; [`client`] is the streaming GET (http or https); [`sse`] parses
//! the event stream; [`event`] types its events; [`order`] decides.
//!
//! Invariants: nothing here panics on network input: a fault ends in a logged, counted
//! reconnect, and the last good data keeps being served (stale in `/status`). `/status` shows
//! the parent, the hop count (the parent's `X-Flagrelay-Hops` + 1), the lag in revisions (the
//! parent's head minus the held revision, at its last heartbeat) and in time (from the original
//! publish of the last change to its application here).

mod client;
pub(crate) mod event;
mod follower;
pub(crate) mod order;
pub(crate) mod sse;

use std::sync::Arc;

use tracing::Instrument;

use crate::config::RelayUpstream;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;

use follower::Follower;

/// The relay stream's response header: how many relays the answering one is below the root
/// source (0 when it follows Redis or a file).
pub const HOPS_HEADER: &str = "x-flagrelay-hops";

/// Runs one follower per environment until shutdown.
pub async fn run(cfg: RelayUpstream, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let tls = match client::tls_config(&cfg.url, cfg.tls_ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "the relay upstream cannot start");
            for env in store.envs() {
                env.record_error("relay", &e.to_string());
                env.update_status(|s| s.state = "disconnected");
            }
            shutdown.wait().await;
            return;
        }
    };
    let cfg = Arc::new(cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for env in store.envs() {
        let Some((_, key)) = cfg.keys.iter().find(|(id, _)| **id == *env.id) else { continue };
        let span = tracing::info_span!("relay_env", env = %env.id);
        let f = Follower::new(env.clone(), key.clone(), cfg.clone(), tls.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(f.run().instrument(span));
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, panicked = e.is_panic(), "a relay environment follower ended abnormally");
        }
    }
}
