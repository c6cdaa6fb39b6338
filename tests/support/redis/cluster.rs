//! A real Redis Cluster ([`TestCluster`]): six [`TestRedis`] processes (three primaries, one
//! replica each) on free loopback ports, each in its own temp dir with AOF and its `nodes.conf`,
//! joined by a real `redis-cli --cluster create`. It owns the processes (dropping it kills them,
//! per node), the fault injection by node index (SIGKILL, SIGSTOP/SIGCONT, restart on the same
//! port with data and `nodes.conf` kept so the node rejoins), manual failovers (`CLUSTER
//! FAILOVER`, graceful or `TAKEOVER`) and slot migration done step by step (`SETSLOT
//! IMPORTING`/`MIGRATING`, `GETKEYSINSLOT` + `MIGRATE`, `SETSLOT NODE`), whole or in two halves.
//!
//! At start each environment named (hash tag `{flagrelay:<env>}`) is put on a primary of its
//! own: an environment that lands on a primary another one already holds has its slot migrated
//! to a free primary. Timings are short (`cluster-node-timeout 1000`, a full sync without the
//! 5 s diskless delay), replicas may always fail over (`cluster-replica-validity-factor 0`),
//! replica migration is off (a replica stays with its primary), the cluster stays ok for the
//! other slots while some have no live owner (`cluster-require-full-coverage no`), and a node
//! that is down for the cluster refuses reads too. Each node has two free ports, its own and
//! an explicit `cluster-port` for the bus (port + 10000 would pass 65535); a node that fails to
//! start because a parallel test took a port first is started again on others.
//!
//! Waits are event-driven polls of the live nodes (running and not SIGSTOPped) inside
//! [`within`]: "settled" means every live node says `cluster_state:ok`, all of them report the
//! same slot owners in `CLUSTER SLOTS`, and every live replica of a live primary has its
//! replication link up (`ROLE`). Why a poll is still waiting is written to stderr (shown when
//! the test fails). The harness speaks to each node over its own plain connection, never
//! through a cluster client; node indexes are `0..NODES`, fixed for the cluster's life.
//!
//! Secured ([`TestCluster::start_secured`]): with a password every node has `requirepass` and
//! `masterauth`, `redis-cli --cluster create` is given `-a`, `MIGRATE` sends `AUTH`, and every
//! node's `url()` carries the password (so the harness's own connections authenticate); with
//! TLS every node listens on TLS only (`port 0`, `tls-port`) with `tls-cluster yes` and
//! `tls-replication yes` (the bus and replication over TLS too), all of them with certificates
//! of one shared CA ([`TlsFiles`]; the nodes present its client certificate to each other, as
//! the bus requires one, but clients need none), and `url()` is `rediss://`.
//!
//! Settled does not mean a write has reached the replica: a test that kills a primary and
//! expects a write on its successor sends `WAIT 1 <ms>` on the connection that wrote it.

use std::future::Future;
use std::time::Duration;

use redis::Value;

use super::server::{free_port, TestRedis};
use super::tls::TlsFiles;
use crate::within;

/// The number of nodes: three primaries with one replica each.
pub const NODES: usize = 6;

/// The cluster settings of every node (plus its own `cluster-port`).
const CLUSTER: &[&str] = &[
    "cluster-enabled yes",
    "cluster-config-file nodes.conf",
    "cluster-node-timeout 1000",
    "cluster-replica-validity-factor 0",
    "cluster-require-full-coverage no",
    "cluster-allow-reads-when-down no",
    "cluster-allow-replica-migration no",
    // A full sync (a new replica, a primary back as a replica) starts at once, not after 5 s.
    "repl-diskless-sync-delay 0",
];

/// The pause between two polls of a wait.
const POLL: Duration = Duration::from_millis(50);
/// The timeout of one connection + command while polling (a failed attempt is retried).
const ATTEMPT: Duration = Duration::from_secs(1);

