//! The one place that wires everything: registry and metrics, store, upstream source, fan-out,
//! the API and admin listeners, and the shutdown sequence.
//!
//! Every task the relay runs is spawned here, by name, and joined at shutdown ([`tasks`]):
//! `api server` (accept loop and its connections), `upstream` (the file watcher or the Redis
//! supervisors), `fan-out` (heartbeats and the slow-client reaper), `event forwarder` (Redis mode
//! only), and `admin server`. A task that panicked is logged by name.
//!
//! Shutdown order: stop accepting and drop readiness; SSE streams close over the drain window;
//! in-flight requests finish and the other tasks end, all within `shutdown_timeout` of the
//! trigger (a task still running then is aborted); the admin listener closes last, within one
//! more second. [`run`] returns even if some connection refuses to end.

mod tasks;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::Registry;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::config::{Config, Upstream};
use crate::fanout::eval_stream::ContextGroups;
use crate::fanout::Fanout;
use crate::http::auth::Keys;
use crate::http::rate_limit::KeyedRateLimit;
use crate::http::request_body::BodyBudget;
use crate::http::route::Template;
use crate::http::server::{Server, ServerOptions};
use crate::http::state::Api;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreLimits};
use crate::upstream;

use tasks::{Ended, Tasks};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The key of the OFREP stream tokens: the configured one, else random for this process.
fn stream_secret(config: &Config) -> Vec<u8> {
    match &config.http.stream_token_secret {
        Some(s) => s.0.as_bytes().to_vec(),
        None => crate::http::auth::random_stream_secret(),
    }
}

/// Runs the relay on already-bound listeners until `shutdown` is triggered and the drain ends.
pub async fn run(config: Config, api_listener: TcpListener, admin_listener: TcpListener, shutdown: Shutdown) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new(Registry::new())?);
    let api_addr = api_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin_addr = admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let limits = StoreLimits {
        replay_revisions: config.sse.replay_revisions,
        replay_bytes: config.sse.replay_bytes,
        tombstones_max: config.sse.tombstones_max,
        tombstone_ttl: config.sse.tombstone_ttl,
        max_feature_bytes: config.max_feature_bytes,
    };
    for e in &config.environments {
        metrics.init_env(&e.id);
    }
    metrics.init_routes(&Template::labels());
    let store = Arc::new(Store::new(config.environments.iter().map(|e| e.id.as_str()), limits, metrics.clone()));
    let fanout = Fanout::new(config.sse.clone(), metrics.clone(), shutdown.clone());
    let upstream_kind = match &config.upstream {
        Upstream::File(_) => "file",
        Upstream::Redis(_) => "redis",
    };
    let (events, forwarder) = match upstream::event_sink(&config.upstream, metrics.clone(), shutdown.clone()) {
        Some((tx, forwarder)) => (Some(tx), Some(forwarder)),
        None => (None, None),
    };

    let mut tasks = Tasks::new();
    tasks.spawn("upstream", upstream::run(config.upstream.clone(), store.clone(), metrics.clone(), shutdown.clone()));
    tasks.spawn("fan-out", fanout.clone().run());
    if let Some(f) = forwarder {
        tasks.spawn("event forwarder", f.run());
    }

    let api = Arc::new(Api {
        keys: Keys::new(&config.environments, &store, stream_secret(&config)),
        fanout: fanout.clone(),
        metrics: metrics.clone(),
        http: config.http.clone(),
        events,
        ofrep_limit: KeyedRateLimit::per_second(config.http.ofrep_rate_limit, config.http.ofrep_rate_limit_max_clients, &metrics),
        context_groups: ContextGroups::new(&metrics),
        bodies: BodyBudget::new(config.http.body_budget_bytes, &metrics),
    });
    let opts = ServerOptions {
        max_buf_size: config.sse.client_buffer_bytes,
        shutdown_grace: config.sse.drain_window + std::time::Duration::from_secs(1),
        send_buffer: config.sse.socket_send_buffer_bytes,
        ..Default::default()
    };
    let api_server = Server::start(api_listener, api, shutdown.clone(), opts.clone());
    tasks.spawn("api server", api_server.wait());

    let admin_shutdown = Shutdown::new();
    let admin = Arc::new(Admin {
        store: store.clone(),
        metrics: metrics.clone(),
        fanout: fanout.clone(),
        shutdown: shutdown.clone(),
        started: SystemTime::now(),
        upstream_kind,
    });
    let admin_server = Server::start(admin_listener, admin, admin_shutdown.clone(), opts);
    let mut admin_task = Tasks::new();
    admin_task.spawn("admin server", admin_server.wait());
    tracing::info!(listen = %api_addr, admin = %admin_addr, upstream = upstream_kind, "flagrelay serving");

    shutdown.wait().await;
    tracing::info!(deadline_secs = config.shutdown_timeout.as_secs_f64(), "shutting down");
    let ended = tasks.join(tokio::time::Instant::now() + config.shutdown_timeout).await;
    if ended.iter().any(|(_, how)| *how == Ended::Overran) {
        tracing::warn!("shutdown deadline reached; closing remaining connections");
    }
    admin_shutdown.trigger();
    admin_task.join(tokio::time::Instant::now() + Duration::from_secs(1)).await;
    tracing::info!("stopped");
    Ok(())
}
