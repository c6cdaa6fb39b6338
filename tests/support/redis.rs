//! Real `redis-server` processes for the Redis upstream tests: each on a free loopback port in
//! its own temp dir, driven by PID (SIGKILL, SIGSTOP/SIGCONT via `kill`), restartable on the same
//! port with its persisted data kept or replaced. Plus a Sentinel setup (master + replica +
//! `redis-server --sentinel`) and watchers that hold what an SDK would hold.
//!
//! A missing `redis-server` is a hard failure with the install hint, never a silent skip.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flagrelay::config::RedisUpstream;
use flagrelay::upstream::redis::writer::Writer;
use serde_json::Value;

use super::{within, SseClient, TestRelay, TestRelayBuilder};

pub type Flags = BTreeMap<String, Value>;

fn ensure_installed() {
    let ok = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        panic!("redis-server is not installed: the Redis upstream tests need it (apt-get install redis-server)");
    }
}

pub fn free_port() -> u16 {
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
}

/// Persistence that survives SIGKILL without losing an acknowledged write.
pub const DURABLE: &[&str] = &["appendonly yes", "appendfsync always", "save \"\""];

impl TestRedis {
    /// A durable server (AOF, fsync always) with `extra` config lines.
    pub async fn start(extra: &[&str]) -> TestRedis {
        ensure_installed();
        let mut lines: Vec<String> = DURABLE.iter().map(|s| s.to_string()).collect();
        lines.extend(extra.iter().map(|s| s.to_string()));
        let mut r = TestRedis { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), lines, child: None };
        r.spawn().await;
        r
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    async fn spawn(&mut self) {
        let mut conf = format!(
            "port {}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\nappendfilename appendonly.aof\n",
            self.port,
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
        self.wait_ping().await;
    }

    async fn wait_ping(&self) {
        let url = self.url();
        within("redis-server to answer PING", async {
            loop {
                if let Ok(c) = redis::Client::open(url.as_str()) {
                    if let Ok(Ok(mut con)) = tokio::time::timeout(Duration::from_millis(500), c.get_multiplexed_async_connection()).await {
                        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
                        if pong.is_ok() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let c = redis::Client::open(self.url()).expect("client");
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
        writer_for(&self.url(), env).await
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

/// Settings for the writer: the relay's defaults for `url`.
pub fn tool_config(url: &str) -> RedisUpstream {
    let args = flagrelay::config::ServeArgs { config: "/nonexistent/flagrelay.toml".into(), redis_url: Some(url.to_string()), ..Default::default() };
    RedisUpstream::for_tool(&args).expect("tool config").0
}

pub async fn writer_for(url: &str, env: &str) -> Writer {
    within("the writer to connect", Writer::connect(&tool_config(url), env)).await.expect("writer connects")
}

/// The `[upstream]` section for a relay on `url` with fault timings short enough for tests.
/// `extra` lines `key = value` override these defaults; sections (`[upstream.sentinel]`) follow.
pub fn fast_upstream(url: &str, extra: &str) -> String {
    let mut settings: Vec<(String, String)> = [
        ("probe_interval_ms", "100"),
        ("response_timeout_ms", "300"),
        ("connect_timeout_ms", "300"),
        ("snapshot_timeout_ms", "2000"),
        ("backoff_base_ms", "20"),
        ("backoff_cap_ms", "300"),
        ("stable_after_secs", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut sections = String::new();
    let mut in_section = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            in_section = true;
        }
        match line.split_once('=') {
            Some((k, v)) if !in_section => {
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                match settings.iter_mut().find(|(sk, _)| *sk == k) {
                    Some(slot) => slot.1 = v,
                    None => settings.push((k, v)),
                }
            }
            _ => {
                sections.push_str(line);
                sections.push('\n');
            }
        }
    }
    let mut t = format!("[upstream]\nkind = \"redis\"\nurl = \"{url}\"\n");
    for (k, v) in settings {
        t.push_str(&format!("{k} = {v}\n"));
    }
    t.push_str(&sections);
    t
}

pub fn relay_on(url: &str, extra: &str) -> TestRelayBuilder {
    TestRelay::builder().upstream(&fast_upstream(url, extra))
}

/// Exact JSON text of every feature (object member order included).
pub fn exact(map: &Flags) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), serde_json::to_string(v).expect("json"))).collect()
}

fn object_to_flags(v: Value) -> Flags {
    match v {
        Value::Object(o) => o.into_iter().collect(),
        other => panic!("expected a JSON object, got {other}"),
    }
}

/// The relay's map for a key, by polling.
pub async fn poll_flags(relay: &TestRelay, key: &str) -> Flags {
    let r = relay.poll(key).await;
    assert_eq!(r.status(), 200);
    object_to_flags(within("poll body", r.json()).await.expect("poll json"))
}

/// Polls until the relay serves exactly `want` for `key`.
pub async fn wait_poll(relay: &TestRelay, key: &str, want: &Flags) {
    let want = exact(want);
    let mut last = BTreeMap::new();
    let r = tokio::time::timeout(super::WAIT, async {
        loop {
            last = exact(&poll_flags(relay, key).await);
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if r.is_err() {
        panic!("polling never served the expected flags\n want: {want:?}\n last: {last:?}");
    }
}

/// An SSE client that applies events the way an SDK does. `replace_on_first` = replace the map
/// with the first event of every connection (full state); otherwise only upsert and remove
/// (Java SDK semantics).
pub struct WatchingClient {
    pub sse: SseClient,
    pub flags: Flags,
    replace_on_first: bool,
    first: bool,
    url: String,
    key: String,
    pub events: usize,
    pub last_id: Option<u64>,
}

impl WatchingClient {
    pub async fn upsert_only(relay: &TestRelay, key: &str) -> WatchingClient {
        Self::connect(relay, key, false).await
    }

    pub async fn replacing(relay: &TestRelay, key: &str) -> WatchingClient {
        Self::connect(relay, key, true).await
    }

    async fn connect(relay: &TestRelay, key: &str, replace_on_first: bool) -> WatchingClient {
        let url = relay.url("/api/sdk/v1/features");
        let sse = SseClient::connect(&url, &[("authorization", &format!("Bearer {key}"))]).await;
        assert_eq!(sse.status, 200);
        WatchingClient { sse, flags: Flags::new(), replace_on_first, first: true, url, key: key.into(), events: 0, last_id: None }
    }

    /// Drops the connection and opens a fresh one (no Last-Event-ID): full state again.
    pub async fn reconnect(&mut self) {
        self.sse.close();
        self.sse = SseClient::connect(&self.url, &[("authorization", &format!("Bearer {}", self.key))]).await;
        assert_eq!(self.sse.status, 200);
        self.first = true;
    }

    fn apply(&mut self, e: &super::SseEvent) {
        self.events += 1;
        if let Some(id) = e.id.as_deref().and_then(|i| i.parse().ok()) {
            self.last_id = Some(id);
        }
        match e.event.as_str() {
            "features.updated" => {
                let m = object_to_flags(e.json());
                if self.first && self.replace_on_first {
                    self.flags = m;
                } else {
                    self.flags.extend(m);
                }
            }
            "features.deleted" => {
                for k in e.json().as_array().expect("deleted keys array") {
                    self.flags.remove(k.as_str().expect("key"));
                }
            }
            other => panic!("unexpected SSE event {other}: {}", e.data),
        }
        self.first = false;
    }

    /// Reads one event and applies it.
    pub async fn step(&mut self) {
        let e = self.sse.expect().await;
        self.apply(&e);
    }

    /// Reads events until the held map is exactly `want`.
    pub async fn wait_for(&mut self, want: &Flags) {
        let want_x = exact(want);
        let r = tokio::time::timeout(super::WAIT, async {
            while exact(&self.flags) != want_x {
                let e = match self.sse.next_any().await {
                    Some(e) => e,
                    None => panic!("SSE stream ended"),
                };
                if e.data.starts_with("{\"heartbeat\"") {
                    continue;
                }
                self.apply(&e);
            }
        })
        .await;
        if r.is_err() {
            panic!("SSE client never held the expected flags\n want: {want_x:?}\n held: {:?}", exact(&self.flags));
        }
    }
}

/// Waits until every watcher and polling hold exactly what Redis holds (`flags export`).
pub async fn converge(relay: &TestRelay, url: &str, env: &str, key: &str, clients: &mut [&mut WatchingClient]) -> Flags {
    let want = within("export", writer_for(url, env).await.export()).await.expect("export");
    wait_poll(relay, key, &want).await;
    for c in clients.iter_mut() {
        c.wait_for(&want).await;
    }
    want
}

/// Reads a counter of `/metrics` (0 when absent).
pub async fn counter(relay: &TestRelay, name: &str, labels: &[(&str, &str)]) -> f64 {
    super::metric(&relay.metrics().await, name, labels).unwrap_or(0.0)
}

/// Waits until a counter reaches `at_least`.
pub async fn wait_counter(relay: &TestRelay, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let what = format!("{name}{labels:?} >= {at_least}");
    within(&what, async {
        loop {
            let v = counter(relay, name, labels).await;
            if v >= at_least {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A Sentinel setup: master, one replica, one sentinel watching them as `mymaster`.
pub struct TestSentinel {
    pub master: TestRedis,
    pub replica: TestRedis,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestSentinel {
    pub async fn start() -> TestSentinel {
        ensure_installed();
        let master = TestRedis::start(&[]).await;
        let replica = TestRedis::start(&[&format!("replicaof 127.0.0.1 {}", master.port)]).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.path().display(),
                dir.path().join("sentinel.log").display(),
                master.port
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn sentinel");
        let s = TestSentinel { master, replica, port, dir, child: Some(child) };
        // Ready when the replica is in sync and the sentinel knows it.
        within("the replica to sync and the sentinel to see it", async {
            loop {
                let info: String = s.replica.cmd(&["INFO", "replication"]).await;
                let known = s.replicas_known().await;
                if info.contains("master_link_status:up") && known {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        s
    }

    async fn sentinel_con(&self) -> Option<redis::aio::MultiplexedConnection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        tokio::time::timeout(Duration::from_secs(1), c.get_multiplexed_async_connection()).await.ok()?.ok()
    }

    async fn replicas_known(&self) -> bool {
        let Some(mut con) = self.sentinel_con().await else { return false };
        let r: redis::RedisResult<Vec<redis::Value>> = redis::cmd("SENTINEL").arg("replicas").arg("mymaster").query_async(&mut con).await;
        matches!(r, Ok(v) if !v.is_empty())
    }

    /// The port the sentinel names as master.
    pub async fn master_port(&self) -> Option<u16> {
        let mut con = self.sentinel_con().await?;
        let r: Option<(String, String)> = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query_async(&mut con).await.ok()?;
        r.and_then(|(_, p)| p.parse().ok())
    }

    /// `SENTINEL FAILOVER mymaster`, then waits until the replica is the named master.
    pub async fn failover(&self) {
        let mut con = self.sentinel_con().await.expect("sentinel connection");
        let _: String = within("SENTINEL FAILOVER", redis::cmd("SENTINEL").arg("failover").arg("mymaster").query_async(&mut con)).await.expect("failover accepted");
        within("the replica to be promoted", async {
            loop {
                if self.master_port().await == Some(self.replica.port) {
                    let role: Vec<redis::Value> = self.replica.cmd(&["ROLE"]).await;
                    if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// The `[upstream]` section for a relay following this sentinel.
    pub fn upstream(&self) -> String {
        fast_upstream(&self.master.url(), &format!("[upstream.sentinel]\naddresses = [\"127.0.0.1:{}\"]\nmaster_name = \"mymaster\"\n", self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for TestSentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
