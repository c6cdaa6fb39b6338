//! Configuration in two stages: clap parses the command line and environment ([`ServeArgs`]), then
//! [`Config::load`] reads the TOML file and validates everything into a [`Config`], naming the bad
//! field (and the file line where the TOML parser gives one).
//!
//! Precedence for every setting: command line > environment variable > file > built-in default.
//! A `Config` is valid by construction: code that holds one never re-checks it.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "config/flagrelay.toml";

/// Options shared by `serve`, `check-config` and the write commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Path of the TOML config file.
    #[arg(long, env = "FLAGRELAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// API listen address (SDKs and thin clients), e.g. 127.0.0.1:7700.
    #[arg(long, env = "FLAGRELAY_LISTEN")]
    pub listen: Option<String>,
    /// Admin listen address (/metrics /healthz /readyz /status), e.g. 127.0.0.1:7701.
    #[arg(long, env = "FLAGRELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Log level or filter (RUST_LOG syntax), e.g. info or flagrelay=debug.
    #[arg(long, env = "FLAGRELAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text (default) or json.
    #[arg(long, env = "FLAGRELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Use Redis as the upstream (redis:// or rediss:// URL); overrides [upstream] in the file.
    #[arg(long, env = "FLAGRELAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis key prefix (default "flagrelay").
    #[arg(long, env = "FLAGRELAY_REDIS_PREFIX")]
    pub prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// A short, non-reversible label for a key: its first characters and a hash, for logs and output.
pub fn redact(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(key.as_bytes());
    let shown = (key.chars().count() / 3).min(8);
    let prefix: String = key.chars().take(shown).collect();
    format!("{prefix}…#{}", &hex::encode(digest)[..8])
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    pub environments: Vec<EnvironmentConfig>,
    pub sse: SseConfig,
    pub http: HttpConfig,
    pub shutdown_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub source_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    pub id: String,
    pub server_keys: Vec<Secret>,
    pub client_keys: Vec<Secret>,
}

// Built once at startup and held by one task: boxing the Redis variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Upstream {
    File(FileUpstream),
    Redis(RedisUpstream),
}

#[derive(Debug, Clone)]
pub struct FileUpstream {
    pub path: PathBuf,
    /// How often the file's metadata is checked for a change.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisUpstream {
    pub url: Secret,
    pub prefix: String,
    pub sentinel: Option<SentinelConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub probe_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub stable_after: Duration,
    /// `MAXLEN ~ N` for the events stream.
    pub events_maxlen: u64,
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

#[derive(Debug, Clone)]
pub struct SentinelConfig {
    pub addresses: Vec<String>,
    pub master_name: String,
}

#[derive(Debug, Clone)]
pub struct SseConfig {
    pub heartbeat: Duration,
    /// The `retry:` hint sent at the start of every stream, in milliseconds.
    pub retry_ms: u64,
    /// How many revisions the replay ring keeps for `Last-Event-ID` resumes.
    pub replay_revisions: usize,
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
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub cors_allowed_origins: Vec<String>,
    /// `X-Featureflow-Sdk-Config` header value (single-line JSON).
    pub sdk_config_header: String,
    /// OFREP requests per second per key (0 = unlimited).
    pub ofrep_rate_limit: u32,
}

// ---- the file, as written -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    log_level: Option<String>,
    log_format: Option<String>,
    upstream: Option<FileUpstreamSection>,
    #[serde(default)]
    environments: Vec<FileEnvironment>,
    sse: Option<FileSse>,
    http: Option<FileHttp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstreamSection {
    kind: Option<String>,
    path: Option<PathBuf>,
    poll_interval_ms: Option<u64>,
    url: Option<String>,
    prefix: Option<String>,
    sentinel: Option<FileSentinel>,
    connect_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
    snapshot_timeout_ms: Option<u64>,
    probe_interval_ms: Option<u64>,
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    stable_after_secs: Option<u64>,
    events_maxlen: Option<u64>,
    snapshot_dir: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert_file: Option<PathBuf>,
    tls_client_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSentinel {
    addresses: Vec<String>,
    master_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEnvironment {
    id: String,
    #[serde(default)]
    server_keys: Vec<String>,
    #[serde(default)]
    client_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSse {
    heartbeat_secs: Option<u64>,
    retry_ms: Option<u64>,
    replay_revisions: Option<usize>,
    tombstones_max: Option<usize>,
    tombstone_ttl_secs: Option<u64>,
    client_buffer_bytes: Option<usize>,
    socket_send_buffer_bytes: Option<usize>,
    slow_client_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connection_age_secs: Option<u64>,
    drain_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    max_body_bytes: Option<usize>,
    cors_allowed_origins: Option<Vec<String>>,
    sdk_config: Option<toml::Table>,
    ofrep_rate_limit: Option<u32>,
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| invalid(field, format!("{s:?} is not an address like 127.0.0.1:7700 ({e})")))
}

/// The line of a byte offset in `text`, 1-based.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

impl Config {
    /// Reads `args.config` and builds the effective configuration.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&args.config)
            .map_err(|source| ConfigError::Read { path: args.config.clone(), source })?;
        Config::from_toml(&text, args, Some(&args.config))
    }

    /// Builds the configuration from TOML text and command-line/env overrides.
    pub fn from_toml(text: &str, args: &ServeArgs, path: Option<&Path>) -> Result<Config, ConfigError> {
        let display = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<config>"));
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!(" (line {})", line_of(text, s.start))).unwrap_or_default();
            ConfigError::Parse { path: display.clone(), message: format!("{}{line}", e.message()) }
        })?;
        build(file, args, path.map(Path::to_path_buf))
    }

    /// The effective configuration as TOML-like text with every key redacted.
    pub fn redacted(&self) -> String {
        format!("{self:#?}")
    }
}

