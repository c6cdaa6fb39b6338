//! The report: per-change first/last receipt, latency percentiles, server and generator CPU/RSS;
//! a human table, JSON, and the ratios of two JSON reports.
//!
//! A figure is printed only when it was measured: one derived from no samples (no deliveries,
//! no ready client, no `--pid`), over a window too short for its counter's resolution, from
//! counters that went backwards, or beyond what the machine's CPUs can do, is `None` (JSON
//! `null`, printed `n/a`), never 0, NaN or inf. The decisions are the small functions
//! [`finite`], [`share_pct`], [`per_unit`] and [`show`].

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::client::ChildResult;
use super::procfs::{counter_delta, Sample};

/// The shortest window over which a CPU share from clock ticks (10 ms) is a figure: a tick in
/// 1 s is 1 % of a core. The thread schedstat counters (ns) need less, see [`SCHED_WINDOW_S`].
pub const TICK_WINDOW_S: f64 = 1.0;
pub const SCHED_WINDOW_S: f64 = 0.05;

/// `v` if it is a number (not NaN or infinite).
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `cpu_s` of CPU over `wall_s` of wall time in % of one core, on a machine of `cores` CPUs.
/// `None` when the window is shorter than `min_wall_s` or the share is impossible (below 0 or
/// above `cores` x 100 % by more than a tenth of that: a counter that is not what it seems);
/// within that slack it is clamped to [0, cores x 100].
pub fn share_pct(cpu_s: f64, wall_s: f64, min_wall_s: f64, cores: u32) -> Option<f64> {
    if !(wall_s.is_finite() && wall_s >= min_wall_s && wall_s > 0.0) {
        return None;
    }
    let pct = finite(cpu_s * 100.0 / wall_s)?;
    let cap = f64::from(cores.max(1)) * 100.0;
    let slack = cap * 0.1;
    if pct < -slack || pct > cap + slack {
        return None;
    }
    Some(pct.clamp(0.0, cap))
}

/// `total` x `scale` / `n`: `None` without samples or for a total that is not a count of
/// something (negative, not finite).
pub fn per_unit(total: Option<f64>, n: usize, scale: f64) -> Option<f64> {
    let t = total.and_then(finite).filter(|t| *t >= 0.0)?;
    (n > 0).then(|| t * scale / n as f64).and_then(finite)
}

/// A figure with `prec` decimals, or `n/a`.
pub fn show(v: Option<f64>, prec: usize) -> String {
    match v.and_then(finite) {
        Some(x) => format!("{x:.prec$}"),
        None => "n/a".to_string(),
    }
}

/// A share with its unit (`3.2 %`), or `n/a`.
pub fn show_pct(v: Option<f64>, prec: usize) -> String {
    match v.and_then(finite) {
        Some(_) => format!("{} %", show(v, prec)),
        None => "n/a".to_string(),
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeRow {
    pub change: usize,
    #[serde(skip)]
    pub trigger_ns: i64,
    /// How long the trigger action itself took (file write+rename, or the nchan POST round trip).
    pub trigger_ms: f64,
    pub timed_out: bool,
    /// Trigger to the coordinator learning that every client had it.
    pub wait_ms: f64,
    /// Trigger to the first / last kernel receipt (none without a delivery).
    pub first_ms: Option<f64>,
    pub last_ms: Option<f64>,
    /// First to last receipt.
    pub spread_ms: Option<f64>,
    pub delivered: usize,
    pub skipped: usize,
    /// Server / client-process CPU from before the trigger to after the gap (none without a
    /// complete pair of samples).
    pub server_cpu_ms: Option<f64>,
    pub client_cpu_ms: Option<f64>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Pcts {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of the finite values of `v`; `None` if there are none.
fn pcts(v: &mut Vec<f64>) -> Option<Pcts> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Pcts { p50: at(0.50), p99: at(0.99), max: v[v.len() - 1] })
}

/// The quantiles at which [`Report::latency_cdf_ms`] samples the distribution: every percent, and
/// every per mille above 99 %.
pub fn cdf_quantiles() -> impl Iterator<Item = f64> {
    (0..=100).map(|p| p as f64 / 100.0).chain((991..=999).map(|m| m as f64 / 1000.0))
}

/// `[quantile, value]` pairs of a sorted, finite `v` (the nearest-rank value, as in [`pcts`]),
/// in ascending quantile order; empty if `v` is.
fn cdf(v: &[f64]) -> Vec<[f64; 2]> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut q: Vec<f64> = cdf_quantiles().collect();
    q.sort_by(|a, b| a.total_cmp(b));
    q.into_iter().map(|q| [q, v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]]).collect()
}

