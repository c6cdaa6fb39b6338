//! [`Prefixed`]: a connection whose first bytes were already read (the first request head, see
//! [`super::first_head`]), handed to hyper so that it reads those bytes first and then the socket,
//! exactly as if nothing had been read. Writes go straight through (vectored too).
//!
//! Invariant: the prefix is freed as soon as it has been read, so a long-lived connection keeps
//! nothing of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Prefixed<T> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read.
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Prefixed<T> {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_is_read_first_then_the_inner_stream() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut p = Prefixed::new(b"hello".to_vec(), near);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn a_small_read_buffer_takes_the_prefix_in_pieces_and_then_frees_it() {
        let (_far, near) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b"abcde".to_vec(), near);
        let mut b = [0u8; 2];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = p.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"abcde");
        assert_eq!(p.prefix.capacity(), 0, "freed once read");
    }

    #[tokio::test]
    async fn writes_go_to_the_inner_stream() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b"ignored".to_vec(), near);
        p.write_all(b"out").await.unwrap();
        let mut b = [0u8; 3];
        far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"out");
    }
}
