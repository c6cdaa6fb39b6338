//! The `flagrelay` binary as a process: options that mean the same wherever they stand, config
//! errors that name the key and their cause once, `check-config` checking what a start reads,
//! the README's Redis quickstart (every environment imported, an honest warning for one that
//! is not) and its Redis Cluster quickstart, and graceful shutdown on SIGTERM. Every relay here runs through the harness's
//! [`RelayProcess`].

use flagrelay_testkit as support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::process::{RelayProcess, Stderr};
use support::redis::cluster::TestCluster;
use support::redis::server::TestRedis;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The binary, without the RUST_LOG and FLAGRELAY_* variables of the test's own environment.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k == "RUST_LOG" || k.starts_with("FLAGRELAY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs the binary to completion with `args`, in `dir`, with `env` set.
fn flagrelay_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command().args(args).current_dir(dir).stdin(Stdio::null()).envs(env.iter().copied()).output().expect("run flagrelay")
}

/// Runs the binary in the repository (so `config/flagrelay.toml` is the default config).
fn flagrelay(args: &[&str]) -> Output {
    flagrelay_in(Path::new(REPO), args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let flags = dir.join("flags.json");
    std::fs::write(&flags, serde_json::to_vec(&serde_json::json!({"production": {"a": simple_feature("a", "on")}})).unwrap()).unwrap();
    let cfg = dir.join("flagrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = 3\n{extra}\n[upstream]\nkind = \"file\"\npath = {:?}\n[[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\nclient_keys = [\"{CLIENT_KEY}\"]\n[sse]\ndrain_window_secs = 1\n",
            flags.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_field_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    // The listen address is taken: a bad config must fail before it would try to bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[sse]\ndrain_window_secs = 1", "[sse]\nheartbeat_secs = 0");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(BIN).args(["--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sse.heartbeat_secs"), "{err}");
    assert!(!err.contains("cannot listen"), "failed at bind, not validation: {err}");
}

#[test]
fn a_toml_syntax_error_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\n\n[upstream\nkind = \"file\"\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn check_config_prints_the_effective_config_with_keys_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = Command::new(BIN)
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .env("FLAGRELAY_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1:9999"), "env beats the file: {text}");
    assert!(text.contains("production"));
    assert!(!text.contains(SERVER_KEY) && !text.contains(CLIENT_KEY), "keys leaked: {text}");
}

/// `command()` with `--config cfg` and `extra`, started (JSON logs collected) and serving.
async fn start(cfg: &Path, extra: &[&str]) -> RelayProcess {
    let mut cmd = command();
    cmd.args(["--config", cfg.to_str().unwrap()]).args(extra);
    spawn(cmd).await
}

/// `cmd` with `--log-format json`, started (logs collected) and serving.
async fn spawn(mut cmd: Command) -> RelayProcess {
    cmd.args(["--log-format", "json"]);
    RelayProcess::spawn(cmd, Stderr::Collect).await
}

#[tokio::test]
async fn sigterm_ends_sse_streams_and_exits_zero_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let relay = start(&cfg, &[]).await;
    let url = format!("http://{}/api/sdk/v1/features", relay.listen);
    let mut sse = SseClient::connect(&url, &[("authorization", &format!("Bearer {SERVER_KEY}"))]).await;
    assert_eq!(sse.status, 200);
    sse.expect().await;
    let t0 = Instant::now();
    relay.sigterm();
    sse.wait_end(Duration::from_secs(5)).await;
    let (status, _) = relay.wait().await;
    assert!(status.success(), "exit status {status:?}");
    // The configured deadline is 3 s; allow scheduling slack but not a hang.
    assert!(t0.elapsed() < Duration::from_secs(8), "exited after {:?}", t0.elapsed());
}

#[tokio::test]
async fn sdk_keys_never_reach_the_logs_even_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let relay = start(&cfg, &["--log-level", "debug"]).await;
    let base = format!("http://{}", relay.listen);
    let c = http();
    // Good keys, a wrong key, a client key on a server endpoint, a key in a path, SSE.
    for key in [SERVER_KEY, "sdk-srv-env-wrong-key-123", CLIENT_KEY] {
        within("poll", c.get(format!("{base}/api/sdk/v1/features")).bearer_auth(key).send()).await.unwrap();
    }
    within("thin", c.get(format!("{base}/api/js/v1/evaluate/{CLIENT_KEY}/user/e30=")).send()).await.unwrap();
    let mut sse = SseClient::connect(&format!("{base}/api/sdk/v1/features"), &[("authorization", &format!("Bearer {SERVER_KEY}"))]).await;
    sse.expect().await;
    sse.close();
    relay.sigterm();
    let (_, logs) = relay.wait().await;
    assert!(logs.contains("SSE stream opened"), "debug lifecycle lines are logged: {logs}");
    for key in [SERVER_KEY, CLIENT_KEY, "sdk-srv-env-wrong-key-123"] {
        assert!(!logs.contains(key), "a key reached the logs: {key}");
    }
}

