//! The report: per-change first/last receipt, latency percentiles, server and generator CPU/RSS;
//! a human table, JSON, and the ratios of two JSON reports.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::client::ChildResult;
use super::procfs::Sample;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChangeRow {
    pub change: usize,
    #[serde(skip)]
    pub trigger_ns: i64,
    /// How long the trigger action itself took (file write+rename, or the nchan POST round trip).
    pub trigger_ms: f64,
    pub timed_out: bool,
    /// Trigger to the coordinator learning that every client had it.
    pub wait_ms: f64,
    /// Trigger to the first / last kernel receipt.
    pub first_ms: f64,
    pub last_ms: f64,
    /// First to last receipt.
    pub spread_ms: f64,
    pub delivered: usize,
    pub skipped: usize,
    /// Server / client-process CPU from before the trigger to after the gap.
    pub server_cpu_ms: f64,
    pub client_cpu_ms: f64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Pcts {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn pcts(v: &mut [f64]) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Pcts { p50: at(0.50), p99: at(0.99), max: v[v.len() - 1] }
}

fn median(mut v: Vec<f64>) -> f64 {
    pcts(&mut v).p50
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Procs {
    pub rss_before_mb: f64,
    pub rss_connected_mb: f64,
    pub rss_after_mb: f64,
    /// (RSS connected - RSS before) / ready clients.
    pub rss_per_conn_kb: f64,
    pub connect_cpu_s: f64,
    pub idle_cpu_s: f64,
    pub idle_cpu_pct_of_core: f64,
    /// From just before the first change to after the last (per-thread schedstat, ns resolution).
    pub changes_cpu_s: f64,
    /// The same from /proc/PID/stat utime+stime (clock ticks).
    pub changes_cpu_stat_s: f64,
    pub cpu_per_delivery_us: f64,
    /// Minus the idle rate over the change phase (only when --idle-secs was given).
    pub cpu_per_delivery_net_idle_us: Option<f64>,
    /// Changes-phase CPU / changes-phase wall time.
    pub changes_utilisation_pct: f64,
    pub threads: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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
    pub frame_bytes_min: u32,
    pub frame_bytes_max: u32,
    pub deliveries: usize,
    pub skipped: usize,
    pub kernel_ts_missing: u64,
    pub first_ms_median: f64,
    pub last_ms_median: f64,
    pub spread_ms_median: f64,
    /// Kernel receipt minus trigger, over all deliveries.
    pub latency_ms: Pcts,
    /// Kernel receipt minus the change's first receipt (the fan-out alone).
    pub latency_from_first_ms: Pcts,
    /// The generator's read time minus the kernel receipt time: its own lag.
    pub generator_lag_ms: Pcts,
    pub server: Procs,
    pub generator: Procs,
    /// CPU used by neither the server nor the generator (other processes, interrupts), in % of
    /// one core, during the idle and the change phases: high values mean a disturbed run.
    #[serde(default)]
    pub other_load_idle_pct: f64,
    #[serde(default)]
    pub other_load_changes_pct: f64,
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
    pub ready: usize,
    pub failed: usize,
    pub connect_secs: f64,
    pub idle_secs: f64,
    pub changes_secs: f64,
    /// Before connecting, connected, after idle, after changes.
    pub server: [Sample; 4],
    pub generator: [Sample; 4],
    pub rows: Vec<ChangeRow>,
    pub results: Vec<ChildResult>,
    /// Whole-machine busy CPU seconds: connected, after idle, after changes.
    pub system_busy_s: [f64; 3],
}

fn procs(s: &[Sample; 4], ready: usize, deliveries: usize, idle_secs: f64, changes_secs: f64) -> Procs {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let idle = (s[2] - s[1]).cpu_sched_s;
    let ch = (s[3] - s[2]).cpu_sched_s;
    let per = |cpu: f64| if deliveries > 0 { cpu * 1e6 / deliveries as f64 } else { 0.0 };
    Procs {
        rss_before_mb: mb(s[0].rss_bytes),
        rss_connected_mb: mb(s[1].rss_bytes),
        rss_after_mb: mb(s[3].rss_bytes),
        rss_per_conn_kb: if ready > 0 { (s[1].rss_bytes as f64 - s[0].rss_bytes as f64) / 1024.0 / ready as f64 } else { 0.0 },
        connect_cpu_s: (s[1] - s[0]).cpu_sched_s,
        idle_cpu_s: idle,
        idle_cpu_pct_of_core: if idle_secs > 0.0 { idle * 100.0 / idle_secs } else { 0.0 },
        changes_cpu_s: ch,
        changes_cpu_stat_s: (s[3] - s[2]).cpu_stat_s,
        cpu_per_delivery_us: per(ch),
        cpu_per_delivery_net_idle_us: (idle_secs >= 1.0).then(|| per((ch - idle / idle_secs * changes_secs).max(0.0))),
        changes_utilisation_pct: if changes_secs > 0.0 { ch * 100.0 / changes_secs } else { 0.0 },
        threads: s[3].threads,
    }
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
            ready: inp.ready,
            failed: inp.failed,
            connect_secs: inp.connect_secs,
            idle_secs: inp.idle_secs,
            changes_secs: inp.changes_secs,
            ..Default::default()
        };
        for c in &inp.results {
            r.dropped += c.dropped;
            r.heartbeats += c.heartbeats;
            r.kernel_ts_missing += c.kernel_ts_missing;
            r.frame_bytes_max = r.frame_bytes_max.max(c.frame_bytes_max);
            if c.frame_bytes_min > 0 && (r.frame_bytes_min == 0 || c.frame_bytes_min < r.frame_bytes_min) {
                r.frame_bytes_min = c.frame_bytes_min;
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
                    first = first.min(k);
                    last = last.max(k);
                    lat.push((k - t0) as f64 / 1e6);
                    lag.push((u - k) as f64 / 1e6);
                }
            }
            if row.delivered > 0 {
                row.first_ms = (first - t0) as f64 / 1e6;
                row.last_ms = (last - t0) as f64 / 1e6;
                row.spread_ms = (last - first) as f64 / 1e6;
                for c in &inp.results {
                    if let Some(ch) = c.changes.get(i) {
                        from_first.extend(ch.kernel.iter().map(|&k| (k - first) as f64 / 1e6));
                    }
                }
            }
            r.deliveries += row.delivered;
            r.skipped += row.skipped;
        }
        r.first_ms_median = median(rows.iter().map(|x| x.first_ms).collect());
        r.last_ms_median = median(rows.iter().map(|x| x.last_ms).collect());
        r.spread_ms_median = median(rows.iter().map(|x| x.spread_ms).collect());
        r.latency_ms = pcts(&mut lat);
        r.latency_from_first_ms = pcts(&mut from_first);
        r.generator_lag_ms = pcts(&mut lag);
        r.server = procs(&inp.server, r.ready, r.deliveries, r.idle_secs, r.changes_secs);
        r.generator = procs(&inp.generator, r.ready, r.deliveries, r.idle_secs, r.changes_secs);
        let other = |busy: f64, secs: f64, srv: f64, gen: f64| if secs > 0.0 { ((busy - srv - gen) * 100.0 / secs).max(0.0) } else { 0.0 };
        let b = inp.system_busy_s;
        r.other_load_idle_pct = other(b[1] - b[0], r.idle_secs, r.server.idle_cpu_s, r.generator.idle_cpu_s);
        r.other_load_changes_pct = other(b[2] - b[1], r.changes_secs, r.server.changes_cpu_s, r.generator.changes_cpu_s);
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
        let _ = writeln!(o, "  change frame {}..{} bytes (SSE framing included)", self.frame_bytes_min, self.frame_bytes_max);
        let _ = writeln!(o);
        let _ = writeln!(o, "  change  trigger ms  first ms  last ms  spread ms  delivered  skipped  server CPU ms");
        for c in &self.changes {
            let _ = writeln!(
                o,
                "  {:>6}  {:>10.2}  {:>8.2}  {:>7.2}  {:>9.2}  {:>9}  {:>7}  {:>13.1}{}",
                c.change,
                c.trigger_ms,
                c.first_ms,
                c.last_ms,
                c.spread_ms,
                c.delivered,
                c.skipped,
                c.server_cpu_ms,
                if c.timed_out { "  TIMED OUT" } else { "" }
            );
        }
        let _ = writeln!(
            o,
            "  median  {:>10}  {:>8.2}  {:>7.2}  {:>9.2}",
            "", self.first_ms_median, self.last_ms_median, self.spread_ms_median
        );
        let _ = writeln!(o);
        let p = |x: &Pcts| format!("p50 {:.2}  p99 {:.2}  max {:.2} ms", x.p50, x.p99, x.max);
        let _ = writeln!(o, "  latency over {} deliveries, trigger -> kernel receipt: {}", self.deliveries, p(&self.latency_ms));
        let _ = writeln!(o, "  latency from the change's first receipt:          {}", p(&self.latency_from_first_ms));
        let _ = writeln!(o, "  generator lag (its read - kernel receipt):        {}", p(&self.generator_lag_ms));
        let _ = writeln!(o);
        let _ = writeln!(o, "  server pids {:?} ({} threads)", self.server_pids, s.threads);
        let _ = writeln!(
            o,
            "    RSS {:.1} MB -> {:.1} MB connected -> {:.1} MB after changes: {:.2} KB per connection",
            s.rss_before_mb, s.rss_connected_mb, s.rss_after_mb, s.rss_per_conn_kb
        );
        let _ = writeln!(o, "    connect CPU {:.3} s", s.connect_cpu_s);
        if self.idle_secs >= 1.0 {
            let _ = writeln!(
                o,
                "    idle {:.1} s: CPU {:.4} s = {:.3} % of a core ({} heartbeats received)",
                self.idle_secs, s.idle_cpu_s, s.idle_cpu_pct_of_core, self.heartbeats
            );
        }
        let _ = writeln!(
            o,
            "    changes: CPU {:.4} s (stat {:.2} s) over {:.2} s = {:.2} µs per delivered message{}",
            s.changes_cpu_s,
            s.changes_cpu_stat_s,
            self.changes_secs,
            s.cpu_per_delivery_us,
            s.cpu_per_delivery_net_idle_us.map(|v| format!(" ({v:.2} net of idle)")).unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  generator ({} process(es)): RSS {:.2} KB per connection; changes CPU {:.4} s = {:.2} µs per delivery, {:.1} % of a core over the phase",
            self.procs, g.rss_per_conn_kb, g.changes_cpu_s, g.cpu_per_delivery_us, g.changes_utilisation_pct
        );
        let _ = writeln!(
            o,
            "  other load on the machine: {:.1} % of a core while idle, {:.1} % during the changes",
            self.other_load_idle_pct, self.other_load_changes_pct
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
    let row = |what: &str, bv: f64, xv: f64| {
        let ratio = if bv != 0.0 { format!("{:.2}", xv / bv) } else { "-".into() };
        println!("{what:<42} {bv:>14.2} {xv:>14.2} {ratio:>8}");
    };
    row("clients ready", b.ready as f64, x.ready as f64);
    row("change frame bytes (max)", b.frame_bytes_max as f64, x.frame_bytes_max as f64);
    row("CPU per delivered message (µs)", b.server.cpu_per_delivery_us, x.server.cpu_per_delivery_us);
    row("trigger -> last client, median (ms)", b.last_ms_median, x.last_ms_median);
    row("first -> last client, median (ms)", b.spread_ms_median, x.spread_ms_median);
    row("latency p50 from trigger (ms)", b.latency_ms.p50, x.latency_ms.p50);
    row("latency p99 from trigger (ms)", b.latency_ms.p99, x.latency_ms.p99);
    row("latency max from trigger (ms)", b.latency_ms.max, x.latency_ms.max);
    row("latency p99 from first receipt (ms)", b.latency_from_first_ms.p99, x.latency_from_first_ms.p99);
    row("RSS per connection (KB)", b.server.rss_per_conn_kb, x.server.rss_per_conn_kb);
    if b.idle_secs >= 1.0 || x.idle_secs >= 1.0 {
        row("idle CPU (% of a core)", b.server.idle_cpu_pct_of_core, x.server.idle_cpu_pct_of_core);
    }
    Ok(())
}

/// A markdown table, one row per JSON report.
pub fn summary(paths: &[String]) -> anyhow::Result<()> {
    println!("| run | clients | frame B | CPU µs/msg | trigger→last ms (median) | first→last ms (median) | latency p50 / p99 / max ms | RSS KB/conn | idle CPU % core | gen lag p99 ms | other load % |");
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for p in paths {
        let r: Report = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        let idle = if r.idle_secs >= 1.0 { format!("{:.2}", r.server.idle_cpu_pct_of_core) } else { "-".into() };
        println!(
            "| {} | {}{} | {} | {:.2} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {:.2} | {} | {:.1} | {:.0} |",
            if r.label.is_empty() { p.as_str() } else { r.label.as_str() },
            r.ready,
            if r.failed + r.dropped > 0 { format!(" ({} failed, {} dropped)", r.failed, r.dropped) } else { String::new() },
            r.frame_bytes_max,
            r.server.cpu_per_delivery_us,
            r.last_ms_median,
            r.spread_ms_median,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.server.rss_per_conn_kb,
            idle,
            r.generator_lag_ms.p99,
            r.other_load_changes_pct,
        );
    }
    Ok(())
}
