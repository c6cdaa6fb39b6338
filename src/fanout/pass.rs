//! The writer pass: the streams of an environment (of one kind, [`PassKind`]) that follow it
//! frame by frame live in shards (about one per worker thread), and each change or heartbeat
//! reaches them by one pass per shard: one non-blocking `write` of the shared frame per socket.
//! No task is woken and no per-connection future is polled.
//!
//! A current stream's connection has no task while it is in its shard ([`Member`]): the shard
//! owns its socket (taken out of tokio's reactor), its stream (parked: no subscription) and its
//! [`Owner`] (the HTTP layer's side, which holds the connection's slot). The shard's own epoll
//! set, one descriptor in tokio's, reports its members' clients closing (readability only, so
//! the ACKs of what the pass writes wake nothing); a member's maximum age is a deadline in the
//! shard's timer heap, and the reaper's kill is seen by the next pass.
//!
//! A member whose socket takes less than the whole frame (a short write, `WouldBlock`), that is
//! behind the shard, or whose maximum age is due leaves the pass: it goes back to its owner with
//! the unwritten rest (a slice of the same `Bytes`) and the seq that rest brings it to
//! ([`Handoff`]). The owner serves it with a task again, which writes the rest on socket
//! readiness and catches up with the coalesced latest state exactly as a pulled stream does
//! ([`super::SseStream`]), before it joins again. At shutdown every member goes back for good
//! ([`Handoff::pulled`]) and drains itself.
//!
//! Invariants:
//! - A member's socket is written by its shard's pass or by its owner's task, never both: the
//!   socket moves between them by value, so frames are never torn or interleaved.
//! - Between passes every member is at the shard's seq, or ahead of it when it joined having
//!   seen a snapshot the pass had not written yet (it is then skipped up to there). A member
//!   behind the shard leaves at once with nothing to write, and catches up itself.
//! - Every member joined is taken in, written, given back or closed: nothing is dropped
//!   silently when the shard stops, however it stops (a closed shard refuses joins and gives
//!   back those waiting). A member with nothing to write for a change (no frame) is at it too.
//! - Shards share nothing but the environment's snapshot channel and a span record touched
//!   twice per pass: passes of different shards run on different worker threads at once. Counts
//!   and histogram observations are kept per pass and folded into Prometheus once per pass.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::unix::SourceFd;
use prometheus::{Histogram, IntGauge};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::eval_stream::ContextGroup;
use super::thin_streams::{LegacyJsRenderer, OfrepRenderer};
use super::{ConnState, EnvHandles, Fanout, FeatureflowRenderer, Renderer, SseStream};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Catchup, ChangeRecord, EnvStore, Snapshot};

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
    /// The pass will not take this connection again (the relay is shutting down, the shard
    /// stopped or could not watch its socket, or the stream is at its maximum age): it stays a
    /// pulled stream until it ends.
    pub pulled: bool,
}

/// The HTTP layer's side of a connection in the pass: what it needs to serve the connection
/// itself again. It holds the connection's slot (its cap permit, its place among the open
/// connections) for as long as the pass holds the socket.
pub trait Owner: Send + 'static {
    /// The pass gives the connection back (its client fell behind, its stream is due to end, the
    /// relay is shutting down): `handoff.rest` must be written before anything else.
    fn resume(self: Box<Self>, parked: Parked, handoff: Handoff);
}

/// A connection as the pass gives it back.
pub struct Parked {
    /// Out of tokio's reactor, non-blocking.
    pub socket: std::net::TcpStream,
    pub stream: SseStream,
}

/// What the pass keeps of a per-context stream: its group and the group version its client has.
pub struct EvalMember {
    pub group: Arc<ContextGroup>,
    pub have: u64,
}

