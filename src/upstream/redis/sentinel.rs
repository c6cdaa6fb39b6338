//! Where the master is: the configured URL; with `[upstream.sentinel]`, whatever the
//! sentinels name as the master **now**; in cluster mode, the primary that owns the
//! environment's slot now ([`cluster::Topology`](super::cluster::Topology)).
//!
//! Invariant: [`Target::resolve`] asks the sentinels again on every call, and callers call it on
//! every (re)connect: redis-rs never follows a failover on its own (`+switch-master` is not
//! listened to), so a connection built once would reconnect to the old master forever.
//! The URL supplies everything but the address (credentials, database, scheme, and the TLS
//! certificates of [`tls`](super::tls), loaded once here into the base `ConnectionInfo`, so
//! every connection built from a resolved target carries them).
//!
//! Sentinel + TLS: a `rediss://` URL makes the connection to the master TLS, verified for the
//! address the sentinels announce. The sentinels themselves are asked over plain TCP unless an
//! address is written `rediss://host:port` (then with the same certificates).
//!
//! Also here, what every Redis connection goes through: [`connect`] (the relay's connect and
//! response timeouts, keepalive), [`with_protocol`] and [`resp3_refused`] (the RESP2 fallback),
//! [`describe`] (an address for logs and `/status`), and [`Target::commands`], the connection of
//! the writer and the events forwarder (to the master, or redis-rs's cluster client).

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::config::{RedisUpstream, SentinelConfig};

use super::cluster::{self, key_slot, Owner, Topology};
use super::{tls, SyncError};

#[derive(Debug)]
pub struct Target {
    base: ConnectionInfo,
    sentinel: Option<SentinelConfig>,
    cluster: Option<Topology>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// Where one environment is served, as resolved for one connection attempt.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub info: ConnectionInfo,
    /// Cluster mode: the primary that owns the environment's slot.
    pub owner: Option<Owner>,
}

