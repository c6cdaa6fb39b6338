//! A TCP proxy the test controls, between a child relay and its parent: [`Proxy::cut`] drops
//! every connection and refuses new ones (the parent is unreachable), [`Proxy::restore`] lets
//! them through again, [`Proxy::retarget`] sends new connections to another parent and drops the
//! open ones (two parents behind one address, or a parent restarted on another port).
//! [`Proxy::start_tls`] terminates TLS with a test certificate: an https parent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct State {
    target: SocketAddr,
    open: bool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// The `host:port` of an `http://host:port` base URL.
pub fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").trim_end_matches('/').parse().expect("an http://ip:port base")
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::start_with(target, None).await
    }

    /// A proxy that terminates TLS with `cert` / `key` (PEM) and forwards plain TCP.
    pub async fn start_tls(target: SocketAddr, cert: &std::path::Path, key: &std::path::Path) -> Proxy {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).expect("cert file").map(|c| c.expect("cert")).collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("server TLS config");
        Proxy::start_with(target, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_with(target: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State { target, open: true }));
        let (generation, _) = watch::channel(0u64);
        let (st, gen) = (state.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let (target, open) = {
                    let s = st.lock().expect("proxy state");
                    (s.target, s.open)
                };
                if !open {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen.subscribe();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut outbound)) = tokio::time::timeout(crate::WAIT, TcpStream::connect(target)).await else { return };
                    match tls {
                        None => {
                            let mut inbound = inbound;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cut.changed() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(Ok(mut inbound)) = tokio::time::timeout(crate::WAIT, acceptor.accept(inbound)).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cut.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Proxy { addr, state, generation, task }
    }

    /// `http://` + the proxy's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:<port>` (the test certificate names 127.0.0.1), for a TLS proxy.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn drop_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.lock().expect("proxy state").open = false;
        self.drop_all();
    }

    pub fn restore(&self) {
        self.state.lock().expect("proxy state").open = true;
    }

    /// New connections go to `target`; the open ones are dropped.
    pub fn retarget(&self, target: SocketAddr) {
        {
            let mut s = self.state.lock().expect("proxy state");
            s.target = target;
            s.open = true;
        }
        self.drop_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_all();
    }
}
