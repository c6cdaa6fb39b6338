//! The `flagrelay` binary as a process: config validation before binding, check-config, and
//! graceful shutdown on SIGTERM.

use flagrelay_testkit as support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");

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

/// The relay binary as a process with JSON logs on stderr.
struct RelayProcess {
    /// `None` once waited for; a test that fails before that kills the process on drop.
    child: Option<std::process::Child>,
    /// The API address it bound.
    listen: String,
    /// Every log line, once the process has exited.
    logs: Option<std::thread::JoinHandle<String>>,
}

impl RelayProcess {
    async fn start(cfg: &std::path::Path, extra: &[&str]) -> RelayProcess {
        let mut child = Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap(), "--log-format", "json"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let logs = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "flagrelay serving" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(v["listen"].as_str().unwrap_or("").to_string());
                        }
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let listen = within("the relay to log its address", rx).await.unwrap();
        RelayProcess { child: Some(child), listen, logs: Some(logs) }
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("running");
        let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit; returns the status and every log line.
    async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = within("the process to exit", tokio::task::spawn_blocking(move || child.wait())).await.unwrap().unwrap();
        (status, self.logs.take().expect("logs").join().unwrap())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn sigterm_ends_sse_streams_and_exits_zero_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let relay = RelayProcess::start(&cfg, &[]).await;
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
    let relay = RelayProcess::start(&cfg, &["--log-level", "debug"]).await;
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
