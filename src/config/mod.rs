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

/// A millisecond setting, or its default.
fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
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
        let file = raw::parse(text, path)?;
        validate::build(file, args, path.map(Path::to_path_buf))
    }
}

/// What the unit tests of every stage share: a minimal valid file and a loader.
#[cfg(test)]
mod testing {
    use super::{Config, ConfigError, ServeArgs};

    pub const MIN: &str = r#"
[[environments]]
id = "production"
server_keys = ["sdk-srv-env-1"]
client_keys = ["sdk-js-env-1"]
"#;

    pub fn load(text: &str, args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::from_toml(text, args, None)
    }
}
