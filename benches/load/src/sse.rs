//! A streaming parser for one SSE response: HTTP/1.1 status and headers, chunked transfer
//! decoding, SSE lines and events, and the load tool's change markers inside `data:` lines.
//!
//! It keeps only the partial line between reads (no copy of whole events), so it costs a few
//! dozen bytes per idle connection.

/// What the parser saw at the end of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ev {
    /// The first event that counts as the initial state (with `marker`, 0 if none).
    Ready,
    /// An event carrying marker `n` (greater than every marker seen so far on this stream),
    /// `bytes` long (SSE framing included, HTTP chunk framing excluded).
    Change { n: u32, bytes: u32 },
    Heartbeat,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size { v: usize, ext: bool },
    Data(usize),
    DataEnd,
    End,
}

pub struct Parser {
    head: Option<Vec<u8>>,
    chunked: bool,
    chunk: Chunk,
    line: Vec<u8>,
    ev_lines: u32,
    ev_bytes: u32,
    ev_data: bool,
    ev_heartbeat: bool,
    ev_marker: u32,
    pub ready: bool,
    pub last_marker: u32,
    pub ended: bool,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// The response was not `200`: its status line without the version (`401 Unauthorized`)
    /// and the start of the body that came with the headers (one line, at most 200 bytes).
    Status { code: u16, status: String, body: String },
    /// Not HTTP, or a broken framing.
    Protocol(String),
}

pub struct ParseCfg {
    /// `FLM<run>-`: a marker is this prefix followed by decimal digits.
    pub marker: Vec<u8>,
    /// Ready on any event (nchan's `: hi` comment) instead of the first event with `data:`.
    pub ready_any: bool,
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            head: Some(Vec::new()),
            chunked: false,
            chunk: Chunk::Size { v: 0, ext: false },
            line: Vec::new(),
            ev_lines: 0,
            ev_bytes: 0,
            ev_data: false,
            ev_heartbeat: false,
            ev_marker: 0,
            ready: false,
            last_marker: 0,
            ended: false,
        }
    }

    /// Feeds bytes read from the socket; `out` is called for every completed event of interest.
    pub fn feed(&mut self, mut data: &[u8], cfg: &ParseCfg, out: &mut impl FnMut(Ev)) -> Result<(), FeedError> {
        if let Some(head) = self.head.as_mut() {
            let start = head.len().saturating_sub(3);
            head.extend_from_slice(data);
            let Some(pos) = find(&head[start..], b"\r\n\r\n").map(|p| p + start) else {
                if head.len() > 16 * 1024 {
                    return Err(FeedError::Protocol("response headers too long".into()));
                }
                return Ok(());
            };
            let head = self.head.take().unwrap_or_default();
            let original = String::from_utf8_lossy(&head[..pos]).into_owned();
            let text = original.to_ascii_lowercase();
            if let Some(e) = status_error(&original, &head[pos + 4..]) {
                return Err(e);
            }
            self.chunked = text
                .lines()
                .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let rest = head[pos + 4..].to_vec();
            return self.body(&rest, cfg, out);
        }
        let d = std::mem::take(&mut data);
        self.body(d, cfg, out)
    }

    fn body(&mut self, mut data: &[u8], cfg: &ParseCfg, out: &mut impl FnMut(Ev)) -> Result<(), FeedError> {
        if !self.chunked {
            self.sse(data, cfg, out);
            return Ok(());
        }
        while !data.is_empty() {
            match self.chunk {
                Chunk::Size { v, ext } => {
                    let b = data[0];
                    data = &data[1..];
                    self.chunk = match b {
                        b'\n' if v == 0 => Chunk::End,
                        b'\n' => Chunk::Data(v),
                        b'\r' => Chunk::Size { v, ext },
                        b';' => Chunk::Size { v, ext: true },
                        _ if ext => Chunk::Size { v, ext },
                        _ => {
                            let bad = |what: &str| FeedError::Protocol(what.to_string());
                            let h = (b as char).to_digit(16).ok_or_else(|| bad("bad chunk size"))? as usize;
                            Chunk::Size { v: v.checked_mul(16).ok_or_else(|| bad("chunk too large"))? + h, ext }
                        }
                    };
                }
                Chunk::Data(n) => {
                    let k = n.min(data.len());
                    self.sse(&data[..k], cfg, out);
                    data = &data[k..];
                    self.chunk = if n == k { Chunk::DataEnd } else { Chunk::Data(n - k) };
                }
                Chunk::DataEnd => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        self.chunk = Chunk::Size { v: 0, ext: false };
                    }
                }
                Chunk::End => {
                    self.ended = true;
                    return Ok(());
                }
            }
        }
        if matches!(self.chunk, Chunk::End) {
            self.ended = true;
        }
        Ok(())
    }

    fn sse(&mut self, mut data: &[u8], cfg: &ParseCfg, out: &mut impl FnMut(Ev)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.line.is_empty() {
                        self.line_done(&data[..i], cfg, out);
                    } else {
                        let mut l = std::mem::take(&mut self.line);
                        l.extend_from_slice(&data[..i]);
                        self.line_done(&l, cfg, out);
                        l.clear();
                        if l.capacity() > 4096 {
                            l = Vec::new();
                        }
                        self.line = l;
                    }
                    data = &data[i + 1..];
                }
                None => {
                    self.line.extend_from_slice(data);
                    return;
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8], cfg: &ParseCfg, out: &mut impl FnMut(Ev)) {
        self.ev_bytes = self.ev_bytes.saturating_add(line.len() as u32 + 1);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(cfg, out);
            return;
        }
        self.ev_lines += 1;
        if let Some(d) = line.strip_prefix(b"data:") {
            self.ev_data = true;
            if d.len() < 64 && find(d, b"{\"heartbeat\"").is_some() {
                self.ev_heartbeat = true;
            }
            self.ev_marker = self.ev_marker.max(max_marker(d, &cfg.marker));
        }
    }

    fn dispatch(&mut self, cfg: &ParseCfg, out: &mut impl FnMut(Ev)) {
        if self.ev_lines > 0 {
            if !self.ready {
                if self.ev_data || cfg.ready_any {
                    self.ready = true;
                    self.last_marker = self.ev_marker;
                    out(Ev::Ready);
                }
            } else if self.ev_marker > self.last_marker {
                out(Ev::Change { n: self.ev_marker, bytes: self.ev_bytes });
                self.last_marker = self.ev_marker;
            } else if self.ev_heartbeat {
                out(Ev::Heartbeat);
            }
        }
        self.ev_lines = 0;
        self.ev_bytes = 0;
        self.ev_data = false;
        self.ev_heartbeat = false;
        self.ev_marker = 0;
    }
}

