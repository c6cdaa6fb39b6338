//! The Redis upstream: `[upstream]` with `kind = "redis"` (or `--redis-url`) validated into a
//! [`RedisUpstream`], its TLS files checked readable and well-formed at startup, and the same
//! settings for the `flags` commands ([`RedisUpstream::for_tool`]).

use std::path::Path;
use std::time::Duration;

use super::raw::RawUpstream;
use super::{invalid, ms, ClusterConfig, Config, ConfigError, RedisUpstream, Secret, SentinelConfig, Overrides, Upstream};

impl RedisUpstream {
    /// The Redis settings of the `flags` commands, and the environments the config lists: from
    /// the config file when it exists (the command line still overrides it), else from
    /// `--redis-url` / `--prefix` alone with the built-in defaults.
    pub fn for_tool(overrides: &Overrides) -> Result<(RedisUpstream, Option<Vec<String>>), ConfigError> {
        if overrides.config.exists() {
            let config = Config::load(overrides)?;
            let envs = config.environments.iter().map(|e| e.id.clone()).collect();
            return match config.upstream {
                Upstream::Redis(r) => Ok((r, Some(envs))),
                Upstream::File(_) | Upstream::Relay(_) => Err(invalid("upstream.kind", "the config's upstream is not Redis: pass --redis-url")),
            };
        }
        match &overrides.redis_url {
            Some(url) => Ok((redis_upstream(url.clone(), &RawUpstream::default(), overrides)?, None)),
            None => Err(invalid("redis_url", format!("no config file at {} and no --redis-url", overrides.config.display()))),
        }
    }
}

pub(super) fn redis_upstream(url: String, up: &RawUpstream, overrides: &Overrides) -> Result<RedisUpstream, ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        return Err(invalid("upstream.url", "expected a redis:// or rediss:// URL"));
    }
    let prefix = overrides.prefix.clone().or_else(|| up.prefix.clone()).unwrap_or_else(|| "flagrelay".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        return Err(invalid("upstream.prefix", "must be non-empty, without braces or spaces"));
    }
    let sentinel = match &up.sentinel {
        Some(s) if s.addresses.is_empty() => return Err(invalid("upstream.sentinel.addresses", "must not be empty")),
        Some(s) if s.master_name.is_empty() => return Err(invalid("upstream.sentinel.master_name", "must not be empty")),
        Some(s) => Some(SentinelConfig { addresses: s.addresses.clone(), master_name: s.master_name.clone() }),
        None => None,
    };
    let cluster = cluster(&url, up, overrides)?;
    if cluster.is_some() && sentinel.is_some() {
        return Err(invalid("upstream.cluster", "cannot be used with [upstream.sentinel]: a cluster finds its primaries itself"));
    }
    let r = RedisUpstream {
        url: Secret(url),
        prefix,
        sentinel,
        cluster,
        connect_timeout: ms(up.connect_timeout_ms, 1000),
        response_timeout: ms(up.response_timeout_ms, 2000),
        snapshot_timeout: ms(up.snapshot_timeout_ms, 10_000),
        probe_interval: ms(up.probe_interval_ms, 1000),
        backoff_base: ms(up.backoff_base_ms, 100),
        backoff_cap: ms(up.backoff_cap_ms, 5000),
        stable_after: Duration::from_secs(up.stable_after_secs.unwrap_or(30)),
        events_maxlen: up.events_maxlen.unwrap_or(100_000),
        events_queue_bytes: up.events_queue_bytes.unwrap_or(16 * 1024 * 1024),
        snapshot_dir: up.snapshot_dir.clone(),
        tls_ca_file: up.tls_ca_file.clone(),
        tls_client_cert_file: up.tls_client_cert_file.clone(),
        tls_client_key_file: up.tls_client_key_file.clone(),
    };
    for (field, d) in [
        ("upstream.connect_timeout_ms", r.connect_timeout),
        ("upstream.response_timeout_ms", r.response_timeout),
        ("upstream.snapshot_timeout_ms", r.snapshot_timeout),
        ("upstream.probe_interval_ms", r.probe_interval),
        ("upstream.backoff_base_ms", r.backoff_base),
    ] {
        if d.is_zero() {
            return Err(invalid(field, "must be > 0"));
        }
    }
    if r.backoff_cap < r.backoff_base {
        return Err(invalid("upstream.backoff_cap_ms", "must be >= backoff_base_ms"));
    }
    check_tls_files(&r)?;
    Ok(r)
}

