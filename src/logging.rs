//! Log output that never panics and never blocks the task that logs: the global `tracing`
//! subscriber ([`init`]) formats each event as today (text or JSON, filter as the config
//! resolved it) and hands the line to a bounded in-memory queue; one dedicated thread writes the
//! queue to stderr.
//!
//! Invariants:
//! - Logging cannot fail a task: the subscriber's own error reporting (`eprintln!`, which panics
//!   once stderr is a closed pipe) is off, and the writer it is given always succeeds.
//! - A task never waits on stderr: a slow or stuck reader fills the queue (at most
//!   [`QUEUE_BYTES`]) and further lines are dropped at once.
//! - Every line that does not reach stderr is counted in `flagrelay_log_lines_dropped_total`:
//!   `write_error` (stderr refused it: a closed pipe, a dead log shipper), `backlog` (the queue
//!   was full).
//! - [`Logging`] flushes what is queued when it is dropped, waiting at most [`FLUSH_WAIT`].

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};
use crate::metrics::LogCounters;

/// Bytes of formatted log lines that may wait for stderr; beyond it lines are dropped.
pub const QUEUE_BYTES: usize = 1024 * 1024;

/// How long dropping [`Logging`] waits for the queue to reach stderr.
pub const FLUSH_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log counters: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed log output: its counters (for the relay's registry) and the flush at drop.
pub struct Logging {
    counters: LogCounters,
    queue: Arc<Queue>,
}

impl Logging {
    /// The counters of lost lines, to be registered with the relay's metrics.
    pub fn counters(&self) -> LogCounters {
        self.counters.clone()
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        self.queue.flush(FLUSH_WAIT);
    }
}

/// Installs the global subscriber writing to stderr through the queue, with the filter the
/// config resolved and checked (`config.log_level`: `--log-level`, `RUST_LOG`,
/// `FLAGRELAY_LOG_LEVEL`, the file, `info`). ANSI colours only when stderr is a terminal.
pub fn init(config: &Config) -> Result<Logging, LoggingError> {
    let counters = LogCounters::new()?;
    let queue = Arc::new(Queue::new(QUEUE_BYTES, counters.clone()));
    let writer = queue.clone();
    std::thread::Builder::new().name("log-writer".into()).spawn(move || writer.drain_into(std::io::stderr()))?;
    // The config resolved and checked the filter (`--log-level`, `RUST_LOG`, `log_level`).
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&config.log_level)
        .map_err(|e| LoggingError::Filter(config.log_level.clone(), e.to_string()))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .log_internal_errors(false)
        .with_writer(QueueWriter(queue.clone()));
    let installed = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)?;
    Ok(Logging { counters, queue })
}

/// Lines waiting for the writer thread, bounded by bytes.
struct Queue {
    state: Mutex<State>,
    /// Signalled when a line is queued.
    ready: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    idle: Condvar,
    budget: usize,
    counters: LogCounters,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    writing: bool,
}

impl Queue {
    fn new(budget: usize, counters: LogCounters) -> Queue {
        Queue { state: Mutex::new(State::default()), ready: Condvar::new(), idle: Condvar::new(), budget, counters }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole: a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one formatted line, or drops and counts it when the queue is over budget.
    fn push(&self, line: &[u8]) {
        let mut s = self.lock();
        if s.bytes + line.len() > self.budget {
            drop(s);
            self.counters.lines_dropped.with_label_values(&["backlog"]).inc();
            return;
        }
        s.bytes += line.len();
        s.lines.push_back(line.to_vec());
        drop(s);
        self.ready.notify_one();
    }

    /// The writer thread: writes every queued line to `out` in order, forever. A line `out`
    /// refuses is counted and lost; nothing is reported anywhere else.
    fn drain_into(&self, mut out: impl Write) {
        loop {
            let line = {
                let mut s = self.lock();
                while s.lines.is_empty() {
                    s.writing = false;
                    self.idle.notify_all();
                    s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                s.writing = true;
                s.lines.pop_front().unwrap_or_default()
            };
            if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                self.counters.lines_dropped.with_label_values(&["write_error"]).inc();
            }
            self.lock().bytes -= line.len();
        }
    }

    /// Waits until every queued line was written, at most `wait`.
    fn flush(&self, wait: Duration) {
        let s = self.lock();
        let _ = self.idle.wait_timeout_while(s, wait, |s| !s.lines.is_empty() || s.writing);
    }
}

/// The subscriber's writer: every write succeeds at once (the line is queued or counted).
#[derive(Clone)]
struct QueueWriter(Arc<Queue>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> QueueWriter {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(budget: usize) -> Arc<Queue> {
        Arc::new(Queue::new(budget, LogCounters::new().unwrap()))
    }

    fn dropped(q: &Queue, reason: &str) -> u64 {
        q.counters.lines_dropped.with_label_values(&[reason]).get()
    }

    /// A log output that refuses every write, as a closed pipe does.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log output whose reader never reads: every write blocks.
    struct StuckPipe;

    impl Write for StuckPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::park();
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_in_order() {
        let q = queue(1024);
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (w, o) = (q.clone(), out.clone());
        std::thread::spawn(move || w.drain_into(Shared(o)));
        let mut writer = QueueWriter(q.clone());
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        q.flush(Duration::from_secs(5));
        assert_eq!(&*out.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_closed_output_fails_no_write_and_counts_every_lost_line() {
        let q = queue(1024);
        let w = q.clone();
        std::thread::spawn(move || w.drain_into(ClosedPipe));
        let mut writer = QueueWriter(q.clone());
        for _ in 0..3 {
            writer.write_all(b"a line\n").expect("the writer never fails");
        }
        q.flush(Duration::from_secs(5));
        assert_eq!(dropped(&q, "write_error"), 3);
    }

    #[test]
    fn a_stuck_output_never_blocks_the_writer_and_drops_beyond_the_budget() {
        let q = queue(100);
        let w = q.clone();
        std::thread::spawn(move || w.drain_into(StuckPipe));
        let mut writer = QueueWriter(q.clone());
        let line = [b'x'; 10];
        for _ in 0..50 {
            writer.write_all(&line).unwrap();
        }
        // One line is held by the stuck write, ten fill the budget, the rest are dropped.
        assert_eq!(dropped(&q, "backlog"), 40);
        assert!(q.lock().bytes <= 100);
    }

    #[test]
    fn flush_gives_up_after_its_wait() {
        let q = queue(100);
        let w = q.clone();
        std::thread::spawn(move || w.drain_into(StuckPipe));
        QueueWriter(q.clone()).write_all(b"held\n").unwrap();
        let t0 = std::time::Instant::now();
        q.flush(Duration::from_millis(50));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
