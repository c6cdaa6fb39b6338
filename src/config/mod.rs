//! Configuration in two stages: clap parses the command line and environment ([`ServeArgs`]), then
//! [`Config::load`] reads the TOML file and validates everything into a [`Config`], naming the bad
//! field (and the file line where the TOML parser gives one).
//!
//! Precedence for every setting: command line > environment variable > file > built-in default.
//! A `Config` is valid by construction: code that holds one never re-checks it.

mod raw;
mod redis;
mod types;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use types::{
    redact, Config, EnvironmentConfig, FileUpstream, HttpConfig, LogFormat, RedisUpstream, Secret, SentinelConfig,
    SseConfig, Upstream,
};

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
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// Switches the upstream to Redis, whatever `[upstream] kind` says.
    pub redis_url: Option<String>,
    /// The Redis key prefix.
    pub prefix: Option<String>,
}

/// Transitional (issue 9 merge): the old name, for callers outside `config` and `cli` that still
/// build their overrides as `config::ServeArgs { .. }`. Rename them to [`Overrides`] and delete
/// this alias; the clap options themselves are [`crate::cli::ServeArgs`].
pub type ServeArgs = Overrides;

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

/// A millisecond setting, or its default.
fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

impl Config {
    /// Reads the file at `overrides.config` and builds the effective configuration.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&overrides.config)
            .map_err(|source| ConfigError::Read { path: overrides.config.clone(), source })?;
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
