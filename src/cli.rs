//! The command line (clap derive): the subcommands and the options they share
//! ([`ServeArgs`], which clap also fills from the `FLAGRELAY_*` variables, the command line
//! winning), handed to [`crate::config`] as [`Overrides`] to be laid over the file there.
//! `serve` is the default when no subcommand is given; options written before a subcommand
//! are that default's and are not passed to the subcommand (they are ignored).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, DEFAULT_CONFIG_PATH};
use crate::upstream::redis::writer::{Action, Source};

#[derive(Debug, Parser)]
#[command(name = "flagrelay", version, about = "A streaming feature-flag relay proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve` (the default command).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options shared by `serve`, `check-config` and the write commands.
#[derive(Debug, clap::Args)]
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

impl From<ServeArgs> for Overrides {
    fn from(a: ServeArgs) -> Overrides {
        Overrides {
            config: a.config,
            listen: a.listen,
            admin_listen: a.admin_listen,
            log_level: a.log_level,
            log_format: a.log_format,
            redis_url: a.redis_url,
            prefix: a.prefix,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Serve(ServeArgs),
    /// Validate the configuration and print the effective config with keys redacted.
    CheckConfig(ServeArgs),
    /// Write or read the flags in Redis (the reference writer of the upstream contract; see
    /// docs/upstream.md).
    #[command(subcommand)]
    Flags(FlagsCommand),
}

/// `flagrelay flags ...`: every write goes through the atomic writer script.
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Upsert one feature (an object with "key") or a map of key -> feature, read from FILE or
    /// `-` (standard input). One revision per feature, all in one atomic step.
    Put {
        /// Environment id.
        #[arg(long)]
        env: String,
        /// JSON file, or `-` for standard input.
        file: PathBuf,
        #[command(flatten)]
        opts: ServeArgs,
    },
    /// Delete features by key (missing keys are skipped).
    Delete {
        #[arg(long)]
        env: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        opts: ServeArgs,
    },
    /// Replace the whole environment atomically with the map of key -> feature in FILE (or `-`):
    /// sets `inited`, bumps `epoch`, publishes `reset`.
    Import {
        #[arg(long)]
        env: String,
        file: PathBuf,
        #[command(flatten)]
        opts: ServeArgs,
    },
    /// Print the environment's features as stored, as JSON sorted by key.
    Export {
        #[arg(long)]
        env: String,
        #[command(flatten)]
        opts: ServeArgs,
    },
}

impl FlagsCommand {
    /// The shared options, the environment and what to do.
    pub fn into_parts(self) -> (ServeArgs, String, Action) {
        match self {
            FlagsCommand::Put { env, file, opts } => (opts, env, Action::Put(Source::from_arg(&file))),
            FlagsCommand::Delete { env, keys, opts } => (opts, env, Action::Delete(keys)),
            FlagsCommand::Import { env, file, opts } => (opts, env, Action::Import(Source::from_arg(&file))),
            FlagsCommand::Export { env, opts } => (opts, env, Action::Export),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_shared_option_reaches_the_config_overrides() {
        let argv = [
            "flagrelay", "check-config", "--config", "c.toml", "--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:2",
            "--log-level", "debug", "--log-format", "json", "--redis-url", "redis://h:1", "--prefix", "p",
        ];
        let Some(Command::CheckConfig(args)) = Cli::try_parse_from(argv).unwrap().command else { panic!("check-config") };
        let o = Overrides::from(args);
        assert_eq!(o.config, PathBuf::from("c.toml"));
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(o.admin_listen.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.log_format.as_deref(), Some("json"));
        assert_eq!(o.redis_url.as_deref(), Some("redis://h:1"));
        assert_eq!(o.prefix.as_deref(), Some("p"));
    }
}
