//! The queue between the API and the events forwarder: SDK event batches accepted by the API wait
//! here for the upstream, bounded by **bytes** (`upstream.events_queue_bytes`), not by count.
//!
//! Invariants:
//! - A request never waits: [`EventSender::send`] queues the batch, or drops it at once when
//!   it would take the queue over its byte budget (counted `reason="queue_full"`, logged once
//!   per episode of being full).
//! - What a queued batch costs is what it holds: its body is copied into an allocation of its
//!   own (a slice of a larger read buffer would keep that buffer alive), plus
//!   [`BATCH_OVERHEAD`]; the cost is released only when the forwarder is done with the batch
//!   ([`Held`] is dropped), so the one in flight counts too.
//! - Once shutdown has begun, or the forwarder has closed the queue, `send` refuses
//!   ([`QueueClosed`]): the API answers 503 instead of accepting a batch nobody will forward.
//!   A batch queued before that is the forwarder's to deliver or count.
//! - Every accepted batch ends counted once: `events_forwarded_total{result="sent"}`, or
//!   `{result="dropped"}` together with `events_dropped_total{reason}` ([`count_drop`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

use super::EventBatch;

/// Bytes charged per batch beyond its body: the batch, its channel slot and the env handle.
pub const BATCH_OVERHEAD: usize = 128;

/// Why an accepted batch was not forwarded (the `reason` label of `events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was over its byte budget when the batch arrived.
    QueueFull,
    /// Redis could not be reached, or the connection broke while the batch was sent.
    Unreachable,
    /// Redis answered the `XADD` with an error.
    Refused,
    /// Still queued or in flight at the shutdown flush deadline.
    Shutdown,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Unreachable => "unreachable",
            DropReason::Refused => "refused",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Counts one accepted batch of `env` as dropped for `reason`.
pub fn count_drop(metrics: &Metrics, env: &str, reason: DropReason) {
    metrics.events_dropped.with_label_values(&[env, reason.label()]).inc();
    metrics.events_forwarded.with_label_values(&[env, "dropped"]).inc();
}

/// The queue no longer takes batches: shutdown has begun (or the forwarder is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event queue is closed: shutting down")]
pub struct QueueClosed;

/// What became of a batch handed to [`EventSender::send`]; both are accepted (answered 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Queued,
    /// Over the byte budget: dropped and counted at once.
    Dropped,
}

struct Shared {
    /// Bytes of batches queued or in flight.
    bytes: AtomicUsize,
    budget: usize,
    /// Set by the first drop of a full episode (logged then), cleared when the queue drains.
    full: AtomicBool,
    dropped_while_full: AtomicU64,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Shared {
    fn release(&self, cost: usize) {
        let left = self.bytes.fetch_sub(cost, Ordering::AcqRel).saturating_sub(cost);
        // add/sub, not set: concurrent updates of the gauge always converge on the real total.
        self.metrics.events_queue_bytes.sub(cost as i64);
        if left <= self.budget / 2 && self.full.swap(false, Ordering::AcqRel) {
            let dropped = self.dropped_while_full.swap(0, Ordering::AcqRel);
            tracing::info!(dropped, "the event queue has room again");
        }
    }
}

/// Where the API puts accepted batches.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::UnboundedSender<(EventBatch, usize)>,
    shared: Arc<Shared>,
}

/// The forwarder's end of the queue.
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<(EventBatch, usize)>,
    shared: Arc<Shared>,
}

/// A batch taken from the queue; its bytes count against the budget until this is dropped.
pub struct Held {
    pub batch: EventBatch,
    cost: usize,
    shared: Arc<Shared>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.release(self.cost);
    }
}

/// A queue of at most `budget` bytes; `send` refuses from the moment `shutdown` is triggered.
pub fn queue(budget: usize, metrics: Arc<Metrics>, shutdown: Shutdown) -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        budget,
        full: AtomicBool::new(false),
        dropped_while_full: AtomicU64::new(0),
        metrics,
        shutdown,
    });
    (EventSender { tx, shared: shared.clone() }, EventReceiver { rx, shared })
}

impl EventSender {
    /// Queues `batch` without waiting (see the module invariants).
    pub fn send(&self, batch: EventBatch) -> Result<Accepted, QueueClosed> {
        let s = &self.shared;
        if s.shutdown.is_triggered() || self.tx.is_closed() {
            return Err(QueueClosed);
        }
        let cost = batch.body.len().saturating_add(BATCH_OVERHEAD);
        let reserved = s.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_add(cost).filter(|n| *n <= s.budget));
        if reserved.is_err() {
            count_drop(&s.metrics, &batch.env, DropReason::QueueFull);
            s.dropped_while_full.fetch_add(1, Ordering::AcqRel);
            if !s.full.swap(true, Ordering::AcqRel) {
                tracing::warn!(budget_bytes = s.budget, "the event queue is full (Redis is slow or unreachable); dropping batches until it drains");
            }
            return Ok(Accepted::Dropped);
        }
        s.metrics.events_queue_bytes.add(cost as i64);
        let owned = EventBatch { env: batch.env, kind: batch.kind, body: bytes::Bytes::copy_from_slice(&batch.body) };
        match self.tx.send((owned, cost)) {
            Ok(()) => Ok(Accepted::Queued),
            Err(_) => {
                s.release(cost);
                Err(QueueClosed)
            }
        }
    }
}

