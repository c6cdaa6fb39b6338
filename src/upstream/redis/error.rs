//! Why talking to Redis failed: [`SyncError`], the one error of the Redis upstream's connections,
//! snapshots and probes (the writer wraps it in its own `WriteError`).
//!
//! Its `Display` is what `/status` shows as `last_error`, so each variant says what went wrong in
//! words an operator can act on.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    #[error("invalid redis url: {0}")]
    InvalidUrl(redis::RedisError),
    #[error("upstream.{field}: cannot read {}: {source}", path.display())]
    TlsFile { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("TLS certificates: {0}")]
    TlsCertificates(redis::RedisError),
    /// Every sentinel was asked; `errors` says what each answered (`address: error; ...`).
    #[error("no sentinel named a master for {master:?} ({errors})")]
    NoSentinelAnswered { master: String, errors: String },
    #[error("sentinel knows no master named {0:?}")]
    UnknownMaster(String),
    #[error("sentinel gave a bad port {0:?}")]
    BadPort(String),
    #[error("{0}, named by {1}, is not a master (yet)")]
    NotMaster(String, &'static str),
    /// Every cluster node known was asked; `errors` says what each answered.
    #[error("no cluster node named the primary of slot {slot} ({errors})")]
    NoClusterOwner { slot: u16, errors: String },
    #[error("cluster mode needs RESP3 (Redis 7 or later) for sharded pub/sub: {0}")]
    ClusterNeedsResp3(String),
    /// The server ended the sharded subscription (the slot left the node).
    #[error("the server ended the sharded subscription (the slot moved)")]
    Unsubscribed,
    /// The `rev` key holds something else than a revision (`shown`: its start, for the log).
    #[error("{key} holds {shown:?}, not a revision")]
    NotARevision { key: String, shown: String },
    /// The probe's `GET rev` returned something else than a revision.
    #[error("{0} does not hold a revision")]
    ProbeNotARevision(String),
    #[error("the subscribed connection was closed")]
    Closed,
}

impl SyncError {
    pub fn is_timeout(&self) -> bool {
        match self {
            SyncError::Timeout(..) => true,
            SyncError::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }
}
