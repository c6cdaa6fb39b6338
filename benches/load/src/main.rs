//! `flagrelay-load`: the SSE fan-out load tool (issue 4).
//!
//! Opens N SSE connections (to a relay's `GET /api/sdk/v1/features`, or any SSE URL such as
//! nchan's subscriber location) from one or more client processes and source addresses, waits
//! until every client has its initial state, optionally measures an idle period, then triggers M
//! changes (each carrying a marker string) and reports, per change, how long the first and the
//! last client took to receive it, latency percentiles over all deliveries, and the servers' CPU
//! and RSS from procfs (per connection and per delivered message). `flagrelay-load compare A B`
//! prints the ratios of two `--json` reports.
//!
//! A package of its own in the workspace (`benches/load`, run with `cargo run --release -p
//! flagrelay-load -- ...`), so the relay's package ships one binary; it links the relay's library
//! only for the Redis trigger (the relay's writer script and Redis settings).
//!
//! It fails like a tool: failures are counted live (the progress line, and the first error's
//! text as soon as it happens); a run whose clients cannot open their streams stops before any
//! change with exit status 1 and that error (`verdict` holds the policy and `--allow-failed`);
//! figures that were not measured print as `n/a` (see `report`); a file it edits is put back as
//! it was, also on SIGINT and SIGTERM (exit status 130 / 143).
//!
//! Layout: this file is the coordinator; `client` runs in child processes (the coordinator
//! re-executes itself with `--child`), `sse` parses streams, `trigger` makes changes, `procfs`
//! samples processes, `sys` holds the few raw Linux calls, `verdict` decides whether a run goes
//! on, `report` prints it.

mod client;
mod ctx;
mod procfs;
mod report;
mod sse;
mod sys;
mod trigger;
mod verdict;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use client::Line;
use report::{ChangeRow, Report};
use verdict::Counts;

#[derive(Parser, Debug)]
#[command(name = "flagrelay-load", about = "SSE fan-out load generator and meter", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Ratios of two --json reports: BASELINE (e.g. nchan) and OTHER (e.g. flagrelay).
    Compare { baseline: String, other: String },
    /// One line per --json report (a markdown table).
    Summary { reports: Vec<String> },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// SSE URL to open N times. With --contexts G, `{ctx}` in it becomes, for client i, the
    /// standard base64 of `{"id":"bench-user-<i % G>","attributes":{"tier":"<i % G>"}}` (e.g.
    /// `http://127.0.0.1:7700/api/v1/eval/stream/KEY/user/{ctx}`).
    #[arg(long, default_value = "http://127.0.0.1:7700/api/sdk/v1/features")]
    url: String,
    /// Context groups for `{ctx}` in --url: G distinct users, N/G connections each (0: no
    /// templating).
    #[arg(long, default_value_t = 0)]
    contexts: usize,
    /// Server key sent as `Authorization: Bearer KEY` (omit for none, e.g. nchan).
    #[arg(long, env = "FLAGRELAY_LOAD_KEY")]
    key: Option<String>,
    /// Number of SSE connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    clients: usize,
    /// Client processes (each holds clients/procs connections on one thread).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Source addresses to bind before connecting, round-robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// CPU list for the client processes (taskset syntax, e.g. "1"); default: inherited.
    #[arg(long)]
    client_cpus: Option<String>,
    /// Clients that may fail to open their stream, or lose it during the run, before the run
    /// stops with an error (default: none may). A run with no ready client always stops.
    #[arg(long, default_value_t = 0)]
    allow_failed: usize,
    /// Changes to trigger after every client is ready (none without a --trigger).
    #[arg(short = 'm', long, default_value_t = 10)]
    changes: usize,
    /// file:PATH (flags file, atomic rewrite; its original bytes are put back at the end, also on
    /// an error, SIGINT or SIGTERM), nchan:URL (HTTP POST to the publisher),
    /// redis://HOST:PORT (upsert through the relay's Redis writer script), none.
    #[arg(long, default_value = "none")]
    trigger: String,
    /// Where the file and Redis triggers put the marker: `variant-name` (the first variant's name,
    /// for streams of feature controls) or `variant-key` (the key of the variant the feature
    /// serves to everyone, for streams of evaluated results such as /api/v1/eval/stream/...).
    #[arg(long, value_enum, default_value_t = trigger::MarkerIn::VariantName)]
    marker_in: trigger::MarkerIn,
    /// Key prefix of the Redis trigger (default: the relay's default, `flagrelay`).
    #[arg(long)]
    redis_prefix: Option<String>,
    /// Feature the file trigger edits, ENV/KEY (default: the first feature of the first environment).
    #[arg(long)]
    feature: Option<String>,
    /// Body size of an nchan message (match the relay's event size).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Server process ids to account CPU and RSS for (comma-separated, repeatable).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Seconds to stay idle after connecting, to measure idle CPU (heartbeats included).
    #[arg(long, default_value_t = 0.0)]
    idle_secs: f64,
    /// Wait after the file trigger's first write and after connecting, before sampling (ms).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Pause after a change is fully delivered before the next one (ms).
    #[arg(long, default_value_t = 300)]
    gap_ms: u64,
    /// Give up waiting for a change after this long (ms).
    #[arg(long, default_value_t = 10_000)]
    change_timeout_ms: u64,
    /// Give up waiting for the initial states after this long (s).
    #[arg(long, default_value_t = 300)]
    connect_timeout_secs: u64,
    /// Connections being opened at once (per client process).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Busy-poll for events instead of sleeping when none is ready, so the server never has to
    /// wake the reader (like the floor program's reader, which is nearly always busy reading).
    /// Takes a whole cpu: for runs where the tool has one to itself (1 server core).
    #[arg(long)]
    spin: bool,
    /// A client is ready after its first event with data (`data`), or after any event (`any`,
    /// e.g. nchan's `: hi`). Default: `any` for the nchan trigger, else `data`.
    #[arg(long)]
    ready: Option<String>,
    /// Label for the report (e.g. "nchan 1 core").
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    child: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    child_offset: usize,
    #[arg(long, hide = true, default_value = "")]
    run_id: String,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn resolve(url: &trigger::Url) -> anyhow::Result<SocketAddr> {
    (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| anyhow!("cannot resolve {}", url.host))
}