/// The connection of the writer and the events forwarder: to the master, or redis-rs's cluster
/// client (which routes each command by its key's slot).
#[derive(Clone)]
pub enum Commands {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Node(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a redis::Pipeline, offset: usize, count: usize) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Node(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Node(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// `host:port` of a connection, without credentials, for logs and `/status`.
pub fn describe(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (tls)"),
        ConnectionAddr::Unix(p) => format!("unix:{}", p.display()),
        _ => "redis".into(),
    }
}

impl Target {
    pub fn new(cfg: &RedisUpstream) -> Result<Target, SyncError> {
        let base = cfg.url.0.as_str().into_connection_info().map_err(SyncError::InvalidUrl)?;
        let base = tls::with_certificates(base, cfg)?;
        Ok(Target {
            base,
            sentinel: cfg.sentinel.clone(),
            cluster: cfg.cluster.as_ref().map(Topology::new),
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
        })
    }

    /// Who names the master, for messages: "Sentinel", "the cluster", or `None` for a fixed URL.
    pub fn named_by(&self) -> Option<&'static str> {
        if self.sentinel.is_some() {
            Some("Sentinel")
        } else if self.cluster.is_some() {
            Some("the cluster")
        } else {
            None
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Where the environment whose keys carry the hash tag of `tag_key` is served now: in
    /// cluster mode the owner of its slot (asked again on every call), else [`resolve`](Self::resolve).
    pub async fn resolve_for(&self, tag_key: &str) -> Result<Resolved, SyncError> {
        match &self.cluster {
            None => Ok(Resolved { info: self.resolve().await?, owner: None }),
            Some(t) => {
                let owner = t.owner(&self.base, key_slot(tag_key.as_bytes()), self.connect_timeout, self.response_timeout).await?;
                let info = with_keepalive(cluster::at(&self.base, &owner.host, owner.port));
                Ok(Resolved { info, owner: Some(owner) })
            }
        }
    }

    /// The writer's and the events forwarder's connection, each command bounded by
    /// `response_timeout`: to the master (resolved now), or in cluster mode redis-rs's cluster
    /// client on the seeds.
    pub async fn commands(&self, cfg: &RedisUpstream, response_timeout: Duration) -> Result<Commands, SyncError> {
        match &cfg.cluster {
            Some(c) => Ok(Commands::Cluster(cluster::client(cfg, c, &self.base, response_timeout).await?)),
            None => {
                let info = self.resolve().await?;
                Ok(Commands::Node(connect(&info, self.connect_timeout, response_timeout, None).await?))
            }
        }
    }

    /// The master's connection info (protocol RESP2; callers raise it to RESP3 where needed),
    /// with TCP keepalive on.
    pub async fn resolve(&self) -> Result<ConnectionInfo, SyncError> {
        let info = match &self.sentinel {
            None => self.base.clone(),
            Some(s) => {
                let (host, port) = self.ask_sentinels(s).await?;
                let addr = match self.base.addr() {
                    ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                        ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
                    }
                    _ => ConnectionAddr::Tcp(host, port),
                };
                self.base.clone().set_addr(addr)
            }
        };
        Ok(with_keepalive(info))
    }

    async fn ask_sentinels(&self, s: &SentinelConfig) -> Result<(String, u16), SyncError> {
        let mut errors = Vec::new();
        for address in &s.addresses {
            match self.ask_one(address, &s.master_name).await {
                Ok(hp) => return Ok(hp),
                Err(e) => errors.push(format!("{address}: {e}")),
            }
        }
        Err(SyncError::NoSentinelAnswered { master: s.master_name.clone(), errors: errors.join("; ") })
    }

    async fn ask_one(&self, address: &str, master: &str) -> Result<(String, u16), SyncError> {
        let url = if address.contains("://") { address.to_string() } else { format!("redis://{address}") };
        let client = redis::Client::open(tls::same_certificates(url.as_str().into_connection_info()?, &self.base))?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let budget = self.connect_timeout + self.response_timeout;
        let reply: Option<(String, String)> = tokio::time::timeout(budget, async {
            let mut con = client.get_multiplexed_async_connection_with_config(&cfg).await?;
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query_async(&mut con).await
        })
        .await
        .map_err(|_| SyncError::Timeout(budget, "asking a sentinel"))??;
        let (host, port) = reply.ok_or_else(|| SyncError::UnknownMaster(master.to_string()))?;
        let port = port.parse().map_err(|_| SyncError::BadPort(port.clone()))?;
        Ok((host, port))
    }
}

/// Keepalive so that a half-open TCP connection is noticed by the kernel too (the probe is what
/// notices it first).
fn with_keepalive(info: ConnectionInfo) -> ConnectionInfo {
    use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
    let ka = TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ka = ka.with_retries(3);
    let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(ka);
    info.set_tcp_settings(tcp)
}

/// The same connection info speaking `protocol`.
pub fn with_protocol(info: &ConnectionInfo, protocol: ProtocolVersion) -> ConnectionInfo {
    let redis = info.redis_settings().clone().set_protocol(protocol);
    info.clone().set_redis_settings(redis)
}

/// Opens a multiplexed connection with our timeouts (the whole handshake bounded by
/// `connect_timeout`, each command by `response_timeout`).
pub async fn connect(
    info: &ConnectionInfo,
    connect_timeout: Duration,
    response_timeout: Duration,
    push: Option<Box<dyn FnOnce(redis::AsyncConnectionConfig) -> redis::AsyncConnectionConfig + Send>>,
) -> Result<redis::aio::MultiplexedConnection, SyncError> {
    let client = redis::Client::open(info.clone())?;
    let mut cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    if let Some(f) = push {
        cfg = f(cfg);
    }
    tokio::time::timeout(connect_timeout + Duration::from_millis(50), client.get_multiplexed_async_connection_with_config(&cfg))
        .await
        .map_err(|_| SyncError::Timeout(connect_timeout, "connecting"))?
        .map_err(SyncError::from)
}

/// True if the server refused RESP3 (no `HELLO`, or `-NOPROTO`): use the RESP2 path.
pub fn resp3_refused(e: &SyncError) -> bool {
    match e {
        SyncError::Redis(r) => {
            r.kind() == redis::ErrorKind::RESP3NotSupported
                || r.code() == Some("NOPROTO")
                || r.detail().is_some_and(|d| d.to_ascii_lowercase().contains("unknown command") && d.to_ascii_lowercase().contains("hello"))
        }
        _ => false,
    }
}
