//! A client process: N SSE connections on one current-thread runtime, driven by the coordinator
//! over stdin/stdout (one line per message).
//!
//! To the coordinator ([`Line`]): `P <ready> <failed> <dropped>` (progress: every 250 ms while
//! connecting, and at once on every failure or drop), `F <text>` (this process's first error,
//! once, before the `P` that counts it), `R <ready> <failed> <dropped>` (every connection has its
//! initial state or gave up), `D <i>` (every connection received change i, skipped it, or is
//! gone), and on `E` from stdin one `J <json>` line with the receipt timestamps, then exit.
//!
//! A connection that fails before its initial state is retried (5 attempts) unless the failure
//! is final ([`Failure::retry`]): a refused connection, an unreachable network, a `4xx` answer
//! other than 408 and 429, or a response that is not HTTP.
//!
//! Each delivery is timestamped twice: by the kernel when the segment reached the socket
//! (SO_TIMESTAMPNS, CLOCK_REALTIME) and by this process when it read it. Latencies use the kernel
//! stamp, so they do not include this process's own lag; the gap between the two is reported.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::sse::{Ev, FeedError, ParseCfg, Parser};
use super::sys;

pub struct ClientCfg {
    /// The URL as given, for error messages.
    pub url: String,
    pub addr: SocketAddr,
    /// The HTTP requests, one per context group: client `offset + idx` sends
    /// `requests[(offset + idx) % requests.len()]` (one request without `--contexts`).
    pub requests: Vec<Vec<u8>>,
    pub sources: Vec<IpAddr>,
    /// Global index of this process's first client (for source round-robin).
    pub offset: usize,
    pub clients: usize,
    pub changes: usize,
    pub concurrency: usize,
    pub parse: ParseCfg,
    /// Busy-poll instead of sleeping (`--spin`).
    pub spin: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChangeResult {
    /// Kernel receipt timestamps, ns since the epoch.
    pub kernel: Vec<i64>,
    /// This process's read timestamps, ns since the epoch (same order).
    pub user: Vec<i64>,
    /// Live clients that never saw this change (they got a later one first: coalesced).
    pub skipped: usize,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChildResult {
    pub ready: usize,
    pub failed: usize,
    pub dropped: usize,
    pub heartbeats: u64,
    pub frame_bytes_max: u32,
    pub frame_bytes_min: u32,
    pub kernel_ts_missing: u64,
    pub first_error: Option<String>,
    pub changes: Vec<ChangeResult>,
}

/// One line from a client process to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Progress { ready: usize, failed: usize, dropped: usize },
    FirstError(String),
    Ready { ready: usize, failed: usize, dropped: usize },
    Done(usize),
    Result(String),
}

impl Line {
    /// The line as sent (one line: newlines in an error text become spaces).
    pub fn render(&self) -> String {
        match self {
            Line::Progress { ready, failed, dropped } => format!("P {ready} {failed} {dropped}"),
            Line::FirstError(t) => format!("F {}", t.replace(['\n', '\r'], " ")),
            Line::Ready { ready, failed, dropped } => format!("R {ready} {failed} {dropped}"),
            Line::Done(i) => format!("D {i}"),
            Line::Result(j) => format!("J {j}"),
        }
    }

    /// A line read from a client process; `None` for anything else (e.g. a stray print).
    pub fn parse(l: &str) -> Option<Line> {
        let (tag, rest) = l.split_once(' ')?;
        let counts = || -> Option<(usize, usize, usize)> {
            let v: Vec<usize> = rest.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
            match v[..] {
                [r, f, d] => Some((r, f, d)),
                _ => None,
            }
        };
        match tag {
            "P" => counts().map(|(ready, failed, dropped)| Line::Progress { ready, failed, dropped }),
            "R" => counts().map(|(ready, failed, dropped)| Line::Ready { ready, failed, dropped }),
            "F" => Some(Line::FirstError(rest.to_string())),
            "D" => rest.trim().parse().ok().map(Line::Done),
            "J" => Some(Line::Result(rest.to_string())),
            _ => None,
        }
    }
}

/// Why a connection ended before its initial state, and whether another attempt may do better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub text: String,
    pub retry: bool,
}

