//! The command line (clap, derive). `serve` is the default when no subcommand is given.
//! The first stage of configuration: validation happens in [`crate::config`].

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

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
}
