//! The SSE load tool (`benches/load`, package `flagrelay-load`) as a process, against nothing,
//! against a relay with a wrong key, and against a relay in file mode: it fails like a tool
//! (exit status 1, the first error's text, no change phase) and puts back the flags file its
//! `--trigger file:PATH` edits, on success, on error and on SIGINT/SIGTERM (issue 11 item 5).
//!
//! The binary belongs to another package, so there is no `CARGO_BIN_EXE_flagrelay-load` here.
//! [`load_bin`] builds it once per test binary with the cargo that runs the tests
//! (`$CARGO build --locked -p flagrelay-load`, same profile, same environment and so the same
//! target dir) and takes the executable's path from cargo's JSON messages: never a stale binary,
//! never a guessed path, and no work when `cargo build` already built it. (Cargo holds no build
//! lock while tests run. `--bin` rather than `-p` resolves features for the default members, as
//! `cargo build` does, and the variables cargo sets for a test run are not passed on: build
//! scripts such as ring's watch `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`, and seeing the test
//! package's values there would rebuild half the tree on every run.)

use flagrelay_testkit as support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The load tool's executable, built on first use.
fn load_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--locked", "--bin", "flagrelay-load", "--message-format=json-render-diagnostics"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let set_for_the_test = ["CARGO_PKG_", "CARGO_BIN_EXE_"].iter().any(|p| k.starts_with(p))
                || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_MANIFEST_LINKS", "CARGO_CRATE_NAME", "CARGO_BIN_NAME"]
                    .contains(&&*k)
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"].contains(&&*k);
            if set_for_the_test {
                cmd.env_remove(&*k);
            }
        }
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build -p flagrelay-load");
        assert!(out.status.success(), "cargo build -p flagrelay-load failed (its errors are above)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "flagrelay-load")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo named the flagrelay-load executable")
    })
}

/// The tool with `args`, without the key of the test's own environment.
fn load_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(load_bin());
    cmd.args(args).env_remove("FLAGRELAY_LOAD_KEY").stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs the tool to its end (at most `limit`), returning its output and how long it took.
