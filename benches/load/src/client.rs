//! A client process: N SSE connections on one current-thread runtime, driven by the coordinator
//! over stdin/stdout (one line per message).
//!
//! To the coordinator: `P <ready> <failed>` (progress), `R <ready> <failed>` (every connection has
//! its initial state or gave up), `D <i>` (every connection received change i, skipped it, or is
//! gone), and on `E` from stdin one `J <json>` line with the receipt timestamps, then exit.
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

use super::sse::{Ev, ParseCfg, Parser};
use super::sys;

pub struct ClientCfg {
    pub addr: SocketAddr,
    pub request: Vec<u8>,
    pub sources: Vec<IpAddr>,
    /// Global index of this process's first client (for source round-robin).
    pub offset: usize,
    pub clients: usize,
    pub changes: usize,
    pub concurrency: usize,
    pub parse: ParseCfg,
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

struct State {
    n: usize,
    ready: Cell<usize>,
    failed: Cell<usize>,
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
    fn check_ready(&self) {
        if self.ready.get() + self.failed.get() == self.n {
            say(&format!("R {} {}", self.ready.get(), self.failed.get()));
        }
    }

    /// Client `from` marker `last` is finished with changes up to `upto` (inclusive).
    fn advance(&self, last: u32, upto: u32) {
        let mut done = self.done.borrow_mut();
        let top = (upto as usize).min(done.len() - 1);
        for j in (last as usize + 1)..=top {
            done[j] += 1;
            if done[j] == self.n {
                say(&format!("D {j}"));
            }
        }
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 64 * 1024]);
}

async fn connect(cfg: &ClientCfg, idx: usize) -> std::io::Result<TcpStream> {
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
    s.write_all(&cfg.request).await?;
    Ok(s)
}

/// One connection until it ends. Returns Err before the initial state (to retry), Ok after.
async fn session(cfg: &ClientCfg, st: &State, idx: usize, sem: &Semaphore) -> Result<(), String> {
    let permit = sem.acquire().await.map_err(|e| e.to_string())?;
    let mut permit = Some(permit);
    let stream = connect(cfg, idx).await.map_err(|e| e.to_string())?;
    let fd = stream.as_raw_fd();
    let mut p = Parser::new();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(if p.ready { 3600 * 24 } else { 30 }), stream.readable()).await;
        match got {
            Err(_) => return Err("no initial state within 30 s".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(())) => {}
        }
        let r = stream.try_io(Interest::READABLE, || BUF.with(|b| sys::recv_with_ts(fd, &mut b.borrow_mut())));
        let (n, kts) = match r {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return finish(st, &p, Some(e.to_string())),
        };
        if n == 0 {
            return finish(st, &p, None);
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
            return finish(st, &p, Some(e));
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
            drop_client(st, &p, None);
            return Ok(());
        }
    }
}

/// How a session that stops ends: after its initial state the client is dropped and counted
/// (no retry); before it, the reason goes back to `client` for a retry.
fn finish(st: &State, p: &Parser, why: Option<String>) -> Result<(), String> {
    if p.ready {
        drop_client(st, p, why);
        Ok(())
    } else {
        Err(why.unwrap_or_else(|| "closed before the initial state".into()))
    }
}

fn drop_client(st: &State, p: &Parser, err: Option<String>) {
    let mut res = st.res.borrow_mut();
    res.dropped += 1;
    if res.first_error.is_none() {
        res.first_error = Some(err.unwrap_or_else(|| "stream ended".into()));
    }
    let m = res.changes.len() as u32;
    drop(res);
    st.advance(p.last_marker, m);
}

async fn client(cfg: Rc<ClientCfg>, st: Rc<State>, idx: usize, sem: Rc<Semaphore>) {
    let mut last_err = String::new();
    for attempt in 0..5 {
        match session(&cfg, &st, idx, &sem).await {
            Ok(()) => return,
            Err(e) => last_err = e,
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    st.failed.set(st.failed.get() + 1);
    {
        let mut res = st.res.borrow_mut();
        if res.first_error.is_none() {
            res.first_error = Some(last_err);
        }
    }
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
        let prog = st.clone();
        tokio::task::spawn_local(async move {
            while prog.ready.get() + prog.failed.get() < prog.n {
                say(&format!("P {} {}", prog.ready.get(), prog.failed.get()));
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
        say(&format!("J {}", serde_json::to_string(&res).unwrap_or_default()));
        std::process::exit(0);
    })
}