fn median(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = v.flatten().collect();
    pcts(&mut v).map(|p| p.p50)
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Procs {
    pub rss_before_mb: Option<f64>,
    pub rss_connected_mb: Option<f64>,
    pub rss_after_mb: Option<f64>,
    /// (RSS connected - RSS before) / ready clients.
    pub rss_per_conn_kb: Option<f64>,
    /// The same of RssAnon (heap, without file-backed pages).
    pub anon_per_conn_kb: Option<f64>,
    pub connect_cpu_s: Option<f64>,
    /// Over `--idle-secs` (none for an idle phase under [`TICK_WINDOW_S`]).
    pub idle_cpu_s: Option<f64>,
    pub idle_cpu_pct_of_core: Option<f64>,
    /// From just before the first change to after the last (per-thread schedstat, ns resolution).
    pub changes_cpu_s: Option<f64>,
    /// The same from /proc/PID/stat utime+stime (clock ticks).
    pub changes_cpu_stat_s: Option<f64>,
    pub cpu_per_delivery_us: Option<f64>,
    /// Minus the idle rate over the change phase (only when --idle-secs was given).
    pub cpu_per_delivery_net_idle_us: Option<f64>,
    /// Changes-phase CPU / changes-phase wall time.
    pub changes_utilisation_pct: Option<f64>,
    pub threads: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub trigger: String,
    pub clients: usize,
    pub procs: usize,
    pub sources: Vec<String>,
    pub server_pids: Vec<u32>,
    pub ready: usize,
    pub failed: usize,
    pub dropped: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    pub idle_secs: f64,
    pub changes_secs: f64,
    pub heartbeats: u64,
    pub frame_bytes_min: Option<u32>,
    pub frame_bytes_max: Option<u32>,
    pub deliveries: usize,
    pub skipped: usize,
    pub kernel_ts_missing: u64,
    /// Receipts stamped before their trigger, or read before their kernel stamp: the clock was
    /// stepped. Left out of every latency.
    pub clock_anomalies: usize,
    pub first_ms_median: Option<f64>,
    pub last_ms_median: Option<f64>,
    pub spread_ms_median: Option<f64>,
    /// Kernel receipt minus trigger, over all deliveries.
    pub latency_ms: Option<Pcts>,
    /// The distribution of `latency_ms`: `[quantile, ms]` at every percent and every per mille
    /// above 99 % ([`cdf_quantiles`]); empty without deliveries. `benches/plots.py` draws it.
    pub latency_cdf_ms: Vec<[f64; 2]>,
    /// Kernel receipt minus the change's first receipt (the fan-out alone).
    pub latency_from_first_ms: Option<Pcts>,
    /// The generator's read time minus the kernel receipt time: its own lag.
    pub generator_lag_ms: Option<Pcts>,
    pub server: Procs,
    pub generator: Procs,
    /// CPU used by neither the server nor the generator (other processes, interrupts), in % of
    /// one core, during the idle and the change phases: high values mean a disturbed run. None
    /// for a phase under [`TICK_WINDOW_S`]; without `--pid` the server's own CPU is in it.
    pub other_load_idle_pct: Option<f64>,
    pub other_load_changes_pct: Option<f64>,
    pub changes: Vec<ChangeRow>,
}

pub struct Inputs {
    pub label: String,
    pub url: String,
    pub trigger: String,
    pub clients: usize,
    pub procs: usize,
    pub sources: Vec<String>,
    pub server_pids: Vec<u32>,
    pub connect_secs: f64,
    pub idle_secs: f64,
    pub changes_secs: f64,
    /// Before connecting, connected, after idle, after changes.
    pub server: [Sample; 4],
    pub generator: [Sample; 4],
    pub rows: Vec<ChangeRow>,
    pub results: Vec<ChildResult>,
    /// Whole-machine busy CPU seconds: connected, after idle, after changes.
    pub system_busy_s: [Option<f64>; 3],
    /// CPUs online: the ceiling of any CPU share.
    pub cores: u32,
}

fn procs(s: &[Sample; 4], ready: usize, deliveries: usize, idle_secs: f64, changes: Option<f64>, cores: u32) -> Procs {
    let mb = |b: Option<u64>| b.map(|b| b as f64 / (1024.0 * 1024.0));
    let idle = s[2].since(&s[1]).filter(|_| idle_secs >= TICK_WINDOW_S);
    // No change phase (no trigger, or -m 0): no change figures, not zeros.
    let ch = changes.and_then(|_| s[3].since(&s[2]));
    let changes_secs = changes.unwrap_or(0.0);
    let changes_cpu_s = ch.map(|c| c.sched_s);
    let net_idle = match (idle, changes_cpu_s) {
        (Some(i), Some(c)) => finite(i.sched_s / idle_secs).map(|rate| (c - rate * changes_secs).max(0.0)),
        _ => None,
    };
    Procs {
        rss_before_mb: mb(s[0].rss()),
        rss_connected_mb: mb(s[1].rss()),
        rss_after_mb: mb(s[3].rss()),
        rss_per_conn_kb: match (s[0].rss(), s[1].rss()) {
            (Some(a), Some(b)) if ready > 0 => finite((b as f64 - a as f64) / 1024.0 / ready as f64),
            _ => None,
        },
        anon_per_conn_kb: match (s[0].anon(), s[1].anon()) {
            (Some(a), Some(b)) if ready > 0 => finite((b as f64 - a as f64) / 1024.0 / ready as f64),
            _ => None,
        },
        connect_cpu_s: s[1].since(&s[0]).map(|c| c.sched_s),
        idle_cpu_s: idle.map(|c| c.sched_s),
        idle_cpu_pct_of_core: idle.and_then(|c| share_pct(c.sched_s, idle_secs, TICK_WINDOW_S, cores)),
        changes_cpu_s,
        changes_cpu_stat_s: ch.map(|c| c.stat_s),
        cpu_per_delivery_us: per_unit(changes_cpu_s, deliveries, 1e6),
        cpu_per_delivery_net_idle_us: per_unit(net_idle, deliveries, 1e6),
        changes_utilisation_pct: changes_cpu_s.and_then(|c| share_pct(c, changes_secs, SCHED_WINDOW_S, cores)),
        threads: s[3].complete().then_some(s[3].threads),
    }
}

/// Machine busy time minus the server's and the generator's over `wall_s`, in % of a core.
/// `server` is `Some(0)` when there is no `--pid` to subtract.
fn other_load(busy: (Option<f64>, Option<f64>), wall_s: f64, server: Option<f64>, generator: Option<f64>, cores: u32) -> Option<f64> {
    let b = counter_delta(busy.0?, busy.1?)?;
    share_pct(b - server? - generator?, wall_s, TICK_WINDOW_S, cores)
}

impl Report {
    pub fn build(inp: Inputs) -> Report {
        let mut rows = inp.rows;
        let mut lat = Vec::new();
        let mut from_first = Vec::new();
        let mut lag = Vec::new();
        let mut r = Report {
            label: inp.label,
            url: inp.url,
            trigger: inp.trigger,
            clients: inp.clients,
            procs: inp.procs,
            sources: inp.sources,
            server_pids: inp.server_pids,
            connect_secs: inp.connect_secs,
            idle_secs: inp.idle_secs,
            changes_secs: inp.changes_secs,
            ..Default::default()
        };
        for c in &inp.results {
            r.ready += c.ready;
            r.failed += c.failed;
            r.dropped += c.dropped;
            r.heartbeats += c.heartbeats;
            r.kernel_ts_missing += c.kernel_ts_missing;
            if c.frame_bytes_max > 0 {
                r.frame_bytes_max = r.frame_bytes_max.max(Some(c.frame_bytes_max));
            }
            if c.frame_bytes_min > 0 {
                r.frame_bytes_min = Some(r.frame_bytes_min.map_or(c.frame_bytes_min, |m| m.min(c.frame_bytes_min)));
            }
            if r.first_error.is_none() {
                r.first_error.clone_from(&c.first_error);
            }
        }
        for row in rows.iter_mut() {
            let i = row.change;
            let t0 = row.trigger_ns;
            let mut first = i64::MAX;
            let mut last = i64::MIN;
            for c in &inp.results {
                let Some(ch) = c.changes.get(i) else { continue };
                row.delivered += ch.kernel.len();
                row.skipped += ch.skipped;
                for (&k, &u) in ch.kernel.iter().zip(&ch.user) {
                    if k < t0 || u < k {
                        r.clock_anomalies += 1;
                        continue;
                    }
                    first = first.min(k);
                    last = last.max(k);
                    lat.push((k - t0) as f64 / 1e6);
                    lag.push((u - k) as f64 / 1e6);
                }
            }
            if first <= last {
                row.first_ms = Some((first - t0) as f64 / 1e6);
                row.last_ms = Some((last - t0) as f64 / 1e6);
                row.spread_ms = Some((last - first) as f64 / 1e6);
                for c in &inp.results {
                    if let Some(ch) = c.changes.get(i) {
                        from_first.extend(ch.kernel.iter().filter(|&&k| k >= first).map(|&k| (k - first) as f64 / 1e6));
                    }
                }
            }
            r.deliveries += row.delivered;
            r.skipped += row.skipped;
        }
        r.first_ms_median = median(rows.iter().map(|x| x.first_ms));
        r.last_ms_median = median(rows.iter().map(|x| x.last_ms));
        r.spread_ms_median = median(rows.iter().map(|x| x.spread_ms));
        r.latency_ms = pcts(&mut lat);
        r.latency_cdf_ms = cdf(&lat); // pcts sorted it and left only the finite values
        r.latency_from_first_ms = pcts(&mut from_first);
        r.generator_lag_ms = pcts(&mut lag);
        let changes = (!rows.is_empty()).then_some(r.changes_secs);
        r.server = procs(&inp.server, r.ready, r.deliveries, r.idle_secs, changes, inp.cores);
        r.generator = procs(&inp.generator, r.ready, r.deliveries, r.idle_secs, changes, inp.cores);
        let srv = |v: Option<f64>| if r.server_pids.is_empty() { Some(0.0) } else { v };
        let b = inp.system_busy_s;
        r.other_load_idle_pct = other_load((b[0], b[1]), r.idle_secs, srv(r.server.idle_cpu_s), r.generator.idle_cpu_s, inp.cores);
        r.other_load_changes_pct = match changes {
            Some(secs) => other_load((b[1], b[2]), secs, srv(r.server.changes_cpu_s), r.generator.changes_cpu_s, inp.cores),
            None => None,
        };
        r.changes = rows;
        r
    }

    pub fn human(&self) -> String {
        let mut o = String::new();
        let s = &self.server;
        let g = &self.generator;
        let _ = writeln!(o, "flagrelay-load {}", if self.label.is_empty() { "" } else { &self.label });
        let _ = writeln!(o, "  url {}  trigger {}", self.url, self.trigger);
        let _ = writeln!(
            o,
            "  clients {} ({} ready, {} failed, {} dropped) in {} process(es), sources {}; connected in {:.1} s",
            self.clients,
            self.ready,
            self.failed,
            self.dropped,
            self.procs,
            if self.sources.is_empty() { "default".to_string() } else { self.sources.join(",") },
            self.connect_secs
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(o, "  first error: {e}");
        }
        let mb = |v: Option<f64>| show(v, 1);
        if self.changes.is_empty() {
            let _ = writeln!(o, "  no change phase");
        } else {
            let frame = match (self.frame_bytes_min, self.frame_bytes_max) {
                (Some(a), Some(b)) => format!("{a}..{b} bytes (SSE framing included)"),
                _ => "n/a (no deliveries)".to_string(),
            };
            let _ = writeln!(o, "  change frame {frame}");
            let _ = writeln!(o);
            let _ = writeln!(o, "  change  trigger ms  first ms  last ms  spread ms  delivered  skipped  server CPU ms");
            for c in &self.changes {
                let _ = writeln!(
                    o,
                    "  {:>6}  {:>10.2}  {:>8}  {:>7}  {:>9}  {:>9}  {:>7}  {:>13}{}",
                    c.change,
                    c.trigger_ms,
                    show(c.first_ms, 2),
                    show(c.last_ms, 2),
                    show(c.spread_ms, 2),
                    c.delivered,
                    c.skipped,
                    show(c.server_cpu_ms, 1),
                    if c.timed_out { "  TIMED OUT" } else { "" }
                );
            }
            let _ = writeln!(
                o,
                "  median  {:>10}  {:>8}  {:>7}  {:>9}",
                "",
                show(self.first_ms_median, 2),
                show(self.last_ms_median, 2),
                show(self.spread_ms_median, 2)
            );
            let _ = writeln!(o);
            let p = |x: &Option<Pcts>| match x {
                Some(x) => format!("p50 {:.2}  p99 {:.2}  max {:.2} ms", x.p50, x.p99, x.max),
                None => "n/a".to_string(),
            };
            let _ = writeln!(o, "  latency over {} deliveries, trigger -> kernel receipt: {}", self.deliveries, p(&self.latency_ms));
            let _ = writeln!(o, "  latency from the change's first receipt:          {}", p(&self.latency_from_first_ms));
            let _ = writeln!(o, "  generator lag (its read - kernel receipt):        {}", p(&self.generator_lag_ms));
            if self.clock_anomalies > 0 {
                let _ = writeln!(o, "  {} receipts left out: stamped before their trigger (the clock was stepped)", self.clock_anomalies);
            }
        }
        let _ = writeln!(o);
        if self.server_pids.is_empty() {
            let _ = writeln!(o, "  server: no --pid given, no CPU or RSS figures");
        } else {
            let _ = writeln!(
                o,
                "  server pids {:?} ({} threads)",
                self.server_pids,
                s.threads.map_or("n/a".to_string(), |t| t.to_string())
            );
            let _ = writeln!(
                o,
                "    RSS {} MB -> {} MB connected -> {} MB after changes: {} KB per connection ({} KB of it anonymous: heap)",
                mb(s.rss_before_mb),
                mb(s.rss_connected_mb),
                mb(s.rss_after_mb),
                show(s.rss_per_conn_kb, 2),
                show(s.anon_per_conn_kb, 2)
            );
            let _ = writeln!(o, "    connect CPU {} s", show(s.connect_cpu_s, 3));
            if self.idle_secs >= TICK_WINDOW_S {
                let _ = writeln!(
                    o,
                    "    idle {:.1} s: CPU {} s = {} of a core ({} heartbeats received)",
                    self.idle_secs,
                    show(s.idle_cpu_s, 4),
                    show_pct(s.idle_cpu_pct_of_core, 3),
                    self.heartbeats
                );
            }
            if !self.changes.is_empty() {
                let _ = writeln!(
                    o,
                    "    changes: CPU {} s (stat {} s) over {:.2} s = {} µs per delivered message{}",
                    show(s.changes_cpu_s, 4),
                    show(s.changes_cpu_stat_s, 2),
                    self.changes_secs,
                    show(s.cpu_per_delivery_us, 2),
                    s.cpu_per_delivery_net_idle_us.map(|v| format!(" ({v:.2} net of idle)")).unwrap_or_default()
                );
            }
        }
        if !self.changes.is_empty() {
            let _ = writeln!(
                o,
                "  generator ({} process(es)): RSS {} KB per connection; changes CPU {} s = {} µs per delivery, {} of a core over the phase",
                self.procs,
                show(g.rss_per_conn_kb, 2),
                show(g.changes_cpu_s, 4),
                show(g.cpu_per_delivery_us, 2),
                show_pct(g.changes_utilisation_pct, 1)
            );
        } else {
            let _ = writeln!(o, "  generator ({} process(es)): RSS {} KB per connection", self.procs, show(g.rss_per_conn_kb, 2));
        }
        let _ = writeln!(
            o,
            "  other load on the machine{}: {} of a core while idle, {} during the changes",
            if self.server_pids.is_empty() { " (the server's own CPU included: no --pid)" } else { "" },
            show_pct(self.other_load_idle_pct, 1),
            show_pct(self.other_load_changes_pct, 1)
        );
        o
    }
}

/// Ratios OTHER / BASELINE of the headline figures of two JSON reports.
pub fn compare(baseline: &str, other: &str) -> anyhow::Result<()> {
    let load = |p: &str| -> anyhow::Result<Report> { Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?) };
    let (b, x) = (load(baseline)?, load(other)?);
    let name = |r: &Report, p: &str| if r.label.is_empty() { p.to_string() } else { r.label.clone() };
    let (bn, xn) = (name(&b, baseline), name(&x, other));
    println!("{:<42} {:>14} {:>14} {:>8}", "", bn, xn, "ratio");
    let row = |what: &str, bv: Option<f64>, xv: Option<f64>| {
        println!("{what:<42} {:>14} {:>14} {:>8}", show(bv, 2), show(xv, 2), ratio(bv, xv));
    };
    let n = |v: usize| Some(v as f64);
    let frame = |v: Option<u32>| v.map(f64::from);
    row("clients ready", n(b.ready), n(x.ready));
    row("change frame bytes (max)", frame(b.frame_bytes_max), frame(x.frame_bytes_max));
    row("CPU per delivered message (µs)", b.server.cpu_per_delivery_us, x.server.cpu_per_delivery_us);
    row("trigger -> last client, median (ms)", b.last_ms_median, x.last_ms_median);
    row("first -> last client, median (ms)", b.spread_ms_median, x.spread_ms_median);
    let lat = |r: &Report, f: fn(&Pcts) -> f64| r.latency_ms.as_ref().map(f);
    row("latency p50 from trigger (ms)", lat(&b, |p| p.p50), lat(&x, |p| p.p50));
    row("latency p99 from trigger (ms)", lat(&b, |p| p.p99), lat(&x, |p| p.p99));
    row("latency max from trigger (ms)", lat(&b, |p| p.max), lat(&x, |p| p.max));
    let ff = |r: &Report| r.latency_from_first_ms.as_ref().map(|p| p.p99);
    row("latency p99 from first receipt (ms)", ff(&b), ff(&x));
    row("RSS per connection (KB)", b.server.rss_per_conn_kb, x.server.rss_per_conn_kb);
    if b.idle_secs >= TICK_WINDOW_S || x.idle_secs >= TICK_WINDOW_S {
        row("idle CPU (% of a core)", b.server.idle_cpu_pct_of_core, x.server.idle_cpu_pct_of_core);
    }
    Ok(())
}

