//! CPU and memory of processes from procfs: utime+stime (/proc/PID/stat, clock ticks), the
//! nanosecond on-CPU time of every thread (/proc/PID/task/*/schedstat), and VmRSS; and the whole
//! machine's busy CPU time (/proc/stat), to tell other load apart.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// utime + stime, seconds (clock-tick resolution).
    pub cpu_stat_s: f64,
    /// Sum of the threads' on-CPU time, seconds (ns resolution).
    pub cpu_sched_s: f64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
}

impl std::ops::Sub for Sample {
    type Output = Sample;
    fn sub(self, o: Sample) -> Sample {
        Sample {
            cpu_stat_s: self.cpu_stat_s - o.cpu_stat_s,
            cpu_sched_s: self.cpu_sched_s - o.cpu_sched_s,
            rss_bytes: self.rss_bytes.wrapping_sub(o.rss_bytes),
            threads: self.threads,
        }
    }
}

fn one(pid: u32, tck: f64) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let mut sched_ns: u64 = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                sched_ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Some(Sample {
        cpu_stat_s: (utime + stime) as f64 / tck,
        cpu_sched_s: sched_ns as f64 / 1e9,
        rss_bytes: rss_kb * 1024,
        threads,
    })
}

/// The sum over `pids` (a vanished process counts as zero).
pub fn sample(pids: &[u32]) -> Sample {
    let tck = super::sys::clk_tck() as f64;
    let mut total = Sample::default();
    for &p in pids {
        if let Some(s) = one(p, tck) {
            total.cpu_stat_s += s.cpu_stat_s;
            total.cpu_sched_s += s.cpu_sched_s;
            total.rss_bytes += s.rss_bytes;
            total.threads += s.threads;
        }
    }
    total
}

/// Busy CPU seconds of the whole machine (all CPUs) from /proc/stat: everything but idle and
/// iowait. Used to tell how much other load ran during a measurement.
pub fn system_busy_s() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = s.lines().next() else { return 0.0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return 0.0;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4]) as f64 / super::sys::clk_tck() as f64
}
