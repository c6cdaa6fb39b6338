//! The one place that wires everything: registry and metrics, store, upstream source, fan-out,
//! the API and admin listeners, and the shutdown sequence.
//!
//! Shutdown order: stop accepting and drop readiness; SSE streams close over the drain window;
//! in-flight requests finish; the admin listener closes last. [`run`] returns within
//! `shutdown_timeout` of the trigger even if some connection refuses to end.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::Registry;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::config::{Config, Upstream};
use crate::fanout::eval_stream::ContextGroups;
use crate::fanout::Fanout;
use crate::http::auth::Keys;
use crate::http::rate_limit::KeyedRateLimit;
use crate::http::route::Template;
use crate::http::server::{Server, ServerOptions};
use crate::http::state::Api;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreLimits};
use crate::upstream;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the relay on already-bound listeners until `shutdown` is triggered and the drain ends.
pub async fn run(config: Config, api_listener: TcpListener, admin_listener: TcpListener, shutdown: Shutdown) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new(Registry::new())?);
    let api_addr = api_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin_addr = admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let limits = StoreLimits {
        replay_revisions: config.sse.replay_revisions,
        tombstones_max: config.sse.tombstones_max,
        tombstone_ttl: config.sse.tombstone_ttl,
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
    let events = upstream::event_sink(&config.upstream, metrics.clone(), shutdown.clone());

    let source = tokio::spawn(upstream::run(config.upstream.clone(), store.clone(), metrics.clone(), shutdown.clone()));
    let fanout_task = tokio::spawn(fanout.clone().run());

    let api = Arc::new(Api {
        keys: Keys::new(&config.environments, &store),
        fanout: fanout.clone(),
        metrics: metrics.clone(),
        http: config.http.clone(),
        events,
        ofrep_limit: KeyedRateLimit::per_second(config.http.ofrep_rate_limit),
        context_groups: ContextGroups::default(),
    });
    let opts = ServerOptions {
        max_buf_size: config.sse.client_buffer_bytes,
        shutdown_grace: config.sse.drain_window + std::time::Duration::from_secs(1),
        send_buffer: config.sse.socket_send_buffer_bytes,
        ..Default::default()
    };
    let api_server = Server::start(api_listener, api, shutdown.clone(), opts.clone());

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
    tracing::info!(listen = %api_addr, admin = %admin_addr, upstream = upstream_kind, "flagrelay serving");

    shutdown.wait().await;
    tracing::info!(deadline_secs = config.shutdown_timeout.as_secs_f64(), "shutting down");
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        api_server.wait().await;
        let _ = source.await;
        let _ = fanout_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown deadline reached; closing remaining connections");
    }
    admin_shutdown.trigger();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin_server.wait()).await;
    tracing::info!("stopped");
    Ok(())
}
