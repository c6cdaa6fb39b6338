//! Every Prometheus metric the relay exports, registered once on a registry that is passed in.
//!
//! Invariant: label values are bounded: environment ids (from the config), route templates,
//! status classes, protocol and reason names. Never keys, paths, user agents or feature keys.
//! The catalogue with meanings and alerts is `docs/metrics.md`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Values of the `protocol` label of `flagrelay_sse_clients`.
pub const PROTOCOLS: [&str; 5] = ["featureflow", "js_legacy", "ofrep", "eval", "relay"];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    // fan-out
    pub sse_clients: IntGaugeVec,
    pub sse_events: IntCounterVec,
    pub sse_bytes: IntCounterVec,
    pub sse_lagged: IntCounterVec,
    pub sse_coalesced: IntCounterVec,
    pub sse_slow_disconnects: IntCounterVec,
    pub sse_resumes: IntCounterVec,
    pub sse_rejected: IntCounterVec,
    pub sse_drained: IntCounterVec,
    pub sse_max_age_closes: IntCounterVec,
    pub delivery_seconds: HistogramVec,
    pub change_delivery_seconds: HistogramVec,
    pub fanout_pass_seconds: HistogramVec,
    pub fanout_pass_span_seconds: HistogramVec,
    pub fanout_pass_connections: IntGaugeVec,
    // store and sources
    pub features: IntGaugeVec,
    pub revision: IntGaugeVec,
    pub data_age_seconds: prometheus::GaugeVec,
    pub source_errors: IntCounterVec,
    pub invalid_features: IntCounterVec,
    pub replay_bytes: IntGaugeVec,
    // http
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub sdk_events: IntCounterVec,
    pub http_connections: IntGauge,
    pub http_connections_rejected: IntCounterVec,
    pub http_accept_errors: prometheus::IntCounter,
    pub http_connection_limit: IntGauge,
    pub http_body_bytes: IntGauge,
    pub http_body_budget_rejections: IntCounter,
    pub rate_limit_clients: IntGauge,
    pub rate_limit_evictions: IntCounter,
    // upstream (Redis)
    pub upstream_connected: IntGaugeVec,
    pub upstream_reconnects: IntCounterVec,
    pub upstream_connect_failures: IntCounterVec,
    pub upstream_resyncs: IntCounterVec,
    pub upstream_topology_changes: IntCounterVec,
    pub upstream_messages: IntCounterVec,
    pub propagation_seconds: HistogramVec,
    pub events_forwarded: IntCounterVec,
    pub events_dropped: IntCounterVec,
    pub events_queue_bytes: IntGauge,
    // evaluation
    pub evaluations: IntCounterVec,
    pub evaluation_errors: IntCounterVec,
    pub context_groups: IntGauge,
    pub context_group_bytes: IntGauge,
    // logging
    pub log: LogCounters,
}

/// Values of the `reason` label of `flagrelay_events_dropped_total`.
pub const EVENT_DROP_REASONS: [&str; 4] = ["queue_full", "unreachable", "refused", "shutdown"];

/// Values of the `reason` label of `flagrelay_log_lines_dropped_total`.
pub const LOG_DROP_REASONS: [&str; 2] = ["write_error", "backlog"];

/// The log writer's counters. They exist before the registry does (logging is set up before
/// the relay starts), so they are made on their own and registered by
/// [`Metrics::with_log_counters`].
#[derive(Clone)]
pub struct LogCounters {
    /// `flagrelay_log_lines_dropped_total{reason}`: log lines that never reached the log output.
    pub lines_dropped: IntCounterVec,
}

