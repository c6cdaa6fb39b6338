//! An incremental `text/event-stream` parser for the parent's relay stream: bytes in (any
//! chunking), whole events out. Pure, no I/O.
//!
//! Follows the SSE format for what a relay stream uses: `event:`, `data:` (several lines are
//! joined with `\n`), `id:`, comments (`:`) and `retry:` (ignored); lines end in `\n` or `\r\n`
//! (a lone `\r` is not a line end here: the parent never sends one). Comments are skipped (the
//! follower takes any bytes as a sign of life).
//!
//! Invariant: memory is bounded by `max_event_bytes`: a line or an event larger than that is an
//! error (the follower reconnects), never an unbounded buffer.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event of the relay stream exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the relay stream is not UTF-8")]
    NotUtf8,
}

#[derive(Debug)]
pub struct Parser {
    max: usize,
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl Parser {
    pub fn new(max_event_bytes: usize) -> Parser {
        Parser { max: max_event_bytes, line: Vec::new(), event: String::new(), data: String::new(), has_data: false, id: None }
    }

    /// Feeds one chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, &mut out)?;
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data || !self.event.is_empty() {
                out.push(Event {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                    id: self.id.take(),
                });
            }
            self.has_data = false;
            self.event.clear();
            self.data.clear();
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        let (field, value) = text.split_once(':').map_or((text, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.max {
                    return Err(SseError::TooLarge(self.max));
                }
            }
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser, chunks: &[&str]) -> Vec<Event> {
        chunks.iter().flat_map(|c| p.push(c.as_bytes()).expect("parses")).collect()
    }

    #[test]
    fn events_are_dispatched_at_the_blank_line_whatever_the_chunking() {
        let text = "id: e:3\nevent: change\ndata: {\"a\":1}\n\n";
        let want = vec![Event { event: "change".into(), data: "{\"a\":1}".into(), id: Some("e:3".into()) }];
        for split in 0..text.len() {
            let mut p = Parser::new(1024);
            assert_eq!(all(&mut p, &[&text[..split], &text[split..]]), want, "split at {split}");
        }
    }

    #[test]
    fn crlf_lines_and_multi_line_data_are_read() {
        let mut p = Parser::new(1024);
        let got = all(&mut p, &["event: x\r\ndata: a\r\ndata: b\r\n\r\n"]);
        assert_eq!(got, [Event { event: "x".into(), data: "a\nb".into(), id: None }]);
    }

    #[test]
    fn comments_and_retry_make_no_event() {
        let mut p = Parser::new(1024);
        assert!(p.push(b": heartbeat\n\nretry: 3000\n\n").expect("parses").is_empty());
        assert!(p.push(b"data: partial").expect("parses").is_empty());
    }

    #[test]
    fn an_event_over_the_bound_is_an_error() {
        let mut p = Parser::new(16);
        assert_eq!(p.push(b"data: 0123456789abcdefgh"), Err(SseError::TooLarge(16)));
        let mut p = Parser::new(16);
        assert_eq!(p.push(b"data: 0123456789\ndata: 0123456789\n"), Err(SseError::TooLarge(16)));
    }
}