/// A connection in a shard: its socket, stream and owner, and nothing else (no task).
pub struct Member {
    socket: std::net::TcpStream,
    stream: SseStream,
    owner: Box<dyn Owner>,
    conn: Arc<ConnState>,
    /// The snapshot seq the connection has been written up to.
    seq: u64,
    /// For a per-context stream ([`PassKind::Eval`]).
    eval: Option<EvalMember>,
}

impl Member {
    /// A current stream's connection, about to join the pass. `socket` must be non-blocking
    /// (a tokio socket's `into_std`).
    pub fn new(socket: std::net::TcpStream, stream: SseStream, owner: Box<dyn Owner>) -> Member {
        Member {
            conn: stream.conn().clone(),
            seq: stream.seq(),
            eval: stream.eval_member(),
            socket,
            stream,
            owner,
        }
    }

    fn have(&self) -> u64 {
        self.eval.as_ref().map_or(0, |e| e.have)
    }

    /// The handoff of a member that leaves with nothing to finish.
    fn at_rest(&self, pulled: bool) -> Handoff {
        Handoff { seq: self.seq, have: self.have(), pulled, ..Handoff::default() }
    }

    /// Gives the connection back to its owner, with the stream at what the pass wrote.
    fn give_back(self, handoff: Handoff) {
        let Member { socket, stream, owner, .. } = self;
        owner.resume(Parked { socket, stream }, handoff);
    }
}

/// Why [`EnvPass::join`] refused a member.
pub enum Refused {
    /// The member is behind the shard: its stream has the newer snapshot to pull first.
    Behind(Member),
    /// The pass takes no one any more (shutdown).
    Closed(Member),
}

impl Refused {
    /// Gives the refused connection back to its owner (a closed pass: for good).
    pub fn give_back(self) {
        match self {
            Refused::Behind(m) => {
                let h = m.at_rest(false);
                m.give_back(h)
            }
            Refused::Closed(m) => {
                let h = m.at_rest(true);
                m.give_back(h)
            }
        }
    }
}

struct Shard {
    /// Members waiting to be taken in by the shard's task (a join never waits for a pass), the
    /// seq the shard's members are at (or are being brought to by a pass under way), and
    /// whether the shard has stopped taking members.
    joining: Mutex<Joining>,
    /// Wakes the shard's task to take in joiners (coalesced: one wake per burst).
    arrived: Notify,
}

struct Joining {
    seq: u64,
    members: Vec<Member>,
    closed: bool,
}

/// A shard's members, owned by its task: the slab key is the member's token in the shard's
/// epoll set, and `ends` the members' maximum-age deadlines with their streams' ids (an entry
/// whose key now holds another stream is stale, and skipped).
struct Members {
    slab: Slab<Member>,
    /// `flagrelay_fanout_pass_connections` of the environment (shared by its shards and kinds).
    held: IntGauge,
    registry: mio::Registry,
    ends: BinaryHeap<Reverse<(tokio::time::Instant, usize, u64)>>,
}

/// Why a member leaves the pass during one.
enum Leave {
    /// Back to its task with what it has to write.
    Back(Handoff),
    /// Closed: its socket failed or the reaper killed it.
    Gone,
}

impl Members {
    fn watch(&mut self, m: Member) {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let fd = m.socket.as_raw_fd();
        // Readable only: the client closing (or sending anything, which also ends a stream).
        // Writability is never asked for, so the ACKs of what the pass writes wake nothing.
        match self.registry.register(&mut SourceFd(&fd), mio::Token(key), mio::Interest::READABLE) {
            Ok(()) => {
                if let Some(at) = m.stream.max_age_at() {
                    self.ends.push(Reverse((at, key, m.stream.id())));
                }
                entry.insert(m);
                self.held.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the writer pass could not watch a socket; its connection is served by its own task");
                let h = m.at_rest(true);
                m.give_back(h);
            }
        }
    }

    /// Takes member `key` out of the shard (and its socket out of the epoll set).
    fn remove(&mut self, key: usize) -> Option<Member> {
        let m = self.slab.try_remove(key)?;
        self.held.dec();
        let _ = self.registry.deregister(&mut SourceFd(&m.socket.as_raw_fd()));
        Some(m)
    }

