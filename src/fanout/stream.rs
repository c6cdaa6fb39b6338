//! One client's SSE stream: a hand-written `Stream<Item = Bytes>` that the HTTP layer turns into
//! a response body.
//!
//! The stream is pulled, not pushed: it produces bytes only when the connection asks for more,
//! which the HTTP layer does only when the client's socket has room. A client that falls behind
//! therefore never builds a backlog here: when it is polled again it jumps straight to the
//! current snapshot, with one coalesced frame for what it missed.
//!
//! A stream served by the writer pass ([`super::pass`]) is *parked* while its connection is in
//! the pass: it drops its channel subscriptions, its shutdown future and its timer, so nothing
//! wakes for it, and the pass keeps its maximum-age deadline ([`SseStream::max_age_at`]); back
//! from the pass (on a new task) it is *unparked* at the seq the pass brought it to, and is
//! pulled as any other until it is current again.
//!
//! Invariants: the stream ends on shutdown (after a random delay within the drain window, with a
//! randomised `retry:` hint), at its maximum age, or when the reaper kills it; it never ends on its
//! own otherwise. `ConnState::delivered_seq` is the seq of the last snapshot whose frames were
//! handed to the connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use rand::Rng;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{frames, ConnState, EnvHandles, Fanout, FrameKind, Renderer};
use crate::store::{Catchup, EnvStore, Snapshot};

pub struct SseStream {
    inner: Box<Inner>,
}

struct Inner {
    hub: Arc<Fanout>,
    env: Arc<EnvStore>,
    handles: Arc<EnvHandles>,
    renderer: Box<dyn Renderer>,
    protocol: &'static str,
    conn: Arc<ConnState>,
    id: u64,
    seq: u64,
    queue: VecDeque<Bytes>,
    /// `None` while parked.
    changes: Option<WatchStream<Arc<Snapshot>>>,
    heartbeats: Option<WatchStream<Bytes>>,
    /// Made when first polled; dropped while parked (no task waits on it then).
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The shutdown future has been polled once (its waker is registered for this task).
    shutdown_armed: bool,
    drain: Option<Pin<Box<Sleep>>>,
    /// When the stream reaches its maximum age, and its timer (made when first polled; dropped
    /// while parked, when the writer pass keeps the deadline).
    max_age_at: Option<Instant>,
    max_age: Option<Pin<Box<Sleep>>>,
    finished: bool,
    opened: std::time::Instant,
    /// Why the stream ended, for the lifecycle log line.
    end: &'static str,
}

impl SseStream {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        hub: Arc<Fanout>,
        env: Arc<EnvStore>,
        handles: Arc<EnvHandles>,
        renderer: Box<dyn Renderer>,
        protocol: &'static str,
        conn: Arc<ConnState>,
        id: u64,
        seq: u64,
        initial: Vec<Bytes>,
        changes: WatchStream<Arc<Snapshot>>,
    ) -> SseStream {
        // A fresh subscription has seen the current heartbeat: the first one comes a period later.
        let heartbeats = WatchStream::from_changes(hub.heartbeat_tx.subscribe());
        let max_age_at = hub.cfg.max_connection_age.map(|age| {
            // ±10 % jitter so connections opened together do not all close together.
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            Instant::now() + age.checked_mul(11).map_or(age, |_| age.mul_f64(jitter))
        });
        let mut queue = VecDeque::with_capacity(initial.len() + 1);
        queue.push_back(hub.retry_frame.clone());
        queue.extend(initial);
        conn.delivered_seq.store(seq, Ordering::Relaxed);
        SseStream {
            inner: Box::new(Inner {
                hub,
                env,
                handles,
                renderer,
                protocol,
                conn,
                id,
                seq,
                queue,
                changes: Some(changes),
                heartbeats: Some(heartbeats),
                shutdown: None,
                shutdown_armed: false,
                drain: None,
                max_age_at,
                max_age: None,
                finished: false,
                opened: std::time::Instant::now(),
                end: "client_closed",
            }),
        }
    }
}

