//! The subscribed connection and the revision probe.
//!
//! RESP3 (the default): one `MultiplexedConnection` carries the subscription **and** the probe
//! (`GET rev`). redis-rs hands every pushed message to the push sender synchronously in the
//! connection driver, before the reply of a later command on the same connection completes; so
//! when the probe returns `n`, every message with a revision <= `n` is already in our queue, and
//! "`n` above what we applied after draining the queue" is an exact trailing-loss signal.
//!
//! The push sender is a closure around a **bounded** `try_send`: when the queue is full the
//! message is dropped and the overflow flag raised (the supervisor resyncs); a `Disconnection`
//! push raises the disconnected flag (the supervisor reconnects). The library never reconnects
//! on its own, and never on a timeout: the supervisor does.
//!
//! Cluster mode subscribes with `SSUBSCRIBE` (sharded pub/sub, on the primary that owns the
//! channel's slot) and needs RESP3. A `sunsubscribe` push (the server ends the subscription
//! because the slot left the node) raises the unsubscribed flag: the supervisor re-resolves the
//! owner and resyncs. (redis-rs takes a `sunsubscribe` push as the reply of the oldest command in
//! flight; that connection is abandoned right after, so the mix-up cannot be seen.)
//!
//! RESP2 (a server that refuses `HELLO 3`): `aio::PubSub` for the messages, forwarded by a task
//! into the same bounded queue (the [`Subscription`] owns the task and aborts it when dropped),
//! plus a separate command connection for the probe. The probe is
//! then not ordered with the messages, so trailing loss is declared only when the applied
//! revision is still below the value read by the *previous* probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Notify};

use crate::config::RedisUpstream;

use super::sentinel::{self, resp3_refused, with_protocol};
use super::SyncError;

/// How many change messages may wait for the supervisor before the subscription overflows.
pub const QUEUE: usize = 8192;

#[derive(Debug)]
pub enum Push {
    Message(Vec<u8>),
    Disconnected,
}

/// Flags raised by the connection side, read by the supervisor.
#[derive(Debug, Default)]
pub struct Signals {
    pub overflow: AtomicBool,
    pub disconnected: AtomicBool,
    /// The server ended the sharded subscription (`sunsubscribe`).
    pub unsubscribed: AtomicBool,
    pub notify: Notify,
}

impl Signals {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

enum Kind {
    Resp3(MultiplexedConnection),
    Resp2 { cmd: MultiplexedConnection, forwarder: tokio::task::JoinHandle<()> },
}

pub struct Subscription {
    kind: Kind,
    pub rx: mpsc::Receiver<Push>,
    pub signals: Arc<Signals>,
    response_timeout: Duration,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Kind::Resp2 { forwarder, .. } = &self.kind {
            forwarder.abort();
        }
    }
}

