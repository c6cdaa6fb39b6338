//! Redis Cluster: where an environment lives, and how a topology change is recognised.
//!
//! Every key and the channel of an environment share the hash tag `{<prefix>:<env>}`, so the
//! environment is one slot ([`key_slot`]) served by one primary. The sync path follows each
//! environment on that primary with direct connections (the same session as for a single
//! server, with `SSUBSCRIBE` instead of `SUBSCRIBE`), so it sees every change of owner itself
//! rather than through a client library that would reroute and resubscribe silently:
//! - [`Topology::owner`] asks the cluster (`CLUSTER SLOTS`, from the nodes it learned last time
//!   first, then the configured seeds) which primary serves a slot **now**; it is called on every
//!   (re)connect, like Sentinel's lookup.
//! - [`change_of`] tells a topology error (`-MOVED`, `-ASK`, `-TRYAGAIN`, `-CLUSTERDOWN`) from
//!   any other, so the supervisor counts why it re-resolved.
//!
//! Pure parts ([`key_slot`], [`slot_owner`], [`change_of`], [`cluster_state`]) have table tests;
//! the writer and the events forwarder use redis-rs's cluster client instead ([`client`]): they
//! only need each command routed and retried, not to notice anything.

use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Value};

use crate::config::{ClusterConfig, RedisUpstream};

use super::SyncError;

/// The slot of a key (CRC16/XMODEM of its hash tag, or of the whole key, mod 16384), as Redis
/// Cluster computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A primary, as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub port: u16,
    pub id: String,
}

impl Owner {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// One node entry of a `CLUSTER SLOTS` range: `[host, port, id, ...]`. An empty host (or `?`)
/// means "the address you asked", `asked`.
fn node(v: &Value, asked: &str) -> Option<Owner> {
    let Value::Array(a) = v else { return None };
    let host = text(a.first()?)?;
    let host = if host.is_empty() || host == "?" { asked.to_string() } else { host };
    let port = u16::try_from(int(a.get(1)?)?).ok().filter(|p| *p != 0)?;
    let id = a.get(2).and_then(text).unwrap_or_default();
    Some(Owner { host, port, id })
}

/// Every node a `CLUSTER SLOTS` reply names, as `(host, port)`.
pub type Nodes = Vec<(String, u16)>;

/// What a `CLUSTER SLOTS` reply says: the primary serving `slot` (if any range covers it), and
/// every node it names (primaries and replicas), to ask next time.
pub fn slot_owner(reply: &Value, slot: u16, asked: &str) -> Result<(Option<Owner>, Nodes), String> {
    let Value::Array(ranges) = reply else { return Err("CLUSTER SLOTS did not answer an array".into()) };
    let mut owner = None;
    let mut nodes = Vec::new();
    for r in ranges {
        let Value::Array(r) = r else { return Err("CLUSTER SLOTS: a range is not an array".into()) };
        let (Some(start), Some(end)) = (r.first().and_then(int), r.get(1).and_then(int)) else {
            return Err("CLUSTER SLOTS: a range without start and end".into());
        };
        for (i, n) in r.iter().skip(2).enumerate() {
            let Some(n) = node(n, asked) else { return Err("CLUSTER SLOTS: a node entry is not [host, port, id]".into()) };
            if i == 0 && (start..=end).contains(&i64::from(slot)) {
                owner = Some(n.clone());
            }
            let hp = (n.host, n.port);
            if !nodes.contains(&hp) {
                nodes.push(hp);
            }
        }
    }
    Ok((owner, nodes))
}

/// `cluster_state` of a `CLUSTER INFO` reply (`ok`, `fail`).
pub fn cluster_state(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.trim().strip_prefix("cluster_state:"))
}