    fn leave(&mut self, key: usize, why: Leave) {
        if let Some(m) = self.remove(key) {
            match why {
                Leave::Back(h) => m.give_back(h),
                Leave::Gone => drop(m),
            }
        }
    }

    /// Drops the members whose clients closed (or sent something), per the events the shard's
    /// epoll set reports now. `Ok(true)` when every event was taken.
    fn closed(&mut self, poll: &mut mio::Poll, events: &mut mio::Events) -> std::io::Result<bool> {
        poll.poll(events, Some(Duration::ZERO))?;
        let mut n = 0;
        for ev in events.iter() {
            n += 1;
            self.leave(ev.token().0, Leave::Gone);
        }
        Ok(n < events.capacity())
    }

    /// Gives back the members whose maximum age is due by `now`: their tasks end their streams
    /// as any stream ends at its maximum age.
    fn due(&mut self, now: tokio::time::Instant) {
        while let Some(Reverse((at, key, id))) = self.ends.peek().copied() {
            if at > now {
                break;
            }
            self.ends.pop();
            if self.slab.get(key).is_some_and(|m| m.stream.id() == id) {
                if let Some(m) = self.remove(key) {
                    // For good: the stream ends now, it is never current again.
                    let h = m.at_rest(true);
                    m.give_back(h);
                }
            }
        }
        // Entries of members that left otherwise stay until due; they never outnumber the
        // members by much.
        if self.ends.len() > 2 * self.slab.len() + 64 {
            let slab = &self.slab;
            self.ends.retain(|Reverse((_, key, id))| slab.get(*key).is_some_and(|m| m.stream.id() == *id));
        }
    }

    /// Gives every member back for good (the shard is stopping).
    fn release_all(&mut self) {
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(m) = self.remove(k) {
                let h = m.at_rest(true);
                m.give_back(h);
            }
        }
    }
}

/// Closes its shard when dropped ([`EnvPass::close`] is idempotent): the members the task held
/// are dropped with it (closed and counted); those still waiting go back to their owners.
struct Closing<'a> {
    pass: &'a EnvPass,
    shard: usize,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.pass.close(self.shard, None);
    }
}