impl LogCounters {
    /// New counters at zero, registered nowhere yet.
    pub fn new() -> prometheus::Result<LogCounters> {
        let lines_dropped = IntCounterVec::new(
            Opts::new("flagrelay_log_lines_dropped_total", "Log lines lost: the log output failed (write_error) or fell behind (backlog)."),
            &["reason"],
        )?;
        for r in LOG_DROP_REASONS {
            lines_dropped.with_label_values(&[r]);
        }
        Ok(LogCounters { lines_dropped })
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Latency buckets from 100 µs to 10 s, for deliveries and propagation.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    /// Registers every metric on `registry`. Fails only if a name is registered twice.
    pub fn new(registry: Registry) -> prometheus::Result<Metrics> {
        Metrics::with_log_counters(registry, LogCounters::new()?)
    }

    /// [`Metrics::new`] with the log writer's counters (made before the registry) registered too.
    pub fn with_log_counters(registry: Registry, log: LogCounters) -> prometheus::Result<Metrics> {
        let r = &registry;
        r.register(Box::new(log.lines_dropped.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let m = Metrics {
            sse_clients: gauge(r, "flagrelay_sse_clients", "Open SSE connections.", &["env", "protocol"])?,
            sse_events: counter(r, "flagrelay_sse_events_total", "SSE events written, by event type.", &["env", "event"])?,
            sse_bytes: counter(r, "flagrelay_sse_bytes_total", "Bytes of SSE frames handed to client connections.", &["env"])?,
            sse_lagged: counter(r, "flagrelay_sse_lagged_total", "Times a client was found behind the environment revision when it could write again.", &["env"])?,
            sse_coalesced: counter(r, "flagrelay_sse_coalesced_total", "Coalesced catch-up frames sent instead of a backlog (lagging or resuming clients).", &["env"])?,
            sse_slow_disconnects: counter(r, "flagrelay_sse_slow_disconnects_total", "Clients disconnected for staying over their send budget too long.", &["env"])?,
            sse_resumes: counter(r, "flagrelay_sse_resumes_total", "SSE reconnects with Last-Event-ID, by outcome (replayed, full_state, ahead, current).", &["env", "outcome"])?,
            sse_rejected: counter(r, "flagrelay_sse_rejected_total", "SSE connections refused by the connection cap.", &["env"])?,
            sse_drained: counter(r, "flagrelay_sse_drained_total", "SSE connections closed by the shutdown drain.", &["env"])?,
            sse_max_age_closes: counter(r, "flagrelay_sse_max_age_closes_total", "SSE connections closed at their maximum age.", &["env"])?,
            delivery_seconds: histogram(r, "flagrelay_sse_delivery_seconds", "Time from a change entering the store to its frame being handed to a client connection.", &["env"], latency_buckets())?,
            fanout_pass_seconds: histogram(r, "flagrelay_fanout_pass_seconds", "Wall time of one shard's writer pass over its server-SDK streams for one change.", &["env"], latency_buckets())?,
            fanout_pass_span_seconds: histogram(r, "flagrelay_fanout_pass_span_seconds", "Per change: from the first shard's pass starting to the last shard's pass ending.", &["env"], latency_buckets())?,
            fanout_pass_connections: gauge(r, "flagrelay_fanout_pass_connections", "Stream connections held by the writer pass: current, written by the pass, with no task of their own.", &["env"])?,
            change_delivery_seconds: histogram(r, "flagrelay_sse_change_delivery_seconds", "Time from a change entering the store until it was handed to every SSE connection of its environment.", &["env"], latency_buckets())?,
            features: gauge(r, "flagrelay_features", "Features currently served, per environment.", &["env"])?,
            revision: gauge(r, "flagrelay_environment_revision", "Current environment revision.", &["env"])?,
            data_age_seconds: {
                let g = prometheus::GaugeVec::new(Opts::new("flagrelay_data_age_seconds", "Seconds since the environment's data was last confirmed current by its source."), &["env"])?;
                r.register(Box::new(g.clone()))?;
                g
            },
            source_errors: counter(r, "flagrelay_source_reload_errors_total", "Failed reloads of a source (unreadable or unparsable flags file, failed Redis snapshot).", &["env", "source"])?,
            invalid_features: counter(r, "flagrelay_invalid_features_total", "Feature controls rejected by validation (including the size cap).", &["env"])?,
            replay_bytes: gauge(r, "flagrelay_replay_bytes", "Bytes the resume history counts against sse.replay_bytes: the replay ring (encoded changes) and the tombstones (deleted keys).", &["env", "part"])?,
            http_requests: counter(r, "flagrelay_http_requests_total", "HTTP requests by route template and status class.", &["route", "status"])?,
            http_duration: histogram(r, "flagrelay_http_request_duration_seconds", "HTTP request handling time (until headers), by route template.", &["route"], latency_buckets())?,
            sdk_events: counter(r, "flagrelay_sdk_events_received_total", "Event and registration batches accepted from SDKs.", &["env", "kind"])?,
            http_connections: {
                let g = IntGauge::new("flagrelay_http_connections", "Open TCP connections on the API listener.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            http_connections_rejected: counter(r, "flagrelay_http_connections_rejected_total", "API connections closed before any request was served: over the connection cap (cap), or no complete request head within http.header_read_timeout_ms of accept (header_timeout).", &["reason"])?,
            http_accept_errors: {
                let c = prometheus::IntCounter::new("flagrelay_http_accept_errors_total", "Failed accepts on the API listener (EMFILE, ENFILE...); each one backs off.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            http_connection_limit: {
                let g = IntGauge::new("flagrelay_http_connection_limit", "The cap on open API connections (http.max_connections, or derived from the open-files limit); 0 = no cap.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            http_body_bytes: plain_gauge(r, "flagrelay_http_body_bytes", "Bytes of request bodies being read or parsed now (bounded by http.body_budget_bytes).")?,
            http_body_budget_rejections: {
                let c = IntCounter::new("flagrelay_http_body_budget_rejections_total", "Requests refused with 503 because http.body_budget_bytes of bodies were being read or parsed.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            rate_limit_clients: plain_gauge(r, "flagrelay_rate_limit_clients", "(key, client address) pairs the OFREP rate limit tracks (at most http.ofrep_rate_limit_max_clients).")?,
            rate_limit_evictions: {
                let c = IntCounter::new("flagrelay_rate_limit_evictions_total", "(key, client address) pairs the OFREP rate limit forgot while they were still spending, because more were than http.ofrep_rate_limit_max_clients.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            upstream_connected: gauge(r, "flagrelay_upstream_connected", "1 while the upstream subscription is connected and synced.", &["env"])?,
            upstream_reconnects: counter(r, "flagrelay_upstream_reconnects_total", "Upstream reconnects.", &["env"])?,
            upstream_connect_failures: counter(r, "flagrelay_upstream_connect_failures_total", "Failed attempts to reach the upstream and subscribe (resolve, connect, TLS, subscribe).", &["env"])?,
            upstream_resyncs: counter(r, "flagrelay_upstream_resyncs_total", "Upstream resyncs by reason.", &["env", "reason"])?,
            upstream_topology_changes: counter(r, "flagrelay_upstream_topology_changes_total", "Redis Cluster: changes of the node serving an environment's slot, by reason (moved, migrating, cluster_down, sunsubscribe, owner_changed).", &["env", "reason"])?,
            upstream_messages: counter(r, "flagrelay_upstream_messages_total", "Upstream change messages by result (applied, stale, malformed, ignored).", &["env", "result"])?,
            propagation_seconds: histogram(r, "flagrelay_propagation_seconds", "Time from the upstream publish (message ts) until the change was written to every SDK connection of the environment.", &["env"], latency_buckets())?,
            events_forwarded: counter(r, "flagrelay_events_forwarded_total", "SDK event batches forwarded upstream, by result (sent, dropped).", &["env", "result"])?,
            events_dropped: counter(r, "flagrelay_events_dropped_total", "SDK event batches accepted but not forwarded upstream, by reason (queue_full, unreachable, refused, shutdown).", &["env", "reason"])?,
            events_queue_bytes: {
                let g = IntGauge::new("flagrelay_events_queue_bytes", "Bytes of SDK event batches queued for the upstream (bounded by upstream.events_queue_bytes).")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            evaluations: counter(r, "flagrelay_evaluations_total", "Evaluation requests by API (ofrep, ofrep_bulk, thin_client, stream).", &["env", "api"])?,
            evaluation_errors: counter(r, "flagrelay_evaluation_errors_total", "Evaluation errors by code.", &["env", "code"])?,
            context_groups: plain_gauge(r, "flagrelay_context_groups", "Live context groups of the per-context evaluation streams (streams with identical contexts share one).")?,
            context_group_bytes: plain_gauge(r, "flagrelay_context_group_bytes", "Bytes held by the context groups: canonical contexts, encoded results and frames, structures.")?,
            log,
            registry,
        };
        for reason in ["cap", "header_timeout"] {
            m.http_connections_rejected.with_label_values(&[reason]);
        }
        Ok(m)
    }

    /// Creates every series of one environment with its known label values at zero, so every
    /// catalogued metric is present from the first scrape and `rate()` has a starting point.
    pub fn init_env(&self, env: &str) {
        for p in PROTOCOLS {
            self.sse_clients.with_label_values(&[env, p]);
        }
        for e in ["initial", "change", "heartbeat", "retry"] {
            self.sse_events.with_label_values(&[env, e]);
        }
        for c in [
            &self.sse_bytes,
            &self.sse_lagged,
            &self.sse_coalesced,
            &self.sse_slow_disconnects,
            &self.sse_rejected,
            &self.sse_drained,
            &self.sse_max_age_closes,
            &self.invalid_features,
            &self.upstream_reconnects,
            &self.upstream_connect_failures,
        ] {
            c.with_label_values(&[env]);
        }
        for o in ["replayed", "full_state", "ahead", "current"] {
            self.sse_resumes.with_label_values(&[env, o]);
        }
        for h in [&self.delivery_seconds, &self.change_delivery_seconds, &self.propagation_seconds, &self.fanout_pass_seconds, &self.fanout_pass_span_seconds] {
            h.with_label_values(&[env]);
        }
        for g in [&self.features, &self.revision, &self.upstream_connected, &self.fanout_pass_connections] {
            g.with_label_values(&[env]);
        }
        for p in ["ring", "tombstones"] {
            self.replay_bytes.with_label_values(&[env, p]);
        }
        self.data_age_seconds.with_label_values(&[env]);
        for s in ["file", "redis", "relay"] {
            self.source_errors.with_label_values(&[env, s]);
        }
        for k in ["events", "register", "client_events"] {
            self.sdk_events.with_label_values(&[env, k]);
        }
        for r in ["initial", "gap", "probe_ahead", "probe_behind", "epoch", "reset", "reconnect", "overflow", "topology", "stalled"] {
            self.upstream_resyncs.with_label_values(&[env, r]);
        }
        for r in ["applied", "stale", "malformed", "ignored"] {
            self.upstream_messages.with_label_values(&[env, r]);
        }
        for r in crate::upstream::redis::TOPOLOGY_CHANGES {
            self.upstream_topology_changes.with_label_values(&[env, r]);
        }
        for r in ["sent", "dropped"] {
            self.events_forwarded.with_label_values(&[env, r]);
        }
        for r in EVENT_DROP_REASONS {
            self.events_dropped.with_label_values(&[env, r]);
        }
        for a in ["ofrep", "ofrep_bulk", "thin_client", "stream"] {
            self.evaluations.with_label_values(&[env, a]);
        }
        for c in ["FLAG_NOT_FOUND", "PARSE_ERROR", "INVALID_CONTEXT", "GENERAL", "RATE_LIMITED"] {
            self.evaluation_errors.with_label_values(&[env, c]);
        }
    }

    /// Creates the request series of the given route templates.
    pub fn init_routes(&self, routes: &[&str]) {
        for r in routes {
            self.http_duration.with_label_values(&[r]);
            for s in ["2xx", "4xx", "5xx"] {
                self.http_requests.with_label_values(&[r, s]);
            }
        }
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut buf = Vec::with_capacity(16 * 1024);
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

/// `2xx`, `4xx`... for the status label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