fn build(file: FileConfig, args: &ServeArgs, source_path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let listen_s = args.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:7700".into());
    let listen = parse_addr("listen", &listen_s)?;
    let admin_s = args.admin_listen.clone().or(file.admin_listen).unwrap_or_else(|| "127.0.0.1:7701".into());
    let admin_listen = parse_addr("admin_listen", &admin_s)?;
    if listen == admin_listen && listen.port() != 0 {
        return Err(invalid("admin_listen", "must differ from `listen`"));
    }

    let log_level = args.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into());
    let log_format = match args.log_format.clone().or(file.log_format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(invalid("log_format", format!("{other:?}: expected \"text\" or \"json\""))),
    };

    if file.environments.is_empty() {
        return Err(invalid("environments", "at least one [[environments]] entry is required"));
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    let mut environments = Vec::new();
    for (i, e) in file.environments.into_iter().enumerate() {
        let field = format!("environments[{i}]");
        if e.id.is_empty() || !e.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(invalid(format!("{field}.id"), format!("{:?}: use letters, digits, '-', '_' or '.'", e.id)));
        }
        if !ids.insert(e.id.clone()) {
            return Err(invalid(format!("{field}.id"), format!("environment {:?} is listed twice", e.id)));
        }
        if e.server_keys.is_empty() && e.client_keys.is_empty() {
            return Err(invalid(format!("{field}.server_keys"), "an environment needs at least one key"));
        }
        for (kind, list) in [("server_keys", &e.server_keys), ("client_keys", &e.client_keys)] {
            for k in list {
                if k.trim().is_empty() || k.chars().any(char::is_whitespace) {
                    return Err(invalid(format!("{field}.{kind}"), "keys must be non-empty and without spaces"));
                }
                if !keys.insert(k.clone()) {
                    return Err(invalid(format!("{field}.{kind}"), format!("key {} is used twice", redact(k))));
                }
            }
        }
        environments.push(EnvironmentConfig {
            id: e.id,
            server_keys: e.server_keys.into_iter().map(Secret).collect(),
            client_keys: e.client_keys.into_iter().map(Secret).collect(),
        });
    }

    let up = file.upstream.unwrap_or_default();
    let redis_url = args.redis_url.clone().or_else(|| match up.kind.as_deref() {
        Some("redis") => up.url.clone(),
        _ => None,
    });
    let upstream = match (redis_url, up.kind.as_deref()) {
        (Some(url), _) => Upstream::Redis(redis_upstream(url, &up, args)?),
        (None, Some("redis")) => return Err(invalid("upstream.url", "kind = \"redis\" needs a url (or --redis-url)")),
        (None, None | Some("file")) => {
            let path = up.path.clone().unwrap_or_else(|| PathBuf::from("config/flags.json"));
            let poll = ms(up.poll_interval_ms, 200);
            if poll.is_zero() {
                return Err(invalid("upstream.poll_interval_ms", "must be > 0"));
            }
            Upstream::File(FileUpstream { path, poll_interval: poll })
        }
        (None, Some(other)) => {
            return Err(invalid("upstream.kind", format!("{other:?}: expected \"file\" or \"redis\"")))
        }
    };

    let sse_f = file.sse.unwrap_or_default();
    let heartbeat_secs = sse_f.heartbeat_secs.unwrap_or(15);
    if heartbeat_secs == 0 {
        return Err(invalid("sse.heartbeat_secs", "must be > 0"));
    }
    let replay = sse_f.replay_revisions.unwrap_or(1024);
    let client_buffer_bytes = sse_f.client_buffer_bytes.unwrap_or(64 * 1024);
    if client_buffer_bytes < 8192 {
        return Err(invalid("sse.client_buffer_bytes", "must be at least 8192"));
    }
    let sse = SseConfig {
        heartbeat: Duration::from_secs(heartbeat_secs),
        retry_ms: sse_f.retry_ms.unwrap_or(3000),
        replay_revisions: replay,
        tombstones_max: sse_f.tombstones_max.unwrap_or(10_000),
        tombstone_ttl: Duration::from_secs(sse_f.tombstone_ttl_secs.unwrap_or(24 * 3600)),
        client_buffer_bytes,
        socket_send_buffer_bytes: sse_f.socket_send_buffer_bytes.filter(|n| *n > 0),
        slow_client_timeout: ms(sse_f.slow_client_timeout_ms, 10_000),
        max_connections: sse_f.max_connections.unwrap_or(0),
        max_connection_age: sse_f.max_connection_age_secs.filter(|s| *s > 0).map(Duration::from_secs),
        drain_window: Duration::from_secs(sse_f.drain_window_secs.unwrap_or(5)),
    };

    if sse.retry_ms > 3_600_000 {
        return Err(invalid("sse.retry_ms", "must be at most 3600000 (one hour)"));
    }
    if heartbeat_secs > 3600 {
        return Err(invalid("sse.heartbeat_secs", "must be at most 3600"));
    }
    if sse.slow_client_timeout.is_zero() {
        return Err(invalid("sse.slow_client_timeout_ms", "must be > 0"));
    }
    if sse.max_connection_age.is_some_and(|a| a > Duration::from_secs(30 * 86_400)) {
        return Err(invalid("sse.max_connection_age_secs", "must be at most 30 days (0 = unlimited)"));
    }
    if sse.drain_window > Duration::from_secs(3600) {
        return Err(invalid("sse.drain_window_secs", "must be at most 3600"));
    }
    let http_f = file.http.unwrap_or_default();
    let sdk_config = match http_f.sdk_config {
        Some(t) => serde_json::to_string(&t).map_err(|e| invalid("http.sdk_config", e.to_string()))?,
        None => r#"{"eventsEnabled":true,"mode":"summary","flushIntervalSeconds":60,"pollIntervalSeconds":20}"#.into(),
    };
    let max_body_bytes = http_f.max_body_bytes.unwrap_or(1024 * 1024);
    if max_body_bytes == 0 {
        return Err(invalid("http.max_body_bytes", "must be > 0"));
    }
    let http = HttpConfig {
        max_body_bytes,
        cors_allowed_origins: http_f.cors_allowed_origins.unwrap_or_else(|| vec!["*".into()]),
        sdk_config_header: sdk_config,
        ofrep_rate_limit: http_f.ofrep_rate_limit.unwrap_or(0),
    };

    let shutdown_timeout = Duration::from_secs(file.shutdown_timeout_secs.unwrap_or(10));
    if sse.drain_window >= shutdown_timeout && !sse.drain_window.is_zero() {
        return Err(invalid(
            "sse.drain_window_secs",
            format!("must be shorter than shutdown_timeout_secs ({}), or streams are cut before they drain", shutdown_timeout.as_secs()),
        ));
    }
    if http.sdk_config_header.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(invalid("http.sdk_config", "must encode as single-line ASCII JSON (it is sent as a header)"));
    }
    Ok(Config {
        listen,
        admin_listen,
        upstream,
        environments,
        sse,
        http,
        shutdown_timeout,
        log_level,
        log_format,
        source_path,
    })
}

