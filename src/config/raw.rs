//! Stage one of the file: the TOML config exactly as written, every key optional where the file
//! may leave it out, unknown keys refused (`deny_unknown_fields`, so a typo names itself).
//! Nothing here checks a value or applies a built-in default (a missing list is empty): that is
//! [`super::validate`]. The same structs, serialized, are the TOML that `check-config` prints
//! ([`super::print`]), so the printout has exactly the file's keys.
//!
//! Errors name the line (from the TOML parser's span) and the key's path, e.g.
//! `sse.heartbeat_secs` or `environments[1].id`. The path comes from `serde_path_to_error`, which
//! records it while serde walks the document: a span alone gives a position, and turning it back
//! into a key would mean parsing the document a second time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Default, Deserialize, Serialize)]
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
    pub tls: Option<RawTls>,
}

/// `[tls]`: TLS on the listeners.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub api: Option<bool>,
    pub admin: Option<bool>,
    pub reload_interval_secs: Option<u64>,
}

/// `[upstream]`: the keys of every kind (file, Redis, relay) in one table, as the file has them.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub kind: Option<String>,
    pub path: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
    pub max_file_bytes: Option<u64>,
    pub rehash_interval_ms: Option<u64>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub sentinel: Option<RawSentinel>,
    pub cluster: Option<bool>,
    pub cluster_seeds: Option<Vec<String>>,
    pub connect_timeout_ms: Option<u64>,
    pub response_timeout_ms: Option<u64>,
    pub snapshot_timeout_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_cap_ms: Option<u64>,
    pub stable_after_secs: Option<u64>,
    pub events_maxlen: Option<u64>,
    pub max_feature_bytes: Option<usize>,
    pub events_queue_bytes: Option<usize>,
    pub snapshot_dir: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    /// Relay upstream: reconnect when no event arrived for this long.
    pub heartbeat_timeout_ms: Option<u64>,
}

/// `[upstream.sentinel]`: both keys required once the table is there.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub addresses: Vec<String>,
    pub master_name: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub id: String,
    #[serde(default)]
    pub server_keys: Vec<String>,
    #[serde(default)]
    pub client_keys: Vec<String>,
    /// Relay upstream: the server key of this environment on the parent.
    pub upstream_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
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
    pub writer_shards: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
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
    pub max_connections: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub compress_min_bytes: Option<usize>,
}

/// Parses the TOML `text`; an error names `path` (`<config>` when the text came from nowhere),
/// the line where the parser gives a position, and the key's path where the error is about a key.
pub(super) fn parse(text: &str, path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let field = key_path(&e.path().to_string());
        let e = e.into_inner();
        let line = e.span().map(|s| line_of(text, s.start));
        let path = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<config>"));
        ConfigError::Parse { path, line, field, message: e.message().to_string() }
    })
}

/// The key path as the config's other errors spell it; none for the document itself (`.`) or a
/// path with a part serde could not name (`?`).
fn key_path(path: &str) -> Option<String> {
    (path != "." && !path.split('.').any(|p| p == "?")).then(|| path.to_string())
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
    fn a_value_of_the_wrong_type_names_its_key_and_line() {
        let text = format!("{MIN}\n[sse]\nretry_ms = 1\nheartbeat_secs = \"15\"\n");
        let e = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("`sse.heartbeat_secs`") && e.contains("line 9") && e.contains("expected u64"), "{e}");
    }

    #[test]
    fn a_bad_entry_of_a_list_names_its_index() {
        let text = format!("{MIN}[[environments]]\nid = 2\n");
        let e = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("`environments[1].id`"), "{e}");
    }

    #[test]
    fn an_unknown_key_names_itself_with_its_table() {
        let e = load(&format!("{MIN}[http]\nmax_body = 1\n"), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("`http.max_body`: unknown field") && e.contains("line 7"), "{e}");
    }

    #[test]
    fn parse_errors_give_the_line() {
        let e = load("listen = \"a\"\nlisten = = 3\n", &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load(&format!("{MIN}bogus = 1\n"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
