//! The `flagrelay` binary as a child process ([`RelayProcess`]): JSON logs on a stderr pipe that
//! the test either reads to the end or closes once the relay serves (a dead log reader), its
//! addresses taken from the `flagrelay serving` line, SIGTERM, and the exit status.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{within, CLIENT_KEY, SERVER_KEY};

/// What the test does with the relay's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Every line is kept and returned by [`RelayProcess::wait`].
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

/// The relay binary as a process with JSON logs on stderr.
pub struct RelayProcess {
    /// `None` once waited for; a test that fails before that kills the process on drop.
    child: Option<std::process::Child>,
    /// The API and admin addresses it bound.
    pub listen: String,
    pub admin: String,
    /// Every log line read, once the process has exited (none with [`Stderr::CloseOnceServing`]).
    logs: Option<std::thread::JoinHandle<String>>,
}

impl RelayProcess {
    /// Starts `<bin> --config <cfg> --log-format json <extra>` and waits for it to serve; `bin`
    /// is the relay binary (`env!("CARGO_BIN_EXE_flagrelay")` in the test).
    pub async fn start(bin: &str, cfg: &Path, extra: &[&str], stderr: Stderr) -> RelayProcess {
        let mut child = Command::new(bin)
            .args(["--config", cfg.to_str().expect("utf-8 path"), "--log-format", "json"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn flagrelay");
        let pipe = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let logs = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut all = String::new();
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v["message"] == "flagrelay serving" {
                    if let Some(tx) = tx.take() {
                        let addrs = (v["listen"].as_str().unwrap_or("").to_string(), v["admin"].as_str().unwrap_or("").to_string());
                        let _ = tx.send(addrs);
                    }
                    if stderr == Stderr::CloseOnceServing {
                        // Returning drops the reader: the relay's stderr is now a closed pipe.
                        return all;
                    }
                }
            }
            all
        });
        let (listen, admin) = within("the relay to log its addresses", rx).await.expect("the relay logged `flagrelay serving`");
        RelayProcess { child: Some(child), listen, admin, logs: Some(logs) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
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
        let logs = self.logs.take().expect("logs").join().expect("log reader");
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
