//! Runs the Featureflow SDK testbed (spec §8) against `flagrelay::eval`.
//!
//! The testbed is carried in the crate, in `tests/conformance/testbed/` (`conformance/vectors.rs`
//! resolves it; origin and licence in its `ORIGIN.md`). Every
//! `.feature` file is parsed (the `gherkin` crate, expanded into rows by `conformance/rows.rs`);
//! every scenario row is either run or listed as not applicable with the reason. Unknown step
//! text is a failure, so a new testbed row cannot be skipped silently.
//!
//! The date rows are run again in child processes of this binary with `TZ=America/New_York` and
//! `TZ=Asia/Kolkata` (POSIX `TZ` strings if the zone database is missing): the child is the
//! `#[ignore]`d test [`CHILD_TEST`], run with `--ignored --exact`, so a normal run lists it as
//! ignored. The parent fails if a child fails, runs no date rows, or does not prove the zone took
//! effect by reporting a non-zero local offset.

#[path = "conformance/rows.rs"]
mod rows;
#[path = "conformance/steps.rs"]
mod steps;
#[path = "conformance/vectors.rs"]
mod vectors;

use std::path::{Path, PathBuf};
use std::process::Command;

use steps::{run_row, Outcome};

/// The test that runs in each time-zone child process.
const CHILD_TEST: &str = "date_rows_pass_in_this_process_time_zone";

/// File-level reasons for testbed files that describe SDK behaviour a server-side evaluator lacks.
const NOT_APPLICABLE_FILES: [(&str, &str); 4] = [
    ("events.feature", "SDK-side analytics event queueing/summarising; the rule engine emits no events"),
    ("goals.feature", "SDK-side goal tracking events; not rule evaluation"),
    ("sdk_config.feature", "SDK HTTP client behaviour (401/403/429, server-driven config); not rule evaluation"),
    ("tracked_exposures.feature", "SDK-side exposure events; not rule evaluation"),
];

fn testbed_dir() -> PathBuf {
    let dir = vectors::dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(dir.is_dir(), "conformance testbed not found at {}", dir.display());
    dir
}

fn feature_files() -> Vec<(String, gherkin::Feature, Vec<rows::Row>)> {
    let dir = testbed_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".feature"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .feature files in {}", dir.display());
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            let parsed = rows::parse(&text).unwrap_or_else(|e| panic!("{n}: {e}"));
            let rows = rows::rows(&parsed, &text);
            (n, parsed, rows)
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    ran: usize,
    passed: usize,
    date_ran: usize,
    failures: Vec<String>,
    not_applicable: Vec<String>,
}

/// Runs every row (or only the date rows); prints per-file summaries; returns the totals.
fn run_all(only_dates: bool) -> Tally {
    let mut total = Tally::default();
    for (name, file, rows) in feature_files() {
        if let Some((_, why)) = NOT_APPLICABLE_FILES.iter().find(|(n, _)| *n == name) {
            if !only_dates {
                println!("{name}: 0 ran, {} rows not applicable: {why}", rows.len());
                for s in &file.scenarios {
                    println!("    n/a line {}: {}", s.position.line, s.name);
                }
                total.not_applicable.extend(rows.iter().map(|r| format!("{name}:{}", r.line)));
            }
            continue;
        }
        let mut t = Tally::default();
        for row in rows.iter().filter(|r| !only_dates || steps::is_date_row(r)) {
            let label = format!("{name}:{} {}", row.line, row.scenario);
            match run_row(row) {
                Outcome::Pass => {
                    t.ran += 1;
                    t.passed += 1;
                    t.date_ran += usize::from(steps::is_date_row(row));
                }
                Outcome::Fail(why) => {
                    t.ran += 1;
                    t.date_ran += usize::from(steps::is_date_row(row));
                    t.failures.push(format!("FAIL {label}: {why}"));
                }
                Outcome::NotApplicable(why) => t.not_applicable.push(format!("n/a {label}: {why}")),
            }
        }
        println!(
            "{name}: {} ran, {} passed, {} failed, {} not applicable{}",
            t.ran,
            t.passed,
            t.failures.len(),
            t.not_applicable.len(),
            if only_dates { " (date rows only)" } else { "" }
        );
        for line in t.not_applicable.iter().chain(&t.failures) {
            println!("    {line}");
        }
        total.ran += t.ran;
        total.passed += t.passed;
        total.date_ran += t.date_ran;
        total.failures.extend(t.failures);
        total.not_applicable.extend(t.not_applicable);
    }
    println!(
        "TOTAL: {} ran, {} passed, {} failed, {} not applicable ({} date rows)",
        total.ran,
        total.passed,
        total.failures.len(),
        total.not_applicable.len(),
        total.date_ran
    );
    total
}

