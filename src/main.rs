//! The `flagrelay` binary: parse the command line, set up logging, and hand over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flagrelay::cli::{Cli, Command, FlagsCommand, ServeArgs};
use flagrelay::config::{Config, Overrides, RedisUpstream};
use flagrelay::upstream::redis::writer;
use flagrelay::shutdown::{self, Shutdown};

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&Overrides::from(args))?;
    let logging = flagrelay::logging::init(&config)?;
    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin_listen)", config.admin_listen))?;
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("signal received");
        trigger.trigger();
        // A second signal exits at once.
        shutdown::signal().await;
        std::process::exit(130);
    });
    flagrelay::app::run_with(config, api, admin, shutdown, logging.counters()).await?;
    Ok(())
}

fn check_config(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&Overrides::from(args))?;
    println!("{}", config.redacted());
    println!("config OK");
    Ok(())
}

fn flags(cmd: FlagsCommand) -> anyhow::Result<()> {
    let (args, env, action) = cmd.into_parts();
    let (cfg, known) = RedisUpstream::for_tool(&Overrides::from(args))?;
    run_async(async {
        let out = writer::execute(&cfg, &env, known.as_deref(), action).await?;
        print!("{out}");
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::Serve(args)) => run_async(serve(args)),
        Some(Command::Flags(cmd)) => flags(cmd),
        None => run_async(serve(cli.serve)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flagrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let r = rt.block_on(f);
    // Never wait on a stuck blocking task at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r
}