/// Slot ranges as `CLUSTER SLOTS` reports them: first slot, last slot, owner's node index.
type Owners = Vec<(u16, u16, usize)>;

/// A node's replication role, from `ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// A replica of node `of`; `connected` once its replication link is up.
    Replica { of: usize, connected: bool },
}

/// A slot migration begun by [`TestCluster::begin_migration`]: the slot is `MIGRATING` on
/// `from` and `IMPORTING` on `to` until [`TestCluster::finish_migration`].
#[derive(Debug, Clone)]
pub struct Migration {
    pub env: String,
    pub slot: u16,
    pub from: usize,
    pub to: usize,
}

/// How a cluster is secured (see the module doc); `Default` = neither (what [`TestCluster::start`] uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct Secured<'a> {
    /// `requirepass` + `masterauth` on every node.
    pub password: Option<&'a str>,
    /// TLS only, bus and replication included, one shared CA.
    pub tls: bool,
}

/// Six nodes forming one cluster (see the module doc).
pub struct TestCluster {
    nodes: Vec<TestRedis>,
    ids: Vec<String>,
    stopped: Vec<bool>,
    password: Option<String>,
    /// The shared certificates (in `_tls_dir`) of a TLS cluster.
    tls: Option<TlsFiles>,
    _tls_dir: Option<tempfile::TempDir>,
}

/// The hash tag key of an environment, `{flagrelay:<env>}`.
pub fn env_tag(env: &str) -> String {
    format!("{{flagrelay:{env}}}")
}

/// The cluster slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