fn ready_any(a: &RunArgs) -> bool {
    match a.ready.as_deref() {
        Some("any") => true,
        Some(_) => false,
        None => a.trigger.starts_with("nchan:"),
    }
}

fn child_main(a: RunArgs) -> anyhow::Result<()> {
    sys::ignore_interrupts();
    sys::raise_nofile()?;
    let url = trigger::parse_url(&a.url)?;
    // One request per context group (one without --contexts): client j sends requests[j % G].
    let requests = (0..a.contexts.max(1))
        .map(|g| {
            let mut req = format!(
                "GET {} HTTP/1.1\r\nHost: {}:{}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: flagrelay-load\r\n",
                ctx::expand(&url.path, g, a.contexts),
                url.host,
                url.port
            );
            if let Some(k) = &a.key {
                req.push_str(&format!("Authorization: Bearer {k}\r\n"));
            }
            req.push_str("\r\n");
            req.into_bytes()
        })
        .collect();
    client::run(client::ClientCfg {
        url: a.url.clone(),
        addr: resolve(&url)?,
        requests,
        sources: a.sources.clone(),
        offset: a.child_offset,
        clients: a.clients,
        changes: a.changes,
        concurrency: a.connect_concurrency,
        spin: a.spin,
        parse: sse::ParseCfg { marker: format!("FLM{}-", a.run_id).into_bytes(), ready_any: ready_any(&a) },
    })
}

/// The run ended on a signal: exit status 128 + `number`.
#[derive(Debug)]
struct Interrupted {
    name: &'static str,
    number: u8,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.name)
    }
}

