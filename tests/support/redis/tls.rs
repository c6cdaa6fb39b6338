//! A throwaway certificate authority for the TLS tests ([`TlsFiles`]): a CA, a server
//! certificate for `127.0.0.1` / `localhost` and a client certificate, made by the `openssl` CLI
//! (a missing `openssl` is a hard failure with the install hint), plus the relay's `[upstream]`
//! lines and a redis client that trust it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A throwaway CA, a server certificate for `127.0.0.1` / `localhost` and a client certificate
/// (for mutual TLS), all PEM, made with the `openssl` CLI; valid for two days.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The server requires a client certificate (`tls-auth-clients yes`).
    pub auth_clients: bool,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = flagrelay test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
";

impl TlsFiles {
    /// Generates the files in `dir` (EC P-256 keys).
    pub fn generate(dir: &Path, auth_clients: bool) -> TlsFiles {
        let ok = Command::new("openssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            panic!("openssl is not installed: the TLS tests make their certificates with it (apt-get install openssl)");
        }
        std::fs::create_dir_all(dir).expect("tls dir");
        let p = |name: &str| dir.join(name).display().to_string();
        std::fs::write(p("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let cnf = p("openssl.cnf");
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509", "-config", &cnf, "-extensions", "ca", "-subj", "/CN=flagrelay test CA", "-days", "2"];
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend(key);
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        openssl(&ca);
        for (name, cn) in [("server", "127.0.0.1"), ("client", "flagrelay test client")] {
            let (k, csr, pem, subj) = (p(&format!("{name}.key")), p(&format!("{name}.csr")), p(&format!("{name}.pem")), format!("/CN={cn}"));
            let mut req = vec!["req", "-new", "-config", &cnf, "-subj", &subj];
            req.extend(key);
            req.extend(["-keyout", &k, "-out", &csr]);
            openssl(&req);
            openssl(&["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-days", "2", "-extfile", &cnf, "-extensions", name, "-out", &pem]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            auth_clients,
        }
    }

    /// `[upstream]` lines trusting the CA (and presenting the client certificate when the server
    /// requires one), for [`fast_upstream`](super::fast_upstream) / [`relay_on`](super::relay_on).
    pub fn upstream_lines(&self) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut t = format!("tls_ca_file = {}\n", q(&self.ca));
        if self.auth_clients {
            t.push_str(&format!("tls_client_cert_file = {}\ntls_client_key_file = {}\n", q(&self.client_cert), q(&self.client_key)));
        }
        t
    }

    /// A redis client for `url` trusting the CA (with the client certificate when required).
    pub fn client(&self, url: &str) -> redis::Client {
        flagrelay::upstream::redis::install_crypto_provider();
        let read = |p: &Path| std::fs::read(p).expect("read a tls file");
        let client_tls = self.auth_clients.then(|| redis::ClientTlsConfig { client_cert: read(&self.client_cert), client_key: read(&self.client_key) });
        redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert: Some(read(&self.ca)) }).expect("tls client")
    }
}

