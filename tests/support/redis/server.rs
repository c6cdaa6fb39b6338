//! One real `redis-server` process ([`TestRedis`]) on a free loopback port in its own temp dir:
//! durable (AOF, fsync always), driven by PID (SIGKILL, SIGSTOP/SIGCONT via `kill`), restartable
//! on the same port with its persisted data kept, dropped or changed behind the subscribers'
//! back. With [`TestRedis::start_tls`] it listens on TLS only (`port 0` + `tls-port`, certificates
//! of [`TlsFiles`]); then `url()` is `rediss://` and the harness's own connections (readiness,
//! `cmd`, `writer`) trust that CA. With a password ([`TestRedis::try_start_secured`]) it has
//! `requirepass`, and `url()` carries the password, so the harness's own connections do too.
//!
//! A missing `redis-server` is a hard failure with the install hint, never a silent skip. A
//! (re)start is done when the server answers PING as this process (`process_id`, not another
//! test's server that took the port); one that exits first fails at once with the end of its log
//! ([`TestRedis::try_start`]: as an `Err`, for a caller that tries other ports).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flagrelay::config::RedisUpstream;
use flagrelay::upstream::redis::writer::Writer;

use super::tls::TlsFiles;
use super::tool_config;
use crate::within;

pub(super) fn ensure_installed() {
    let ok = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        panic!("redis-server is not installed: the Redis upstream tests need it (apt-get install redis-server)");
    }
}

pub(super) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// One redis-server process.
pub struct TestRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    lines: Vec<String>,
    child: Option<Child>,
    /// TLS only (no plain port) when set.
    pub tls: Option<TlsFiles>,
    /// `requirepass` when set; [`url`](Self::url) carries it.
    pub password: Option<String>,
}

/// Persistence that survives SIGKILL without losing an acknowledged write.
const DURABLE: &[&str] = &["appendonly yes", "appendfsync always", "save \"\""];

impl TestRedis {
    /// A durable server (AOF, fsync always) with `extra` config lines.
    pub async fn start(extra: &[&str]) -> TestRedis {
        Self::try_start(extra).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), but a server that exits before answering (a port taken between
    /// [`free_port`] and its bind, a bad config line) is an `Err` with its log instead of a
    /// panic, so a caller can try again on other ports.
    pub async fn try_start(extra: &[&str]) -> Result<TestRedis, String> {
        Self::try_start_secured(None, None, extra).await
    }

    /// [`try_start`](Self::try_start) with a password (`requirepass`; [`url`](Self::url) and
    /// so every connection of the harness carries it) and/or TLS only with the given
    /// certificates (several servers sharing one CA), in a fresh temp dir.
    pub async fn try_start_secured(password: Option<&str>, tls: Option<TlsFiles>, extra: &[&str]) -> Result<TestRedis, String> {
        ensure_installed();
        let mut lines: Vec<String> = DURABLE.iter().map(|s| s.to_string()).collect();
        lines.extend(password.map(|p| format!("requirepass {p}")));
        lines.extend(extra.iter().map(|s| s.to_string()));
        let mut r = TestRedis { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), lines, child: None, tls, password: password.map(str::to_string) };
        r.try_spawn().await?;
        Ok(r)
    }

    /// [`start`](Self::start), but listening on TLS only (`port 0`, `tls-port`), with fresh
    /// certificates ([`TlsFiles`]); `auth_clients` = require a client certificate.
    pub async fn start_tls(auth_clients: bool, extra: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = TlsFiles::generate(&dir.path().join("tls"), auth_clients);
        Self::start_with_tls(dir, tls, extra).await
    }

