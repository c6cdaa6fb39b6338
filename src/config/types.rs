//! The validated configuration: the types the rest of the relay reads ([`Config`] and its
//! sections), and [`Secret`], which keeps SDK keys and the Redis URL out of `Debug` output.
//! (`check-config` prints a `Config` as TOML: [`super::print`].)

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must not be printed (an SDK key, the Redis URL): its `Debug` is [`redact`]ed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// A short, non-reversible label for a key: its first characters (a third of it, at most 8)
/// and 8 hex digits of its SHA-1. Used in [`Secret`]'s `Debug` and in config errors.
pub fn redact(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(key.as_bytes());
    let shown = (key.chars().count() / 3).min(8);
    let prefix: String = key.chars().take(shown).collect();
    format!("{prefix}…#{}", &hex::encode(digest)[..8])
}

/// The effective configuration ([`crate::config`] says where each value comes from).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    pub environments: Vec<EnvironmentConfig>,
    pub sse: SseConfig,
    pub http: HttpConfig,
    /// `[tls]`: TLS on the API and/or admin listener (none: plain TCP).
    pub tls: Option<TlsConfig>,
    /// `[upstream] max_feature_bytes`: the largest feature control (its encoded JSON) the store
    /// accepts from either source; a larger one is rejected like an invalid one.
    pub max_feature_bytes: usize,
    pub shutdown_timeout: Duration,
    /// The log filter (`RUST_LOG` syntax, every bare directive a level), from the first source
    /// that gives one: `--log-level`, `RUST_LOG`, `FLAGRELAY_LOG_LEVEL`, `log_level`, `info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// The file it was read from (none for text from nowhere); only shown by `check-config`.
    pub source_path: Option<PathBuf>,
}

/// `log_format`: `text` (the default) or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One `[[environments]]` entry: a well-formed id and its keys, each used once in the file.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    pub id: String,
    pub server_keys: Vec<Secret>,
    pub client_keys: Vec<Secret>,
    /// `upstream_key`: this environment's server key on the parent relay (relay upstream).
    pub upstream_key: Option<Secret>,
}

/// Where the flags come from: the flags file, Redis, or a parent relay.
// Built once at startup and held by one task: boxing the Redis variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Upstream {
    File(FileUpstream),
    Redis(RedisUpstream),
    Relay(RelayUpstream),
}

/// `[upstream] kind = "relay"`: another relay's relay stream (`GET /api/relay/v1/stream`).
#[derive(Debug, Clone)]
pub struct RelayUpstream {
    pub url: RelayUrl,
    /// Per environment (config order): its id and the server key it follows the parent with.
    pub keys: Vec<(String, Secret)>,
    /// `https://` only: a PEM file of CA certificates trusted **instead of** the system roots.
    pub tls_ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// No event (heartbeats included) for this long: the parent is taken for frozen, reconnect
    /// (`heartbeat_timeout_ms`, default three of this relay's `sse.heartbeat_secs`).
    pub heartbeat_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub stable_after: Duration,
    /// Where last good snapshots are persisted for a warm start (none: no persistence).
    pub snapshot_dir: Option<PathBuf>,
}

/// A parent relay's address, split once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// As configured (for `/status` and logs; it holds no secret).
    pub text: String,
    pub tls: bool,
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// The path prefix the parent is served under, without a trailing slash (usually empty).
    pub base_path: String,
}

/// `[upstream] kind = "file"` (the default).
#[derive(Debug, Clone)]
pub struct FileUpstream {
    pub path: PathBuf,
    /// How often the file's metadata is checked for a change.
    pub poll_interval: Duration,
    /// A larger file (or anything but a regular file) is refused (`max_file_bytes`, default
    /// 64 MiB).
    pub max_bytes: u64,
    /// The content is read and hashed at least this often even if nothing says it changed
    /// (`rehash_interval_ms`, default 30 s).
    pub rehash_interval: Duration,
}

/// `[tls]`: a PEM certificate chain and key (reloaded when the files change), on the API
/// listener (`api`, default on) and/or the admin listener (`admin`, default off).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub api: bool,
    pub admin: bool,
    /// How often the files are checked for a change (`reload_interval_secs`, default 10).
    pub reload_interval: Duration,
}