impl RedisUpstream {
    /// The Redis settings of the `flags` commands, and the environments the config lists: from
    /// the config file when it exists (the command line still overrides it), else from
    /// `--redis-url` / `--prefix` alone with the built-in defaults.
    pub fn for_tool(args: &ServeArgs) -> Result<(RedisUpstream, Option<Vec<String>>), ConfigError> {
        if args.config.exists() {
            let config = Config::load(args)?;
            let envs = config.environments.iter().map(|e| e.id.clone()).collect();
            return match config.upstream {
                Upstream::Redis(r) => Ok((r, Some(envs))),
                Upstream::File(_) => Err(invalid("upstream.kind", "the config's upstream is not Redis: pass --redis-url")),
            };
        }
        match &args.redis_url {
            Some(url) => Ok((redis_upstream(url.clone(), &FileUpstreamSection::default(), args)?, None)),
            None => Err(invalid("redis_url", format!("no config file at {} and no --redis-url", args.config.display()))),
        }
    }
}

fn redis_upstream(url: String, up: &FileUpstreamSection, args: &ServeArgs) -> Result<RedisUpstream, ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        return Err(invalid("upstream.url", "expected a redis:// or rediss:// URL"));
    }
    let prefix = args.prefix.clone().or_else(|| up.prefix.clone()).unwrap_or_else(|| "flagrelay".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        return Err(invalid("upstream.prefix", "must be non-empty, without braces or spaces"));
    }
    let sentinel = match &up.sentinel {
        Some(s) if s.addresses.is_empty() => return Err(invalid("upstream.sentinel.addresses", "must not be empty")),
        Some(s) if s.master_name.is_empty() => return Err(invalid("upstream.sentinel.master_name", "must not be empty")),
        Some(s) => Some(SentinelConfig { addresses: s.addresses.clone(), master_name: s.master_name.clone() }),
        None => None,
    };
    let r = RedisUpstream {
        url: Secret(url),
        prefix,
        sentinel,
        connect_timeout: ms(up.connect_timeout_ms, 1000),
        response_timeout: ms(up.response_timeout_ms, 2000),
        snapshot_timeout: ms(up.snapshot_timeout_ms, 10_000),
        probe_interval: ms(up.probe_interval_ms, 1000),
        backoff_base: ms(up.backoff_base_ms, 100),
        backoff_cap: ms(up.backoff_cap_ms, 5000),
        stable_after: Duration::from_secs(up.stable_after_secs.unwrap_or(30)),
        events_maxlen: up.events_maxlen.unwrap_or(100_000),
        snapshot_dir: up.snapshot_dir.clone(),
        tls_ca_file: up.tls_ca_file.clone(),
        tls_client_cert_file: up.tls_client_cert_file.clone(),
        tls_client_key_file: up.tls_client_key_file.clone(),
    };
    for (field, d) in [
        ("upstream.connect_timeout_ms", r.connect_timeout),
        ("upstream.response_timeout_ms", r.response_timeout),
        ("upstream.snapshot_timeout_ms", r.snapshot_timeout),
        ("upstream.probe_interval_ms", r.probe_interval),
        ("upstream.backoff_base_ms", r.backoff_base),
    ] {
        if d.is_zero() {
            return Err(invalid(field, "must be > 0"));
        }
    }
    if r.backoff_cap < r.backoff_base {
        return Err(invalid("upstream.backoff_cap_ms", "must be >= backoff_base_ms"));
    }
    check_tls_files(&r)?;
    Ok(r)
}