    /// TLS only with the given certificates (several servers sharing one CA), in `dir`.
    pub async fn start_with_tls(dir: tempfile::TempDir, tls: TlsFiles, extra: &[&str]) -> TestRedis {
        ensure_installed();
        let mut lines: Vec<String> = DURABLE.iter().map(|s| s.to_string()).collect();
        lines.extend(extra.iter().map(|s| s.to_string()));
        let mut r = TestRedis { port: free_port(), dir, lines, child: None, tls: Some(tls), password: None };
        r.spawn().await;
        r
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    async fn spawn(&mut self) {
        if let Err(e) = self.try_spawn().await {
            panic!("{e}");
        }
    }

    async fn try_spawn(&mut self) -> Result<(), String> {
        let listen = match &self.tls {
            None => format!("port {}", self.port),
            Some(t) => format!(
                "port 0\ntls-port {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients {}",
                self.port,
                t.server_cert.display(),
                t.server_key.display(),
                t.ca.display(),
                if t.auth_clients { "yes" } else { "no" }
            ),
        };
        let mut conf = format!(
            "{listen}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\nappendfilename appendonly.aof\n",
            self.dir.path().display(),
            self.dir.path().join("redis.log").display()
        );
        for l in &self.lines {
            conf.push_str(l);
            conf.push('\n');
        }
        std::fs::write(self.conf_path(), conf).expect("write redis.conf");
        let child = Command::new("redis-server").arg(self.conf_path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ping().await
    }

    /// Waits until the server answers PING (so it has loaded its data) as this process
    /// (`process_id` of `INFO server`: not another test's server that bound the port first);
    /// `Err` (with the end of the log) if the process exits first.
    async fn wait_ping(&mut self) -> Result<(), String> {
        let c = self.client();
        let pid = format!("process_id:{}", self.pid());
        within("redis-server to answer PING", async {
            loop {
                if let Ok(Ok(mut con)) = tokio::time::timeout(Duration::from_millis(500), c.get_multiplexed_async_connection()).await {
                    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
                    if pong.is_ok() {
                        let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query_async(&mut con).await;
                        if info.is_ok_and(|i| i.lines().any(|l| l.trim() == pid)) {
                            return Ok(());
                        }
                    }
                }
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    self.child = None;
                    let log = self.log();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                    return Err(format!("redis-server on port {} exited ({status}) before answering PING; its log ends:\n{}", self.port, tail.join("\n")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server; `redis://:<password>@...`
    /// with a password.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// A client for this server (trusting its CA when it is TLS).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).expect("client"),
            Some(t) => t.client(&self.url()),
        }
    }

    /// The writer's settings for this server: [`tool_config`] plus the TLS files.
    pub fn tool_config(&self) -> RedisUpstream {
        let mut cfg = tool_config(&self.url());
        if let Some(t) = &self.tls {
            cfg.tls_ca_file = Some(t.ca.clone());
            if t.auth_clients {
                cfg.tls_client_cert_file = Some(t.client_cert.clone());
                cfg.tls_client_key_file = Some(t.client_key.clone());
            }
        }
        cfg
    }

    /// Whether the process is up (started and not killed; a SIGSTOPped server still counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("redis-server is not running")
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server freezes with its sockets open.
    pub fn stop(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn cont(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts again on the same port with the persisted data (killing it first if running).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts again on the same port with no data at all.
    pub async fn restart_empty(&mut self) {
        self.kill();
        for f in std::fs::read_dir(self.dir.path()).expect("read dir") {
            let p = f.expect("entry").path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("appendonly") || n == "dump.rdb") {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).expect("rm aof dir");
                } else {
                    std::fs::remove_file(&p).expect("rm data");
                }
            }
        }
        self.spawn().await;
    }

    /// Kills the server, runs `change` against a second server started on ANOTHER port from the
    /// same persisted data (so nobody subscribed sees the change), then restarts on the original
    /// port with the changed data.
    pub async fn restart_with_changed_data<F, Fut>(&mut self, change: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        self.kill();
        let original = self.port;
        self.port = free_port();
        self.spawn().await;
        change(self.url()).await;
        self.kill();
        self.port = original;
        self.spawn().await;
    }

    /// Adds config lines for the next (re)start.
    pub fn set_config_lines(&mut self, extra: &[&str]) {
        self.lines.extend(extra.iter().map(|s| s.to_string()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub async fn con(&self) -> redis::aio::MultiplexedConnection {
        let c = self.client();
        within("a redis connection", c.get_multiplexed_async_connection()).await.expect("connect to redis")
    }

    /// Runs one command and returns its reply.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut con = self.con().await;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        within("a redis command", c.query_async(&mut con)).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub async fn writer(&self, env: &str) -> Writer {
        within("the writer to connect", Writer::connect(&self.tool_config(), env)).await.expect("writer connects")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

