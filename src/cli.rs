//! The command line (clap derive) and how it becomes what the binary runs ([`Invocation`]): the
//! subcommand and the config's [`Overrides`]. An option means the same wherever it stands:
//! - `--config`, `--redis-url`, `--prefix`, `--cluster`, `--cluster-seed` ([`SharedArgs`]) are global: every command reads
//!   them (the relay, `check-config`, the `flags` writer), before or after the command's name.
//! - `--listen`, `--admin-listen`, `--log-level`, `--log-format` ([`RelayArgs`]) are the relay's:
//!   `serve` (the default when no subcommand is given) and `check-config`, which checks them.
//!   Written before `serve` or `check-config` they apply to it (written on both sides, the one
//!   after the name wins); written before `flags`, which has no use for them, they are refused.
//!   So `flags put --help` lists only the writer's options and the shared ones.
//! - Each option also reads its `FLAGRELAY_*` variable; the command line wins. The log level
//!   has four sources (`--log-level`, `RUST_LOG`, `FLAGRELAY_LOG_LEVEL`, the file): which one
//!   wins is [`crate::config`]'s rule, so each is handed over separately.
//!
//! Where a relay option was written is read from clap's matches (`value_source`), which is why
//! [`RelayArgs`]' values are taken from there rather than from the derived structs.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Overrides, DEFAULT_CONFIG_PATH};
use crate::upstream::redis::writer::{Action, Source};

#[derive(Debug, Parser)]
#[command(name = "flagrelay", version, about = "A streaming feature-flag relay proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub shared: SharedArgs,
    /// Options of `serve` (the default command).
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// Options every command reads, accepted before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SharedArgs {
    /// Path of the TOML config file.
    #[arg(long, global = true, env = "FLAGRELAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Use Redis as the upstream (redis:// or rediss:// URL); overrides [upstream] in the file.
    #[arg(long, global = true, env = "FLAGRELAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis key prefix (default "flagrelay").
    #[arg(long, global = true, env = "FLAGRELAY_REDIS_PREFIX")]
    pub prefix: Option<String>,
    /// The Redis URL is a Redis Cluster node (sharded pub/sub; each environment followed on the
    /// primary that owns its slot).
    #[arg(long, global = true, env = "FLAGRELAY_REDIS_CLUSTER")]
    pub cluster: bool,
    /// Another cluster seed node (host:port), repeatable; with --cluster.
    #[arg(long = "cluster-seed", global = true, value_name = "HOST:PORT")]
    pub cluster_seeds: Vec<String>,
}

/// The relay's own options (`serve`, `check-config`).
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// API listen address (SDKs and thin clients), e.g. 127.0.0.1:7700.
    #[arg(long, env = "FLAGRELAY_LISTEN")]
    pub listen: Option<String>,
    /// Admin listen address (/metrics /healthz /readyz /status), e.g. 127.0.0.1:7701.
    #[arg(long, env = "FLAGRELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Log level, or RUST_LOG-style directives: info, or warn,flagrelay=debug. Beats RUST_LOG,
    /// which beats FLAGRELAY_LOG_LEVEL.
    #[arg(long, env = "FLAGRELAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text (default) or json.
    #[arg(long, env = "FLAGRELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Follow another relay (http:// or https:// URL of its API listener) instead of the file or
    /// Redis; overrides [upstream] in the file.
    #[arg(long, env = "FLAGRELAY_RELAY_URL")]
    pub relay_url: Option<String>,
}

/// The clap ids of [`RelayArgs`]' options.
const RELAY_OPTIONS: [&str; 5] = ["listen", "admin_listen", "log_level", "log_format", "relay_url"];

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Serve(RelayArgs),
    /// Check what the relay would read at start (the config, the flags file, the TLS files) and
    /// print the effective config as TOML, keys redacted.
    CheckConfig(RelayArgs),
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
    },
    /// Delete features by key (missing keys are skipped).
    Delete {
        /// Environment id.
        #[arg(long)]
        env: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Replace an environment atomically with the map of key -> feature in FILE (or `-`), or,
    /// with --all, every environment of a flags file ({env: {key: feature}}, like
    /// config/flags.json): each one sets `inited`, bumps `epoch`, publishes `reset`.
    Import {
        /// Environment id (FILE is that environment's map of key -> feature).
        #[arg(long, required_unless_present = "all")]
        env: Option<String>,
        /// Import every environment of FILE, a flags file; all of it is validated before the
        /// first write, then each environment is replaced in turn.
        #[arg(long, conflicts_with = "env")]
        all: bool,
        /// JSON file, or `-` for standard input.
        file: PathBuf,
    },
    /// Print the environment's features as stored, as JSON sorted by key.
    Export {
        /// Environment id.
        #[arg(long)]
        env: String,
    },
}