impl Inner {
    fn emit(&mut self, b: Bytes, kind: FrameKind) -> Poll<Option<Bytes>> {
        let h = &self.handles;
        match kind {
            FrameKind::Initial => &h.ev_initial,
            FrameKind::Change => &h.ev_change,
            FrameKind::Heartbeat => &h.ev_heartbeat,
            FrameKind::Retry => &h.ev_retry,
        }
        .inc();
        h.bytes.inc_by(b.len() as u64);
        Poll::Ready(Some(b))
    }

    fn finish(&mut self, b: Bytes, why: &'static str) -> Poll<Option<Bytes>> {
        self.finished = true;
        self.end = why;
        self.emit(b, FrameKind::Retry)
    }

    /// Frames that bring the client from `self.seq` to `snap`.
    fn catch_up(&mut self, snap: &Arc<Snapshot>) -> Option<Bytes> {
        let catchup = self.env.catchup_seq(self.seq, snap);
        if let Catchup::Changes(changes) = &catchup {
            if changes.len() > 1 {
                self.handles.lagged.inc();
            }
            for c in changes {
                Fanout::delivered(&self.handles, c);
            }
        }
        let out = self.renderer.catch_up(&self.env, catchup, snap, &self.hub.metrics);
        self.seq = snap.seq;
        self.conn.delivered_seq.store(snap.seq, Ordering::Relaxed);
        out
    }
}

impl SseStream {
    /// The environment's seq this stream has brought its client to.
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }

    /// The writer pass this stream can be served by: that of its environment and kind
    /// ([`super::PassKind`]); every kind the fast path serves has one.
    pub fn writer_pass(&self) -> Option<Arc<super::EnvPass>> {
        super::PassKind::of(self.inner.protocol).map(|kind| self.inner.hub.pass_for(&self.inner.env, kind))
    }

    /// What the writer pass keeps of this stream besides its socket: its context group and
    /// version, for a per-context stream.
    pub fn eval_member(&self) -> Option<super::pass::EvalMember> {
        self.inner.renderer.context_group().map(|(group, have)| super::pass::EvalMember { group, have })
    }

    /// The stream's id (unique in this relay).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The stream's connection state.
    pub fn conn(&self) -> &Arc<ConnState> {
        &self.inner.conn
    }

    /// When the stream reaches its maximum age (`None`: no maximum).
    pub fn max_age_at(&self) -> Option<Instant> {
        self.inner.max_age_at
    }

    /// The stream's socket goes into the writer pass: its subscriptions, its shutdown future
    /// and its timer are dropped (the pass keeps its deadline), so nothing wakes a task for it.
    pub fn park(&mut self) {
        let me = &mut *self.inner;
        me.changes = None;
        me.heartbeats = None;
        me.shutdown = None;
        me.shutdown_armed = false;
        me.max_age = None;
        if me.queue.is_empty() {
            me.queue = VecDeque::new(); // its buffer held the initial frames
        }
    }

    /// Back from the pass at `seq` (and, for a per-context stream, group version `have`), with
    /// `delivered` (the changes the pass's last frame carried, now written) counted: the stream follows the environment again from there, starting with
    /// whatever changed meanwhile.
    pub fn unpark(&mut self, seq: u64, delivered: &[Arc<crate::store::ChangeRecord>], have: u64) {
        let me = &mut *self.inner;
        if me.renderer.context_group().is_some() {
            me.renderer.set_group_version(have);
        }
        for c in delivered {
            Fanout::delivered(&me.handles, c);
        }
        me.seq = me.seq.max(seq);
        me.conn.delivered_seq.store(me.seq, Ordering::Relaxed);
        if me.changes.is_none() {
            me.changes = Some(WatchStream::new(me.env.subscribe()));
        }
        if me.heartbeats.is_none() {
            me.heartbeats = Some(WatchStream::from_changes(me.hub.heartbeat_tx.subscribe()));
        }
    }

    /// The stream's end, when one is due: `Ready(Some(frame))` with its last frame (drain, max
    /// age), `Ready(None)` when it ends with nothing more (killed). Registers the timers' and
    /// the shutdown's wakers, nothing else.
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.poll_end(cx)
    }
}