async fn run_load(args: &[&str], limit: Duration) -> (Output, Duration) {
    load_bin(); // built before the clock starts
    let t = Instant::now();
    let out = load_command(args).output();
    let out = tokio::time::timeout(limit, out).await.unwrap_or_else(|_| panic!("flagrelay-load {args:?} ran over {limit:?}"));
    (out.expect("run flagrelay-load"), t.elapsed())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn flags_doc() -> serde_json::Value {
    json!({"production": {"a": simple_feature("a", "on")}, "staging": {}})
}

/// [`flags_doc`] as nobody's serializer writes it (compact, a trailing space and newline): the
/// tool's own rewrite cannot reproduce these bytes by accident.
fn odd_flags() -> Vec<u8> {
    format!("{}  \n", serde_json::to_string(&flags_doc()).expect("json")).into_bytes()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A relay in file mode serving [`odd_flags`] (polled every 20 ms).
async fn file_relay() -> TestRelay {
    let relay = TestRelay::builder().flags(flags_doc()).start().await;
    // The same flags in other bytes: what the tool must put back.
    relay.write_flags_raw(&odd_flags());
    relay
}

#[tokio::test]
async fn with_no_server_it_stops_at_once_naming_the_refusal_and_runs_no_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = dir.path().join("flags.json");
    std::fs::write(&flags, odd_flags()).expect("write flags");
    let url = format!("http://127.0.0.1:{}/api/sdk/v1/features", closed_port());
    let trigger = format!("file:{}", flags.display());
    let args = ["-n", "50", "-m", "3", "--url", &url, "--key", SERVER_KEY, "--trigger", &trigger, "--settle-ms", "0"];
    let (out, took) = run_load(&args, WAIT).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: 50 of 50 clients failed to open their stream; first:"), "{err}");
    assert!(err.contains("connection refused") && err.contains(&url), "{err}");
    // Counted live: the first failure is printed when it happens, before the verdict.
    let live = err.find("first failure: ").expect("the first failure printed live");
    assert!(live < err.find("error: ").expect("the verdict"), "{err}");
    assert!(!err.contains("change 1") && !text(&out.stdout).contains("TIMED OUT"), "no change phase: {err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(std::fs::read(&flags).expect("read flags"), odd_flags(), "the edited file is back after an error");
}

#[tokio::test]
async fn with_a_wrong_key_it_stops_naming_the_401_and_puts_the_file_back() {
    let relay = file_relay().await;
    let url = relay.url("/api/sdk/v1/features");
    let trigger = format!("file:{}", relay.flags_path.display());
    let args = ["-n", "20", "-m", "3", "--url", &url, "--key", "sdk-srv-wrong", "--trigger", &trigger, "--settle-ms", "50"];
    let (out, took) = run_load(&args, WAIT).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: 20 of 20 clients failed to open their stream; first: 401 Unauthorized from"), "{err}");
    assert!(err.contains("unknown_key"), "the relay's own reason travels along: {err}");
    assert!(!err.contains("change 1"), "{err}");
    assert!(took < Duration::from_secs(5), "a 401 is not retried: took {took:?}");
    assert_eq!(std::fs::read(&relay.flags_path).expect("read flags"), odd_flags());
    relay.stop().await;
}

#[tokio::test]
async fn the_file_trigger_leaves_the_flags_file_as_it_found_it() {
    let relay = file_relay().await;
    let url = relay.url("/api/sdk/v1/features");
    let trigger = format!("file:{}", relay.flags_path.display());
    let args = [
        "-n", "5", "-m", "3", "--url", &url, "--key", SERVER_KEY, "--trigger", &trigger,
        "--settle-ms", "100", "--gap-ms", "50", "--change-timeout-ms", "5000",
    ];
    let (out, _) = run_load(&args, Duration::from_secs(30)).await;
    let (report, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{err}\n{report}");
    assert!(report.contains("clients 5 (5 ready, 0 failed, 0 dropped)"), "{report}");
    assert!(report.contains("latency over 15 deliveries"), "{report}");
    // No --pid: no server figures, and nothing impossible anywhere.
    assert!(report.contains("no --pid given"), "{report}");
    for bad in ["NaN", "inf "] {
        assert!(!report.contains(bad), "{bad}: {report}");
    }
    assert!(err.contains("back as it was"), "{err}");
    assert_eq!(std::fs::read(&relay.flags_path).expect("read flags"), odd_flags(), "{err}");
    relay.stop().await;
}

/// Starts a long idle run, sends `signal` once every client is connected, and checks the exit
/// status and the flags file.
async fn interrupted_run_puts_the_file_back(signal: &str, status: i32) {
    let relay = file_relay().await;
    let url = relay.url("/api/sdk/v1/features");
    let trigger = format!("file:{}", relay.flags_path.display());
    let args = ["-n", "5", "-m", "3", "--url", &url, "--key", SERVER_KEY, "--trigger", &trigger, "--settle-ms", "50", "--idle-secs", "120"];
    let mut child = load_command(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn flagrelay-load");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr pipe"));
    let mut seen = String::new();
    within("the tool to connect and go idle", async {
        while !seen.contains("idle for") {
            if stderr.read_line(&mut seen).await.expect("read stderr") == 0 {
                panic!("flagrelay-load ended before going idle: {seen}");
            }
        }
    })
    .await;
    assert_ne!(std::fs::read(&relay.flags_path).expect("read flags"), odd_flags(), "the tool edited the file");
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill").args([signal, &pid]).status().expect("run kill");
    assert!(sent.success());
    within("the rest of the tool's stderr", stderr.read_to_string(&mut seen)).await.expect("read stderr");
    let exit = within("the tool to exit", child.wait()).await.expect("wait");
    assert_eq!(exit.code(), Some(status), "{seen}");
    assert!(seen.contains("put ") && seen.contains("back as it was"), "{seen}");
    assert_eq!(std::fs::read(&relay.flags_path).expect("read flags"), odd_flags(), "{seen}");
    relay.stop().await;
}

#[tokio::test]
async fn sigint_puts_the_flags_file_back() {
    interrupted_run_puts_the_file_back("-INT", 130).await;
}

#[tokio::test]
async fn sigterm_puts_the_flags_file_back() {
    interrupted_run_puts_the_file_back("-TERM", 143).await;
}