fn command(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn owner_of(owners: &Owners, slot: u16) -> Option<usize> {
    owners.iter().find(|(first, last, _)| (*first..=*last).contains(&slot)).map(|r| r.2)
}

impl TestCluster {
    /// Starts six nodes, creates the cluster with `redis-cli --cluster create ...
    /// --cluster-replicas 1`, waits until it is settled with three primaries and a connected
    /// replica each, then gives each of `envs` (at most three, distinct slots) a primary of its
    /// own, migrating slots where two share one.
    pub async fn start(envs: &[&str]) -> TestCluster {
        Self::start_secured(envs, Secured::default()).await
    }

    /// [`start`](Self::start) with a password and/or TLS on every node (see the module doc).
    pub async fn start_secured(envs: &[&str], secured: Secured<'_>) -> TestCluster {
        assert!(envs.len() <= 3, "three primaries cannot hold {} environments one each", envs.len());
        for (k, a) in envs.iter().enumerate() {
            for b in &envs[k + 1..] {
                assert!(slot_of(a) != slot_of(b), "{a} and {b} hash to the same slot {}: no placement can separate them", slot_of(a));
            }
        }
        let tls_dir = secured.tls.then(|| tempfile::tempdir().expect("tempdir"));
        let tls = tls_dir.as_ref().map(|d| TlsFiles::generate(&d.path().join("tls"), false));
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(start_node(secured.password, tls.as_ref()).await);
        }
        let password = secured.password.map(str::to_string);
        let mut c = TestCluster { nodes, ids: Vec::new(), stopped: vec![false; NODES], password, tls, _tls_dir: tls_dir };
        for i in 0..NODES {
            let id = c.must(i, &command(&["CLUSTER", "MYID"])).await;
            c.ids.push(text(&id).unwrap_or_else(|| panic!("node {i}: CLUSTER MYID answered {id:?}")));
        }
        c.create().await;
        c.poll("the cluster to form: 3 primaries with one connected replica each", || c.formed()).await;
        c.spread(envs).await;
        c
    }

    async fn create(&self) {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for n in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        if let Some(t) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&t.ca);
        }
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = within("redis-cli --cluster create", cmd.output()).await.expect("run redis-cli (is it installed? apt-get install redis-tools)");
        if !out.status.success() {
            panic!(
                "redis-cli --cluster create failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    async fn formed(&self) -> Result<(), String> {
        let owners = self.settled().await?;
        let covered: u32 = owners.iter().map(|(a, b, _)| u32::from(*b) - u32::from(*a) + 1).sum();
        if covered != 16384 {
            return Err(format!("{covered} slots covered"));
        }
        let mut primaries = Vec::new();
        let mut replicated = Vec::new();
        for i in 0..NODES {
            match self.try_role(i).await? {
                Role::Primary => primaries.push(i),
                Role::Replica { of, connected: true } => replicated.push(of),
                Role::Replica { of, connected: false } => return Err(format!("replica {i} of {of} not connected yet")),
            }
        }
        replicated.sort();
        if primaries.len() != 3 || replicated != primaries {
            return Err(format!("primaries {primaries:?}, replicas of {replicated:?}"));
        }
        Ok(())
    }

    /// Puts each env on a primary no earlier env holds, preferring one no later env holds.
    async fn spread(&self, envs: &[&str]) {
        let mut used: Vec<usize> = Vec::new();
        for (k, env) in envs.iter().enumerate() {
            let owner = self.primary_of_env(env).await;
            if !used.contains(&owner) {
                used.push(owner);
                continue;
            }
            let mut later = Vec::new();
            for e in &envs[k + 1..] {
                later.push(self.primary_of_env(e).await);
            }
            let primaries = self.primaries().await;
            let to = primaries
                .iter()
                .find(|p| !used.contains(p) && !later.contains(p))
                .or_else(|| primaries.iter().find(|p| !used.contains(p)))
                .copied()
                .unwrap_or_else(|| panic!("no free primary for {env} (primaries {primaries:?}, taken {used:?})"));
            self.migrate_env(env, to).await;
            used.push(to);
        }
    }

    // ---- accessors ----

    /// The cluster's password, if it has one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The shared certificates of a TLS cluster.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// `redis://127.0.0.1:<port>` of the first live node (`rediss://`, with the password, as
    /// [`TestRedis::url`]).
    pub fn seed_url(&self) -> String {
        let i = self.live().first().copied().expect("no live node to seed from");
        self.nodes[i].url()
    }

    /// Every node's URL, by index (dead ones too).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TestRedis::url).collect()
    }

    pub fn node(&self, i: usize) -> &TestRedis {
        &self.nodes[i]
    }

    /// The node itself: signals sent through it bypass the cluster's record of stopped nodes,
    /// so prefer [`stop`](Self::stop)/[`cont`](Self::cont) here.
    pub fn node_mut(&mut self, i: usize) -> &mut TestRedis {
        &mut self.nodes[i]
    }

    /// The node's cluster id (`CLUSTER MYID`; kept across restarts by `nodes.conf`).
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The node index listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Running and not SIGSTOPped.
    pub fn is_live(&self, i: usize) -> bool {
        self.nodes[i].is_running() && !self.stopped[i]
    }

    pub fn live(&self) -> Vec<usize> {
        (0..NODES).filter(|&i| self.is_live(i)).collect()
    }

    /// The slot of the env's hash tag `{flagrelay:<env>}`.
    pub fn slot_of_env(&self, env: &str) -> u16 {
        slot_of(env)
    }

    /// The node owning the env's slot, as the first live node that answers reports it.
    pub async fn primary_of_env(&self, env: &str) -> usize {
        self.primary_of_slot(slot_of(env)).await
    }

    /// The node owning `slot`, as the first live node that answers reports it.
    pub async fn primary_of_slot(&self, slot: u16) -> usize {
        let owners = self.poll("a live node's CLUSTER SLOTS", || self.any_owners()).await;
        owner_of(&owners, slot).unwrap_or_else(|| panic!("slot {slot} has no owner: {owners:?}"))
    }

    /// The nodes owning slots, as the first live node that answers reports them.
    pub async fn primaries(&self) -> Vec<usize> {
        let owners = self.poll("a live node's CLUSTER SLOTS", || self.any_owners()).await;
        let mut p: Vec<usize> = owners.iter().map(|r| r.2).collect();
        p.sort();
        p.dedup();
        p
    }

    /// A live node whose `ROLE` says it replicates `primary` (waits until there is one).
    pub async fn replica_of(&self, primary: usize) -> usize {
        self.poll(&format!("a live replica of node {primary}"), || async move {
            for i in self.live() {
                if let Ok(Role::Replica { of, .. }) = self.try_role(i).await {
                    if of == primary {
                        return Ok(i);
                    }
                }
            }
            Err(format!("no live node replicates node {primary}"))
        })
        .await
    }

    /// The node's `ROLE`.
    pub async fn role(&self, i: usize) -> Role {
        self.poll(&format!("ROLE of node {i}"), || self.try_role(i)).await
    }

    // ---- faults ----

    /// SIGKILL (the node's data and `nodes.conf` stay for [`restart`](Self::restart)).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.stopped[i] = false;
    }

    /// Starts the node again on the same port from its AOF and `nodes.conf` (killing it first
    /// if it runs), then waits until the cluster is settled with it: a primary that was failed
    /// over while it was away is back as a replica with its link up.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].restart().await;
        self.stopped[i] = false;
        self.wait_ok().await;
    }

    /// SIGSTOP: the node freezes with its sockets open; it no longer counts as live.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
        self.stopped[i] = true;
    }

    /// SIGCONT (no wait: follow with [`wait_ok`](Self::wait_ok) if needed).
    pub fn cont(&mut self, i: usize) {
        self.nodes[i].cont();
        self.stopped[i] = false;
    }

    // ---- waits ----

    /// Waits until the cluster is settled (see the module doc).
    pub async fn wait_ok(&self) {
        self.poll("the cluster to settle", || async { self.settled().await.map(drop) }).await
    }

    /// Waits until every replica of `primary` has acknowledged everything it was sent (`ROLE`:
    /// each replica's offset equals the primary's), so a failover now loses no write.
    pub async fn wait_replicated(&self, primary: usize) {
        self.poll(&format!("the replicas of node {primary} to catch up"), || async move {
            let v = self.try_cmd(primary, &command(&["ROLE"])).await?;
            let Value::Array(f) = &v else { return Err(format!("node {primary}: ROLE answered {v:?}")) };
            if f.first().and_then(text).as_deref() != Some("master") {
                return Err(format!("node {primary} is not a primary"));
            }
            let offset = f.get(1).and_then(int).ok_or_else(|| format!("ROLE {v:?}"))?;
            let Some(Value::Array(replicas)) = f.get(2) else { return Err(format!("ROLE {v:?}")) };
            if replicas.is_empty() {
                return Err(format!("node {primary} has no replica"));
            }
            for r in replicas {
                let Value::Array(r) = r else { return Err(format!("ROLE {v:?}")) };
                let acked = r.get(2).and_then(int).ok_or_else(|| format!("ROLE {v:?}"))?;
                if acked != offset {
                    return Err(format!("a replica of node {primary} acknowledged {acked} of {offset}"));
                }
            }
            Ok(())
        })
        .await
    }

    /// After `old_primary` (the env's primary) was killed or stopped: waits until the settled
    /// live nodes agree another node owns the env's slot, and returns that node.
    pub async fn wait_promoted(&self, env: &str, old_primary: usize) -> usize {
        let slot = slot_of(env);
        self.poll(&format!("a new primary of {env} (slot {slot}) in place of node {old_primary}"), || async move {
            let owners = self.settled().await?;
            match owner_of(&owners, slot) {
                Some(p) if p != old_primary => Ok(p),
                other => Err(format!("slot {slot} owner is {other:?}")),
            }
        })
        .await
    }

    /// `CLUSTER FAILOVER` (or `... TAKEOVER`) on `replica`, then waits until it is a primary,
    /// its former primary (when live) replicates it, no slot is left with the former primary,
    /// and the cluster is settled. A graceful failover needs the primary live.
    pub async fn failover(&self, replica: usize, takeover: bool) {
        let old = match self.role(replica).await {
            Role::Replica { of, .. } => of,
            Role::Primary => panic!("node {replica} is a primary already: nothing to fail over"),
        };
        let args: &[&str] = if takeover { &["CLUSTER", "FAILOVER", "TAKEOVER"] } else { &["CLUSTER", "FAILOVER"] };
        // A manual failover can be abandoned by the cluster (Redis gives it 5 s; seen here when
        // the replica had just re-synced): ask again until it happened.
        let done = || async move {
            let owners = self.settled().await?;
            if owners.iter().any(|r| r.2 == old) {
                return Err(format!("node {old} still owns slots: {owners:?}"));
            }
            if self.try_role(replica).await? != Role::Primary {
                return Err(format!("node {replica} is not a primary yet"));
            }
            if self.is_live(old) && !matches!(self.try_role(old).await?, Role::Replica { of, .. } if of == replica) {
                return Err(format!("node {old} does not replicate node {replica} yet"));
            }
            Ok(())
        };
        within(&format!("node {replica} to take over from node {old}"), async {
            let mut last = String::new();
            loop {
                if self.try_role(replica).await == Ok(Role::Primary) && done().await.is_ok() {
                    return;
                }
                if self.try_role(replica).await != Ok(Role::Primary) {
                    self.must(replica, &command(args)).await;
                }
                let attempt = tokio::time::Instant::now();
                while attempt.elapsed() < Duration::from_secs(3) {
                    match done().await {
                        Ok(()) => return,
                        Err(e) if e != last => {
                            eprintln!("cluster: waiting for node {replica} to take over from node {old}: {e}");
                            last = e;
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        })
        .await
    }

    /// Moves the env's slot to primary `to` ([`begin_migration`](Self::begin_migration) then
    /// [`finish_migration`](Self::finish_migration)); nothing when `to` owns it already.
    pub async fn migrate_env(&self, env: &str, to: usize) {
        if self.primary_of_env(env).await == to {
            return;
        }
        let m = self.begin_migration(env, to).await;
        self.finish_migration(&m).await;
    }

    /// `CLUSTER SETSLOT <slot> IMPORTING <source id>` on `to`, then `... MIGRATING <to's id>` on
    /// the source. From here the source still serves the keys it holds and answers `ASK` for
    /// the others (`TRYAGAIN` for a multi-key command split between the two).
    pub async fn begin_migration(&self, env: &str, to: usize) -> Migration {
        let slot = slot_of(env);
        let from = self.primary_of_env(env).await;
        assert_ne!(from, to, "node {to} owns slot {slot} of {env} already");
        assert_eq!(self.role(to).await, Role::Primary, "node {to} is not a primary: it cannot own slot {slot}");
        let s = slot.to_string();
        self.must(to, &command(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]])).await;
        self.must(from, &command(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]])).await;
        Migration { env: env.to_string(), slot, from, to }
    }

    /// Moves the slot's keys (`GETKEYSINSLOT` 100 at a time + `MIGRATE ... KEYS`) until the
    /// source holds none, then `SETSLOT <slot> NODE <to>` on the target, the source and every
    /// other live primary, and waits until the settled cluster agrees `to` owns the slot.
    pub async fn finish_migration(&self, m: &Migration) {
        let (slot, s) = (m.slot, m.slot.to_string());
        let dst_port = self.nodes[m.to].port.to_string();
        within(&format!("the keys of slot {slot} to move from node {} to node {}", m.from, m.to), async {
            loop {
                let keys = self.must(m.from, &command(&["CLUSTER", "GETKEYSINSLOT", &s, "100"])).await;
                let Value::Array(keys) = keys else { panic!("GETKEYSINSLOT answered {keys:?}") };
                if keys.is_empty() {
                    return;
                }
                let mut migrate = command(&["MIGRATE", "127.0.0.1", &dst_port, "", "0", "5000"]);
                if let Some(p) = &self.password {
                    migrate.arg("AUTH").arg(p);
                }
                migrate.arg("KEYS");
                for k in &keys {
                    match k {
                        Value::BulkString(b) => migrate.arg(&b[..]),
                        other => panic!("GETKEYSINSLOT listed {other:?}"),
                    };
                }
                self.must(m.from, &migrate).await;
            }
        })
        .await;
        let node = command(&["CLUSTER", "SETSLOT", &s, "NODE", &self.ids[m.to]]);
        self.must(m.to, &node).await;
        self.must(m.from, &node).await;
        for i in self.live() {
            if i != m.to && i != m.from && self.role(i).await == Role::Primary {
                self.must(i, &node).await;
            }
        }
        let to = m.to;
        self.poll(&format!("every live node to see node {to} own slot {slot} of {}", m.env), || async move {
            let owners = self.settled().await?;
            match owner_of(&owners, slot) {
                Some(p) if p == to => Ok(()),
                other => Err(format!("slot {slot} owner is {other:?}")),
            }
        })
        .await
    }

    // ---- the machinery ----

    /// One command on node `i` with a short timeout; `Err` on a connection failure, a timeout
    /// or an error reply.
    async fn try_cmd(&self, i: usize, cmd: &redis::Cmd) -> Result<Value, String> {
        let client = self.nodes[i].client();
        let attempt = async {
            let mut con = client.get_multiplexed_async_connection().await.map_err(|e| format!("connect: {e}"))?;
            cmd.query_async::<Value>(&mut con).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(ATTEMPT, attempt).await {
            Ok(r) => r.map_err(|e| format!("node {i}: {e}")),
            Err(_) => Err(format!("node {i}: no answer within {ATTEMPT:?}")),
        }
    }

    /// One command on node `i`; panics with the node and the command on an error.
    async fn must(&self, i: usize, cmd: &redis::Cmd) -> Value {
        let what = format!("node {i} (port {}) to answer a command", self.nodes[i].port);
        let client = self.nodes[i].client();
        let mut con = within(&what, client.get_multiplexed_async_connection()).await.unwrap_or_else(|e| panic!("connect to node {i}: {e}"));
        within(&what, cmd.query_async::<Value>(&mut con))
            .await
            .unwrap_or_else(|e| panic!("node {i}: {:?}: {e}", String::from_utf8_lossy(&cmd.get_packed_command())))
    }

    async fn try_role(&self, i: usize) -> Result<Role, String> {
        let v = self.try_cmd(i, &command(&["ROLE"])).await?;
        let Value::Array(f) = &v else { return Err(format!("node {i}: ROLE answered {v:?}")) };
        match f.first().and_then(text).as_deref() {
            Some("master") => Ok(Role::Primary),
            Some("slave") => {
                let port = f.get(2).and_then(int).ok_or_else(|| format!("node {i}: ROLE {v:?}"))?;
                let of = u16::try_from(port).ok().and_then(|p| self.index_of_port(p)).ok_or_else(|| format!("node {i} replicates port {port}, not a node of ours"))?;
                let connected = f.get(3).and_then(text).as_deref() == Some("connected");
                Ok(Role::Replica { of, connected })
            }
            _ => Err(format!("node {i}: ROLE answered {v:?}")),
        }
    }

    /// Node `i`'s view: `cluster_state:ok`, and the slot owners of its `CLUSTER SLOTS`.
    async fn view(&self, i: usize) -> Result<(bool, Owners), String> {
        let info = self.try_cmd(i, &command(&["CLUSTER", "INFO"])).await?;
        let ok = text(&info).is_some_and(|t| t.lines().any(|l| l.trim() == "cluster_state:ok"));
        let slots = self.try_cmd(i, &command(&["CLUSTER", "SLOTS"])).await?;
        Ok((ok, self.parse_slots(i, &slots)?))
    }

    fn parse_slots(&self, i: usize, v: &Value) -> Result<Owners, String> {
        let bad = || format!("node {i}: CLUSTER SLOTS answered {v:?}");
        let Value::Array(ranges) = v else { return Err(bad()) };
        let mut owners = Vec::with_capacity(ranges.len());
        for r in ranges {
            let Value::Array(f) = r else { return Err(bad()) };
            let first = f.first().and_then(int).ok_or_else(bad)?;
            let last = f.get(1).and_then(int).ok_or_else(bad)?;
            let Some(Value::Array(primary)) = f.get(2) else { return Err(bad()) };
            let port = primary.get(1).and_then(int).ok_or_else(bad)?;
            let owner = u16::try_from(port).ok().and_then(|p| self.index_of_port(p)).ok_or_else(|| format!("node {i}: slots owned by port {port}, not a node of ours"))?;
            owners.push((u16::try_from(first).map_err(|_| bad())?, u16::try_from(last).map_err(|_| bad())?, owner));
        }
        owners.sort();
        Ok(owners)
    }

    /// The owners as the first live node that answers sees them.
    async fn any_owners(&self) -> Result<Owners, String> {
        let mut last = "no live node".to_string();
        for i in self.live() {
            match self.view(i).await {
                Ok((_, owners)) => return Ok(owners),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The slot owners when the cluster is settled (see the module doc); `Err` says what is not.
    async fn settled(&self) -> Result<Owners, String> {
        let mut agreed: Option<(usize, Owners)> = None;
        for i in self.live() {
            let (ok, owners) = self.view(i).await?;
            if !ok {
                return Err(format!("node {i}: cluster_state is not ok"));
            }
            match &agreed {
                None => agreed = Some((i, owners)),
                Some((j, a)) if *a != owners => return Err(format!("node {i} sees owners {owners:?}, node {j} {a:?}")),
                Some(_) => {}
            }
            if let Role::Replica { of, connected: false } = self.try_role(i).await? {
                if self.is_live(of) {
                    return Err(format!("replica {i} has no link to its live primary {of} yet"));
                }
            }
        }
        agreed.map(|(_, o)| o).ok_or_else(|| "no node is live".to_string())
    }

    /// Polls `check` until it is `Ok` (inside [`within`]), writing each new reason it is not
    /// to stderr.
    async fn poll<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let since = std::time::Instant::now();
        within(what, async {
            let mut last = String::new();
            loop {
                match check().await {
                    Ok(v) => return v,
                    Err(e) if e != last => {
                        eprintln!("cluster: {:?} waiting for {what}: {e}", since.elapsed());
                        last = e;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
    }
}

/// One cluster node, on fresh ports again when a port was taken before the server bound it
/// (parallel tests pick free ports too, and each node needs two); secured as asked.
async fn start_node(password: Option<&str>, tls: Option<&TlsFiles>) -> TestRedis {
    let mut failures = Vec::new();
    for _ in 0..5 {
        // The bus port would default to port + 10000, past 65535 for most free ports.
        let mut lines: Vec<String> = CLUSTER.iter().map(|l| l.to_string()).collect();
        lines.push(format!("cluster-port {}", free_port()));
        if let Some(p) = password {
            lines.push(format!("masterauth {p}"));
        }
        if let Some(t) = tls {
            // A node dialling another's bus presents a client certificate, which the bus always
            // requires (whatever tls-auth-clients says): the server certificate is for serverAuth
            // only, so the one for clientAuth.
            lines.extend(["tls-cluster yes".to_string(), "tls-replication yes".to_string()]);
            lines.push(format!("tls-client-cert-file {}", t.client_cert.display()));
            lines.push(format!("tls-client-key-file {}", t.client_key.display()));
        }
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        match TestRedis::try_start_secured(password, tls.cloned(), &lines).await {
            Ok(r) => return r,
            Err(e) => {
                eprintln!("cluster: a node did not start, trying other ports: {e}");
                failures.push(e);
            }
        }
    }
    panic!("a cluster node did not start in 5 attempts:\n{}", failures.join("\n"));
}

fn slot_of(env: &str) -> u16 {
    key_slot(env_tag(env).as_bytes())
}