impl Failure {
    fn transient(text: impl Into<String>) -> Failure {
        Failure { text: text.into(), retry: true }
    }

    /// A socket error while connecting to or reading from `url`. Final when nothing listens or
    /// the address cannot be reached: another attempt would get the same answer.
    pub fn io(url: &str, e: &std::io::Error) -> Failure {
        use std::io::ErrorKind::*;
        let retry = !matches!(e.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | PermissionDenied | InvalidInput);
        Failure { text: format!("{url}: {}", io_text(e)), retry }
    }

    /// The stream's response could not be used. A `4xx` status (but 408 and 429) is final: the
    /// key or the URL is wrong. `5xx` (e.g. 503 while the relay is not ready) is retried.
    pub fn feed(url: &str, e: FeedError) -> Failure {
        match e {
            FeedError::Status { code, status, body } => Failure {
                text: if body.is_empty() { format!("{status} from {url}") } else { format!("{status} from {url}: {body}") },
                retry: !(400..500).contains(&code) || code == 408 || code == 429,
            },
            FeedError::Protocol(p) => Failure { text: format!("{url}: {p}"), retry: false },
        }
    }
}

/// `connection refused (os error 111)`: the kind first, in lower case, as a user searches for it.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.split_once(" (os error") {
        Some((head, tail)) => format!("{} (os error{tail}", head.to_lowercase()),
        None => s,
    }
}

struct State {
    n: usize,
    ready: Cell<usize>,
    failed: Cell<usize>,
    dropped: Cell<usize>,
    done: RefCell<Vec<usize>>,
    res: RefCell<ChildResult>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

impl State {
    fn counts(&self) -> (usize, usize, usize) {
        (self.ready.get(), self.failed.get(), self.dropped.get())
    }

    fn progress(&self) {
        let (ready, failed, dropped) = self.counts();
        say(&Line::Progress { ready, failed, dropped }.render());
    }

    fn check_ready(&self) {
        // A connection counts once: ready (and maybe dropped later) or failed.
        if self.ready.get() + self.failed.get() == self.n {
            let (ready, failed, dropped) = self.counts();
            say(&Line::Ready { ready, failed, dropped }.render());
        }
    }

    /// Keeps the first error of this process and sends it to the coordinator at once.
    fn note_error(&self, text: &str) {
        let mut res = self.res.borrow_mut();
        if res.first_error.is_none() {
            res.first_error = Some(text.to_string());
            drop(res);
            say(&Line::FirstError(text.to_string()).render());
        }
    }

    /// Client `from` marker `last` is finished with changes up to `upto` (inclusive).
    fn advance(&self, last: u32, upto: u32) {
        let mut done = self.done.borrow_mut();
        let top = (upto as usize).min(done.len() - 1);
        for j in (last as usize + 1)..=top {
            done[j] += 1;
            if done[j] == self.n {
                say(&Line::Done(j).render());
            }
        }
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 64 * 1024]);
}

async fn connect(cfg: &ClientCfg, idx: usize) -> Result<TcpStream, Failure> {
    connect_io(cfg, idx).await.map_err(|e| Failure::io(&cfg.url, &e))
}

