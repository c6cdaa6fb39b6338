//! The streaming GET of the parent's relay stream: one HTTP/1.1 connection per request (hyper's
//! client connection over a TCP or TLS stream), its response head checked, its body read chunk
//! by chunk ([`Stream::chunk`]).
//!
//! Invariants: connecting, the TLS handshake and the response head are bounded by
//! `connect_timeout`; the body's silence is bounded by the follower (`heartbeat_timeout`). The
//! server is always verified over https: against `tls_ca_file` when set (it replaces the system
//! roots), else the system roots. Dropping a [`Stream`] closes its connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::RelayUrl;
use super::HOPS_HEADER;

/// The path of the relay stream, after the URL's base path.
pub const STREAM_PATH: &str = "/api/relay/v1/stream";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the parent answered {0} (check the environment's upstream_key)")]
    Status(u16),
    #[error("the parent answered without text/event-stream")]
    NotAStream,
    #[error("the request could not be built: {0}")]
    Request(String),
}

/// The TLS client settings of a parent at an https:// URL (`None` for http://).
pub fn tls_config(url: &RelayUrl, ca_file: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
    if !url.tls {
        return Ok(None);
    }
    crate::upstream::redis::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
                roots.add(c).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as every rustls client does.
                let _ = roots.add(c);
            }
        }
    }
    Ok(Some(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())))
}

/// An open relay stream: its body, and the parent's depth (`X-Flagrelay-Hops`).
pub struct Stream {
    body: Incoming,
    pub parent_hops: u32,
    conn: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// The next chunk of the body; `Ok(None)` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens the relay stream of the environment whose server key on the parent is `key`, resuming
/// from `last_event_id` if given.
pub async fn open(url: &RelayUrl, tls: Option<&Arc<rustls::ClientConfig>>, key: &str, last_event_id: Option<&str>, limit: Duration) -> Result<Stream, ClientError> {
    let target = format!("{}:{}", url.host, url.port);
    let tcp = tokio::time::timeout(limit, TcpStream::connect((url.host.as_str(), url.port)))
        .await
        .map_err(|_| ClientError::Timeout("connecting", limit))?
        .map_err(|e| ClientError::Connect(target.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => request(tcp, url, key, last_event_id, limit).await,
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| ClientError::Tls(format!("{}: {e}", url.host)))?;
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            let tls = tokio::time::timeout(limit, connector.connect(name, tcp))
                .await
                .map_err(|_| ClientError::Timeout("the TLS handshake", limit))?
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            request(tls, url, key, last_event_id, limit).await
        }
    }
}

async fn request<I>(io: I, url: &RelayUrl, key: &str, last_event_id: Option<&str>, limit: Duration) -> Result<Stream, ClientError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "relay stream connection ended");
        }
    });
    let host = if (url.tls && url.port == 443) || (!url.tls && url.port == 80) { url.host.clone() } else { format!("{}:{}", url.host, url.port) };
    let host = if url.host.contains(':') { format!("[{}]:{}", url.host, url.port) } else { host };
    let mut req = Request::get(format!("{}{STREAM_PATH}", url.base_path))
        .header(HOST, host)
        .header(ACCEPT, "text/event-stream")
        .header(AUTHORIZATION, format!("Bearer {key}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| ClientError::Request(e.to_string()))?;
    let resp = match tokio::time::timeout(limit, sender.send_request(req)).await {
        Ok(r) => r?,
        Err(_) => {
            conn.abort();
            return Err(ClientError::Timeout("the response head", limit));
        }
    };
    if resp.status() != hyper::StatusCode::OK {
        conn.abort();
        return Err(ClientError::Status(resp.status().as_u16()));
    }
    let is_stream = resp.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_stream {
        conn.abort();
        return Err(ClientError::NotAStream);
    }
    let parent_hops = resp.headers().get(HOPS_HEADER).and_then(|v: &HeaderValue| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    Ok(Stream { body: resp.into_body(), parent_hops, conn })
}
