//! Stage one of the file: the TOML config exactly as written, every key optional where the file
//! may leave it out, unknown keys refused (`deny_unknown_fields`, so a typo names itself).
//! Nothing here checks a value or applies a built-in default (a missing list is empty): that is
//! [`super::validate`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub shutdown_timeout_secs: Option<u64>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    pub sse: Option<RawSse>,
    pub http: Option<RawHttp>,
}

/// `[upstream]`: the keys of both kinds (file and Redis) in one table, as the file has them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub kind: Option<String>,
    pub path: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub sentinel: Option<RawSentinel>,
    pub connect_timeout_ms: Option<u64>,
    pub response_timeout_ms: Option<u64>,
    pub snapshot_timeout_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_cap_ms: Option<u64>,
    pub stable_after_secs: Option<u64>,
    pub events_maxlen: Option<u64>,
    pub max_feature_bytes: Option<usize>,
    pub snapshot_dir: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
}

/// `[upstream.sentinel]`: both keys required once the table is there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub addresses: Vec<String>,
    pub master_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub id: String,
    #[serde(default)]
    pub server_keys: Vec<String>,
    #[serde(default)]
    pub client_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSse {
    pub heartbeat_secs: Option<u64>,
    pub retry_ms: Option<u64>,
    pub replay_revisions: Option<usize>,
    pub replay_bytes: Option<usize>,
    pub tombstones_max: Option<usize>,
    pub tombstone_ttl_secs: Option<u64>,
    pub client_buffer_bytes: Option<usize>,
    pub socket_send_buffer_bytes: Option<usize>,
    pub slow_client_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connection_age_secs: Option<u64>,
    pub drain_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub max_body_bytes: Option<usize>,
    pub cors_allowed_origins: Option<Vec<String>>,
    pub sdk_config: Option<toml::Table>,
    pub ofrep_rate_limit: Option<u32>,
    pub ofrep_rate_limit_max_clients: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_context_bytes: Option<usize>,
    pub body_budget_bytes: Option<usize>,
    pub stream_token_secret: Option<String>,
}

/// Parses the TOML `text`; a syntax error or an unknown key names `path` (`<config>` when the
/// text came from nowhere) and, where the parser gives a position, the line.
pub(super) fn parse(text: &str, path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| format!(" (line {})", line_of(text, s.start))).unwrap_or_default();
        let path = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<config>"));
        ConfigError::Parse { path, message: format!("{}{line}", e.message()) }
    })
}

/// The line of a byte offset in `text`, 1-based.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{load, MIN};
    use crate::config::Overrides;

    #[test]
    fn parse_errors_give_the_line() {
        let e = load("listen = \"a\"\nlisten = = 3\n", &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load(&format!("{MIN}bogus = 1\n"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