async fn connect_io(cfg: &ClientCfg, idx: usize) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if !cfg.sources.is_empty() {
        let src = cfg.sources[(cfg.offset + idx) % cfg.sources.len()];
        sys::bind_address_no_port(sock.as_raw_fd())?;
        sock.bind(SocketAddr::new(src, 0))?;
    }
    sys::enable_rx_timestamps(sock.as_raw_fd())?;
    let mut s = tokio::time::timeout(Duration::from_secs(10), sock.connect(cfg.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let req = &cfg.requests[(cfg.offset + idx) % cfg.requests.len().max(1)];
    s.write_all(req).await?;
    Ok(s)
}

/// One connection until it ends. Returns Err before the initial state (to retry), Ok after.
async fn session(cfg: &ClientCfg, st: &State, idx: usize, sem: &Semaphore) -> Result<(), Failure> {
    let permit = sem.acquire().await.map_err(|e| Failure::transient(e.to_string()))?;
    let mut permit = Some(permit);
    let stream = connect(cfg, idx).await?;
    let fd = stream.as_raw_fd();
    let mut p = Parser::new();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(if p.ready { 3600 * 24 } else { 30 }), stream.readable()).await;
        match got {
            Err(_) => return Err(Failure::transient(format!("{}: no initial state within 30 s", cfg.url))),
            Ok(Err(e)) => return finish(cfg, st, &p, Some(Failure::io(&cfg.url, &e))),
            Ok(Ok(())) => {}
        }
        let r = stream.try_io(Interest::READABLE, || BUF.with(|b| sys::recv_with_ts(fd, &mut b.borrow_mut())));
        let (n, kts) = match r {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return finish(cfg, st, &p, Some(Failure::io(&cfg.url, &e))),
        };
        if n == 0 {
            return finish(cfg, st, &p, None);
        }
        let uts = now_ns();
        let was_ready = p.ready;
        let before = p.last_marker;
        let mut changes: Vec<(u32, u32)> = Vec::new();
        let mut heartbeats = 0u64;
        let parsed = BUF.with(|b| {
            let b = b.borrow();
            p.feed(&b[..n], &cfg.parse, &mut |e| match e {
                Ev::Ready => {}
                Ev::Change { n, bytes } => changes.push((n, bytes)),
                Ev::Heartbeat => heartbeats += 1,
            })
        });
        if let Err(e) = parsed {
            return finish(cfg, st, &p, Some(Failure::feed(&cfg.url, e)));
        }
        if !was_ready && p.ready {
            permit.take();
            st.ready.set(st.ready.get() + 1);
            st.check_ready();
        }
        if heartbeats > 0 {
            st.res.borrow_mut().heartbeats += heartbeats;
        }
        if !changes.is_empty() {
            let mut prev = before;
            let mut res = st.res.borrow_mut();
            if kts.is_none() {
                res.kernel_ts_missing += 1;
            }
            for &(m, bytes) in &changes {
                let mi = m as usize;
                if mi < res.changes.len() {
                    for j in (prev as usize + 1)..mi {
                        res.changes[j].skipped += 1;
                    }
                    let c = &mut res.changes[mi];
                    c.kernel.push(kts.unwrap_or(uts));
                    c.user.push(uts);
                }
                res.frame_bytes_max = res.frame_bytes_max.max(bytes);
                res.frame_bytes_min = if res.frame_bytes_min == 0 { bytes } else { res.frame_bytes_min.min(bytes) };
                prev = m;
            }
            drop(res);
            st.advance(before, prev);
        }
        if p.ended {
            drop_client(cfg, st, &p, None);
            return Ok(());
        }
    }
}

/// How a session that stops ends: after its initial state the client is dropped and counted
/// (no retry); before it, the reason goes back to `client` for a retry.
fn finish(cfg: &ClientCfg, st: &State, p: &Parser, why: Option<Failure>) -> Result<(), Failure> {
    if p.ready {
        drop_client(cfg, st, p, why);
        Ok(())
    } else {
        Err(why.unwrap_or_else(|| Failure::transient(format!("{}: closed before the initial state", cfg.url))))
    }
}

fn drop_client(cfg: &ClientCfg, st: &State, p: &Parser, err: Option<Failure>) {
    st.dropped.set(st.dropped.get() + 1);
    let text = match err {
        Some(f) => format!("a stream ended: {}", f.text),
        None => format!("a stream ended: {} closed it", cfg.url),
    };
    st.note_error(&text);
    st.progress();
    let m = st.res.borrow().changes.len() as u32;
    st.advance(p.last_marker, m);
}