/// The `tls_*` files: only with a `rediss://` URL, client certificate and key together, and each
/// one readable now and holding what it should (PEM certificates, a PEM private key), so that a
/// typo fails at startup naming the key rather than as a handshake error on every reconnect.
fn check_tls_files(r: &RedisUpstream) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let files = [
        ("upstream.tls_ca_file", &r.tls_ca_file),
        ("upstream.tls_client_cert_file", &r.tls_client_cert_file),
        ("upstream.tls_client_key_file", &r.tls_client_key_file),
    ];
    for (field, path) in files {
        if path.is_some() && !r.url.0.starts_with("rediss://") {
            return Err(invalid(field, "needs a rediss:// URL (`upstream.url` or --redis-url)"));
        }
    }
    match (&r.tls_client_cert_file, &r.tls_client_key_file) {
        (Some(_), None) => return Err(invalid("upstream.tls_client_key_file", "must be set with tls_client_cert_file")),
        (None, Some(_)) => return Err(invalid("upstream.tls_client_cert_file", "must be set with tls_client_key_file")),
        _ => {}
    }
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
    };
    let certs = |field: &str, path: &Path| -> Result<(), ConfigError> {
        let pem = read(field, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(field, format!("{}: not PEM certificates ({e})", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(field, format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())));
        }
        Ok(())
    };
    if let Some(p) = &r.tls_ca_file {
        certs("upstream.tls_ca_file", p)?;
    }
    if let Some(p) = &r.tls_client_cert_file {
        certs("upstream.tls_client_cert_file", p)?;
    }
    if let Some(p) = &r.tls_client_key_file {
        let field = "upstream.tls_client_key_file";
        let pem = read(field, p)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(field, format!("{}: no PEM private key ({e})", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[environments]]
id = "production"
server_keys = ["sdk-srv-env-1"]
client_keys = ["sdk-js-env-1"]
"#;

    fn load(text: &str, args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::from_toml(text, args, None)
    }

    #[test]
    fn defaults() {
        let c = load(MIN, &ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.sse.heartbeat, Duration::from_secs(15));
        assert!(matches!(c.upstream, Upstream::File(_)));
        assert_eq!(c.http.max_body_bytes, 1 << 20);
    }

    #[test]
    fn cli_beats_file() {
        let text = format!("listen = \"127.0.0.1:1\"\n{MIN}");
        let args = ServeArgs { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        assert_eq!(load(&text, &args).unwrap().listen.port(), 2);
        assert_eq!(load(&text, &ServeArgs::default()).unwrap().listen.port(), 1);
    }

    #[test]
    fn names_the_bad_field() {
        let e = load(&format!("listen = \"nope\"\n{MIN}"), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = load(&format!("{MIN}[sse]\nheartbeat_secs = 0\n"), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("sse.heartbeat_secs"), "{e}");
    }

    #[test]
    fn parse_errors_give_the_line() {
        let e = load("listen = \"a\"\nlisten = = 3\n", &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load(&format!("{MIN}bogus = 1\n"), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn duplicate_keys_rejected() {
        let text = r#"
[[environments]]
id = "a"
server_keys = ["k1"]
[[environments]]
id = "b"
server_keys = ["k1"]
"#;
        let e = load(text, &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        assert!(!e.to_string().contains("k1\""), "key leaked: {e}");
    }

    #[test]
    fn the_drain_window_must_fit_in_the_shutdown_deadline() {
        let e = load(&format!("shutdown_timeout_secs = 5\n{MIN}[sse]\ndrain_window_secs = 5\n"), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("sse.drain_window_secs"), "{e}");
        assert!(load(&format!("shutdown_timeout_secs = 5\n{MIN}[sse]\ndrain_window_secs = 4\n"), &ServeArgs::default()).is_ok());
    }

    #[test]
    fn redis_url_switches_upstream() {
        let args = ServeArgs { redis_url: Some("redis://127.0.0.1:6379".into()), ..Default::default() };
        let c = load(MIN, &args).unwrap();
        let Upstream::Redis(r) = c.upstream else { panic!("expected redis") };
        assert_eq!(r.prefix, "flagrelay");
        assert!(!format!("{:?}", r.url).contains("6379"));
    }

    #[test]
    fn tls_files_need_rediss_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        // Any well-formed PEM certificate block passes the startup check (it is not verified here).
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMAAA\n-----END CERTIFICATE-----\n").unwrap();
        let section = |url: &str, extra: &str| format!("[upstream]\nkind = \"redis\"\nurl = {url:?}\n{extra}\n{MIN}");
        let ca = format!("tls_ca_file = {:?}", pem.display().to_string());
        assert!(load(&section("rediss://h:6380", &ca), &ServeArgs::default()).is_ok());
        let e = load(&section("redis://h:6379", &ca), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_ca_file") && e.to_string().contains("rediss://"), "{e}");
        let cert_only = format!("tls_client_cert_file = {:?}", pem.display().to_string());
        let e = load(&section("rediss://h:6380", &cert_only), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_client_key_file"), "{e}");
        let e = load(&section("rediss://h:6380", "tls_ca_file = \"/nonexistent/ca.pem\""), &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_ca_file") && e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn redacted_output_hides_keys() {
        let c = load(MIN, &ServeArgs::default()).unwrap();
        let out = c.redacted();
        assert!(!out.contains("sdk-srv-env-1"), "{out}");
        assert!(out.contains("production"));
    }
}