/// Why the cluster no longer lets this node serve the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyChange {
    /// `-MOVED`: another node owns the slot.
    Moved,
    /// `-ASK` / `-TRYAGAIN`: the slot is being migrated.
    Migrating,
    /// `-CLUSTERDOWN`: the cluster cannot serve the slot now.
    ClusterDown,
    /// The server ended the sharded subscription (`sunsubscribe` push: the slot left the node).
    Unsubscribed,
    /// The owner resolved on a reconnect is another node than the one served before.
    OwnerChanged,
}

impl TopologyChange {
    /// The `reason` label of `flagrelay_upstream_topology_changes_total`.
    pub fn label(self) -> &'static str {
        match self {
            TopologyChange::Moved => "moved",
            TopologyChange::Migrating => "migrating",
            TopologyChange::ClusterDown => "cluster_down",
            TopologyChange::Unsubscribed => "sunsubscribe",
            TopologyChange::OwnerChanged => "owner_changed",
        }
    }

    pub const LABELS: [&'static str; 5] = ["moved", "migrating", "cluster_down", "sunsubscribe", "owner_changed"];
}

/// The topology change an error reports, if it is one.
pub fn change_of(e: &SyncError) -> Option<TopologyChange> {
    let SyncError::Redis(r) = e else { return None };
    match r.code()? {
        "MOVED" => Some(TopologyChange::Moved),
        "ASK" | "TRYAGAIN" => Some(TopologyChange::Migrating),
        "CLUSTERDOWN" => Some(TopologyChange::ClusterDown),
        _ => None,
    }
}

/// Which primary owns which slot, asked of the cluster on every call.
#[derive(Debug)]
pub struct Topology {
    seeds: Vec<(String, u16)>,
    /// The nodes the last answer named, asked first next time (the seeds may be gone).
    known: Mutex<Vec<(String, u16)>>,
}

/// `base` (credentials, TLS parameters, database) at another address.
pub fn at(base: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match base.addr() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host: host.to_string(), port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    base.clone().set_addr(addr)
}

impl Topology {
    pub fn new(cfg: &ClusterConfig) -> Topology {
        Topology { seeds: cfg.seeds.clone(), known: Mutex::new(Vec::new()) }
    }

    /// The primary serving `slot` now: the first node that answers `CLUSTER SLOTS` with a range
    /// covering it. A node that cannot be reached or does not cover the slot is skipped; when
    /// none answers, the error lists what each said.
    pub async fn owner(&self, base: &ConnectionInfo, slot: u16, connect_timeout: Duration, response_timeout: Duration) -> Result<Owner, SyncError> {
        let mut order: Vec<(String, u16)> = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        for s in &self.seeds {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        let mut errors = Vec::new();
        for (host, port) in order {
            let info = at(base, &host, port);
            let asked = async {
                let mut con = super::sentinel::connect(&info, connect_timeout, response_timeout, None).await?;
                let reply: Value = tokio::time::timeout(response_timeout + Duration::from_millis(50), redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con))
                    .await
                    .map_err(|_| SyncError::Timeout(response_timeout, "asking CLUSTER SLOTS"))??;
                Ok::<_, SyncError>(reply)
            };
            match asked.await {
                Ok(reply) => match slot_owner(&reply, slot, &host) {
                    Ok((owner, nodes)) => {
                        if !nodes.is_empty() {
                            if let Ok(mut k) = self.known.lock() {
                                *k = nodes;
                            }
                        }
                        match owner {
                            Some(o) => return Ok(o),
                            None => errors.push(format!("{host}:{port}: no primary serves slot {slot}")),
                        }
                    }
                    Err(e) => errors.push(format!("{host}:{port}: {e}")),
                },
                Err(e) => errors.push(format!("{host}:{port}: {e}")),
            }
        }
        Err(SyncError::NoClusterOwner { slot, errors: errors.join("; ") })
    }
}