/// One non-blocking write: the bytes the socket took (0 when it is full), or `None` when it
/// failed (the client is gone).
fn write_some(socket: &std::net::TcpStream, buf: &[u8]) -> Option<usize> {
    let mut socket = socket;
    match socket.write(buf) {
        Ok(n) => Some(n),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => Some(0),
        Err(_) => None,
    }
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
            pass_seconds: hub.metrics.fanout_pass_seconds.with_label_values(&[&env.id]),
            span_seconds: hub.metrics.fanout_pass_span_seconds.with_label_values(&[&env.id]),
            env,
            handles,
            shards: (0..shards)
                .map(|_| Shard {
                    joining: Mutex::new(Joining { seq: 0, members: Vec::new(), closed: false }),
                    arrived: Notify::new(),
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
                let comment = kind.comment_heartbeats();
                tokio::spawn(pass.clone().run_shard(i, seq, changes, heartbeats, stop, hub.clone(), comment))
            })
            .collect();
        (pass, tasks)
    }

    /// The shard a new member goes to (round robin).
    pub fn shard_for_new(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    /// Hands `member` to shard `shard`: from `Ok` on the shard owns its connection, until it
    /// gives it back ([`Owner::resume`]). Refused when the member is behind the shard or the
    /// shard takes no one any more.
    pub fn join(&self, shard: usize, mut member: Member) -> Result<(), Refused> {
        let s = &self.shards[shard % self.shards.len()];
        let mut joining = lock(&s.joining);
        if joining.closed {
            return Err(Refused::Closed(member));
        }
        if member.seq < joining.seq {
            return Err(Refused::Behind(member));
        }
        member.stream.park();
        joining.members.push(member);
        drop(joining);
        s.arrived.notify_one();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_shard(
        self: Arc<Self>,
        i: usize,
        mut seq: u64,
        mut changes: watch::Receiver<Arc<Snapshot>>,
        mut heartbeats: watch::Receiver<Bytes>,
        shutdown: Shutdown,
        hub: Arc<Fanout>,
        comment_heartbeats: bool,
    ) {
        // However the task ends (a panic included), the shard stops taking members and gives
        // back those waiting: none is left in `joining` holding its connection's slot.
        let _closing = Closing { pass: &self, shard: i };
        // The shard's own epoll set (in tokio's as one descriptor): it reports only members'
        // clients closing. Without one the shard takes no member.
        let watched = mio::Poll::new().and_then(|poll| {
            let registry = poll.registry().try_clone()?;
            // SAFETY: the `mio::Poll` owns its descriptor and is neither closed nor replaced
            // while the `AsyncFd` holds it (both are dropped together, the registration first).
            let poll = unsafe { AsyncFd::register_with_interest(poll, Interest::READABLE) }.map_err(std::io::Error::from)?;
            Ok((poll, registry))
        });
        let (mut poll, registry) = match watched {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(env = %self.env.id, error = %e, "a writer-pass shard could not make its epoll set; its connections are served by their own tasks");
                self.close(i, None);
                return;
            }
        };
        let held = hub.metrics.fanout_pass_connections.with_label_values(&[&self.env.id]);
        let mut members = Members { slab: Slab::new(), held, registry, ends: BinaryHeap::new() };
        let mut events = mio::Events::with_capacity(256);
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            let next_end = members.ends.peek().map(|Reverse((at, ..))| *at);
            if next_end != armed {
                timer.as_mut().reset(next_end.unwrap_or(far));
                armed = next_end;
            }
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                r = changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let snap = changes.borrow_and_update().clone();
                    self.take_joiners(i, &mut members, Some(snap.seq));
                    self.pass_change(&mut members, &mut seq, &snap, &hub);
                }
                r = heartbeats.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let frame = if comment_heartbeats { Bytes::from_static(b": heartbeat\n\n") } else { heartbeats.borrow_and_update().clone() };
                    self.take_joiners(i, &mut members, None);
                    self.pass_heartbeat(&mut members, frame);
                }
                _ = self.shards[i].arrived.notified() => self.take_joiners(i, &mut members, None),
                r = poll.readable_mut() => match r {
                    Ok(mut ready) => match members.closed(ready.get_inner_mut(), &mut events) {
                        Ok(true) => ready.clear_ready(),
                        Ok(false) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!(env = %self.env.id, error = %e, "a writer-pass shard's epoll set failed; its connections go back to their own tasks");
                            break;
                        }
                    },
                    Err(e) => {
                        tracing::error!(env = %self.env.id, error = %e, "a writer-pass shard's epoll set failed; its connections go back to their own tasks");
                        break;
                    }
                },
                _ = &mut timer, if armed.is_some() => {
                    members.due(tokio::time::Instant::now());
                    armed = None; // re-armed (reset) for whatever is next
                }
            }
        }
        // From here on joins are refused, and every member goes back to its own task, which
        // drains its stream (or follows the store to its end) as any pulled stream does.
        self.close(i, Some(&mut members));
    }

    /// Stops shard `i` taking members and gives back those it has and those waiting.
    fn close(&self, i: usize, members: Option<&mut Members>) {
        let waiting = {
            let mut joining = lock(&self.shards[i].joining);
            joining.closed = true;
            std::mem::take(&mut joining.members)
        };
        for m in waiting {
            let h = m.at_rest(true);
            m.give_back(h);
        }
        if let Some(members) = members {
            members.release_all();
        }
    }

    /// Takes in the members that joined since the last pass; with `to`, a pass to that seq is
    /// starting: from now on a joiner must be at it.
    fn take_joiners(&self, i: usize, members: &mut Members, to: Option<u64>) {
        let joined = {
            let mut joining = lock(&self.shards[i].joining);
            if let Some(to) = to {
                joining.seq = joining.seq.max(to);
            }
            std::mem::take(&mut joining.members)
        };
        for m in joined {
            members.watch(m);
        }
    }

    /// Writes the frame that brings the shard from `*seq` to `snap` to every member.
    fn pass_change(&self, members: &mut Members, seq: &mut u64, snap: &Arc<Snapshot>, hub: &Fanout) {
        let from = *seq;
        if snap.seq <= from {
            return;
        }
        *seq = snap.seq;
        let started = Instant::now();
        self.span_begin(snap.seq, started);
        if !members.slab.is_empty() {
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
        members: &mut Members,
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
        let mut leaving: Vec<(usize, Leave)> = Vec::new();
        for (key, m) in members.slab.iter_mut() {
            if m.conn.killed.load(Ordering::Relaxed) {
                leaving.push((key, Leave::Gone));
                continue;
            }
            if m.seq >= to {
                continue;
            }
            if m.seq != from {
                // Behind the shard: it catches up itself.
                leaving.push((key, Leave::Back(m.at_rest(false))));
                continue;
            }
            let (frame, have) = frame_of(m);
            // No frame (a per-context member whose evaluation did not change, a thin-client
            // change of hidden flags only) is a whole write of nothing: the member is at `to`.
            if let Some(frame) = frame {
                started += 1;
                bytes += frame.len() as u64;
                let Some(n) = write_some(&m.socket, &frame) else {
                    leaving.push((key, Leave::Gone));
                    continue;
                };
                if n < frame.len() {
                    let rest = frame.slice(n..);
                    leaving.push((key, Leave::Back(Handoff { rest, seq: to, changes: changed.to_vec(), have, pulled: false })));
                    continue;
                }
            }
            written += 1;
            m.seq = to;
            if let Some(e) = m.eval.as_mut() {
                e.have = have;
            }
            m.conn.delivered_seq.store(to, Ordering::Relaxed);
            // The clock is read every 16 deliveries: within them the elapsed time hardly moves.
            if k.is_multiple_of(16) {
                now = Instant::now();
            }
            k += 1;
            for c in changed {
                delivery.observe(now.saturating_duration_since(c.at).as_secs_f64());
            }
        }
        delivery.flush();
        h.ev_change.inc_by(started);
        h.bytes.inc_by(bytes);
        if changed.len() > 1 {
            h.lagged.inc_by(started);
        }
        for c in changed {
            Fanout::delivered_n(h, c, written as i64, now);
        }
        // The members that left get their tasks after every other member had its write.
        for (key, why) in leaving {
            members.leave(key, why);
        }
    }

    /// Writes a heartbeat to every member.
    fn pass_heartbeat(&self, members: &mut Members, frame: Bytes) {
        let h = &self.handles;
        let mut started = 0u64;
        let mut leaving: Vec<(usize, Leave)> = Vec::new();
        for (key, m) in members.slab.iter_mut() {
            if m.conn.killed.load(Ordering::Relaxed) {
                leaving.push((key, Leave::Gone));
                continue;
            }
            started += 1;
            let Some(n) = write_some(&m.socket, &frame) else {
                leaving.push((key, Leave::Gone));
                continue;
            };
            if n < frame.len() {
                let handoff = Handoff { rest: frame.slice(n..), ..m.at_rest(false) };
                leaving.push((key, Leave::Back(handoff)));
            }
        }
        h.ev_heartbeat.inc_by(started);
        h.bytes.inc_by(started * frame.len() as u64);
        for (key, why) in leaving {
            members.leave(key, why);
        }
    }

    fn span_begin(&self, seq: u64, at: Instant) {
        let mut s = lock(&self.span);
        if s.seq < seq {
            *s = Span { seq, start: Some(at), remaining: self.shards.len() };
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