/// Cluster mode (`cluster = true` or `--cluster`): the URL's address is the first seed, then
/// `cluster_seeds` (the file's, then `--cluster-seed`'s), each `host:port` or a URL of the same
/// scheme; duplicates dropped. Seeds without cluster mode are refused (they would be ignored).
fn cluster(url: &str, up: &RawUpstream, overrides: &Overrides) -> Result<Option<ClusterConfig>, ConfigError> {
    let extra: Vec<&String> = up.cluster_seeds.iter().flatten().chain(overrides.cluster_seeds.iter()).collect();
    let on = overrides.cluster || up.cluster.unwrap_or(false);
    if !on {
        if !extra.is_empty() {
            return Err(invalid("upstream.cluster_seeds", "needs cluster = true (or --cluster)"));
        }
        return Ok(None);
    }
    let scheme = if url.starts_with("rediss://") { "rediss://" } else { "redis://" };
    if !url.starts_with(scheme) {
        return Err(invalid("upstream.url", "cluster mode needs a redis:// or rediss:// URL (a cluster is not reached over a unix socket)"));
    }
    let mut seeds = vec![host_port(url, scheme).ok_or_else(|| invalid("upstream.url", "cluster mode: the URL needs host:port"))?];
    for s in extra {
        // Never echo a password a seed URL may carry.
        let shown = s.rsplit_once('@').map_or(s.as_str(), |(_, h)| h);
        let hp = if s.contains("://") {
            if !s.starts_with(scheme) {
                return Err(invalid("upstream.cluster_seeds", format!("{shown}: every seed uses the URL's scheme ({scheme})")));
            }
            host_port(s, scheme)
        } else {
            host_port(&format!("{scheme}{s}"), scheme)
        };
        let hp = hp.ok_or_else(|| invalid("upstream.cluster_seeds", format!("{shown}: expected host:port")))?;
        if !seeds.contains(&hp) {
            seeds.push(hp);
        }
    }
    Ok(Some(ClusterConfig { seeds }))
}

/// `host:port` of a `redis://` / `rediss://` URL (credentials, database and query dropped).
fn host_port(url: &str, scheme: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix(scheme)?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once("]:")?;
            (h, p)
        }
        None => hostport.rsplit_once(':')?,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The `tls_*` files: only with a `rediss://` URL, client certificate and key together, and each