/// A Redis upstream; also what the `flags` commands connect with.
#[derive(Debug, Clone)]
pub struct RedisUpstream {
    pub url: Secret,
    pub prefix: String,
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster (`cluster = true`): `url` is one seed node, `cluster_seeds` adds more
    /// (`host:port`, or URLs of the same scheme); every environment is followed on the primary
    /// that owns its slot, over sharded pub/sub.
    pub cluster: Option<ClusterConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub probe_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub stable_after: Duration,
    /// `MAXLEN ~ N` for the events stream.
    pub events_maxlen: u64,
    /// Bytes of accepted event batches that may wait for Redis; beyond it batches are dropped
    /// and counted (`events_queue_bytes`, default 16 MiB).
    pub events_queue_bytes: usize,
    /// Where last good snapshots are persisted for a warm start (none: no persistence).
    pub snapshot_dir: Option<PathBuf>,
    /// `rediss://` only: a PEM file of CA certificates trusted for the server **instead of** the
    /// system roots (self-signed deployments). Checked readable and parseable at startup.
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://` only, both or neither: the PEM client certificate chain and private key for
    /// mutual TLS.
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
}

/// Cluster mode: the seed nodes, the URL's address first (`host:port` each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub seeds: Vec<(String, u16)>,
}

/// `[upstream.sentinel]`: the master is looked up through these Sentinels.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    pub addresses: Vec<String>,
    pub master_name: String,
}

/// `[sse]`: streams, their replay history and their flow control.
#[derive(Debug, Clone)]
pub struct SseConfig {
    pub heartbeat: Duration,
    /// The `retry:` hint sent at the start of every stream, in milliseconds.
    pub retry_ms: u64,
    /// How many revisions the replay ring keeps for `Last-Event-ID` resumes.
    pub replay_revisions: usize,
    /// The byte budget of the replay ring (the encoded size of the changes it holds), and,
    /// separately, of the tombstones' keys.
    pub replay_bytes: usize,
    /// Tombstones (deleted keys) kept for resumes beyond the ring: count and age.
    pub tombstones_max: usize,
    pub tombstone_ttl: Duration,
    /// Bytes a connection may have queued but not yet written before it counts as lagging.
    pub client_buffer_bytes: usize,
    /// SO_SNDBUF of API sockets (none: kernel autotuning).
    pub socket_send_buffer_bytes: Option<usize>,
    /// How long a client may stay over budget before it is disconnected.
    pub slow_client_timeout: Duration,
    /// Per-instance cap on SSE connections (0 = no cap).
    pub max_connections: usize,
    /// Maximum age of an SSE connection (with jitter), for rebalancing; none = unlimited.
    pub max_connection_age: Option<Duration>,
    /// On shutdown, SSE connections are closed spread over this window.
    pub drain_window: Duration,
    /// Shards of each environment's writer pass (0 = one per worker thread).
    pub writer_shards: usize,
}

/// `[http]`: request limits and response headers of the API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub cors_allowed_origins: Vec<String>,
    /// `X-Featureflow-Sdk-Config` header value (single-line JSON).
    pub sdk_config_header: String,
    /// OFREP requests per second per key and client address (0 = unlimited).
    pub ofrep_rate_limit: u32,
    /// How many (key, client address) budgets the OFREP rate limit tracks at most.
    pub ofrep_rate_limit_max_clients: usize,
    /// Peers whose `X-Forwarded-For` is believed (the client address is the first untrusted hop).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The largest evaluation context (its canonical encoding) a thin-client or OFREP request
    /// may carry.
    pub max_context_bytes: usize,
    /// Request-body bytes being read or parsed at once, over all requests.
    pub body_budget_bytes: usize,
    /// The key of the OFREP stream tokens; `None`: a random one per process.
    pub stream_token_secret: Option<Secret>,
    /// Cap on open API connections of every kind, polls and streams (0 = derived from the
    /// open-files limit). `[sse] max_connections` caps streams.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after it was accepted
    /// is closed; also how long an idle keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// OFREP bulk and thin-client evaluation answers at least this long are compressed (gzip or
    /// br, as the request accepts; 0 = never). The server-SDK poll is always compressed when
    /// asked (once per snapshot).
    pub compress_min_bytes: usize,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{load, MIN};
    use crate::config::Overrides;

    #[test]
    fn redacted_output_hides_keys() {
        let c = load(MIN, &Overrides::default()).unwrap();
        let out = c.redacted();
        assert!(!out.contains("sdk-srv-env-1"), "{out}");
        assert!(out.contains("production"));
    }
}