fn payload(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

impl Subscription {
    /// Connects and subscribes to `channel` (`sharded`: with `SSUBSCRIBE`); returns once the
    /// server confirmed the subscription. Tries RESP3 and falls back to RESP2 if the server
    /// refuses it (not when sharded: sharded pub/sub came with Redis 7, which speaks RESP3).
    pub async fn open(info: &ConnectionInfo, channel: &str, cfg: &RedisUpstream, queue: usize, sharded: bool) -> Result<Subscription, SyncError> {
        match Self::open_resp3(info, channel, cfg, queue, sharded).await {
            Err(e) if resp3_refused(&e) && sharded => Err(SyncError::ClusterNeedsResp3(e.to_string())),
            Err(e) if resp3_refused(&e) => {
                tracing::info!(error = %e, "the server refuses RESP3; subscribing over RESP2");
                Self::open_resp2(info, channel, cfg, queue).await
            }
            other => other,
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self.kind {
            Kind::Resp3(_) => "resp3",
            Kind::Resp2 { .. } => "resp2",
        }
    }

    /// True when a probe reply orders after every message published before it (RESP3).
    pub fn exact_probe(&self) -> bool {
        matches!(self.kind, Kind::Resp3(_))
    }

    async fn open_resp3(info: &ConnectionInfo, channel: &str, cfg: &RedisUpstream, queue: usize, sharded: bool) -> Result<Subscription, SyncError> {
        let (tx, rx) = mpsc::channel(queue);
        let signals = Arc::new(Signals::default());
        let sig = signals.clone();
        let sender = move |p: PushInfo| -> Result<(), redis::aio::SendError> {
            match p.kind {
                PushKind::Message | PushKind::SMessage => {
                    let Some(body) = p.data.into_iter().nth(1).and_then(payload) else { return Ok(()) };
                    match tx.try_send(Push::Message(body)) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sig.raise(&sig.overflow);
                            Err(redis::aio::SendError)
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
                    }
                }
                PushKind::Disconnection => {
                    sig.raise(&sig.disconnected);
                    let _ = tx.try_send(Push::Disconnected);
                    Ok(())
                }
                // Our own SSUBSCRIBE's confirmation is `ssubscribe`; we never unsubscribe.
                PushKind::SUnsubscribe => {
                    sig.raise(&sig.unsubscribed);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let info3 = with_protocol(info, ProtocolVersion::RESP3);
        let mut con = sentinel::connect(&info3, cfg.connect_timeout, cfg.response_timeout, Some(Box::new(move |c: redis::AsyncConnectionConfig| c.set_push_sender(sender)))).await?;
        let limit = cfg.response_timeout + Duration::from_millis(50);
        if sharded {
            // redis-rs has no `ssubscribe` on a plain connection; the confirmation push is taken
            // as the command's reply, and an error (`-MOVED`: not this node's slot) as an error.
            let confirmed: Value = tokio::time::timeout(limit, redis::cmd("SSUBSCRIBE").arg(channel).query_async(&mut con))
                .await
                .map_err(|_| SyncError::Timeout(cfg.response_timeout, "subscribing (sharded)"))??;
            if !matches!(&confirmed, Value::Push { kind: PushKind::SSubscribe, .. }) {
                return Err(SyncError::Redis(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "SSUBSCRIBE was not confirmed", format!("{confirmed:?}")))));
            }
        } else {
            tokio::time::timeout(limit, con.subscribe(channel)).await.map_err(|_| SyncError::Timeout(cfg.response_timeout, "subscribing"))??;
        }
        Ok(Subscription { kind: Kind::Resp3(con), rx, signals, response_timeout: cfg.response_timeout })
    }

    async fn open_resp2(info: &ConnectionInfo, channel: &str, cfg: &RedisUpstream, queue: usize) -> Result<Subscription, SyncError> {
        let info2 = with_protocol(info, ProtocolVersion::RESP2);
        let client = redis::Client::open(info2.clone())?;
        let budget = cfg.connect_timeout + cfg.response_timeout;
        let (mut sink, mut stream) = tokio::time::timeout(budget, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(channel).await?;
            Ok::<_, SyncError>((sink, stream))
        })
        .await
        .map_err(|_| SyncError::Timeout(budget, "subscribing (RESP2)"))??;
        let cmd = sentinel::connect(&info2, cfg.connect_timeout, cfg.response_timeout, None).await?;
        let (tx, rx) = mpsc::channel(queue);
        let signals = Arc::new(Signals::default());
        let sig = signals.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match tx.try_send(Push::Message(msg.get_payload_bytes().to_vec())) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => sig.raise(&sig.overflow),
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            // The stream ends when the connection does.
            sig.raise(&sig.disconnected);
            let _ = tx.try_send(Push::Disconnected);
            // Keep the sink alive until here.
            let _ = &mut sink;
        });
        Ok(Subscription { kind: Kind::Resp2 { cmd, forwarder }, rx, signals, response_timeout: cfg.response_timeout })
    }

    /// `GET rev` on the probe connection (0 when the key is missing).
    pub async fn probe(&mut self, rev_key: &str) -> Result<u64, SyncError> {
        let con = match &mut self.kind {
            Kind::Resp3(c) => c,
            Kind::Resp2 { cmd, .. } => cmd,
        };
        let limit = self.response_timeout + Duration::from_millis(50);
        let r: Option<String> = tokio::time::timeout(limit, redis::cmd("GET").arg(rev_key).query_async(con))
            .await
            .map_err(|_| SyncError::Timeout(self.response_timeout, "probing the revision"))??;
        match r {
            None => Ok(0),
            Some(s) => s.trim().parse().map_err(|_| SyncError::ProbeNotARevision(rev_key.to_string())),
        }
    }
}
