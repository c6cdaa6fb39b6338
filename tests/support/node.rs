//! Drives the real npm client packages in `tests/clients/` as Node subprocesses.
//!
//! README's test command, `scripts/test`, installs them (`npm ci` in tests/clients); a missing
//! Node or missing packages fail the test with a message saying how to install them.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::within;

/// Where the client scripts and their `node_modules` live.
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

fn require_node() {
    let ok = std::process::Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "Node.js is required for the real-SDK tests: install it (apt-get install nodejs npm)");
    let modules = clients_dir().join("node_modules");
    assert!(
        modules.is_dir(),
        "the npm client packages are missing: run the tests with `scripts/test` (it installs them), or `npm ci --prefix tests/clients`"
    );
}

/// A running Node script speaking JSON lines on stdout and taking commands on stdin.
pub struct NodeScript {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeScript {
    pub fn spawn(script: &str, args: &[&str]) -> NodeScript {
        NodeScript::spawn_env(script, args, &[])
    }

    pub fn spawn_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> NodeScript {
        require_node();
        let mut cmd = Command::new("node");
        cmd.arg(clients_dir().join(script))
            .args(args)
            .current_dir(clients_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        NodeScript { child, stdin, lines: BufReader::new(stdout).lines() }
    }

    /// The next JSON line (a `{"step":"error"}` line fails the test).
    pub async fn next(&mut self) -> serde_json::Value {
        let line = within("a line from the node client", self.lines.next_line())
            .await
            .expect("read node stdout")
            .unwrap_or_else(|| panic!("the node client exited early"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line from node ({e}): {line}"));
        assert_ne!(v["step"], "error", "node client failed: {v}");
        v
    }

    pub async fn send(&mut self, line: &str) {
        within("writing to node", self.stdin.write_all(format!("{line}\n").as_bytes())).await.expect("write node stdin");
        within("flushing node stdin", self.stdin.flush()).await.expect("flush");
    }

    pub async fn wait(mut self) -> std::process::ExitStatus {
        within("the node client to exit", self.child.wait()).await.expect("wait node")
    }
}
