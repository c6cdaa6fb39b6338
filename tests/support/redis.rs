//! Real `redis-server` processes for the Redis upstream tests: each on a free loopback port in
//! its own temp dir, driven by PID (SIGKILL, SIGSTOP/SIGCONT via `kill`), restartable on the same
//! port with its persisted data kept or replaced. Plus a Sentinel setup (master + replica +
//! `redis-server --sentinel`) and watchers that hold what an SDK would hold.
//!
//! A server may listen on TLS only ([`TestRedis::start_tls`]: `port 0` + `tls-port`, with a
//! throwaway CA and certificates made by the `openssl` CLI, [`TlsFiles`]); then `url()` is
//! `rediss://` and the harness's own connections (readiness, `cmd`, `writer`) trust that CA.
//!
//! A missing `redis-server` (or `openssl`, for TLS) is a hard failure with the install hint,
//! never a silent skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// A throwaway CA, a server certificate for `127.0.0.1` / `localhost` and a client certificate
/// (for mutual TLS), all PEM, made with the `openssl` CLI; valid for two days.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The server requires a client certificate (`tls-auth-clients yes`).
    pub auth_clients: bool,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = flagrelay test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
";

impl TlsFiles {
    /// Generates the files in `dir` (EC P-256 keys).
    pub fn generate(dir: &Path, auth_clients: bool) -> TlsFiles {
        let ok = Command::new("openssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            panic!("openssl is not installed: the TLS tests make their certificates with it (apt-get install openssl)");
        }
        std::fs::create_dir_all(dir).expect("tls dir");
        let p = |name: &str| dir.join(name).display().to_string();
        std::fs::write(p("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let cnf = p("openssl.cnf");
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509", "-config", &cnf, "-extensions", "ca", "-subj", "/CN=flagrelay test CA", "-days", "2"];
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend(key);
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        openssl(&ca);
        for (name, cn) in [("server", "127.0.0.1"), ("client", "flagrelay test client")] {
            let (k, csr, pem, subj) = (p(&format!("{name}.key")), p(&format!("{name}.csr")), p(&format!("{name}.pem")), format!("/CN={cn}"));
            let mut req = vec!["req", "-new", "-config", &cnf, "-subj", &subj];
            req.extend(key);
            req.extend(["-keyout", &k, "-out", &csr]);
            openssl(&req);
            openssl(&["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-days", "2", "-extfile", &cnf, "-extensions", name, "-out", &pem]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            auth_clients,
        }
    }

    /// `[upstream]` lines trusting the CA (and presenting the client certificate when the server
    /// requires one), for [`fast_upstream`] / [`relay_on`].
    pub fn upstream_lines(&self) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut t = format!("tls_ca_file = {}\n", q(&self.ca));
        if self.auth_clients {
            t.push_str(&format!("tls_client_cert_file = {}\ntls_client_key_file = {}\n", q(&self.client_cert), q(&self.client_key)));
        }
        t
    }

    /// A redis client for `url` trusting the CA (with the client certificate when required).
    pub fn client(&self, url: &str) -> redis::Client {
        flagrelay::upstream::redis::install_crypto_provider();
        let read = |p: &Path| std::fs::read(p).expect("read a tls file");
        let client_tls = self.auth_clients.then(|| redis::ClientTlsConfig { client_cert: read(&self.client_cert), client_key: read(&self.client_key) });
        redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert: Some(read(&self.ca)) }).expect("tls client")
    }
}

/// One redis-server process.
pub struct TestRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    lines: Vec<String>,
    child: Option<Child>,
    /// TLS only (no plain port) when set.
    pub tls: Option<TlsFiles>,
}

/// Persistence that survives SIGKILL without losing an acknowledged write.
pub const DURABLE: &[&str] = &["appendonly yes", "appendfsync always", "save \"\""];

impl TestRedis {
    /// A durable server (AOF, fsync always) with `extra` config lines.
    pub async fn start(extra: &[&str]) -> TestRedis {
        ensure_installed();
        let mut lines: Vec<String> = DURABLE.iter().map(|s| s.to_string()).collect();
        lines.extend(extra.iter().map(|s| s.to_string()));
        let mut r = TestRedis { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), lines, child: None, tls: None };
        r.spawn().await;
        r
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
        let mut r = TestRedis { port: free_port(), dir, lines, child: None, tls: Some(tls) };
        r.spawn().await;
        r
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    async fn spawn(&mut self) {
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
        self.wait_ping().await;
    }

    async fn wait_ping(&self) {
        let c = self.client();
        within("redis-server to answer PING", async {
            loop {
                if let Ok(Ok(mut con)) = tokio::time::timeout(Duration::from_millis(500), c.get_multiplexed_async_connection()).await {
                    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
                    if pong.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
        ("response_timeout_ms", "1000"),
        ("connect_timeout_ms", "1000"),
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

/// A Sentinel setup: master, one replica, one sentinel watching them as `mymaster`. With
/// [`start_tls`](Self::start_tls), master and replica listen on TLS only (one shared CA,
/// `tls-replication yes`) and the sentinel reaches them over TLS, while clients still ask the
/// sentinel over plain TCP.
pub struct TestSentinel {
    pub master: TestRedis,
    pub replica: TestRedis,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestSentinel {
    pub async fn start() -> TestSentinel {
        Self::start_with(false).await
    }

    /// Master and replica on TLS only (see the type).
    pub async fn start_tls() -> TestSentinel {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> TestSentinel {
        ensure_installed();
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tls.then(|| TlsFiles::generate(&dir.path().join("tls"), false));
        let (master, replica) = match &files {
            None => {
                let master = TestRedis::start(&[]).await;
                let replica = TestRedis::start(&[&format!("replicaof 127.0.0.1 {}", master.port)]).await;
                (master, replica)
            }
            Some(f) => {
                let master = TestRedis::start_with_tls(tempfile::tempdir().expect("tempdir"), f.clone(), &["tls-replication yes"]).await;
                let replicaof = format!("replicaof 127.0.0.1 {}", master.port);
                let replica = TestRedis::start_with_tls(tempfile::tempdir().expect("tempdir"), f.clone(), &["tls-replication yes", &replicaof]).await;
                (master, replica)
            }
        };
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let tls_lines = match &files {
            None => String::new(),
            Some(f) => format!(
                "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                f.server_cert.display(),
                f.server_key.display(),
                f.ca.display()
            ),
        };
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\n{tls_lines}sentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
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
    /// Waits until the replica has the master's revision of `env`.
    pub async fn wait_replica_synced(&self, env: &str) {
        let key = format!("{{flagrelay:{env}}}:rev");
        within("the replica to catch up", async {
            loop {
                let m: Option<u64> = self.master.cmd(&["GET", &key]).await;
                let r: Option<u64> = self.replica.cmd(&["GET", &key]).await;
                if m == r {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

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

    /// The `[upstream]` section for a relay following this sentinel (`rediss://` and the CA when
    /// the servers are TLS).
    pub fn upstream(&self) -> String {
        let tls = self.master.tls.as_ref().map(TlsFiles::upstream_lines).unwrap_or_default();
        fast_upstream(&self.master.url(), &format!("{tls}[upstream.sentinel]\naddresses = [\"127.0.0.1:{}\"]\nmaster_name = \"mymaster\"\n", self.port))
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
