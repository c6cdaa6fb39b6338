//! A TCP proxy the test controls, between a child relay and its parent: [`Proxy::cut`] drops
//! every connection and refuses new ones (the parent is unreachable), [`Proxy::restore`] lets
//! them through again, [`Proxy::retarget`] sends new connections to another parent and drops the
//! open ones (two parents behind one address, or a parent restarted on another port).
//! [`Proxy::freeze`] stops forwarding but holds every connection open, and accepts new ones
//! without answering (a frozen parent, as after `SIGSTOP`), until [`Proxy::thaw`].
//! [`Proxy::start_tls`] terminates TLS with a test certificate: an https parent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct State {
    target: SocketAddr,
    open: bool,
    frozen: bool,
}

/// Waits for the next change of the generation (or the proxy's end).
async fn next_generation(rx: &mut watch::Receiver<u64>) {
    let _ = rx.changed().await;
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
        let state = Arc::new(Mutex::new(State { target, open: true, frozen: false }));
        let (generation, _) = watch::channel(0u64);
        let (st, gen) = (state.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let (target, open, frozen) = {
                    let s = st.lock().expect("proxy state");
                    (s.target, s.open, s.frozen)
                };
                if !open {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen.subscribe();
                if frozen {
                    // Accepted by the kernel, never answered: held until the next change.
                    tokio::spawn(async move {
                        next_generation(&mut cut).await;
                        drop(inbound);
                    });
                    continue;
                }
                let tls = tls.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut outbound)) = tokio::time::timeout(crate::WAIT, TcpStream::connect(target)).await else { return };
                    let changed = match tls {
                        None => {
                            let mut inbound = inbound;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                                _ = cut.changed() => true,
                            }
                        }
                        Some(acceptor) => {
                            let Ok(Ok(mut inbound)) = tokio::time::timeout(crate::WAIT, acceptor.accept(inbound)).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                                _ = cut.changed() => true,
                            }
                        }
                    };
                    // Frozen: the sockets stay open, silent, until the next change.
                    if changed && st.lock().expect("proxy state").frozen {
                        next_generation(&mut cut).await;
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

    /// Stops forwarding; open connections and new ones are held silent (a frozen parent).
    pub fn freeze(&self) {
        self.state.lock().expect("proxy state").frozen = true;
        self.drop_all();
    }

    /// Ends a freeze: the held connections are dropped, new ones are forwarded again.
    pub fn thaw(&self) {
        self.state.lock().expect("proxy state").frozen = false;
        self.drop_all();
    }

    /// New connections go to `target`; the open ones are dropped.
    pub fn retarget(&self, target: SocketAddr) {
        {
            let mut s = self.state.lock().expect("proxy state");
            s.target = target;
            s.open = true;
            s.frozen = false;
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