/// `None` for a `200` response head; else what was wrong with it (`head`: status line and
/// headers, `rest`: the bytes after them that came in the same read).
fn status_error(head: &str, rest: &[u8]) -> Option<FeedError> {
    let line = head.lines().next().unwrap_or("").trim();
    let Some(after) = line.strip_prefix("HTTP/") else {
        let shown: String = line.chars().take(80).collect();
        return Some(FeedError::Protocol(format!("not an HTTP response: {shown:?}")));
    };
    let status = after.split_once(' ').map(|(_, s)| s.trim()).unwrap_or("");
    let code: u16 = status.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(0);
    if code == 200 {
        return None;
    }
    let body: String = String::from_utf8_lossy(&rest[..rest.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string();
    Some(FeedError::Status { code, status: if status.is_empty() { line.to_string() } else { status.to_string() }, body })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1].iter().position(|&b| b == first) {
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
            None => return None,
        }
    }
    None
}

/// The largest marker number in `d` (0 if none).
fn max_marker(mut d: &[u8], prefix: &[u8]) -> u32 {
    let mut best = 0u32;
    while let Some(p) = find(d, prefix) {
        d = &d[p + prefix.len()..];
        let digits = d.iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(n) = std::str::from_utf8(&d[..digits]).ok().and_then(|s| s.parse::<u32>().ok()) {
            best = best.max(n);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[&[u8]], ready_any: bool) -> Vec<Ev> {
        let cfg = ParseCfg { marker: b"FLMab-".to_vec(), ready_any };
        let mut p = Parser::new();
        let mut evs = Vec::new();
        for part in input {
            p.feed(part, &cfg, &mut |e| evs.push(e)).unwrap();
        }
        evs
    }

    #[test]
    fn chunked_split_everywhere() {
        let events: [&[u8]; 4] = [
            b"retry: 3000\n\n",
            b"event: features.updated\ndata: {\"x\":\"FLMab-0.\"}\n\n",
            b"id: 2\ndata: {\"x\":\"FLMab-1.\"}\n\n",
            b"data: {\"heartbeat\":123}\n\n",
        ];
        let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for e in events {
            body.extend_from_slice(format!("{:x}\r\n", e.len()).as_bytes());
            body.extend_from_slice(e);
            body.extend_from_slice(b"\r\n");
        }
        let body = &body[..];
        let whole = run(&[body], false);
        assert_eq!(whole[0], Ev::Ready);
        assert!(matches!(whole[1], Ev::Change { n: 1, .. }));
        assert_eq!(whole[2], Ev::Heartbeat);
        assert_eq!(whole.len(), 3);
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(run(&[a, b], false), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes, false), whole);
    }

    #[test]
    fn a_refusal_keeps_its_status_line_and_the_start_of_its_body() {
        let cfg = ParseCfg { marker: b"FLMab-".to_vec(), ready_any: false };
        let mut p = Parser::new();
        let r = p.feed(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\r\n{\"error\":\"unknown_key\"}\n",
            &cfg,
            &mut |_| {},
        );
        assert_eq!(
            r,
            Err(FeedError::Status { code: 401, status: "401 Unauthorized".into(), body: "{\"error\":\"unknown_key\"}".into() })
        );
        let mut p = Parser::new();
        assert!(matches!(p.feed(b"SSH-2.0-OpenSSH\r\n\r\n", &cfg, &mut |_| {}), Err(FeedError::Protocol(_))));
        let mut p = Parser::new();
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n\r\n", &cfg, &mut |_| {}), Ok(()));
    }

    #[test]
    fn nchan_identity_comment_ready() {
        let body = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\nid: 1:0\ndata: FLMab-7.\n\n";
        let evs = run(&[body], true);
        assert_eq!(evs[0], Ev::Ready);
        assert!(matches!(evs[1], Ev::Change { n: 7, .. }));
    }
}