async fn client(cfg: Rc<ClientCfg>, st: Rc<State>, idx: usize, sem: Rc<Semaphore>) {
    let mut last = Failure::transient("never tried");
    for attempt in 0..5 {
        match session(&cfg, &st, idx, &sem).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        if !last.retry {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    st.failed.set(st.failed.get() + 1);
    st.note_error(&last.text);
    st.progress();
    let m = st.res.borrow().changes.len() as u32;
    st.advance(0, m);
    st.check_ready();
}

pub fn run(cfg: ClientCfg) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let n = cfg.clients;
        let st = Rc::new(State {
            n,
            ready: Cell::new(0),
            failed: Cell::new(0),
            dropped: Cell::new(0),
            done: RefCell::new(vec![0; cfg.changes + 1]),
            res: RefCell::new(ChildResult {
                changes: (0..=cfg.changes).map(|_| ChangeResult::default()).collect(),
                ..Default::default()
            }),
        });
        let sem = Rc::new(Semaphore::new(cfg.concurrency.max(1)));
        let cfg = Rc::new(cfg);
        if n == 0 {
            st.check_ready();
        }
        for i in 0..n {
            tokio::task::spawn_local(client(cfg.clone(), st.clone(), i, sem.clone()));
        }
        if cfg.spin {
            // Always runnable: the runtime then polls the reactor without blocking between
            // tasks, and never parks in epoll_wait.
            tokio::task::spawn_local(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
        let prog = st.clone();
        tokio::task::spawn_local(async move {
            while prog.ready.get() + prog.failed.get() < prog.n {
                prog.progress();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() == "E" => break,
                Ok(Some(_)) => {}
                _ => std::process::exit(1),
            }
        }
        let mut res = std::mem::take(&mut *st.res.borrow_mut());
        res.ready = st.ready.get();
        res.failed = st.failed.get();
        res.dropped = st.dropped.get();
        say(&Line::Result(serde_json::to_string(&res).unwrap_or_default()).render());
        std::process::exit(0);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_sent() {
        for l in [
            Line::Progress { ready: 3, failed: 2, dropped: 1 },
            Line::Ready { ready: 0, failed: 50, dropped: 0 },
            Line::FirstError("401 Unauthorized from http://127.0.0.1:1/x".into()),
            Line::Done(7),
            Line::Result("{\"ready\":1}".into()),
        ] {
            assert_eq!(Line::parse(&l.render()), Some(l));
        }
        assert_eq!(Line::FirstError("a\nb".into()).render(), "F a b");
        assert_eq!(Line::parse("P 1 2"), None, "the old two-count form is not progress");
        assert_eq!(Line::parse("X 1"), None);
        assert_eq!(Line::parse("D x"), None);
    }

    #[test]
    fn a_refusal_or_a_wrong_key_is_final_an_overload_is_retried() {
        let url = "http://127.0.0.1:1/api";
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!Failure::io(url, &refused).retry);
        assert!(Failure::io(url, &std::io::Error::from(std::io::ErrorKind::TimedOut)).retry);
        assert!(Failure::io(url, &std::io::Error::from(std::io::ErrorKind::ConnectionReset)).retry);
        let st = |code: u16| FeedError::Status { code, status: format!("{code} X"), body: String::new() };
        for code in [400, 401, 403, 404] {
            assert!(!Failure::feed(url, st(code)).retry, "{code}");
        }
        for code in [408, 429, 500, 503] {
            assert!(Failure::feed(url, st(code)).retry, "{code}");
        }
        assert!(!Failure::feed(url, FeedError::Protocol("not HTTP".into())).retry);
    }

    #[test]
    fn failure_texts_name_the_url_and_the_cause() {
        let url = "http://127.0.0.1:1/api";
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Failure::io(url, &e).text, "http://127.0.0.1:1/api: connection refused (os error 111)");
        let f = Failure::feed(url, FeedError::Status { code: 401, status: "401 Unauthorized".into(), body: "{}".into() });
        assert_eq!(f.text, "401 Unauthorized from http://127.0.0.1:1/api: {}");
    }
}