impl FlagsCommand {
    fn into_action(self) -> Action {
        match self {
            FlagsCommand::Put { env, file } => Action::Put { env, source: Source::from_arg(&file) },
            FlagsCommand::Delete { env, keys } => Action::Delete { env, keys },
            FlagsCommand::Import { env: Some(env), all: false, file } => Action::Import { env, source: Source::from_arg(&file) },
            // clap requires --env unless --all, and refuses both.
            FlagsCommand::Import { file, .. } => Action::ImportAll(Source::from_arg(&file)),
            FlagsCommand::Export { env } => Action::Export { env },
        }
    }
}

/// What the binary runs, with every option resolved.
#[derive(Debug)]
pub enum Invocation {
    Serve(Overrides),
    CheckConfig(Overrides),
    /// A `flags` command; only the shared options are set in its overrides.
    Flags(Overrides, Action),
}

impl Invocation {
    /// The process's command line and `RUST_LOG`; exits with clap's message on an error (and on
    /// `--help` / `--version`).
    pub fn parse() -> Invocation {
        Invocation::try_parse_from(std::env::args_os(), std::env::var("RUST_LOG").ok()).unwrap_or_else(|e| e.exit())
    }

    /// `argv` (the program name first) with `rust_log` as the `RUST_LOG` variable.
    pub fn try_parse_from<I, T>(argv: I, rust_log: Option<String>) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(argv)?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        let shared = Overrides {
            config: cli.shared.config,
            redis_url: cli.shared.redis_url,
            prefix: cli.shared.prefix,
            cluster: cli.shared.cluster,
            cluster_seeds: cli.shared.cluster_seeds,
            ..Overrides::default()
        };
        let sub = matches.subcommand().map(|(_, m)| m);
        Ok(match cli.command {
            None => Invocation::Serve(relay_overrides(shared, &matches, None, rust_log)),
            Some(Command::Serve(_)) => Invocation::Serve(relay_overrides(shared, &matches, sub, rust_log)),
            Some(Command::CheckConfig(_)) => Invocation::CheckConfig(relay_overrides(shared, &matches, sub, rust_log)),
            Some(Command::Flags(f)) => {
                if let Some(id) = RELAY_OPTIONS.iter().find(|id| written(&matches, id)) {
                    let flag = format!("--{}", id.replace('_', "-"));
                    return Err(cmd.error(
                        ErrorKind::ArgumentConflict,
                        format!("{flag} is an option of the relay (serve, check-config); `flags` does not use it"),
                    ));
                }
                Invocation::Flags(shared, f.into_action())
            }
        })
    }
}

