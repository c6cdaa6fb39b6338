//! The one place that wires everything: registry and metrics, store, upstream source, fan-out,
//! the API and admin listeners, and the shutdown sequence.
//!
//! It also raises the open-files limit and sets the API connection cap from it
//! ([`crate::http::fd_limit`]).
//!
//! Every task the relay runs is spawned here, by name, and joined at shutdown ([`tasks`]):
//! `api server` (accept loop and its connections), `upstream` (the file watcher or the Redis
//! supervisors), `fan-out` (heartbeats and the slow-client reaper), `event forwarder` (Redis mode
//! only), and `admin server`. A task that panicked is logged by name.
//!
//! Shutdown order: stop accepting and drop readiness; SSE streams close over the drain window;
//! the event queue closes (a batch posted from then on gets 503) and the forwarder flushes it for
//! at most 90 % of `shutdown_timeout`, so it can count and log what it could not deliver before
//! the deadline; in-flight requests finish and the other tasks end, all within
//! `shutdown_timeout` of the trigger (a task still running then is aborted); the admin listener
//! closes last, within one more second. [`run`] returns even if some connection refuses to end.

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
use crate::http::fd_limit::{self, CapSource};
use crate::http::rate_limit::KeyedRateLimit;
use crate::http::request_body::BodyBudget;
use crate::http::route::Template;
use crate::http::server::{Server, ServerOptions};
use crate::http::state::Api;
use crate::metrics::{LogCounters, Metrics};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreLimits};
use crate::upstream;

use tasks::{Ended, Tasks};

/// How long the event forwarder may flush its queue at shutdown: most of the shutdown deadline,
/// so that it ends (and logs what it dropped) before the deadline aborts what is left.
fn event_flush_budget(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.mul_f64(0.9)
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Tls(#[from] crate::http::tls::TlsError),
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
    run_with(config, api_listener, admin_listener, shutdown, LogCounters::new()?).await
}

/// [`run`], exporting the counters of the log output that was set up before it
/// ([`crate::logging`]).
pub async fn run_with(config: Config, api_listener: TcpListener, admin_listener: TcpListener, shutdown: Shutdown, log: LogCounters) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::with_log_counters(Registry::new(), log)?);
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
        Upstream::Relay(_) => "relay",
    };
    let (events, forwarder) = match upstream::event_sink(&config.upstream, metrics.clone(), shutdown.clone(), event_flush_budget(config.shutdown_timeout)) {
        Some((tx, forwarder)) => (Some(tx), Some(forwarder)),
        None => (None, None),
    };

    // [tls]: loaded before anything starts (a bad certificate stops the start), then watched.
    let certs = match &config.tls {
        Some(t) => {
            crate::upstream::redis::install_crypto_provider();
            Some((crate::http::tls::Certificates::load(&t.cert_file, &t.key_file)?, t.clone()))
        }
        None => None,
    };
    let tls_for = |admin: bool| certs.as_ref().filter(|(_, t)| if admin { t.admin } else { t.api }).map(|(c, _)| c.server_config());

    let mut tasks = Tasks::new();
    if let Some((c, t)) = &certs {
        tasks.spawn("tls reload", c.clone().watch(t.reload_interval, shutdown.clone()));
    }
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
    let max_connections = api_connection_cap(&config, &metrics);
    let opts = ServerOptions {
        max_buf_size: config.sse.client_buffer_bytes,
        shutdown_grace: config.sse.drain_window + std::time::Duration::from_secs(1),
        send_buffer: config.sse.socket_send_buffer_bytes,
        header_read_timeout: config.http.header_read_timeout,
        max_connections,
        name: "api",
        tls: tls_for(false),
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
    // The admin listener is not capped: the cap's reserve keeps descriptors for it.
    let admin_opts = ServerOptions { max_connections: None, name: "admin", tls: tls_for(true), ..opts };
    let admin_server = Server::start(admin_listener, admin, admin_shutdown.clone(), admin_opts);
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

/// Raises the open-files limit to the hard limit (logged), and returns the API connection cap:
/// `[http] max_connections`, or derived from the limit ([`fd_limit`]); exported as a gauge.
fn api_connection_cap(config: &Config, metrics: &Metrics) -> Option<usize> {
    let envs = config.environments.len();
    let limit = match fd_limit::raise_open_files_limit() {
        Ok(l) => {
            if let Some(from) = l.raised_from {
                tracing::info!(from, to = l.soft, "raised the open-files limit to the hard limit");
            }
            Some(l.soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            None
        }
    };
    let (cap, source) = fd_limit::api_connection_cap(config.http.max_connections, limit, envs);
    match (source, cap, limit) {
        (CapSource::Configured, Some(cap), Some(limit)) if fd_limit::cap_exceeds_limit(cap, limit, envs) => tracing::warn!(
            cap,
            open_files_limit = limit,
            reserve = fd_limit::reserve(limit, envs),
            "http.max_connections leaves less than the reserve under the open-files limit: accept may fail (EMFILE) before the cap, the admin listener too"
        ),
        (CapSource::Derived { limit }, Some(cap), _) => {
            tracing::info!(cap, open_files_limit = limit, reserve = fd_limit::reserve(limit, envs), "API connection cap derived from the open-files limit")
        }
        (CapSource::Unknown, ..) => tracing::warn!("no API connection cap: the open-files limit is unknown and http.max_connections is 0"),
        _ => {}
    }
    metrics.http_connection_limit.set(cap.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX)));
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_flush_ends_before_the_shutdown_deadline() {
        for (deadline_ms, flush_ms) in [(10_000, 9_000), (2_000, 1_800), (0, 0)] {
            assert_eq!(event_flush_budget(Duration::from_millis(deadline_ms)), Duration::from_millis(flush_ms));
        }
    }
}
