//! A connection's first request head, read before its path is chosen (the SSE fast path or
//! hyper): read until the head is complete, the bytes are not HTTP, `max` bytes have come, or the
//! connection's header deadline passes. A head may arrive in several packets; each read waits for
//! more data, so a slow client costs no CPU, and nothing is allocated until its first byte.
//!
//! The bytes read are handed on: to the fast path (a complete head and nothing after it) or to
//! hyper, which reads them first ([`super::prefixed::Prefixed`]). The deadline is the one the
//! accept loop set at accept; hyper is held to the same one ([`super::server`]).

use bytes::BufMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// How far a buffer is from a complete request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes could complete it.
    Partial,
    /// A complete head of this many bytes (through the blank line).
    Complete(usize),
    /// Not an HTTP/1 request head the fast path would parse (hyper answers it).
    Invalid,
}

/// Where `buf` stands. Uses the fast path's header limit (32); a head with more headers is
/// [`Progress::Invalid`] here and goes to hyper, which allows more.
pub fn progress(buf: &[u8]) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) => Progress::Complete(n),
        Ok(httparse::Status::Partial) => Progress::Partial,
        Err(_) => Progress::Invalid,
    }
}

/// What reading the first head came to.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstHead {
    /// The bytes read; `head_len` when they start with a complete head. Also what came before
    /// the bytes were found not to be HTTP, or `max` bytes of an unfinished head.
    Read { bytes: Vec<u8>, head_len: Option<usize> },
    /// No complete head by the deadline.
    TimedOut,
    /// The client closed or reset before completing a head, or shutdown began.
    Gone,
}

/// Reads the first head from `stream` (see the module docs).
pub async fn read(stream: &TcpStream, max: usize, deadline: Instant, shutdown: &Shutdown) -> FirstHead {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.readable()) => match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return FirstHead::Gone,
                Err(_) => return FirstHead::TimedOut,
            },
            _ = shutdown.wait() => return FirstHead::Gone,
        }
        if buf.capacity() == 0 {
            buf.reserve_exact(max);
        }
        // Never read past `max`.
        let room = max.saturating_sub(buf.len());
        match stream.try_read_buf(&mut (&mut buf).limit(room)) {
            Ok(0) => return FirstHead::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return FirstHead::Gone,
        }
        match progress(&buf) {
            Progress::Complete(n) => return FirstHead::Read { bytes: buf, head_len: Some(n) },
            Progress::Invalid => return FirstHead::Read { bytes: buf, head_len: None },
            Progress::Partial if buf.len() >= max => return FirstHead::Read { bytes: buf, head_len: None },
            Progress::Partial => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn progress_tells_partial_complete_and_invalid_heads_apart() {
        let table: [(&[u8], Progress); 6] = [
            (b"", Progress::Partial),
            (b"GET /x HT", Progress::Partial),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n", Progress::Partial),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", Progress::Complete(28)),
            (b"GET /x HTTP/1.1\r\n\r\nmore", Progress::Complete(19)),
            (b"\x00\x01garbage\r\n\r\n", Progress::Invalid),
        ];
        for (buf, want) in table {
            assert_eq!(progress(buf), want, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    async fn pair() -> (tokio::net::TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (client, l.accept().await.unwrap().0)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn a_head_sent_in_pieces_is_read_whole() {
        let (mut client, server) = pair().await;
        let writer = tokio::spawn(async move {
            for part in [&b"GET /x HTTP/1.1\r\n"[..], b"Host: a\r\n", b"\r\n"] {
                client.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let got = read(&server, 2048, soon(), &Shutdown::new()).await;
        assert_eq!(got, FirstHead::Read { bytes: b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), head_len: Some(28) });
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn reading_stops_at_max_bytes_of_an_unfinished_head() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET /x HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").await.unwrap();
        match read(&server, 32, soon(), &Shutdown::new()).await {
            FirstHead::Read { bytes, head_len: None } => assert_eq!(bytes.len(), 32),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_head_unfinished_at_the_deadline_times_out() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(read(&server, 2048, deadline, &Shutdown::new()).await, FirstHead::TimedOut);
    }

    #[tokio::test]
    async fn a_client_that_closes_first_is_gone() {
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(read(&server, 2048, soon(), &Shutdown::new()).await, FirstHead::Gone);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let (_client, server) = pair().await;
        let shutdown = Shutdown::new();
        shutdown.trigger();
        assert_eq!(read(&server, 2048, soon(), &shutdown).await, FirstHead::Gone);
    }
}