impl std::error::Error for Interrupted {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Compare { baseline, other }) => report::compare(&baseline, &other),
        Some(Cmd::Summary { reports }) => report::summary(&reports),
        None if cli.run.child => child_main(cli.run),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(coordinate(cli.run))),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(i) => {
                eprintln!("flagrelay-load: {i}");
                std::process::ExitCode::from(128 + i.number)
            }
            None => {
                eprintln!("flagrelay-load: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

enum Msg {
    Line(usize, String),
    Gone(usize),
}

struct Children {
    pids: Vec<u32>,
    stdins: Vec<tokio::process::ChildStdin>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Killed on drop: a run that stops for any reason takes its clients with it.
    _procs: Vec<tokio::process::Child>,
}

fn spawn_children(a: &RunArgs, run_id: &str) -> anyhow::Result<Children> {
    let exe = std::env::current_exe()?;
    let procs = a.procs.max(1).min(a.clients.max(1));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut out = Children { pids: Vec::new(), stdins: Vec::new(), rx, _procs: Vec::new() };
    let mut offset = 0;
    for i in 0..procs {
        let n = a.clients / procs + usize::from(i < a.clients % procs);
        let mut cmd = match &a.client_cpus {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => tokio::process::Command::new(&exe),
        };
        cmd.arg("--child")
            .arg("--url").arg(&a.url)
            .arg("--contexts").arg(a.contexts.to_string())
            .arg("--clients").arg(n.to_string())
            .arg("--changes").arg(a.changes.to_string())
            .arg("--trigger").arg(&a.trigger)
            .arg("--connect-concurrency").arg(a.connect_concurrency.to_string())
            .args(a.spin.then_some("--spin"))
            .arg("--child-offset").arg(offset.to_string())
            .arg("--run-id").arg(run_id)
            .arg("--ready").arg(if ready_any(a) { "any" } else { "data" });
        if let Some(k) = &a.key {
            cmd.env("FLAGRELAY_LOAD_KEY", k);
        } else {
            cmd.env_remove("FLAGRELAY_LOAD_KEY");
        }
        if !a.sources.is_empty() {
            let s: Vec<String> = a.sources.iter().map(|s| s.to_string()).collect();
            cmd.arg("--sources").arg(s.join(","));
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().context("starting a client process")?;
        out.pids.push(child.id().unwrap_or(0));
        out.stdins.push(child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?);
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(Msg::Line(i, l)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::Gone(i));
        });
        out._procs.push(child);
        offset += n;
    }
    Ok(out)
}

/// What the coordinator knows of its clients, from every line they sent so far (in any phase:
/// a client that fails while connecting reports its changes as done at once).
struct Live {
    clients: usize,
    allow_failed: usize,
    tty: bool,
    /// Per process: the last counts it sent, and whether it sent `R`.
    counts: Vec<(usize, usize, usize)>,
    settled: Vec<bool>,
    first_error: Option<String>,
    /// The first error arrived and is not printed yet.
    announce: bool,
    dropped_shown: usize,
    /// Processes that reported change i as done.
    done: Vec<usize>,
    results: Vec<Option<client::ChildResult>>,
}

impl Live {
    fn new(a: &RunArgs, nprocs: usize, tty: bool) -> Live {
        Live {
            clients: a.clients,
            allow_failed: a.allow_failed,
            tty,
            counts: vec![(0, 0, 0); nprocs],
            settled: vec![false; nprocs],
            first_error: None,
            announce: false,
            dropped_shown: 0,
            done: vec![0; a.changes + 1],
            results: (0..nprocs).map(|_| None).collect(),
        }
    }

    fn totals(&self) -> Counts {
        let mut c = Counts { clients: self.clients, ..Counts::default() };
        for &(r, f, d) in &self.counts {
            c.ready += r;
            c.failed += f;
            c.dropped += d;
        }
        c
    }

    fn first(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    fn all_settled(&self) -> bool {
        self.settled.iter().all(|s| *s)
    }

    /// `; first: …` for an error about the processes themselves.
    fn because(&self) -> String {
        self.first().map(|e| format!("; first client error: {e}")).unwrap_or_default()
    }

    fn handle(&mut self, msg: Msg, phase: &str) -> anyhow::Result<()> {
        match msg {
            Msg::Line(i, l) => match Line::parse(&l) {
                Some(Line::Progress { ready, failed, dropped }) => self.counts[i] = (ready, failed, dropped),
                Some(Line::Ready { ready, failed, dropped }) => {
                    self.counts[i] = (ready, failed, dropped);
                    self.settled[i] = true;
                }
                Some(Line::FirstError(t)) if self.first_error.is_none() => {
                    self.first_error = Some(t);
                    self.announce = true;
                }
                Some(Line::Done(j)) => {
                    if let Some(d) = self.done.get_mut(j) {
                        *d += 1;
                    }
                }
                Some(Line::Result(j)) => {
                    let r: client::ChildResult = serde_json::from_str(&j).context("a client process's result")?;
                    self.counts[i] = (r.ready, r.failed, r.dropped);
                    self.results[i] = Some(r);
                }
                Some(Line::FirstError(_)) | None => {}
            },
            Msg::Gone(i) if self.results[i].is_none() => bail!("client process {i} exited {phase}{}", self.because()),
            Msg::Gone(_) => {}
        }
        Ok(())
    }

    /// The next message before `deadline`, handled; `false` at the deadline.
    async fn next(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, deadline: tokio::time::Instant, phase: &str) -> anyhow::Result<bool> {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => Ok(false),
            Ok(Some(m)) => {
                self.handle(m, phase)?;
                self.show_news();
                Ok(true)
            }
            Ok(None) => bail!("client processes gone {phase}{}", self.because()),
        }
    }

    /// Prints the first error once, as soon as it is known, and each new lost stream.
    fn show_news(&mut self) {
        if self.announce {
            self.announce = false;
            if let Some(e) = &self.first_error {
                eprintln!("{}first failure: {e}", if self.tty { "\n" } else { "" });
            }
        }
        let d = self.totals().dropped;
        if d > self.dropped_shown && self.settled.iter().any(|s| *s) {
            self.dropped_shown = d;
            eprintln!("streams ended so far: {d}");
        }
    }

    /// After connecting: stop once lost streams are more than allowed.
    fn check_run(&self) -> anyhow::Result<()> {
        verdict::during_run(&self.totals(), self.allow_failed, self.first()).map_err(|e| anyhow!(e))
    }

    /// Handles messages until `deadline` (an idle or settle period), checking for lost streams.
    async fn pump_until(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, deadline: tokio::time::Instant, phase: &str) -> anyhow::Result<()> {
        while self.next(rx, deadline, phase).await? {
            self.check_run()?;
        }
        self.check_run()
    }
}

async fn coordinate(a: RunArgs) -> anyhow::Result<()> {
    if a.clients == 0 {
        bail!("--clients must be > 0");
    }
    // The URL's errors once, here, not once per client process.
    ctx::check(&a.url, a.contexts, a.clients).map_err(|e| anyhow!(e))?;
    let url = trigger::parse_url(&a.url)?;
    resolve(&url).with_context(|| format!("resolving {}", a.url))?;
    let mut trig = trigger::Trigger::parse(&a.trigger, a.feature.as_deref(), a.payload_bytes, a.redis_prefix.as_deref(), a.marker_in).await?;
    // From here on a signal ends the run, not the process: the file trigger's file goes back.
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let outcome = tokio::select! {
        biased;
        _ = sigint.recv() => Err(anyhow::Error::new(Interrupted { name: "SIGINT", number: 2 })),
        _ = sigterm.recv() => Err(anyhow::Error::new(Interrupted { name: "SIGTERM", number: 15 })),
        r = measure(a, &mut trig) => r,
    };
    // The run's future is gone (and its client processes killed): put back what it changed.
    match trig.restore() {
        Ok(Some(p)) => eprintln!("flagrelay-load: put {} back as it was", p.display()),
        Ok(None) => {}
        Err(e) => {
            let msg = format!("could not put the file trigger's file back: {e}");
            match outcome {
                Ok(()) => bail!(msg),
                Err(_) => eprintln!("flagrelay-load: error: {msg}"),
            }
        }
    }
    outcome
}

async fn measure(mut a: RunArgs, trig: &mut trigger::Trigger) -> anyhow::Result<()> {
    if matches!(trig, trigger::Trigger::None) && a.changes > 0 {
        eprintln!("no --trigger: no change phase");
        a.changes = 0;
    }
    let run_id = format!("{:08x}", (now_ns() as u64 ^ (std::process::id() as u64) << 32) as u32);
    let settle = Duration::from_millis(a.settle_ms);
    if matches!(trig, trigger::Trigger::File { .. } | trigger::Trigger::Redis { .. }) {
        // Marker 0: the state every client starts from (no clients yet: nothing to watch).
        trig.fire(&format!("FLM{run_id}-0")).await?;
        tokio::time::sleep(settle).await;
    }
    let server0 = procfs::sample(&a.pids);
    let t_connect = Instant::now();
    let mut ch = spawn_children(&a, &run_id)?;
    let nprocs = ch.pids.len();
    let gen0 = procfs::sample(&ch.pids);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut live = Live::new(&a, nprocs, tty);
    let rx = &mut ch.rx;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.connect_timeout_secs);
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let progress = |live: &Live| {
        let c = live.totals();
        let line = format!("connecting: {}/{} ready, {} failed, {:.1} s", c.ready, c.clients, c.failed, t_connect.elapsed().as_secs_f64());
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    };
    while !live.all_settled() {
        if !live.next(rx, deadline, "while connecting").await? {
            if tty {
                eprintln!();
            }
            bail!(verdict::connect_timed_out(&live.totals(), a.connect_timeout_secs, live.first()));
        }
        if last_print.elapsed() >= Duration::from_millis(250) {
            last_print = Instant::now();
            progress(&live);
        }
    }
    progress(&live);
    if tty {
        eprintln!();
    }
    match verdict::after_connect(&live.totals(), a.allow_failed, live.first()) {
        Err(e) => bail!(e),
        Ok(Some(w)) => eprintln!("flagrelay-load: warning: {w}"),
        Ok(None) => {}
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    live.pump_until(rx, tokio::time::Instant::now() + settle, "while settling").await?;
    let server1 = procfs::sample(&a.pids);
    let gen1 = procfs::sample(&ch.pids);

    // Idle.
    let t_idle = Instant::now();
    let busy1 = procfs::system_busy_s();
    if a.idle_secs > 0.0 {
        eprintln!("idle for {} s ...", a.idle_secs);
        let idle = Duration::try_from_secs_f64(a.idle_secs).context("--idle-secs")?;
        live.pump_until(rx, tokio::time::Instant::now() + idle, "while idle").await?;
    }
    let idle_secs = t_idle.elapsed().as_secs_f64();
    let server2 = procfs::sample(&a.pids);
    let gen2 = procfs::sample(&ch.pids);
    let busy2 = procfs::system_busy_s();

    // Changes.
    let mut rows = Vec::new();
    let t_changes = Instant::now();
    for i in 1..=a.changes {
        let s_before = procfs::sample(&a.pids);
        let g_before = procfs::sample(&ch.pids);
        let t0 = now_ns();
        let t0_mono = Instant::now();
        let took = trig.fire(&format!("FLM{run_id}-{i}")).await.with_context(|| format!("change {i}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(a.change_timeout_ms);
        let mut timed_out = false;
        while live.done[i] < nprocs {
            if !live.next(rx, deadline, "during the changes").await? {
                timed_out = true;
                break;
            }
            live.check_run()?;
        }
        let wall_done = t0_mono.elapsed().as_secs_f64() * 1e3;
        live.pump_until(rx, tokio::time::Instant::now() + Duration::from_millis(a.gap_ms), "during the changes").await?;
        let s_after = procfs::sample(&a.pids);
        let g_after = procfs::sample(&ch.pids);
        rows.push(ChangeRow {
            change: i,
            trigger_ns: t0,
            trigger_ms: took.as_secs_f64() * 1e3,
            timed_out,
            wait_ms: wall_done,
            server_cpu_ms: s_after.since(&s_before).map(|c| c.sched_s * 1e3),
            client_cpu_ms: g_after.since(&g_before).map(|c| c.sched_s * 1e3),
            ..Default::default()
        });
        if timed_out {
            eprintln!("change {i}: not every client received it within {} ms", a.change_timeout_ms);
        }
    }
    let changes_secs = t_changes.elapsed().as_secs_f64();
    let server3 = procfs::sample(&a.pids);
    let gen3 = procfs::sample(&ch.pids);
    let busy3 = procfs::system_busy_s();

    // Collect.
    for s in ch.stdins.iter_mut() {
        let _ = s.write_all(b"E\n").await;
        let _ = s.flush().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while live.results.iter().any(Option::is_none) {
        if !live.next(rx, deadline, "without a result").await? {
            bail!("client processes did not report their results within 60 s");
        }
    }
    let results: Vec<client::ChildResult> = std::mem::take(&mut live.results).into_iter().flatten().collect();
    let timed_out = rows.iter().filter(|r| r.timed_out).count();
    let rep = Report::build(report::Inputs {
        label: a.label.clone(),
        url: a.url.clone(),
        trigger: a.trigger.clone(),
        clients: a.clients,
        procs: nprocs,
        sources: a.sources.iter().map(|s| s.to_string()).collect(),
        server_pids: a.pids.clone(),
        connect_secs,
        idle_secs,
        changes_secs,
        server: [server0, server1, server2, server3],
        generator: [gen0, gen1, gen2, gen3],
        rows,
        results,
        system_busy_s: [busy1, busy2, busy3],
        cores: sys::online_cpus(),
    });
    if let Some(p) = &a.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.human());
    }
    verdict::after_changes(timed_out, a.changes, a.change_timeout_ms).map_err(|e| anyhow!(e))
}
