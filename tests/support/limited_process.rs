//! The `flagrelay` binary as a child process under a chosen open-files limit (`ulimit -n`), with
//! its JSON log lines collected as they come. Killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{simple_feature, CLIENT_KEY, SERVER_KEY, WAIT};


/// Writes a flags file and a config (one `production` environment, loopback ports chosen by the
/// OS, a 1 s drain window) with `extra` TOML appended (not an `[sse]` table); returns the
/// config's path.
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

pub struct RelayProcess {
    child: Option<Child>,
    /// `host:port` of the API and admin listeners, from the "flagrelay serving" line.
    pub listen: String,
    pub admin: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl RelayProcess {
    /// Starts the relay binary `bin` (a test's `env!("CARGO_BIN_EXE_flagrelay")`) with `config`
    /// under `ulimit {ulimit}` (`-n 512`: soft and hard limit; `-Sn 400`: the soft one only) and
    /// waits until it logs that it serves.
    pub async fn start(bin: &str, config: &Path, ulimit: &str) -> RelayProcess {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" --config \"$1\" --log-format json"))
            .arg(bin)
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn flagrelay");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("log lines").push(v);
            }
        });
        let mut relay = RelayProcess { child: Some(child), listen: String::new(), admin: String::new(), lines };
        let serving = relay.wait_log("the relay to log that it serves", |v| v["message"] == "flagrelay serving").await;
        relay.listen = serving["listen"].as_str().unwrap_or_default().to_string();
        relay.admin = serving["admin"].as_str().unwrap_or_default().to_string();
        relay
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Every log line so far (JSON values; a line that is not JSON is a string).
    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().expect("log lines").clone()
    }

    /// Log lines so far whose `message` is `message`.
    pub fn count_logs(&self, message: &str) -> usize {
        self.logs().iter().filter(|v| v["message"] == message).count()
    }

    /// Waits for a log line matching `pred` and returns it; panics with every line so far
    /// after [`WAIT`].
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(v) = self.logs().into_iter().find(|v| pred(v)) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}; the log so far: {:#?}", self.logs()))
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