/// one readable now and holding what it should (PEM certificates, a PEM private key), so that a
/// typo fails at startup naming the key rather than as a handshake error on every reconnect.
fn check_tls_files(r: &RedisUpstream) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let files = [
        ("upstream.tls_ca_file", &r.tls_ca_file),
        ("upstream.tls_client_cert_file", &r.tls_client_cert_file),
        ("upstream.tls_client_key_file", &r.tls_client_key_file),
    ];
    for (field, path) in files {
        if path.is_some() && !r.url.0.starts_with("rediss://") {
            return Err(invalid(field, "needs a rediss:// URL (`upstream.url` or --redis-url)"));
        }
    }
    match (&r.tls_client_cert_file, &r.tls_client_key_file) {
        (Some(_), None) => return Err(invalid("upstream.tls_client_key_file", "must be set with tls_client_cert_file")),
        (None, Some(_)) => return Err(invalid("upstream.tls_client_cert_file", "must be set with tls_client_key_file")),
        _ => {}
    }
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
    };
    let certs = |field: &str, path: &Path| -> Result<(), ConfigError> {
        let pem = read(field, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(field, format!("{}: not PEM certificates ({e})", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(field, format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())));
        }
        Ok(())
    };
    if let Some(p) = &r.tls_ca_file {
        certs("upstream.tls_ca_file", p)?;
    }
    if let Some(p) = &r.tls_client_cert_file {
        certs("upstream.tls_client_cert_file", p)?;
    }
    if let Some(p) = &r.tls_client_key_file {
        let field = "upstream.tls_client_key_file";
        let pem = read(field, p)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(field, format!("{}: no PEM private key ({e})", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{load, MIN};
    use crate::config::{Overrides, Upstream};

    #[test]
    fn the_event_queue_is_bounded_by_bytes_16_mib_by_default_and_must_hold_a_maximal_batch() {
        let section = |extra: &str| format!("[upstream]\nkind = \"redis\"\nurl = \"redis://h:6379\"\n{extra}\n{MIN}");
        let Upstream::Redis(r) = load(&section(""), &Overrides::default()).unwrap().upstream else { panic!("redis") };
        assert_eq!(r.events_queue_bytes, 16 << 20);
        let Upstream::Redis(r) = load(&section("events_queue_bytes = 4194304"), &Overrides::default()).unwrap().upstream else { panic!("redis") };
        assert_eq!(r.events_queue_bytes, 4 << 20);
        // The default http.max_body_bytes is 1 MiB.
        let e = load(&section("events_queue_bytes = 1048576"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.events_queue_bytes") && e.to_string().contains("max_body_bytes"), "{e}");
    }

    #[test]
    fn cluster_mode_takes_the_url_as_first_seed_and_refuses_what_cannot_work() {
        let section = |url: &str, extra: &str| format!("[upstream]\nkind = \"redis\"\nurl = {url:?}\n{extra}\n{MIN}");
        let seeds = |cfg: &str, o: &Overrides| match load(cfg, o).unwrap().upstream {
            Upstream::Redis(r) => r.cluster.map(|c| c.seeds),
            _ => panic!("redis"),
        };
        let none = Overrides::default();
        assert_eq!(seeds(&section("redis://h:7000", ""), &none), None);
        assert_eq!(
            seeds(&section("redis://:pw@h:7000/0", "cluster = true\ncluster_seeds = [\"b:7001\", \"redis://c:7002\", \"h:7000\"]"), &none),
            Some(vec![("h".into(), 7000), ("b".into(), 7001), ("c".into(), 7002)])
        );
        let cli = Overrides { cluster: true, cluster_seeds: vec!["[::1]:7003".into()], ..Default::default() };
        assert_eq!(seeds(&section("redis://h:7000", ""), &cli), Some(vec![("h".into(), 7000), ("::1".into(), 7003)]));
        for (extra, url, key) in [
            ("cluster_seeds = [\"b:7001\"]", "redis://h:7000", "upstream.cluster_seeds"),
            ("cluster = true\ncluster_seeds = [\"b\"]", "redis://h:7000", "upstream.cluster_seeds"),
            ("cluster = true\ncluster_seeds = [\"rediss://b:7001\"]", "redis://h:7000", "upstream.cluster_seeds"),
            ("cluster = true", "redis+unix:///tmp/r.sock", "upstream.url"),
            ("cluster = true\n[upstream.sentinel]\naddresses = [\"s:26379\"]\nmaster_name = \"m\"", "redis://h:7000", "upstream.cluster"),
        ] {
            let e = load(&section(url, extra), &none).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = load(&section("redis://h:7000", "cluster = true\ncluster_seeds = [\"redis://u:secret@b\"]"), &none).unwrap_err().to_string();
        assert!(e.contains("upstream.cluster_seeds") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn tls_files_need_rediss_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        // Any well-formed PEM certificate block passes the startup check (it is not verified here).
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMAAA\n-----END CERTIFICATE-----\n").unwrap();
        let section = |url: &str, extra: &str| format!("[upstream]\nkind = \"redis\"\nurl = {url:?}\n{extra}\n{MIN}");
        let ca = format!("tls_ca_file = {:?}", pem.display().to_string());
        assert!(load(&section("rediss://h:6380", &ca), &Overrides::default()).is_ok());
        let e = load(&section("redis://h:6379", &ca), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_ca_file") && e.to_string().contains("rediss://"), "{e}");
        let cert_only = format!("tls_client_cert_file = {:?}", pem.display().to_string());
        let e = load(&section("rediss://h:6380", &cert_only), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_client_key_file"), "{e}");
        let e = load(&section("rediss://h:6380", "tls_ca_file = \"/nonexistent/ca.pem\""), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("upstream.tls_ca_file") && e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
