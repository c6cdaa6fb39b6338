//! The writer pass: the streams of an environment (of one kind, [`PassKind`]) that follow it
//! frame by frame live in shards (about one per worker thread), and each change or heartbeat
//! reaches them by one pass per shard: one non-blocking `try_write` of the shared frame per
//! socket. No connection task is
//! woken and no per-connection future is polled.
//!
//! A member whose socket takes less than the whole frame (a short write, `WouldBlock`) or fails
//! leaves the pass at once: it is handed the unwritten rest (a slice of the same `Bytes`) and
//! the seq that rest brings it to ([`Handoff`]), and its own connection task, woken once, writes
//! the rest on socket readiness and catches up with the coalesced latest state exactly as a
//! pulled stream does ([`super::SseStream`]), before it joins again.
//!
//! Invariants:
//! - A member's socket is written either by its shard's pass or by its own task, never both:
//!   [`ConnState`]'s owner flag says which, and only the pass moves it through `BUSY` (while it
//!   writes), so frames are never torn or interleaved.
//! - Between passes every member is at the shard's seq, or ahead of it when it joined having
//!   seen a snapshot the pass had not written yet (it is then skipped up to there). A member
//!   behind the shard leaves at once with nothing to write, and catches up itself.
//! - Shards share nothing but the environment's snapshot channel and a span record touched
//!   twice per pass: passes of different shards run on different worker threads at once. Counts
//!   and histogram observations are kept per pass and folded into Prometheus once per pass.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::eval_stream::ContextGroup;
use super::thin_streams::{LegacyJsRenderer, OfrepRenderer};
use super::{ConnState, EnvHandles, Fanout, FeatureflowRenderer, Renderer};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Catchup, ChangeRecord, EnvStore, Snapshot};

/// [`ConnState::owner`]: the connection's task writes its socket.
pub(crate) const OWN: u8 = 0;
/// The shard's pass may write it.
pub(crate) const POOL: u8 = 1;
/// The pass is writing it now.
pub(crate) const BUSY: u8 = 2;

/// The stream kinds the pass serves: those whose frames are the same for every client of an
/// environment (their renderers keep no per-client state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassKind {
    /// The Featureflow server-SDK stream.
    Featureflow,
    /// The legacy thin-client stream (changed keys).
    LegacyJs,
    /// The OFREP change-notification stream (`refetchEvaluation`).
    Ofrep,
    /// The per-context evaluation stream: its frame is its context group's ([`EvalMember`]),
    /// made once per group and pass.
    Eval,
}

impl PassKind {
    /// The kind of a stream by its metrics label; `None` for streams the pass does not serve.
    pub fn of(protocol: &str) -> Option<PassKind> {
        match protocol {
            "featureflow" => Some(PassKind::Featureflow),
            "js_legacy" => Some(PassKind::LegacyJs),
            "ofrep" => Some(PassKind::Ofrep),
            "eval" => Some(PassKind::Eval),
            _ => None,
        }
    }

    /// The frame that brings a client of this kind through `catchup` to `to` (`None` for
    /// [`PassKind::Eval`], whose frames are per group).
    fn render(self, env: &EnvStore, catchup: Catchup, to: &Arc<Snapshot>, metrics: &Metrics) -> Option<Bytes> {
        match self {
            PassKind::Featureflow => FeatureflowRenderer.catch_up(env, catchup, to, metrics),
            PassKind::LegacyJs => LegacyJsRenderer.catch_up(env, catchup, to, metrics),
            PassKind::Ofrep => OfrepRenderer.catch_up(env, catchup, to, metrics),
            PassKind::Eval => None,
        }
    }

    fn comment_heartbeats(self) -> bool {
        match self {
            PassKind::Featureflow => FeatureflowRenderer.comment_heartbeats(),
            PassKind::LegacyJs => LegacyJsRenderer.comment_heartbeats(),
            PassKind::Ofrep => OfrepRenderer.comment_heartbeats(),
            PassKind::Eval => true,
        }
    }
}

/// What a member that left the pass has to write before it is current again.
#[derive(Debug, Default)]
pub struct Handoff {
    /// The unwritten rest of the frame the pass started (empty when it started none).
    pub rest: Bytes,
    /// The seq the connection is at once `rest` is written.
    pub seq: u64,
    /// The changes `rest` delivers, counted when it is written.
    pub changes: Vec<Arc<ChangeRecord>>,
    /// For a per-context stream: the group version the client has once `rest` is written.
    pub have: u64,
}

