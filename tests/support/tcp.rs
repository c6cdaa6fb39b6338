//! Raw TCP clients for connection-level tests: idle sockets, a request written in pieces, and
//! waiting for the relay to close a connection. Every await has a timeout ([`super::WAIT`]).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{metric, within, TestRelay};

/// The API listener's address of a test relay.
pub fn api_addr(relay: &TestRelay) -> SocketAddr {
    relay.base.trim_start_matches("http://").parse().expect("api address")
}

/// Opens a TCP connection that never sends anything.
pub async fn idle_socket(addr: SocketAddr) -> TcpStream {
    within("a TCP connect", TcpStream::connect(addr)).await.expect("connect")
}

/// Opens `n` idle connections and waits until the relay counts `n` open API connections.
pub async fn idle_sockets(relay: &TestRelay, n: usize) -> Vec<TcpStream> {
    let addr = api_addr(relay);
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        socks.push(idle_socket(addr).await);
    }
    wait_open_connections(relay, n).await;
    socks
}

/// Waits until `flagrelay_http_connections` is `n`.
pub async fn wait_open_connections(relay: &TestRelay, n: usize) {
    within(&format!("{n} open API connections"), async {
        loop {
            if metric(&relay.metrics().await, "flagrelay_http_connections", &[]) == Some(n as f64) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Reads (and discards) until the peer closes: EOF or a reset. Panics after [`super::WAIT`].
pub async fn closed_by_peer(sock: &mut (impl AsyncRead + Unpin)) {
    within("the relay to close the connection", async {
        let mut buf = [0u8; 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Sends `bytes` and reads the response head (through the blank line) as text.
pub async fn response_head(sock: &mut TcpStream, bytes: &[u8]) -> String {
    within("a request write", sock.write_all(bytes)).await.expect("write");
    read_head(sock).await
}

/// Reads through the first blank line and returns it as text.
pub async fn read_head(sock: &mut TcpStream) -> String {
    within("a response head", async {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    })
    .await
}
