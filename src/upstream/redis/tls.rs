//! TLS for `rediss://` upstreams: the rustls crypto provider and the certificates of
//! `[upstream] tls_ca_file` / `tls_client_cert_file` / `tls_client_key_file`.
//!
//! Every Redis connection the relay and the `flags` commands open is built from the
//! [`ConnectionInfo`] of [`Target`](super::sentinel::Target), so the certificates are loaded
//! **once**, in [`with_certificates`], into that `ConnectionInfo` (redis-rs carries them in
//! `ConnectionAddr::TcpTls::tls_params`), and every `Client` built from it, or from an address a
//! sentinel names, uses them.
//!
//! Invariants: the server is always verified: against `tls_ca_file` when set (it replaces the
//! system roots), else against the system roots (rustls-native-certs). A failed verification is
//! a connection error like any other (logged, in `/status`, retried with backoff); there is no
//! fallback to an unverified or a plain connection. Only an explicit `rediss://…/#insecure` URL
//! skips verification.

use std::path::Path;

use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, TlsCertificates};

use crate::config::RedisUpstream;

use super::SyncError;

/// Installs ring as rustls's process-wide default crypto provider unless there is one already
/// (rustls keeps the first it is given; the default is rustls's own process state). redis-rs
/// builds its rustls configs with the process default and brings no provider of its own; a
/// provider the embedding program installed first is kept.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err = another caller installed one meanwhile: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, SyncError> {
    std::fs::read(path).map_err(|source| SyncError::TlsFile { field, path: path.to_path_buf(), source })
}

/// `info` with the configured CA and client certificate attached (a `rediss://` address), or
/// unchanged when none is configured or the address is not TLS.
pub fn with_certificates(info: ConnectionInfo, cfg: &RedisUpstream) -> Result<ConnectionInfo, SyncError> {
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let Some(certs) = certificates(cfg)? else { return Ok(info) };
    if !tls {
        return Ok(info);
    }
    let client = redis::Client::build_with_tls(info, certs).map_err(SyncError::TlsCertificates)?;
    Ok(client.get_connection_info().clone())
}

/// The configured CA and client certificate, for the cluster client (which takes them apart
/// from the addresses), or `None` when none is configured.
pub fn certificates(cfg: &RedisUpstream) -> Result<Option<TlsCertificates>, SyncError> {
    install_crypto_provider();
    if !cfg.url.0.starts_with("rediss://") || (cfg.tls_ca_file.is_none() && cfg.tls_client_cert_file.is_none()) {
        return Ok(None);
    }
    let root_cert = cfg.tls_ca_file.as_deref().map(|p| read("tls_ca_file", p)).transpose()?;
    let client_tls = match (&cfg.tls_client_cert_file, &cfg.tls_client_key_file) {
        (Some(cert), Some(key)) => {
            Some(ClientTlsConfig { client_cert: read("tls_client_cert_file", cert)?, client_key: read("tls_client_key_file", key)? })
        }
        _ => None,
    };
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// `info` (e.g. a sentinel's address) with the TLS parameters of `base` when both are TLS.
pub fn same_certificates(info: ConnectionInfo, base: &ConnectionInfo) -> ConnectionInfo {
    match (info.addr(), base.addr()) {
        (ConnectionAddr::TcpTls { host, port, insecure, .. }, ConnectionAddr::TcpTls { tls_params, .. }) => {
            let addr = ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: *insecure, tls_params: tls_params.clone() };
            info.clone().set_addr(addr)
        }
        _ => info,
    }
}
