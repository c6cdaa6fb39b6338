//! CPU and memory of processes from procfs: utime+stime (/proc/PID/stat, clock ticks), the
//! nanosecond on-CPU time of every thread (/proc/PID/task/*/schedstat), and VmRSS; and the whole
//! machine's busy CPU time (/proc/stat), to tell other load apart.
//!
//! A difference of two samples is a figure only when both saw every process asked for and no
//! counter went backwards ([`Sample::since`]); otherwise there is none (a process that exited
//! or was replaced would read as zero or as a huge negative).

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Processes asked for / found in procfs.
    pub wanted: usize,
    pub found: usize,
    /// utime + stime, seconds (clock-tick resolution).
    pub cpu_stat_s: f64,
    /// Sum of the threads' on-CPU time, seconds (ns resolution).
    pub cpu_sched_s: f64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// RssAnon, bytes: the heap and stacks, without the binary's and libraries' file-backed
    /// pages (which a process faults in as it first runs code, not per connection).
    pub anon_bytes: u64,
    /// Threads.
    pub threads: u64,
}

/// CPU used between two samples (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu {
    pub sched_s: f64,
    pub stat_s: f64,
}

/// `after - before` of a counter that only grows; `None` if it went backwards or is not a number.
pub fn counter_delta(before: f64, after: f64) -> Option<f64> {
    (before.is_finite() && after.is_finite() && after >= before).then_some(after - before)
}

impl Sample {
    /// Every process asked for was there (and at least one was asked for).
    pub fn complete(&self) -> bool {
        self.wanted > 0 && self.found == self.wanted
    }

    /// CPU used from `before` to this sample, if both are complete and no counter went backwards.
    pub fn since(&self, before: &Sample) -> Option<Cpu> {
        if !self.complete() || !before.complete() || self.wanted != before.wanted {
            return None;
        }
        Some(Cpu {
            sched_s: counter_delta(before.cpu_sched_s, self.cpu_sched_s)?,
            stat_s: counter_delta(before.cpu_stat_s, self.cpu_stat_s)?,
        })
    }

    /// VmRSS in bytes, if every process was found.
    pub fn rss(&self) -> Option<u64> {
        self.complete().then_some(self.rss_bytes)
    }

    /// RssAnon in bytes, if every process was found.
    pub fn anon(&self) -> Option<u64> {
        self.complete().then_some(self.anon_bytes)
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
    let kb = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let (rss_kb, anon_kb) = (kb("VmRSS:"), kb("RssAnon:"));
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
        anon_bytes: anon_kb * 1024,
        threads,
        wanted: 1,
        found: 1,
    })
}

/// The sum over `pids` (a vanished process counts as zero).
pub fn sample(pids: &[u32]) -> Sample {
    let tck = super::sys::clk_tck() as f64;
    let mut total = Sample { wanted: pids.len(), ..Sample::default() };
    for &p in pids {
        if let Some(s) = one(p, tck) {
            total.found += 1;
            total.cpu_stat_s += s.cpu_stat_s;
            total.cpu_sched_s += s.cpu_sched_s;
            total.rss_bytes += s.rss_bytes;
            total.anon_bytes += s.anon_bytes;
            total.threads += s.threads;
        }
    }
    total
}

/// Busy CPU seconds of the whole machine (all CPUs) from /proc/stat: everything but idle and
/// iowait. Used to tell how much other load ran during a measurement. `None` if unreadable.
pub fn system_busy_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    busy_ticks(s.lines().next()?).map(|t| t as f64 / super::sys::clk_tck() as f64)
}

/// Busy ticks of the `cpu` line of /proc/stat: user nice system irq softirq steal (guest time is
/// already in user; idle and iowait left out).
fn busy_ticks(line: &str) -> Option<u64> {
    let v: Vec<u64> = line.strip_prefix("cpu ")?.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(wanted: usize, found: usize, sched: f64) -> Sample {
        Sample { wanted, found, cpu_sched_s: sched, cpu_stat_s: sched, ..Sample::default() }
    }

    #[test]
    fn a_difference_needs_every_process_and_growing_counters() {
        assert_eq!(s(1, 1, 3.0).since(&s(1, 1, 1.0)), Some(Cpu { sched_s: 2.0, stat_s: 2.0 }));
        assert_eq!(s(1, 1, 1.0).since(&s(1, 1, 3.0)), None, "went backwards: a restarted process");
        assert_eq!(s(2, 1, 3.0).since(&s(2, 2, 1.0)), None, "one process vanished");
        assert_eq!(s(0, 0, 0.0).since(&s(0, 0, 0.0)), None, "no --pid: nothing measured");
        assert_eq!(counter_delta(1.0, f64::NAN), None);
        assert_eq!(s(1, 0, 0.0).rss(), None);
    }

    #[test]
    fn busy_time_leaves_idle_and_iowait_out() {
        assert_eq!(busy_ticks("cpu  10 1 5 1000 7 2 3 4 0 0"), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(busy_ticks("cpu0 10 1 5 1000 7 2 3 4"), None);
        assert_eq!(busy_ticks("cpu  10 1"), None);
    }
}
