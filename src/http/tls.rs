//! TLS on the listeners (`[tls]`): a rustls server config whose certificate is read from
//! `cert_file` / `key_file` and **reloaded when either file changes** (cert-manager rotates them in
//! place), and ALPN offering `h2` then `http/1.1`.
//!
//! Invariants:
//! - A handshake always uses the last certificate that loaded: a reload that fails (a half-written
//!   file, a key that does not match) is logged and counted once per change and the previous
//!   certificate keeps serving. [`Certificates::reload_if_changed`] is the one place that swaps it.
//! - The files are checked at startup by [`Certificates::load`] (an unreadable or malformed file
//!   fails the start, naming the key).
//! - What changed is told by each file's (modification time, length, inode), polled every
//!   `reload_interval` by [`Certificates::watch`], a task `app` owns; a change of either file
//!   reloads both (they are rotated together).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::shutdown::Shutdown;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field}: cannot read {}: {error}", path.display())]
    Read { field: &'static str, path: PathBuf, error: std::io::Error },
    #[error("tls.cert_file: {}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("tls.cert_file: {}: not PEM certificates ({why})", path.display())]
    BadCertificate { path: PathBuf, why: String },
    #[error("tls.key_file: {}: no PEM private key ({why})", path.display())]
    BadKey { path: PathBuf, why: String },
    #[error("tls: the key does not fit the certificate, or is of an unsupported kind ({0})")]
    Mismatch(String),
}

/// The current certificate, swapped on reload; rustls asks it on every handshake.
#[derive(Debug)]
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when `current` was loaded (or last failed to load).
    stamp: std::sync::Mutex<Option<Stamp>>,
}

type Stamp = [(Option<SystemTime>, u64, u64); 2];

fn stamp_of(p: &Path) -> (Option<SystemTime>, u64, u64) {
    match std::fs::metadata(p) {
        Ok(m) => {
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            (m.modified().ok(), m.len(), ino)
        }
        Err(_) => (None, 0, 0),
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { field, path: path.to_path_buf(), error })
}

/// Parses and checks a certificate chain and its key.
fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = read("cert_file", cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate { path: cert_file.to_path_buf(), why: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key_pem = read("key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey { path: key_file.to_path_buf(), why: e.to_string() })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let signing = provider.key_provider.load_private_key(key).map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(ck)
}

impl Certificates {
    /// Loads the certificate now (startup: an error stops the relay).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificates>, TlsError> {
        let stamp = [stamp_of(cert_file), stamp_of(key_file)];
        let ck = certified_key(cert_file, key_file)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            stamp: std::sync::Mutex::new(Some(stamp)),
        }))
    }

    /// Reloads when a file's stamp changed since the last attempt. `Ok(true)`: a new certificate
    /// serves from the next handshake on; an error leaves the previous one serving.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = [stamp_of(&self.cert_file), stamp_of(&self.key_file)];
        {
            let Ok(mut last) = self.stamp.lock() else { return Ok(false) };
            if last.as_ref() == Some(&now) {
                return Ok(false);
            }
            *last = Some(now);
        }
        let ck = certified_key(&self.cert_file, &self.key_file)?;
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(ck);
        }
        Ok(true)
    }

    /// Polls the files every `every` until shutdown, reloading on a change (logged).
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one keeps serving"),
            }
        }
    }

    /// A rustls server config that asks this for its certificate, with ALPN `h2`, `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