/// Whether option `id` was written on the command line of this (sub)command.
fn written(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// The relay's options for `serve` / `check-config`: each from where it was written (after the
/// subcommand, else before it), else from its variable. `--log-level` counts as such only when
/// written; from `FLAGRELAY_LOG_LEVEL` it ranks below `RUST_LOG`.
fn relay_overrides(shared: Overrides, root: &ArgMatches, sub: Option<&ArgMatches>, rust_log: Option<String>) -> Overrides {
    let pick = |id: &str| {
        let m = match sub {
            Some(s) if written(s, id) => s,
            Some(_) if written(root, id) => root,
            Some(s) => s,
            None => root,
        };
        (m.get_one::<String>(id).cloned(), written(m, id))
    };
    let (log_level, level_written) = pick("log_level");
    let (log_level, log_level_env) = if level_written { (log_level, None) } else { (None, log_level) };
    Overrides {
        listen: pick("listen").0,
        admin_listen: pick("admin_listen").0,
        log_level,
        rust_log: rust_log.filter(|s| !s.is_empty()),
        log_level_env,
        log_format: pick("log_format").0,
        relay_url: pick("relay_url").0,
        ..shared
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(argv: &[&str]) -> Invocation {
        Invocation::try_parse_from(argv, None).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    fn overrides(argv: &[&str]) -> Overrides {
        match parse(argv) {
            Invocation::Serve(o) | Invocation::CheckConfig(o) | Invocation::Flags(o, _) => o,
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_reaches_the_config_overrides() {
        let o = overrides(&[
            "flagrelay", "check-config", "--config", "c.toml", "--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:2",
            "--log-level", "debug", "--log-format", "json", "--redis-url", "redis://h:1", "--prefix", "p",
        ]);
        assert_eq!(o.config, PathBuf::from("c.toml"));
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(o.admin_listen.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.log_format.as_deref(), Some("json"));
        assert_eq!(o.redis_url.as_deref(), Some("redis://h:1"));
        assert_eq!(o.prefix.as_deref(), Some("p"));
    }

    #[test]
    fn shared_options_mean_the_same_before_or_after_the_subcommand() {
        for argv in [
            ["flagrelay", "--config", "x.toml", "--redis-url", "redis://h:1", "--prefix", "p", "flags", "export", "--env", "e"],
            ["flagrelay", "flags", "--config", "x.toml", "--redis-url", "redis://h:1", "--prefix", "p", "export", "--env", "e"],
            ["flagrelay", "flags", "export", "--env", "e", "--config", "x.toml", "--redis-url", "redis://h:1", "--prefix", "p"],
        ] {
            let o = overrides(&argv);
            assert_eq!((o.config.to_str(), o.redis_url.as_deref(), o.prefix.as_deref()), (Some("x.toml"), Some("redis://h:1"), Some("p")), "{argv:?}");
        }
        let Invocation::CheckConfig(o) = parse(&["flagrelay", "--config", "x.toml", "check-config"]) else { panic!("check-config") };
        assert_eq!(o.config, PathBuf::from("x.toml"));
    }

    #[test]
    fn relay_options_before_serve_or_check_config_apply_to_it() {
        let Invocation::CheckConfig(o) = parse(&["flagrelay", "--listen", "127.0.0.1:1", "--log-level", "debug", "check-config"]) else {
            panic!("check-config")
        };
        assert_eq!((o.listen.as_deref(), o.log_level.as_deref()), (Some("127.0.0.1:1"), Some("debug")));
        let o = overrides(&["flagrelay", "--listen", "127.0.0.1:1", "serve", "--listen", "127.0.0.1:2"]);
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1:2"), "the one after the subcommand wins");
        let o = overrides(&["flagrelay", "--admin-listen", "127.0.0.1:3"]);
        assert_eq!(o.admin_listen.as_deref(), Some("127.0.0.1:3"), "serve is the default");
    }

    #[test]
    fn relay_options_are_refused_before_flags() {
        for flag in ["--listen", "--admin-listen", "--log-level", "--log-format"] {
            let e = Invocation::try_parse_from(["flagrelay", flag, "x", "flags", "export", "--env", "e"], None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{flag}");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn the_writer_takes_cluster_mode_and_repeated_seeds() {
        let Invocation::Flags(o, _) = parse(&["flagrelay", "flags", "export", "--env", "e", "--redis-url", "redis://a:7000", "--cluster", "--cluster-seed", "b:7001", "--cluster-seed", "c:7002"]) else {
            panic!("flags")
        };
        assert!(o.cluster);
        assert_eq!(o.cluster_seeds, ["b:7001", "c:7002"]);
    }

    #[test]
    fn writer_commands_do_not_take_relay_options() {
        let e = Invocation::try_parse_from(["flagrelay", "flags", "put", "--env", "e", "f.json", "--listen", "x"], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        let mut cmd = Cli::command();
        cmd.build();
        let put = cmd.find_subcommand_mut("flags").and_then(|f| f.find_subcommand_mut("put")).unwrap();
        let help = put.render_long_help().to_string();
        for absent in ["--listen", "--admin-listen", "--log-level", "--log-format"] {
            assert!(!help.contains(absent), "{absent} in: {help}");
        }
        for present in ["--env", "--config", "--redis-url", "--prefix", "--cluster", "--cluster-seed"] {
            assert!(help.contains(present), "{present} missing from: {help}");
        }
    }

    #[test]
    fn the_log_level_flag_is_kept_apart_from_its_variable_and_rust_log() {
        let o = Invocation::try_parse_from(["flagrelay", "--log-level", "debug"], Some("trace".into())).unwrap();
        let Invocation::Serve(o) = o else { panic!("serve") };
        assert_eq!((o.log_level.as_deref(), o.rust_log.as_deref(), o.log_level_env.as_deref()), (Some("debug"), Some("trace"), None));
        let Invocation::Serve(o) = Invocation::try_parse_from(["flagrelay"], Some(String::new())).unwrap() else { panic!("serve") };
        assert_eq!(o.rust_log, None, "an empty RUST_LOG is unset");
    }

    #[test]
    fn import_takes_one_environment_or_all() {
        let Invocation::Flags(_, Action::ImportAll(Source::File(f))) = parse(&["flagrelay", "flags", "import", "--all", "flags.json"]) else {
            panic!("import --all")
        };
        assert_eq!(f, PathBuf::from("flags.json"));
        assert!(matches!(parse(&["flagrelay", "flags", "import", "--env", "e", "-"]), Invocation::Flags(_, Action::Import { source: Source::Stdin, .. })));
        for argv in [&["flagrelay", "flags", "import", "f.json"][..], &["flagrelay", "flags", "import", "--all", "--env", "e", "f.json"]] {
            assert!(Invocation::try_parse_from(argv, None).is_err(), "{argv:?}");
        }
    }
}
