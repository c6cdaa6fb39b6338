//! A Sentinel setup ([`TestSentinel`]): a master, one replica and one `redis-server --sentinel`
//! watching them as `mymaster`, plain or TLS; failover on demand.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fast_upstream;
use super::server::{ensure_installed, free_port, TestRedis};
use super::tls::TlsFiles;
use crate::within;

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
