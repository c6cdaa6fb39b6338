//! The relay's configuration: the TOML file and the command-line [`Overrides`] turned into a
//! validated [`Config`]. The stages, one file each: `raw.rs` parses the file as written (every
//! error names the file line, and the key when there is one: `sse.heartbeat_secs`),
//! `validate.rs` checks every value and applies the defaults (an error names the key),
//! `redis.rs` does the same for a Redis upstream and its TLS files; `types.rs` holds what comes
//! out, and `print.rs` turns it back into the file's TOML, secrets redacted, for `check-config`.
//! The command line itself (clap) is [`crate::cli`], which hands its options over as
//! [`Overrides`].
//!
//! Where a setting comes from (the first one given wins):
//! - `listen`, `admin_listen`, `log_format`, `[upstream] prefix` (Redis only): the command
//!   line, its `FLAGRELAY_*` environment variable (clap reads both; an empty variable counts as
//!   given), the file, the built-in default.
//! - `log_level`: `--log-level`, `RUST_LOG` (when set and non-empty), `FLAGRELAY_LOG_LEVEL`,
//!   the file, `info`. Whichever wins must be a valid filter (see `validate.rs`); an error
//!   names where it came from.
//! - The Redis URL: the same as `listen`, except that the file's `url` counts only with
//!   `kind = "redis"`, and a URL from the command line or environment makes the upstream Redis
//!   whatever `kind` says (the file's other `[upstream]` Redis keys still apply).
//! - The file's own path: `--config`, `FLAGRELAY_CONFIG`, `config/flagrelay.toml`.
//! - Every other setting (`shutdown_timeout_secs`, `[[environments]]`, `[sse]`, `[http]`, the
//!   rest of `[upstream]`): the file, else the built-in default; no flag or variable sets it.
//!
//! A `Config` and its sections are built only here, after every check has passed, so code that
//! holds one does not re-check it (their fields are public for reading; nothing else builds them).

mod print;
mod raw;
mod redis;
mod relay;
mod types;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use types::{
    redact, ClusterConfig, Config, TlsConfig, EnvironmentConfig, FileUpstream, HttpConfig, LogFormat, RedisUpstream, RelayUpstream, RelayUrl,
    Secret, SentinelConfig, SseConfig, Upstream,
};

/// Where the config file is read from when neither `--config` nor `FLAGRELAY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/flagrelay.toml";

/// What the command line and the environment give, to be laid over the file: built by
/// [`crate::cli`] from its parsed arguments, or directly by tests and tools (config knows
/// nothing of clap). `None`: not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The file to read (it has no key in itself; `Default` leaves it empty).
    pub config: PathBuf,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// `--log-level` (given on the command line): beats every other source of the level.
    pub log_level: Option<String>,
    /// `RUST_LOG`, when set and non-empty: beats `log_level_env` and the file.
    pub rust_log: Option<String>,
    /// `FLAGRELAY_LOG_LEVEL`: beats the file.
    pub log_level_env: Option<String>,
    pub log_format: Option<String>,
    /// Switches the upstream to Redis, whatever `[upstream] kind` says.
    pub redis_url: Option<String>,
    /// `--relay-url`: switches the upstream to a parent relay, whatever `[upstream] kind` says.
    pub relay_url: Option<String>,
    /// The Redis key prefix.
    pub prefix: Option<String>,
    /// `--cluster`: the Redis URL is a cluster seed (beats `[upstream] cluster`).
    pub cluster: bool,
    /// `--cluster-seed` (repeatable): more seed nodes, added to `[upstream] cluster_seeds`.
    pub cluster_seeds: Vec<String>,
}

/// Why there is no `Config`: the file cannot be read, is not valid TOML for the file structs,
/// or a value fails a check (`field` is the key as the file spells it, or the flag or variable
/// the value came from).
///
/// Each message is complete, its cause's text included, so no variant also hands the cause out
/// as its `source()`: a printer that walks the chain (anyhow's `{:#}`) would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// TOML syntax, a value of the wrong type, an unknown or missing key. `field` is the key's
    /// path (`sse.heartbeat_secs`) when the error is about one; `line` is 1-based.
    #[error("config file {}{}: {}{message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
    Parse { path: PathBuf, line: Option<usize>, field: Option<String>, message: String },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
}

/// The error for a value that fails a check, naming its key.
fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// A millisecond setting, or its default.
fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

impl Config {
    /// Reads the file at `overrides.config` and builds the effective configuration.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&overrides.config)
            .map_err(|error| ConfigError::Read { path: overrides.config.clone(), error })?;
        Config::from_toml(&text, overrides, Some(&overrides.config))
    }

    /// Builds the configuration from TOML text and the overrides (whose `config` is not read:
    /// `path` names the text in errors and in [`Config::source_path`]).
    pub fn from_toml(text: &str, overrides: &Overrides, path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = raw::parse(text, path)?;
        validate::build(file, overrides, path.map(Path::to_path_buf))
    }
}

/// What the unit tests of every stage share: a minimal valid file and a loader.
#[cfg(test)]
mod testing {
    use super::{Config, ConfigError, Overrides};

    pub const MIN: &str = r#"
[[environments]]
id = "production"
server_keys = ["sdk-srv-env-1"]
client_keys = ["sdk-js-env-1"]
"#;

    pub fn load(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::from_toml(text, overrides, None)
    }
}