impl EventReceiver {
    /// The next batch; `None` once every sender is gone (or the queue was closed) and it is empty.
    pub async fn recv(&mut self) -> Option<Held> {
        let (batch, cost) = self.rx.recv().await?;
        Some(Held { batch, cost, shared: self.shared.clone() })
    }

    /// The next batch if one is queued now.
    pub fn try_recv(&mut self) -> Option<Held> {
        let (batch, cost) = self.rx.try_recv().ok()?;
        Some(Held { batch, cost, shared: self.shared.clone() })
    }

    /// Refuses every further `send`; what is queued can still be taken.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(budget: usize) -> (EventSender, EventReceiver, Arc<Metrics>, Shutdown) {
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        let shutdown = Shutdown::new();
        let (tx, rx) = queue(budget, metrics.clone(), shutdown.clone());
        (tx, rx, metrics, shutdown)
    }

    fn batch(len: usize) -> EventBatch {
        EventBatch { env: "production".into(), kind: "events", body: bytes::Bytes::from(vec![b' '; len]) }
    }

    fn dropped(m: &Metrics, reason: &str) -> u64 {
        m.events_dropped.with_label_values(&["production", reason]).get()
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_and_drops_what_would_exceed_them_at_once() {
        // Room for two 1 MB batches, not three.
        let (tx, _rx, m, _) = setup(2 * (1 << 20) + 2 * BATCH_OVERHEAD);
        let outcomes: Vec<Accepted> = (0..1500).map(|_| tx.send(batch(1 << 20)).unwrap()).collect();
        assert_eq!(outcomes.iter().filter(|o| **o == Accepted::Queued).count(), 2);
        assert_eq!(dropped(&m, "queue_full"), 1498);
        assert_eq!(m.events_forwarded.with_label_values(&["production", "dropped"]).get(), 1498);
        assert_eq!(m.events_queue_bytes.get() as usize, 2 * (1 << 20) + 2 * BATCH_OVERHEAD);
    }

    #[test]
    fn many_small_batches_are_bounded_too() {
        let (tx, _rx, m, _) = setup(100 * (2 + BATCH_OVERHEAD));
        for _ in 0..1000 {
            tx.send(batch(2)).unwrap();
        }
        assert_eq!(dropped(&m, "queue_full"), 900);
    }

    #[tokio::test]
    async fn a_batch_counts_against_the_budget_until_the_forwarder_is_done_with_it() {
        let (tx, mut rx, m, _) = setup(1000 + BATCH_OVERHEAD);
        assert_eq!(tx.send(batch(1000)), Ok(Accepted::Queued));
        let held = rx.recv().await.unwrap();
        assert_eq!(tx.send(batch(1)), Ok(Accepted::Dropped), "the batch in flight still holds its bytes");
        drop(held);
        assert_eq!(m.events_queue_bytes.get(), 0);
        assert_eq!(tx.send(batch(1000)), Ok(Accepted::Queued));
    }

    #[tokio::test]
    async fn after_shutdown_begins_nothing_is_accepted_and_what_was_queued_can_still_be_taken() {
        let (tx, mut rx, _, shutdown) = setup(1 << 20);
        tx.send(batch(10)).unwrap();
        shutdown.trigger();
        assert_eq!(tx.send(batch(10)), Err(QueueClosed));
        rx.close();
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn a_closed_queue_refuses_even_before_shutdown_is_seen() {
        let (tx, mut rx, m, _) = setup(1 << 20);
        rx.close();
        assert_eq!(tx.send(batch(10)), Err(QueueClosed));
        assert_eq!(m.events_queue_bytes.get(), 0);
    }

    #[test]
    fn a_queued_body_owns_exactly_its_bytes() {
        let (tx, mut rx, _, _) = setup(1 << 20);
        let big = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        tx.send(EventBatch { env: "production".into(), kind: "events", body: big.slice(0..2) }).unwrap();
        let held = rx.try_recv().unwrap();
        assert_eq!(&held.batch.body[..], b"xx");
        assert!(held.batch.body.is_unique(), "a copy, not a view that keeps the 64 KiB buffer alive");
        drop(big);
    }
}