impl Inner {
    /// Whether the stream is over: finished, or killed by the reaper (then marked finished).
    fn over(&mut self) -> bool {
        if !self.finished && self.conn.killed.load(Ordering::Relaxed) {
            self.finished = true;
            self.end = "slow_client";
        }
        self.finished
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let me = self;
        if me.over() {
            return Poll::Ready(None);
        }
        // The shutdown future is polled once to register this task, then only after the flag is
        // set (its mutex would otherwise be taken on every poll of every stream).
        if me.drain.is_none() && (!me.shutdown_armed || me.hub.shutdown.is_triggered()) && {
            me.shutdown_armed = true;
            let hub = &me.hub;
            me.shutdown.get_or_insert_with(|| Box::pin(hub.shutdown.wait_owned())).as_mut().poll(cx).is_ready()
        } {
            let window = me.hub.cfg.drain_window;
            let delay = if window.is_zero() { Duration::ZERO } else { window.mul_f64(rand::thread_rng().gen_range(0.0..1.0)) };
            me.drain = Some(Box::pin(tokio::time::sleep(delay)));
        }
        if let Some(d) = me.drain.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                me.hub.metrics.sse_drained.with_label_values(&[&me.env.id]).inc();
                // Spread the reconnects of a fleet: a random retry hint within the window.
                let base = me.hub.cfg.retry_ms;
                let spread = me.hub.cfg.drain_window.as_millis() as u64;
                let hint = base.saturating_add(if spread > 0 { rand::thread_rng().gen_range(0..=spread) } else { 0 });
                return me.finish(frames::retry_frame(hint), "drained");
            }
        }
        if let Some(at) = me.max_age_at {
            let a = me.max_age.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if a.as_mut().poll(cx).is_ready() {
                me.hub.metrics.sse_max_age_closes.with_label_values(&[&me.env.id]).inc();
                let hint = me.hub.cfg.retry_ms.min(1000);
                return me.finish(frames::retry_frame(hint), "max_age");
            }
        }
        Poll::Pending
    }
}

impl Stream for SseStream {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let me = &mut *self.get_mut().inner;
        if me.over() {
            return Poll::Ready(None);
        }
        if let Some(b) = me.queue.pop_front() {
            return me.emit(b, FrameKind::Initial);
        }
        if let Poll::Ready(end) = me.poll_end(cx) {
            return Poll::Ready(end);
        }
        while let Some(changes) = me.changes.as_mut() {
            match Pin::new(changes).poll_next(cx) {
                Poll::Ready(Some(snap)) => {
                    if let Some(b) = me.catch_up(&snap) {
                        return me.emit(b, FrameKind::Change);
                    }
                }
                Poll::Ready(None) => {
                    me.finished = true;
                    me.end = "store_closed";
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        match me.heartbeats.as_mut().map(|h| Pin::new(h).poll_next(cx)) {
            Some(Poll::Ready(Some(b))) => {
                let b = match me.renderer.heartbeat() {
                    Some(own) => own,
                    None if me.renderer.comment_heartbeats() => Bytes::from_static(b": heartbeat\n\n"),
                    None => b,
                };
                me.emit(b, FrameKind::Heartbeat)
            }
            _ => Poll::Pending,
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let me = &self.inner;
        let end = if me.conn.killed.load(Ordering::Relaxed) { "slow_client" } else { me.end };
        tracing::debug!(stream = me.id, env = %me.env.id, protocol = me.protocol, seq = me.seq, secs = me.opened.elapsed().as_secs_f64(), end, "SSE stream closed");
        me.hub.unregister(me.id, &me.env, &me.handles, me.protocol);
    }
}