/// OTHER / BASELINE with two decimals, or `-` when either is missing or the baseline is 0.
pub fn ratio(baseline: Option<f64>, other: Option<f64>) -> String {
    match (baseline.and_then(finite), other.and_then(finite)) {
        (Some(b), Some(x)) if b != 0.0 => show(finite(x / b), 2),
        _ => "-".to_string(),
    }
}

/// A markdown table, one row per JSON report.
pub fn summary(paths: &[String]) -> anyhow::Result<()> {
    println!("| run | clients | frame B | CPU µs/msg | trigger→last ms (median) | first→last ms (median) | latency p50 / p99 / max ms | RSS (anon) KB/conn | idle CPU % core | gen lag p99 ms | other load % |");
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for p in paths {
        let r: Report = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        let idle = if r.idle_secs >= TICK_WINDOW_S { show(r.server.idle_cpu_pct_of_core, 2) } else { "-".into() };
        let lat = match &r.latency_ms {
            Some(l) => format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.max),
            None => "n/a".into(),
        };
        let rss = format!("{} ({})", show(r.server.rss_per_conn_kb, 2), show(r.server.anon_per_conn_kb, 2));
        println!(
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            if r.label.is_empty() { p.as_str() } else { r.label.as_str() },
            r.ready,
            if r.failed + r.dropped > 0 { format!(" ({} failed, {} dropped)", r.failed, r.dropped) } else { String::new() },
            r.frame_bytes_max.map_or("n/a".to_string(), |b| b.to_string()),
            show(r.server.cpu_per_delivery_us, 2),
            show(r.last_ms_median, 1),
            show(r.spread_ms_median, 1),
            lat,
            rss,
            idle,
            show(r.generator_lag_ms.map(|g| g.p99), 1),
            show(r.other_load_changes_pct, 0),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ChangeResult;

    #[test]
    fn a_share_needs_a_window_and_stays_within_the_machine() {
        assert_eq!(share_pct(0.5, 1.0, TICK_WINDOW_S, 2), Some(50.0));
        // The 42907 % of issue 11: a tick of busy time over a change phase of microseconds.
        assert_eq!(share_pct(0.01, 0.000_02, TICK_WINDOW_S, 2), None);
        assert_eq!(share_pct(1.0, 0.0, 0.0, 2), None, "zero window");
        assert_eq!(share_pct(1.0, -1.0, 0.0, 2), None, "negative window");
        assert_eq!(share_pct(f64::NAN, 1.0, 0.0, 2), None);
        assert_eq!(share_pct(5.0, 1.0, 0.0, 2), None, "500 % on 2 CPUs is not a measurement");
        assert_eq!(share_pct(2.1, 1.0, 0.0, 2), Some(200.0), "tick rounding: clamped");
        assert_eq!(share_pct(-0.05, 1.0, 0.0, 2), Some(0.0), "tick rounding below zero: clamped");
        assert_eq!(share_pct(-1.0, 1.0, 0.0, 2), None, "far below zero: counters not what they seem");
    }

    #[test]
    fn per_unit_needs_samples_and_a_count() {
        assert_eq!(per_unit(Some(2.0), 4, 1e6), Some(500_000.0));
        assert_eq!(per_unit(Some(2.0), 0, 1e6), None);
        assert_eq!(per_unit(None, 4, 1e6), None);
        assert_eq!(per_unit(Some(-1.0), 4, 1e6), None);
        assert_eq!(per_unit(Some(f64::INFINITY), 4, 1e6), None);
    }

    #[test]
    fn show_and_ratio_never_print_nan_or_inf() {
        assert_eq!(show(Some(1.234), 2), "1.23");
        assert_eq!(show(None, 2), "n/a");
        assert_eq!(show(Some(f64::NAN), 2), "n/a");
        assert_eq!(show(Some(f64::INFINITY), 2), "n/a");
        assert_eq!(show_pct(Some(3.26), 1), "3.3 %");
        assert_eq!(show_pct(None, 1), "n/a");
        assert_eq!(ratio(Some(2.0), Some(3.0)), "1.50");
        assert_eq!(ratio(Some(0.0), Some(3.0)), "-");
        assert_eq!(ratio(None, Some(3.0)), "-");
    }

    fn sample(wanted: usize, found: usize, cpu: f64, rss: u64) -> Sample {
        Sample { wanted, found, cpu_sched_s: cpu, cpu_stat_s: cpu, rss_bytes: rss, anon_bytes: rss / 2, threads: 3 }
    }

    fn inputs(results: Vec<ChildResult>, rows: Vec<ChangeRow>, server_pids: Vec<u32>, server: [Sample; 4]) -> Inputs {
        Inputs {
            label: String::new(),
            url: "http://127.0.0.1:1/x".into(),
            trigger: "file:x".into(),
            clients: 2,
            procs: 1,
            sources: vec![],
            server_pids,
            connect_secs: 0.1,
            idle_secs: 0.0,
            changes_secs: 0.000_02,
            server,
            generator: [sample(1, 1, 0.0, 1 << 20); 4],
            rows,
            results,
            system_busy_s: [Some(10.0), Some(10.0), Some(10.01)],
            cores: 2,
        }
    }

    #[test]
    fn no_deliveries_give_no_figures_not_zeros() {
        let res = ChildResult { failed: 2, first_error: Some("refused".into()), changes: vec![ChangeResult::default(); 3], ..Default::default() };
        let rows = (1..=2).map(|change| ChangeRow { change, timed_out: true, ..Default::default() }).collect();
        let r = Report::build(inputs(vec![res], rows, vec![], [Sample::default(); 4]));
        assert_eq!((r.ready, r.failed, r.deliveries), (0, 2, 0));
        assert!(r.latency_ms.is_none() && r.generator_lag_ms.is_none() && r.last_ms_median.is_none());
        assert!(r.frame_bytes_max.is_none());
        assert!(r.server.cpu_per_delivery_us.is_none() && r.server.rss_per_conn_kb.is_none());
        assert!(r.generator.cpu_per_delivery_us.is_none() && r.generator.rss_per_conn_kb.is_none());
        assert!(r.other_load_changes_pct.is_none(), "a window of microseconds: {:?}", r.other_load_changes_pct);
        let h = r.human();
        for bad in ["NaN", "inf", "42907"] {
            assert!(!h.contains(bad), "{bad} in:\n{h}");
        }
        assert!(h.contains("n/a") && h.contains("no --pid"), "{h}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"latency_ms\":null"), "{json}");
    }

    #[test]
    fn a_server_that_vanished_or_restarted_has_no_cpu_figures() {
        let mut ch = vec![ChangeResult::default(); 2];
        ch[1].kernel = vec![2_000_000, 3_000_000];
        ch[1].user = vec![2_100_000, 3_100_000];
        let res = ChildResult { ready: 2, changes: ch, frame_bytes_min: 200, frame_bytes_max: 248, ..Default::default() };
        let rows = vec![ChangeRow { change: 1, trigger_ns: 1_000_000, ..Default::default() }];
        // Restarted during the changes: its counters went back to nearly zero.
        let server = [sample(1, 1, 1.0, 1 << 20), sample(1, 1, 2.0, 2 << 20), sample(1, 1, 2.0, 2 << 20), sample(1, 1, 0.01, 1 << 20)];
        let r = Report::build(inputs(vec![res.clone()], rows.clone(), vec![42], server));
        assert_eq!(r.deliveries, 2);
        assert_eq!(r.last_ms_median, Some(2.0));
        assert!(r.server.changes_cpu_s.is_none() && r.server.cpu_per_delivery_us.is_none());
        assert_eq!(r.server.connect_cpu_s, Some(1.0));
        assert_eq!(r.server.rss_per_conn_kb, Some(512.0));
        assert_eq!(r.server.anon_per_conn_kb, Some(256.0));
        // Gone before the last sample.
        let server = [sample(1, 1, 1.0, 1 << 20), sample(1, 1, 2.0, 2 << 20), sample(1, 1, 2.0, 2 << 20), sample(1, 0, 0.0, 0)];
        let r = Report::build(inputs(vec![res], rows, vec![42], server));
        assert!(r.server.changes_cpu_s.is_none() && r.server.rss_after_mb.is_none() && r.server.threads.is_none());
        assert!(!r.human().contains("NaN"));
    }

    #[test]
    fn receipts_before_their_trigger_are_left_out() {
        let mut ch = vec![ChangeResult::default(); 2];
        ch[1].kernel = vec![500_000, 3_000_000];
        ch[1].user = vec![600_000, 3_100_000];
        let res = ChildResult { ready: 2, changes: ch, ..Default::default() };
        let rows = vec![ChangeRow { change: 1, trigger_ns: 1_000_000, ..Default::default() }];
        let r = Report::build(inputs(vec![res], rows, vec![], [Sample::default(); 4]));
        assert_eq!(r.clock_anomalies, 1);
        assert_eq!(r.latency_ms.map(|l| l.max), Some(2.0));
        assert_eq!(r.latency_cdf_ms.first(), Some(&[0.0, 2.0]));
        assert_eq!(r.latency_cdf_ms.last(), Some(&[1.0, 2.0]));
    }

    #[test]
    fn the_latency_cdf_agrees_with_the_percentiles() {
        let mut v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let p = pcts(&mut v).unwrap();
        let c = cdf(&v);
        assert_eq!(c.len(), 110);
        assert!(c.windows(2).all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1]), "ascending");
        let at = |q: f64| c.iter().find(|x| (x[0] - q).abs() < 1e-9).unwrap()[1];
        assert_eq!((at(0.5), at(0.99), at(1.0)), (p.p50, p.p99, p.max));
        assert_eq!((at(0.0), at(0.999)), (1.0, 999.0));
        assert!(cdf(&[]).is_empty());
    }
}