#[test]
fn testbed_conformance() {
    println!("testbed: {}", testbed_dir().display());
    let t = run_all(false);
    assert!(t.ran > 0 && t.date_ran > 0, "nothing ran");
    assert!(t.failures.is_empty(), "{} testbed rows failed:\n{}", t.failures.len(), t.failures.join("\n"));
}

/// The local UTC offset in seconds at the instant the date rows are about (July 2026).
fn local_offset() -> i32 {
    use chrono::{Offset, TimeZone};
    let probe = chrono::NaiveDate::from_ymd_opt(2026, 7, 3).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap();
    chrono::Local.offset_from_utc_datetime(&probe).fix().local_minus_utc()
}

/// Run by `date_rows_under_non_utc_time_zones` as a child process under the `TZ` it sets (and
/// valid in any zone when run by hand): the date rows pass, and the local offset is reported.
#[test]
#[ignore = "run as a child process, with TZ set, by date_rows_under_non_utc_time_zones"]
fn date_rows_pass_in_this_process_time_zone() {
    let t = run_all(true);
    println!("TZCHILD offset={} ran={} passed={}", local_offset(), t.ran, t.passed);
    assert!(t.failures.is_empty(), "{}", t.failures.join("\n"));
}

/// What a child run under one `TZ` showed.
struct ChildRun {
    ok: bool,
    /// The local offset (s) and the number of date rows run, from the child's `TZCHILD` line;
    /// `None` if the child printed none (it did not run the test).
    report: Option<(i32, usize)>,
    output: String,
}

fn run_child(tz: &str) -> ChildRun {
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new(exe)
        .args([CHILD_TEST, "--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .env("TZ", tz)
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = stdout.lines().find_map(|l| {
        let mut fields = l.strip_prefix("TZCHILD ")?.split_whitespace();
        let offset = fields.next()?.strip_prefix("offset=")?.parse().ok()?;
        let ran = fields.next()?.strip_prefix("ran=")?.parse().ok()?;
        Some((offset, ran))
    });
    ChildRun { ok: out.status.success(), report, output: stdout + &String::from_utf8_lossy(&out.stderr) }
}

#[test]
fn date_rows_under_non_utc_time_zones() {
    // (IANA name, POSIX equivalent used when the zone database is not installed)
    for (zone, posix) in [("America/New_York", "EST5EDT,M3.2.0,M11.1.0"), ("Asia/Kolkata", "IST-5:30")] {
        let mut run = run_child(zone);
        let mut used = zone;
        if matches!(run.report, Some((0, _))) {
            run = run_child(posix);
            used = posix;
        }
        let Some((offset, ran)) = run.report else {
            panic!("the child under TZ={used} did not run {CHILD_TEST}:\n{}", run.output)
        };
        println!("--- TZ={used} (local offset {offset:+} s) ---");
        for line in run.output.lines().filter(|l| l.contains(".feature:") || l.starts_with("TOTAL") || l.contains("FAIL")) {
            println!("{line}");
        }
        assert!(run.ok, "date rows failed under TZ={used}:\n{}", run.output);
        assert!(ran > 0, "no date rows ran under TZ={used}");
        assert_ne!(offset, 0, "TZ={used} did not change the local offset, so the run proves nothing");
    }
}