// --- Options mean the same wherever they stand ---

#[test]
fn config_given_before_check_config_is_the_file_it_checks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "log_level = \"warn\"");
    let out = flagrelay(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("log_level = \"warn\""), "checked another file: {}", stdout(&out));
}

#[tokio::test]
async fn redis_url_given_before_flags_is_the_one_the_writer_uses() {
    let redis = TestRedis::start(&[]).await;
    let url = redis.url();
    // In the repository the default config has a file upstream: only --redis-url makes it Redis.
    let out = flagrelay(&["--redis-url", &url, "flags", "export", "--env", "production"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "{}", "an empty environment, read from {url}");
}

#[test]
fn relay_options_before_a_writer_command_are_refused_not_ignored() {
    let out = flagrelay(&["--listen", "127.0.0.1:1", "flags", "export", "--env", "production"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--listen is an option of the relay"), "{}", stderr(&out));
}

#[test]
fn flags_put_help_lists_only_what_a_writer_uses() {
    let out = flagrelay(&["flags", "put", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for absent in ["--listen", "--admin-listen", "--log-level", "--log-format"] {
        assert!(!help.contains(absent), "{absent} listed: {help}");
    }
    for present in ["--env", "--config", "--redis-url", "--prefix"] {
        assert!(help.contains(present), "{present} missing: {help}");
    }
}

// --- Config errors name the key, their cause once ---

#[test]
fn a_value_of_the_wrong_type_names_its_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("drain_window_secs = 1", "drain_window_secs = 1\nheartbeat_secs = \"15\"");
    std::fs::write(&cfg, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("heartbeat_secs")).unwrap() + 1;
    let out = flagrelay(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("line {line}: `sse.heartbeat_secs`: invalid type: string \"15\", expected u64")), "{err}");
}

#[test]
fn a_log_level_that_is_not_a_filter_stops_the_relay_naming_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "log_level = \"verbose\"");
    let cfg = cfg.to_str().unwrap();
    for (args, env, named) in [
        (vec!["--config", cfg], vec![], "`log_level`"),
        (vec!["--config", cfg, "--log-level", "warn["], vec![], "`--log-level`"),
        (vec!["--config", cfg], vec![("RUST_LOG", "loud")], "`RUST_LOG`"),
        (vec!["check-config", "--config", cfg], vec![], "`log_level`"),
    ] {
        let out = flagrelay_in(Path::new(REPO), &args, &env);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(stderr(&out).contains(&format!("invalid {named}")), "{args:?} {env:?}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn the_log_level_flag_beats_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    // With RUST_LOG=error winning, the relay's info line "flagrelay serving" would never come.
    let mut cmd = command();
    cmd.args(["--config", cfg.to_str().unwrap(), "--log-level", "info"]).env("RUST_LOG", "error");
    let relay = spawn(cmd).await;
    relay.sigterm();
    let (status, _) = relay.wait().await;
    assert!(status.success());
    // Below the flag: RUST_LOG, then FLAGRELAY_LOG_LEVEL, then the file.
    let level = |env: &[(&str, &str)]| {
        let out = flagrelay_in(Path::new(REPO), &["check-config", "--config", cfg.to_str().unwrap()], env);
        let table: toml::Table = toml::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        table["log_level"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(level(&[("RUST_LOG", "warn"), ("FLAGRELAY_LOG_LEVEL", "error")]), "warn");
    assert_eq!(level(&[("FLAGRELAY_LOG_LEVEL", "error")]), "error");
}

#[test]
fn check_config_prints_toml_that_reads_back_and_says_what_it_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = flagrelay(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"));
    assert_eq!(table["environments"][0]["id"].as_str(), Some("production"));
    assert!(!text.contains(SERVER_KEY) && !text.contains(CLIENT_KEY), "keys leaked: {text}");
    assert!(text.contains("production 1 feature(s)") && text.contains("# config OK"), "{text}");
}

#[test]
fn check_config_fails_on_a_flags_file_the_relay_could_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let flags = dir.path().join("flags.json");
    let bad_feature = serde_json::json!({"production": {"a": {"key": "b"}}}).to_string();
    for (content, says) in [
        (None, "No such file or directory"),
        (Some("{\"production\": "), "invalid JSON"),
        (Some(bad_feature.as_str()), "production: feature \"a\""),
    ] {
        match content {
            Some(c) => std::fs::write(&flags, c).unwrap(),
            None => std::fs::remove_file(&flags).unwrap_or(()),
        }
        let out = flagrelay(&["check-config", "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success(), "passed with {content:?}");
        let err = stderr(&out);
        assert!(err.contains(says) && err.contains("flags file") && !err.contains("config OK"), "{content:?}: {err}");
    }
}

#[test]
fn check_config_fails_on_a_missing_tls_file_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flagrelay.toml");
    let text = format!("[upstream]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:6390\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n[[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\n");
    std::fs::write(&cfg, text).unwrap();
    let out = flagrelay(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid `upstream.tls_ca_file`: cannot read /nonexistent/ca.pem"), "{}", stderr(&out));
}

#[test]
fn an_error_states_its_cause_once() {
    let out = flagrelay(&["check-config", "--config", "/nonexistent/flagrelay.toml"]);
    assert_eq!(stderr(&out).matches("No such file or directory").count(), 1, "{}", stderr(&out));
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let out = flagrelay(&["--redis-url", &url, "flags", "export", "--env", "production"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).matches("Connection refused").count(), 1, "{}", stderr(&out));
}

// --- The README's Redis quickstart ---

/// `/readyz` of a relay process answers 200.
async fn wait_ready(relay: &RelayProcess) {
    let url = format!("http://{}/readyz", relay.admin);
    within("the relay to be ready", async {
        loop {
            if let Ok(r) = http().get(&url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn flags_import_all_loads_every_environment_so_the_example_relay_gets_ready() {
    let redis = TestRedis::start(&[]).await;
    let url = redis.url();
    let out = flagrelay(&["flags", "import", "--all", "config/flags.json", "--redis-url", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("production: imported 7 feature(s)") && said.contains("staging: imported 7 feature(s)"), "{said}");
    // The example config, as the README runs it, on ports of the test's choosing.
    let mut cmd = command();
    cmd.current_dir(REPO).args(["--redis-url", &url, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let relay = spawn(cmd).await;
    wait_ready(&relay).await;
    relay.sigterm();
    assert!(relay.wait().await.0.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_quickstart_imports_through_one_seed_and_the_relay_serves_each_environment_from_its_primary() {
    let cluster = TestCluster::start(&["production", "staging"]).await;
    let seed = cluster.seed_url();
    let out = flagrelay(&["flags", "import", "--all", "config/flags.json", "--redis-url", &seed, "--cluster"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("staging: imported 7 feature(s)"), "{}", stdout(&out));
    let mut cmd = command();
    cmd.current_dir(REPO).args(["--redis-url", &seed, "--cluster", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let relay = spawn(cmd).await;
    wait_ready(&relay).await;
    let status: serde_json::Value = http().get(relay.admin_url("/status")).send().await.expect("status").json().await.expect("json");
    for env in ["production", "staging"] {
        let e = status["environments"].as_array().and_then(|a| a.iter().find(|e| e["id"] == env)).cloned().unwrap_or_default();
        let port = cluster.node(cluster.primary_of_env(env).await).port;
        assert_eq!(e["source"]["server"], format!("127.0.0.1:{port}"), "{env}: {e}");
    }
    // A put through the seed reaches the relay.
    let out = flagrelay(&["flags", "put", "--env", "production", "config/feature.json", "--redis-url", &seed, "--cluster"]);
    assert!(out.status.success(), "{}", stderr(&out));
    within("the put to be served", async {
        loop {
            let st: serde_json::Value = http().get(relay.admin_url("/status")).send().await.expect("status").json().await.expect("json");
            if st["environments"].as_array().is_some_and(|a| a.iter().any(|e| e["id"] == "production" && e["features"] == 8)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    relay.sigterm();
    assert!(relay.wait().await.0.success());
}

#[tokio::test]
async fn an_environment_never_imported_is_warned_about_once_as_having_no_data() {
    let redis = TestRedis::start(&[]).await;
    let url = redis.url();
    let production = serde_json::json!({"a": simple_feature("a", "on")}).to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("production.json"), production).unwrap();
    let out = flagrelay_in(dir.path(), &["flags", "import", "--env", "production", "production.json", "--redis-url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Retries every 50..100 ms, so several pass while the test waits.
    let cfg = dir.path().join("flagrelay.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"redis\"\nurl = \"{url}\"\nprobe_interval_ms = 50\nbackoff_base_ms = 20\nbackoff_cap_ms = 100\n\
         [[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\n[[environments]]\nid = \"staging\"\nserver_keys = [\"{STAGING_SERVER_KEY}\"]\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let relay = start(&cfg, &["--log-level", "info,flagrelay::upstream=debug"]).await;
    let staging = |v: &serde_json::Value| v.to_string().contains("\"env\":\"staging\"");
    relay
        .wait_logs("three snapshot retries of staging", |logs| {
            (logs.iter().filter(|v| v["message"] == "phase" && v["to"] == "Uninitialised" && staging(v)).count() >= 3).then_some(())
        })
        .await;
    relay.sigterm();
    let (_, logs) = relay.wait().await;
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("environment not initialised upstream") && l.contains("\"staging\"")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("no data loaded yet"), "{}", warnings[0]);
}