/// What the pass keeps of a per-context stream: its group and the group version its client has.
pub struct EvalMember {
    pub group: Arc<ContextGroup>,
    pub have: u64,
}

/// A connection in a shard.
pub struct Member {
    pub conn: Arc<ConnState>,
    pub socket: Arc<TcpStream>,
    /// The snapshot seq the connection has been written up to.
    pub seq: u64,
    /// For a per-context stream ([`PassKind::Eval`]).
    pub eval: Option<EvalMember>,
}

impl Member {
    fn have(&self) -> u64 {
        self.eval.as_ref().map_or(0, |e| e.have)
    }

    /// Marks the socket as being written by the pass (`POOL` → `BUSY`); `false` when the
    /// member's task has taken it back (the connection ended), and the member is dropped.
    fn claim(&self) -> bool {
        self.conn.owner.compare_exchange(POOL, BUSY, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

struct Shard {
    /// Members waiting to be taken in by the next pass (a join never waits for a pass), and the
    /// seq the shard's members are at (or are being brought to by a pass under way).
    joining: Mutex<Joining>,
    /// Wakes the shard's task to drop members that went away (coalesced: one wake per burst).
    departed: Notify,
}

struct Joining {
    seq: u64,
    members: Vec<Member>,
}

/// When a change's passes started and how many shards have yet to finish it.
#[derive(Default)]
struct Span {
    seq: u64,
    start: Option<Instant>,
    remaining: usize,
}

/// The writer-pass shards of one environment's streams of one kind.
pub struct EnvPass {
    kind: PassKind,
    env: Arc<EnvStore>,
    handles: Arc<EnvHandles>,
    shards: Box<[Shard]>,
    next: std::sync::atomic::AtomicUsize,
    span: Mutex<Span>,
    pass_seconds: Histogram,
    span_seconds: Histogram,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EnvPass {
    /// The pass of `env` with `shards` shards, and the shards' tasks (joined by [`Fanout::run`]).
    pub(crate) fn start(
        hub: &Arc<Fanout>,
        kind: PassKind,
        env: Arc<EnvStore>,
        handles: Arc<EnvHandles>,
        shards: usize,
    ) -> (Arc<EnvPass>, Vec<JoinHandle<()>>) {
        let shards = shards.max(1);
        let pass = Arc::new(EnvPass {
            kind,
            pass_seconds: hub
                .metrics
                .fanout_pass_seconds
                .with_label_values(&[&env.id]),
            span_seconds: hub
                .metrics
                .fanout_pass_span_seconds
                .with_label_values(&[&env.id]),
            env,
            handles,
            shards: (0..shards)
                .map(|_| Shard {
                    joining: Mutex::new(Joining {
                        seq: 0,
                        members: Vec::new(),
                    }),
                    departed: Notify::new(),
                })
                .collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            span: Mutex::new(Span::default()),
        });
        let tasks = (0..shards)
            .map(|i| {
                // Subscribed here, not in the task: the shard starts at the seq it has seen.
                let mut changes = pass.env.subscribe();
                let seq = changes.borrow_and_update().seq;
                lock(&pass.shards[i].joining).seq = seq;
                let mut heartbeats = hub.heartbeat_tx.subscribe();
                heartbeats.borrow_and_update();
                let stop = hub.shutdown.clone();
                let linger = hub.cfg.drain_window + Duration::from_millis(100);
                let comment = kind.comment_heartbeats();
                tokio::spawn(pass.clone().run_shard(
                    i,
                    seq,
                    changes,
                    heartbeats,
                    stop,
                    linger,
                    hub.clone(),
                    comment,
                ))
            })
            .collect();
        (pass, tasks)
    }

    /// The shard a new member goes to (round robin).
    pub fn shard_for_new(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    /// Hands `member` to shard `shard`'s pass. From `Ok` on its connection's task must not write
    /// the socket until it takes it back ([`EnvPass::leave`]) or is handed it ([`Handoff`]).
    /// Refused (`Err`, the member back) when the member is behind the shard: its stream has the
    /// newer snapshot to pull first.
    pub fn join(&self, shard: usize, member: Member) -> Result<(), Member> {
        let mut joining = lock(&self.shards[shard].joining);
        if member.seq < joining.seq {
            return Err(member);
        }
        member.conn.owner.store(POOL, Ordering::Release);
        joining.members.push(member);
        Ok(())
    }

    /// Takes the socket back from the pass. Returns what the pass handed over, if it did: that
    /// rest must be written before anything else.
    pub async fn leave(&self, shard: usize, conn: &ConnState) -> Option<Handoff> {
        loop {
            match conn
                .owner
                .compare_exchange(POOL, OWN, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.shards[shard].departed.notify_one();
                    return None;
                }
                // The pass is writing this socket right now (one `try_write`): wait for it.
                Err(BUSY) => tokio::task::yield_now().await,
                Err(_) => return conn.take_handoff(),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_shard(
        self: Arc<Self>,
        i: usize,
        mut seq: u64,
        mut changes: watch::Receiver<Arc<Snapshot>>,
        mut heartbeats: watch::Receiver<Bytes>,
        shutdown: Shutdown,
        linger: Duration,
        hub: Arc<Fanout>,
        comment_heartbeats: bool,
    ) {
        let mut members: Vec<Member> = Vec::new();
        // After shutdown the shard keeps passing changes to streams still waiting for their drain.
        let stop = async {
            shutdown.wait().await;
            tokio::time::sleep(linger).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let snap = changes.borrow_and_update().clone();
                    self.take_joiners(i, &mut members, Some(snap.seq));
                    self.pass_change(&mut members, &mut seq, &snap, &hub);
                }
                r = heartbeats.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let frame = if comment_heartbeats { Bytes::from_static(b": heartbeat\n\n") } else { heartbeats.borrow_and_update().clone() };
                    self.take_joiners(i, &mut members, None);
                    self.pass_heartbeat(&mut members, frame);
                }
                _ = self.shards[i].departed.notified() => {
                    self.take_joiners(i, &mut members, None);
                    members.retain(|m| m.conn.owner.load(Ordering::Acquire) == POOL);
                }
            }
        }
    }

    /// Takes in the members that joined since the last pass; with `to`, a pass to that seq is
    /// starting: from now on a joiner must be at it.
    fn take_joiners(&self, i: usize, members: &mut Vec<Member>, to: Option<u64>) {
        let mut joining = lock(&self.shards[i].joining);
        if let Some(to) = to {
            joining.seq = joining.seq.max(to);
        }
        if !joining.members.is_empty() {
            members.append(&mut joining.members);
        }
    }

    /// Writes the frame that brings the shard from `*seq` to `snap` to every member.
    fn pass_change(
        &self,
        members: &mut Vec<Member>,
        seq: &mut u64,
        snap: &Arc<Snapshot>,
        hub: &Fanout,
    ) {
        let from = *seq;
        if snap.seq <= from {
            return;
        }
        *seq = snap.seq;
        let started = Instant::now();
        self.span_begin(snap.seq, started);
        if !members.is_empty() {
            let catchup = self.env.catchup_seq(from, snap);
            let changed: Vec<Arc<ChangeRecord>> = match &catchup {
                Catchup::Changes(c) => c.clone(),
                _ => Vec::new(),
            };
            let shared = self.kind.render(&self.env, catchup, snap, &hub.metrics);
            // The shared frame is lent, not cloned: a clone per member would touch its reference
            // count, one cache line for every shard's thread, once per delivery.
            let frame_of = |m: &Member| match (&m.eval, self.kind) {
                (Some(e), PassKind::Eval) => {
                    let (frame, have) = e.group.frame_for(&self.env, snap, &hub.metrics, e.have);
                    (frame.map(Cow::Owned), have)
                }
                _ => (shared.as_ref().map(Cow::Borrowed), 0),
            };
            self.write_all(members, from, snap.seq, frame_of, &changed);
        }
        self.pass_seconds.observe(started.elapsed().as_secs_f64());
        self.span_end(snap.seq);
    }

    /// One pass writing to every member the frame `frame_of` gives it (which brings it from
    /// `from` to `to`, and a per-context member to a group version).
    fn write_all<'f>(
        &self,
        members: &mut Vec<Member>,
        from: u64,
        to: u64,
        frame_of: impl Fn(&Member) -> (Option<Cow<'f, Bytes>>, u64),
        changed: &[Arc<ChangeRecord>],
    ) {
        let h = &self.handles;
        let delivery = h.delivery.local();
        let mut written = 0u64;
        let mut started = 0u64;
        let mut bytes = 0u64;
        let mut now = Instant::now();
        let mut k = 0usize;
        members.retain_mut(|m| {
            if !m.claim() {
                return false;
            }
            if m.seq >= to {
                m.conn.owner.store(POOL, Ordering::Release);
                return true;
            }
            if m.seq != from {
                // Behind the shard: it catches up itself.
                let have = m.have();
                hand_off(m, Handoff { rest: Bytes::new(), seq: m.seq, changes: Vec::new(), have });
                return false;
            }
            let (frame, have) = frame_of(m);
            let n = match &frame {
                Some(frame) => {
                    started += 1;
                    bytes += frame.len() as u64;
                    // WouldBlock and errors alike leave the pass: a broken socket's task finds
                    // out on its own write and ends.
                    m.socket.try_write(frame).unwrap_or(0)
                }
                None => 0,
            };
            let len = frame.as_ref().map_or(0, |f| f.len());
            if n < len {
                let rest = frame.as_ref().map_or_else(Bytes::new, |f| f.slice(n..));
                hand_off(m, Handoff { rest, seq: to, changes: changed.to_vec(), have });
                return false;
            }
            written += 1;
            m.seq = to;
            if let Some(e) = m.eval.as_mut() {
                e.have = have;
            }
            m.conn.delivered_seq.store(to, Ordering::Relaxed);
            m.conn.owner.store(POOL, Ordering::Release);
            // The clock is read every 16 deliveries: within them the elapsed time hardly moves.
            if k.is_multiple_of(16) {
                now = Instant::now();
            }
            k += 1;
            for c in changed {
                delivery.observe(now.saturating_duration_since(c.at).as_secs_f64());
            }
            true
        });
        delivery.flush();
        h.ev_change.inc_by(started);
        h.bytes.inc_by(bytes);
        if changed.len() > 1 {
            h.lagged.inc_by(started);
        }
        for c in changed {
            Fanout::delivered_n(h, c, written as i64, now);
        }
    }

    /// Writes a heartbeat to every member.
    fn pass_heartbeat(&self, members: &mut Vec<Member>, frame: Bytes) {
        let h = &self.handles;
        let mut started = 0u64;
        members.retain_mut(|m| {
            if !m.claim() {
                return false;
            }
            started += 1;
            let n = m.socket.try_write(&frame).unwrap_or(0);
            if n == frame.len() {
                m.conn.owner.store(POOL, Ordering::Release);
                true
            } else {
                let (at, have) = (m.seq, m.have());
                hand_off(
                    m,
                    Handoff {
                        rest: frame.slice(n..),
                        seq: at,
                        changes: Vec::new(),
                        have,
                    },
                );
                false
            }
        });
        h.ev_heartbeat.inc_by(started);
        h.bytes.inc_by(started * frame.len() as u64);
    }

    fn span_begin(&self, seq: u64, at: Instant) {
        let mut s = lock(&self.span);
        if s.seq < seq {
            *s = Span {
                seq,
                start: Some(at),
                remaining: self.shards.len(),
            };
        }
    }

    fn span_end(&self, seq: u64) {
        let mut s = lock(&self.span);
        if s.seq == seq && s.remaining > 0 {
            s.remaining -= 1;
            if s.remaining == 0 {
                if let Some(start) = s.start {
                    self.span_seconds.observe(start.elapsed().as_secs_f64());
                }
            }
        }
    }
}

/// Gives `m`'s socket back to its task with what it still has to write, and wakes the task.
fn hand_off(m: &Member, handoff: Handoff) {
    *lock(&m.conn.handoff) = Some(handoff);
    m.conn.owner.store(OWN, Ordering::Release);
    m.conn.wake.notify_one();
}

impl ConnState {
    /// What the pass handed over, if anything.
    pub fn take_handoff(&self) -> Option<Handoff> {
        lock(&self.handoff).take()
    }
}
