//! A real SSE client over HTTP (reqwest byte stream + a spec-following event parser).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;

use super::{within, WAIT};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `message` when the stream gave no `event:`.
    pub event: String,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: Vec<u8>,
    pending: VecDeque<SseEvent>,
    /// The last `id:` seen (what a browser would send as Last-Event-ID).
    pub last_id: Option<String>,
    pub retry: Option<u64>,
    ended: bool,
}

impl SseClient {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = reqwest::Client::builder().connect_timeout(WAIT).build().expect("client");
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = within("the SSE response", req.send()).await.expect("SSE connect");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        SseClient {
            status,
            headers,
            stream: Some(resp.bytes_stream().boxed()),
            buf: Vec::new(),
            pending: VecDeque::new(),
            last_id: None,
            retry: None,
            ended: false,
        }
    }

    /// A stream on a raw socket (no HTTP client library): `GET path` with `Bearer key` to `addr`,
    /// with a receive buffer of `rcvbuf` bytes when given. It reads only while asked for an
    /// event, so until then it is a client that has stopped reading.
    pub async fn raw(
        addr: std::net::SocketAddr,
        path: &str,
        key: &str,
        rcvbuf: Option<u32>,
    ) -> SseClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let mut s = within("connect", sock.connect(addr))
            .await
            .expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {key}\r\n\r\n");
        within("the request write", s.write_all(req.as_bytes()))
            .await
            .expect("write");
        let head = super::tcp::read_head(&mut s).await;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let stream = futures_util::stream::unfold(s, |mut s| async move {
            let mut buf = vec![0u8; 64 * 1024];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), s))
                }
            }
        });
        SseClient {
            status,
            headers: reqwest::header::HeaderMap::new(),
            stream: Some(stream.boxed()),
            buf: Vec::new(),
            pending: VecDeque::new(),
            last_id: None,
            retry: None,
            ended: false,
        }
    }

    /// The next dispatched event (heartbeats included), or `None` when the stream ended.
    pub async fn next_any(&mut self) -> Option<SseEvent> {
        within("an SSE event", self.next_raw()).await
    }

    /// The next event that is not a heartbeat; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let e = self.next_any().await?;
            if !e.data.starts_with("{\"heartbeat\"") {
                return Some(e);
            }
        }
    }

    /// The next non-heartbeat event, which must exist.
    pub async fn expect(&mut self) -> SseEvent {
        match self.next().await {
            Some(e) => e,
            None => panic!("the SSE stream ended while an event was expected"),
        }
    }

    /// Waits for the stream to end (reads and discards events), panicking after `limit`.
    pub async fn wait_end(&mut self, limit: Duration) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(limit, async {
            while let Some(e) = self.next_raw().await {
                seen.push(e);
            }
        })
        .await;
        assert!(r.is_ok(), "SSE stream did not end within {limit:?}; saw {seen:?}");
        seen
    }

    async fn next_raw(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            let chunk = match self.stream.as_mut()?.next().await {
                Some(Ok(c)) => c,
                Some(Err(_)) | None => {
                    self.ended = true;
                    continue;
                }
            };
            self.buf.extend_from_slice(&chunk);
            self.parse();
        }
    }

    fn parse(&mut self) {
        // Events are separated by a blank line; lines end in \n (we never send \r).
        while let Some(pos) = find(&self.buf, b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut ev = SseEvent { event: "message".into(), ..Default::default() };
            let mut data: Vec<&str> = Vec::new();
            let mut has_data = false;
            for line in text.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => ev.event = value.to_string(),
                    "data" => {
                        data.push(value);
                        has_data = true;
                    }
                    "id" => {
                        ev.id = Some(value.to_string());
                        self.last_id = Some(value.to_string());
                    }
                    "retry" => {
                        ev.retry = value.parse().ok();
                        self.retry = ev.retry;
                    }
                    _ => {}
                }
            }
            ev.data = data.join("\n");
            if has_data {
                self.pending.push_back(ev);
            }
        }
    }

    /// Drops the connection.
    pub fn close(&mut self) {
        self.stream = None;
        self.ended = true;
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}
