//! The command line (clap, derive). `serve` is the default when no subcommand is given.
//! The first stage of configuration: validation happens in [`crate::config`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;
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