/// redis-rs's cluster client for the seeds of `cfg` (the writer and the events forwarder):
/// credentials from the URL, TLS certificates as for a single server, the relay's timeouts.
pub async fn client(cfg: &RedisUpstream, cluster: &ClusterConfig, base: &ConnectionInfo, response_timeout: Duration) -> Result<redis::cluster_async::ClusterConnection, SyncError> {
    let nodes: Vec<ConnectionInfo> = cluster.seeds.iter().map(|(h, p)| at(base, h, *p)).collect();
    let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(response_timeout);
    if let Some(certs) = super::tls::certificates(cfg)? {
        b = b.certs(certs);
    }
    let client = b.build()?;
    let budget = cfg.connect_timeout + response_timeout;
    tokio::time::timeout(budget, client.get_async_connection())
        .await
        .map_err(|_| SyncError::Timeout(budget, "connecting to the cluster"))?
        .map_err(SyncError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        for (key, slot) in [
            ("foo", 12182),
            ("bar", 5061),
            ("hello", 866),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("", 0),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        // Every key of an environment is in the slot of its tag.
        let tag = key_slot(b"flagrelay:production");
        assert_eq!(key_slot(b"{flagrelay:production}:rev"), tag);
        assert_eq!(key_slot(b"{flagrelay:production}:changes"), tag);
    }

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(id.into())])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut v = vec![Value::Int(start), Value::Int(end)];
        v.extend(nodes);
        Value::Array(v)
    }

    #[test]
    fn the_owner_is_the_first_node_of_the_range_that_covers_the_slot() {
        let reply = Value::Array(vec![
            range(0, 5460, vec![node("10.0.0.1", 7000, "a"), node("10.0.0.4", 7003, "d")]),
            range(5461, 10922, vec![node("", 7001, "b"), node("10.0.0.5", 7004, "e")]),
            range(10923, 16383, vec![node("?", 7002, "c")]),
        ]);
        type Want<'a> = Option<(&'a str, u16, &'a str)>;
        let cases: [(u16, Want); 5] = [
            (0, Some(("10.0.0.1", 7000, "a"))),
            (5460, Some(("10.0.0.1", 7000, "a"))),
            (5461, Some(("seed", 7001, "b"))),
            (16383, Some(("seed", 7002, "c"))),
            (10922, Some(("seed", 7001, "b"))),
        ];
        for (slot, want) in cases {
            let (owner, nodes) = slot_owner(&reply, slot, "seed").unwrap();
            assert_eq!(owner, want.map(|(h, p, i)| Owner { host: h.into(), port: p, id: i.into() }), "slot {slot}");
            assert_eq!(nodes.len(), 5);
        }
        // A slot no range covers (a partial cluster) has no owner.
        let partial = Value::Array(vec![range(0, 100, vec![node("h", 1, "x")])]);
        assert_eq!(slot_owner(&partial, 101, "seed").unwrap().0, None);
        for bad in [Value::Nil, Value::Array(vec![Value::Int(1)]), Value::Array(vec![range(0, 1, vec![Value::Int(3)])])] {
            assert!(slot_owner(&bad, 0, "seed").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topology_errors_are_told_from_others() {
        let parsed = |line: &str| SyncError::Redis(redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).and_then(Value::extract_error).unwrap_err());
        for (e, want) in [
            (parsed("MOVED 1234 127.0.0.1:7001"), Some(TopologyChange::Moved)),
            (parsed("ASK 1234 127.0.0.1:7001"), Some(TopologyChange::Migrating)),
            (parsed("TRYAGAIN Multiple keys request during rehashing of slot"), Some(TopologyChange::Migrating)),
            (parsed("CLUSTERDOWN The cluster is down"), Some(TopologyChange::ClusterDown)),
            (parsed("ERR unknown command"), None),
            (SyncError::Closed, None),
        ] {
            assert_eq!(change_of(&e), want, "{e}");
        }
    }

    #[test]
    fn the_cluster_state_is_read_from_cluster_info() {
        assert_eq!(cluster_state("cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n"), Some("ok"));
        assert_eq!(cluster_state("cluster_state:fail\r\n"), Some("fail"));
        assert_eq!(cluster_state("nothing"), None);
    }
}
