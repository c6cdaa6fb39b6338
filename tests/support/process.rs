//! The `flagrelay` binary as a child process ([`RelayProcess`]), the one way every test runs it:
//! JSON logs on a stderr pipe, collected as they come (to wait on) or closed once the relay serves
//! (a dead log reader); its addresses taken from the `flagrelay serving` line; started plainly,
//! from the test's own `Command`, or under an open-files limit; SIGTERM, the exit status, and a
//! kill on drop. Also the config files these tests start it with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{simple_feature, within, CLIENT_KEY, SERVER_KEY};

/// What the test does with the relay's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Every line is kept (see [`RelayProcess::logs`]) and returned by [`RelayProcess::wait`].
    Collect,
    /// The read end is closed as soon as the relay logged that it serves.
    CloseOnceServing,
}

/// A file-mode config in `dir`: `flags` as the flags file (polled every 20 ms), one environment
/// `production` with the test keys, `extra` TOML lines at the top level (before `[upstream]`)
/// and `upstream_extra` lines inside `[upstream]`. Returns the config path and the flags path.
pub fn file_config(dir: &Path, flags: &Value, extra: &str, upstream_extra: &str) -> (PathBuf, PathBuf) {
    let flags_path = dir.join("flags.json");
    std::fs::write(&flags_path, serde_json::to_vec_pretty(flags).expect("json")).expect("write flags");
    let cfg = dir.join("flagrelay.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = 3\n{extra}\n\
         [upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\n{upstream_extra}\n\
         [[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\nclient_keys = [\"{CLIENT_KEY}\"]\n\
         [sse]\ndrain_window_secs = 1\n",
        flags_path.display().to_string()
    );
    std::fs::write(&cfg, text).expect("write config");
    (cfg, flags_path)
}

/// Writes a flags file (one feature) and a config (one `production` environment, loopback ports
/// chosen by the OS, a 1 s drain window) with `extra` TOML appended at the end (new tables, not
/// `[sse]`); returns the config's path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let flags = dir.join("flags.json");
    let doc = serde_json::json!({"production": {"a": simple_feature("a", "on")}});
    std::fs::write(&flags, serde_json::to_vec(&doc).expect("json")).expect("write flags");
    let cfg = dir.join("flagrelay.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = 3\n[sse]\ndrain_window_secs = 1\n\
         [upstream]\nkind = \"file\"\npath = {:?}\n\
         [[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\nclient_keys = [\"{CLIENT_KEY}\"]\n{extra}\n",
        flags.display().to_string()
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

/// The relay binary as a process with JSON logs on stderr.
pub struct RelayProcess {
    /// `None` once waited for; a test that fails before that kills the process on drop.
    child: Option<std::process::Child>,
    /// The API and admin addresses it bound.
    pub listen: String,
    pub admin: String,
    /// Every log line read so far, and a counter bumped with each one (to wait on).
    lines: Arc<Mutex<Vec<String>>>,
    seen: tokio::sync::watch::Receiver<usize>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RelayProcess {
    /// Starts `<bin> --config <cfg> --log-format json <extra>` and waits for it to serve; `bin`
    /// is the relay binary (`env!("CARGO_BIN_EXE_flagrelay")` in the test).
    pub async fn start(bin: &str, cfg: &Path, extra: &[&str], stderr: Stderr) -> RelayProcess {
        let mut cmd = Command::new(bin);
        cmd.args(["--config", cfg.to_str().expect("utf-8 path"), "--log-format", "json"]).args(extra);
        RelayProcess::spawn(cmd, stderr).await
    }

    /// Starts `<bin> --config <cfg> --log-format json` under `ulimit {ulimit}` (`-n 512`: soft
    /// and hard limit; `-Sn 400`: the soft one only), collecting its logs.
    pub async fn start_limited(bin: &str, cfg: &Path, ulimit: &str) -> RelayProcess {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("ulimit {ulimit} && exec \"$0\" --config \"$1\" --log-format json")).arg(bin).arg(cfg);
        RelayProcess::spawn(cmd, Stderr::Collect).await
    }

    /// Runs `cmd` (which must make the relay log JSON: `--log-format json`) and waits for its
    /// `flagrelay serving` line.
    pub async fn spawn(mut cmd: Command, stderr: Stderr) -> RelayProcess {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn flagrelay");
        let pipe = child.stderr.take().expect("stderr pipe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = tokio::sync::watch::channel(0usize);
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let serving = serde_json::from_str::<Value>(&line).is_ok_and(|v| v["message"] == "flagrelay serving");
                let n = {
                    let mut all = sink.lock().expect("log lines");
                    all.push(line);
                    all.len()
                };
                tx.send_replace(n);
                if serving && stderr == Stderr::CloseOnceServing {
                    // Returning drops the reader: the relay's stderr is now a closed pipe.
                    return;
                }
            }
        });
        let mut relay = RelayProcess { child: Some(child), listen: String::new(), admin: String::new(), lines, seen, reader: Some(reader) };
        let serving = relay.wait_log("the relay to log its addresses", |v| v["message"] == "flagrelay serving").await;
        relay.listen = serving["listen"].as_str().unwrap_or("").to_string();
        relay.admin = serving["admin"].as_str().unwrap_or("").to_string();
        relay
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Every log line so far (JSON values; a line that is not JSON is a string).
    pub fn logs(&self) -> Vec<Value> {
        let lines = self.lines.lock().expect("log lines");
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone()))).collect()
    }

    /// Log lines so far whose `message` is `message`.
    pub fn count_logs(&self, message: &str) -> usize {
        self.logs().iter().filter(|v| v["message"] == message).count()
    }

    /// Waits until `found` returns something for the log lines so far (woken by each new line);
    /// panics with every line after the harness's wait, or when the relay exits first.
    pub async fn wait_logs<T>(&self, what: &str, found: impl Fn(&[Value]) -> Option<T>) -> T {
        let mut seen = self.seen.clone();
        within(what, async move {
            loop {
                if let Some(t) = found(&self.logs()) {
                    return t;
                }
                if seen.changed().await.is_err() {
                    if let Some(t) = found(&self.logs()) {
                        return t;
                    }
                    panic!("the relay's log ended before {what}:\n{}", self.lines.lock().expect("log lines").join("\n"));
                }
            }
        })
        .await
    }

    /// Waits for a log line matching `pred` and returns it.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_logs(what, |logs| logs.iter().find(|v| pred(v)).cloned()).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().expect("run kill");
        assert!(ok.success(), "kill -{signal}");
    }

    pub fn sigterm(&self) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("running");
        let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(ok.success());
    }

    /// Waits for the exit; returns the status and every log line read.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = within("the process to exit", tokio::task::spawn_blocking(move || child.wait())).await.expect("join").expect("wait");
        self.reader.take().expect("reader").join().expect("log reader");
        let mut logs = self.lines.lock().expect("log lines").join("\n");
        logs.push('\n');
        (status, logs)
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
