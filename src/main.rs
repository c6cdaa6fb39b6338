//! The `flagrelay` binary: parse the command line ([`Invocation`]), set up logging, and hand over
//! to the library: the relay, `check-config` (the checks a start would make, and the effective
//! config printed), or a `flags` command. Errors are printed once, with their causes.

use std::process::ExitCode;

use anyhow::{bail, Context};
use flagrelay::cli::Invocation;
use flagrelay::config::{Config, Overrides, RedisUpstream, Upstream};
use flagrelay::shutdown::{self, Shutdown};
use flagrelay::upstream::{file, redis::writer};

/// mimalloc: see Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load(&overrides)?;
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

/// Loads the config as a start would (TLS files included), checks the flags file of a file
/// upstream with the file source's own parser and validator, then prints the effective config
/// as TOML with what was checked as comments, so standard output stays a TOML file.
fn check_config(overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load(&overrides)?;
    let mut notes = Vec::new();
    match &config.upstream {
        Upstream::File(f) => {
            let ids: Vec<&str> = config.environments.iter().map(|e| e.id.as_str()).collect();
            let path = f.path.display();
            let check = file::check(f, &ids).map_err(|e| anyhow::anyhow!("flags file (`upstream.path`): {e}"))?;
            if !check.malformed.is_empty() {
                bail!("flags file {path}: environment(s) {} not an object of feature key -> control; the relay would load no data for them", check.malformed.join(", "));
            }
            if !check.invalid.is_empty() {
                let list: Vec<String> = check.invalid.iter().map(|(env, e)| format!("  {env}: {e}")).collect();
                bail!("flags file {path}: {} invalid feature(s), each of which the relay would reject:\n{}", list.len(), list.join("\n"));
            }
            let loaded: Vec<String> = check.loaded.iter().map(|(env, n)| format!("{env} {n} feature(s)")).collect();
            notes.push(format!("flags file {path}: {}", if loaded.is_empty() { "no environment of the config".into() } else { loaded.join(", ") }));
            for env in &check.missing {
                notes.push(format!("note: {env} is not in the flags file: it would serve an empty set"));
            }
            for env in &check.ignored {
                notes.push(format!("note: {env} in the flags file is not in the config: ignored"));
            }
        }
        Upstream::Redis(_) => notes.push("upstream: Redis, not contacted by check-config".into()),
        Upstream::Relay(r) => notes.push(format!("upstream: the relay at {}, not contacted by check-config", r.url.text)),
    }
    let source = config.source_path.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string());
    println!("# the effective config read from {source}, keys redacted\n");
    print!("{}", config.redacted());
    println!();
    for n in notes {
        println!("# {n}");
    }
    println!("# config OK");
    Ok(())
}

fn flags(overrides: Overrides, action: writer::Action) -> anyhow::Result<()> {
    let (cfg, known) = RedisUpstream::for_tool(&overrides)?;
    run_async(async {
        let out = writer::execute(&cfg, known.as_deref(), action).await?;
        print!("{out}");
        Ok(())
    })
}

fn main() -> ExitCode {
    let result = match Invocation::parse() {
        Invocation::Serve(o) => run_async(serve(o)),
        Invocation::CheckConfig(o) => check_config(o),
        Invocation::Flags(o, action) => flags(o, action),
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
