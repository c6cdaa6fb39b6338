//! Stage two: the raw file ([`RawConfig`]) and the command-line overrides validated into a
//! [`Config`], defaults applied, each failure naming the key (`sse.heartbeat_secs`,
//! `environments[1].id`, or the flag or variable a value came from: `--log-level`). The checks
//! run in a fixed order and the first failure is the one reported. The Redis section is
//! validated in [`super::redis`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, RawEnvironment, RawHttp, RawSse, RawTls, RawUpstream};
use super::redis::redis_upstream;
use super::relay::relay_upstream;
use super::{
    invalid, ms, redact, Config, ConfigError, EnvironmentConfig, FileUpstream, HttpConfig, LogFormat, Secret, Overrides,
    SseConfig, TlsConfig, Upstream,
};

pub(super) fn build(file: RawConfig, overrides: &Overrides, source_path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let listen_s = overrides.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:7700".into());
    let listen = parse_addr("listen", &listen_s)?;
    let admin_s = overrides.admin_listen.clone().or(file.admin_listen).unwrap_or_else(|| "127.0.0.1:7701".into());
    let admin_listen = parse_addr("admin_listen", &admin_s)?;
    if listen == admin_listen && listen.port() != 0 {
        return Err(invalid("admin_listen", "must differ from `listen`"));
    }

    let log_level = log_level(overrides, file.log_level)?;
    let log_format = match overrides.log_format.clone().or(file.log_format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(invalid("log_format", format!("{other:?}: expected \"text\" or \"json\""))),
    };

    let environments = environments(file.environments)?;
    let raw_upstream = file.upstream.unwrap_or_default();
    let max_feature_bytes = raw_upstream.max_feature_bytes.unwrap_or(1024 * 1024);
    let heartbeat = Duration::from_secs(file.sse.as_ref().and_then(|s| s.heartbeat_secs).unwrap_or(15));
    let upstream = match overrides.relay_url.clone().or_else(|| raw_upstream.url.clone().filter(|_| raw_upstream.kind.as_deref() == Some("relay"))) {
        Some(url) if overrides.redis_url.is_none() => Upstream::Relay(relay_upstream(url, &raw_upstream, &environments, heartbeat)?),
        _ => upstream(raw_upstream, overrides)?,
    };
    if max_feature_bytes == 0 {
        return Err(invalid("upstream.max_feature_bytes", "must be > 0"));
    }
    let sse = sse(file.sse.unwrap_or_default())?;
    let http = http(file.http.unwrap_or_default())?;
    let tls = file.tls.map(tls).transpose()?;

    let shutdown_timeout = Duration::from_secs(file.shutdown_timeout_secs.unwrap_or(10));
    if sse.drain_window >= shutdown_timeout && !sse.drain_window.is_zero() {
        return Err(invalid(
            "sse.drain_window_secs",
            format!("must be shorter than shutdown_timeout_secs ({}), or streams are cut before they drain", shutdown_timeout.as_secs()),
        ));
    }
    if let Upstream::Redis(r) = &upstream {
        if r.events_queue_bytes <= http.max_body_bytes {
            return Err(invalid(
                "upstream.events_queue_bytes",
                format!("must be larger than http.max_body_bytes ({}), or a batch of that size could never be queued", http.max_body_bytes),
            ));
        }
    }
    if http.sdk_config_header.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(invalid("http.sdk_config", "must encode as single-line ASCII JSON (it is sent as a header)"));
    }
    Ok(Config {
        listen,
        admin_listen,
        upstream,
        environments,
        sse,
        http,
        tls,
        max_feature_bytes,
        shutdown_timeout,
        log_level,
        log_format,
        source_path,
    })
}

/// The log filter from the first source that gives one (`--log-level`, `RUST_LOG`,
/// `FLAGRELAY_LOG_LEVEL`, the file, `info`), checked by [`check_log_filter`] and named by its
/// source when it fails.
fn log_level(overrides: &Overrides, file: Option<String>) -> Result<String, ConfigError> {
    let sources = [
        ("--log-level", overrides.log_level.clone()),
        ("RUST_LOG", overrides.rust_log.clone()),
        ("FLAGRELAY_LOG_LEVEL", overrides.log_level_env.clone()),
        ("log_level", file),
    ];
    match sources.into_iter().find_map(|(from, v)| v.map(|v| (from, v))) {
        Some((from, v)) => match check_log_filter(&v) {
            Ok(()) => Ok(v),
            Err(why) => Err(invalid(from, format!("{v:?} {why}"))),
        },
        None => Ok("info".into()),
    }
}

/// A filter in `RUST_LOG` syntax that tracing's `EnvFilter` accepts, in which every directive
/// without `=` is a level (`trace` `debug` `info` `warn` `error` `off`). `EnvFilter` reads a bare
/// word as a target to log at every level, so `verbose` would pass it and then log nothing the
/// relay writes; `flagrelay=trace` says that on purpose.
pub(super) fn check_log_filter(filter: &str) -> Result<(), LogFilterError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err(LogFilterError::Empty);
    }
    tracing_subscriber::EnvFilter::builder().parse(filter).map_err(|e| LogFilterError::Syntax(e.to_string()))?;
    match filter.split(',').map(str::trim).find(|d| !d.is_empty() && !d.contains('=') && !d.contains('[') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))) {
        Some(d) => Err(LogFilterError::NotALevel(d.to_string())),
        None => Ok(()),
    }
}

/// Why a log filter is refused (the message follows the filter itself in the config error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum LogFilterError {
    #[error("is empty: give a level, e.g. info")]
    Empty,
    #[error("is not a log filter ({0})")]
    Syntax(String),
    #[error("is not a log filter: {0:?} is not a level (trace, debug, info, warn, error, off); for a target write {0}=LEVEL")]
    NotALevel(String),
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| invalid(field, format!("{s:?} is not an address like 127.0.0.1:7700 ({e})")))
}

/// `[[environments]]`: at least one; ids well-formed and unique; every key non-empty, without
/// spaces and used once across all environments (the error redacts the key).
fn environments(raw: Vec<RawEnvironment>) -> Result<Vec<EnvironmentConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("environments", "at least one [[environments]] entry is required"));
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    let mut environments = Vec::new();
    for (i, e) in raw.into_iter().enumerate() {
        let field = format!("environments[{i}]");
        if e.id.is_empty() || !e.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(invalid(format!("{field}.id"), format!("{:?}: use letters, digits, '-', '_' or '.'", e.id)));
        }
        if !ids.insert(e.id.clone()) {
            return Err(invalid(format!("{field}.id"), format!("environment {:?} is listed twice", e.id)));
        }
        if e.server_keys.is_empty() && e.client_keys.is_empty() {
            return Err(invalid(format!("{field}.server_keys"), "an environment needs at least one key"));
        }
        for (kind, list) in [("server_keys", &e.server_keys), ("client_keys", &e.client_keys)] {
            for k in list {
                if k.trim().is_empty() || k.chars().any(char::is_whitespace) {
                    return Err(invalid(format!("{field}.{kind}"), "keys must be non-empty and without spaces"));
                }
                if !keys.insert(k.clone()) {
                    return Err(invalid(format!("{field}.{kind}"), format!("key {} is used twice", redact(k))));
                }
            }
        }
        environments.push(EnvironmentConfig {
            id: e.id,
            server_keys: e.server_keys.into_iter().map(Secret).collect(),
            client_keys: e.client_keys.into_iter().map(Secret).collect(),
            upstream_key: e.upstream_key.map(Secret),
        });
    }
    Ok(environments)
}

/// `[upstream]`: Redis when `--redis-url` is given (whatever `kind` says) or `kind = "redis"`,
/// else the flags file. (A parent relay, `--relay-url` or `kind = "relay"`, is taken in
/// [`build`]; `--redis-url` beats it.)
fn upstream(up: RawUpstream, overrides: &Overrides) -> Result<Upstream, ConfigError> {
    let redis_url = overrides.redis_url.clone().or_else(|| match up.kind.as_deref() {
        Some("redis") => up.url.clone(),
        _ => None,
    });
    Ok(match (redis_url, up.kind.as_deref()) {
        (Some(url), _) => Upstream::Redis(redis_upstream(url, &up, overrides)?),
        (None, Some("redis")) => return Err(invalid("upstream.url", "kind = \"redis\" needs a url (or --redis-url)")),
        (None, Some("relay")) => return Err(invalid("upstream.url", "kind = \"relay\" needs the parent's url (or --relay-url)")),
        (None, None | Some("file")) => {
            let path = up.path.clone().unwrap_or_else(|| PathBuf::from("config/flags.json"));
            let poll = ms(up.poll_interval_ms, 200);
            if poll.is_zero() {
                return Err(invalid("upstream.poll_interval_ms", "must be > 0"));
            }
            let max_bytes = up.max_file_bytes.unwrap_or(64 * 1024 * 1024);
            if max_bytes == 0 {
                return Err(invalid("upstream.max_file_bytes", "must be > 0"));
            }
            let rehash_interval = ms(up.rehash_interval_ms, 30_000);
            if rehash_interval.is_zero() {
                return Err(invalid("upstream.rehash_interval_ms", "must be > 0"));
            }
            Upstream::File(FileUpstream { path, poll_interval: poll, max_bytes, rehash_interval })
        }
        (None, Some(other)) => {
            return Err(invalid("upstream.kind", format!("{other:?}: expected \"file\", \"redis\" or \"relay\"")))
        }
    })
}

/// `[tls]`: both files required, readable and PEM (a certificate; a private key), so a typo fails
/// the start naming the key; whether the key fits the certificate is checked when it loads.
fn tls(t: RawTls) -> Result<TlsConfig, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert_file), Some(key_file)) = (t.cert_file, t.key_file) else {
        return Err(invalid("tls", "needs both cert_file and key_file"));
    };
    let read = |field: &str, p: &std::path::Path| std::fs::read(p).map_err(|e| invalid(field, format!("cannot read {}: {e}", p.display())));
    let pem = read("tls.cert_file", &cert_file)?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(c) if !c.is_empty() => {}
        Ok(_) => return Err(invalid("tls.cert_file", format!("{}: no PEM certificate in it", cert_file.display()))),
        Err(e) => return Err(invalid("tls.cert_file", format!("{}: not PEM certificates ({e})", cert_file.display()))),
    }
    let pem = read("tls.key_file", &key_file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid("tls.key_file", format!("{}: no PEM private key ({e})", key_file.display())))?;
    let (api, admin) = (t.api.unwrap_or(true), t.admin.unwrap_or(false));
    if !api && !admin {
        return Err(invalid("tls", "api = false and admin = false: TLS on no listener (remove [tls] instead)"));
    }
    let secs = t.reload_interval_secs.unwrap_or(10);
    if secs == 0 {
        return Err(invalid("tls.reload_interval_secs", "must be > 0"));
    }
    Ok(TlsConfig { cert_file, key_file, api, admin, reload_interval: Duration::from_secs(secs) })
}

fn sse(sse_f: RawSse) -> Result<SseConfig, ConfigError> {
    let heartbeat_secs = sse_f.heartbeat_secs.unwrap_or(15);
    if heartbeat_secs == 0 {
        return Err(invalid("sse.heartbeat_secs", "must be > 0"));
    }
    let replay = sse_f.replay_revisions.unwrap_or(1024);
    let client_buffer_bytes = sse_f.client_buffer_bytes.unwrap_or(64 * 1024);
    if client_buffer_bytes < 8192 {
        return Err(invalid("sse.client_buffer_bytes", "must be at least 8192"));
    }
    let sse = SseConfig {
        heartbeat: Duration::from_secs(heartbeat_secs),
        retry_ms: sse_f.retry_ms.unwrap_or(3000),
        replay_revisions: replay,
        replay_bytes: sse_f.replay_bytes.unwrap_or(64 * 1024 * 1024),
        tombstones_max: sse_f.tombstones_max.unwrap_or(10_000),
        tombstone_ttl: Duration::from_secs(sse_f.tombstone_ttl_secs.unwrap_or(24 * 3600)),
        client_buffer_bytes,
        socket_send_buffer_bytes: sse_f.socket_send_buffer_bytes.filter(|n| *n > 0),
        slow_client_timeout: ms(sse_f.slow_client_timeout_ms, 10_000),
        max_connections: sse_f.max_connections.unwrap_or(0),
        max_connection_age: sse_f.max_connection_age_secs.filter(|s| *s > 0).map(Duration::from_secs),
        drain_window: Duration::from_secs(sse_f.drain_window_secs.unwrap_or(5)),
        writer_shards: sse_f.writer_shards.unwrap_or(0),
    };

    if sse.replay_bytes == 0 {
        return Err(invalid("sse.replay_bytes", "must be > 0 (the ring always keeps the last change)"));
    }
    if sse.retry_ms > 3_600_000 {
        return Err(invalid("sse.retry_ms", "must be at most 3600000 (one hour)"));
    }
    if heartbeat_secs > 3600 {
        return Err(invalid("sse.heartbeat_secs", "must be at most 3600"));
    }
    if sse.slow_client_timeout.is_zero() {
        return Err(invalid("sse.slow_client_timeout_ms", "must be > 0"));
    }
    if sse.max_connection_age.is_some_and(|a| a > Duration::from_secs(30 * 86_400)) {
        return Err(invalid("sse.max_connection_age_secs", "must be at most 30 days (0 = unlimited)"));
    }
    if sse.drain_window > Duration::from_secs(3600) {
        return Err(invalid("sse.drain_window_secs", "must be at most 3600"));
    }
    if sse.writer_shards > 256 {
        return Err(invalid("sse.writer_shards", "must be at most 256 (0 = one per worker thread)"));
    }
    Ok(sse)
}

/// `[http]`; the header check on the encoded `sdk_config` runs later in [`build`] (after the
/// drain-window check, so which failure is reported first is what it was before the split).
fn http(http_f: RawHttp) -> Result<HttpConfig, ConfigError> {
    let sdk_config = match http_f.sdk_config {
        Some(t) => serde_json::to_string(&t).map_err(|e| invalid("http.sdk_config", e.to_string()))?,
        None => r#"{"eventsEnabled":true,"mode":"summary","flushIntervalSeconds":60,"pollIntervalSeconds":20}"#.into(),
    };
    let max_body_bytes = http_f.max_body_bytes.unwrap_or(1024 * 1024);
    if max_body_bytes == 0 {
        return Err(invalid("http.max_body_bytes", "must be > 0"));
    }
    let body_budget_bytes = http_f.body_budget_bytes.unwrap_or(32 * 1024 * 1024);
    if body_budget_bytes < max_body_bytes {
        return Err(invalid(
            "http.body_budget_bytes",
            format!("must be at least http.max_body_bytes ({max_body_bytes}), or a body that size could never be read"),
        ));
    }
    let max_context_bytes = http_f.max_context_bytes.unwrap_or(MAX_CONTEXT_BYTES);
    if max_context_bytes < 64 {
        return Err(invalid("http.max_context_bytes", "must be at least 64"));
    }
    let ofrep_rate_limit_max_clients = http_f.ofrep_rate_limit_max_clients.unwrap_or(100_000);
    if ofrep_rate_limit_max_clients == 0 {
        return Err(invalid("http.ofrep_rate_limit_max_clients", "must be > 0"));
    }
    let stream_token_secret = match http_f.stream_token_secret {
        Some(s) if s.chars().count() < 16 => {
            return Err(invalid("http.stream_token_secret", "must be at least 16 characters (or leave it out: a random one per process)"))
        }
        s => s.map(Secret),
    };
    let header_read_timeout_ms = http_f.header_read_timeout_ms.unwrap_or(5000);
    if !(1..=60_000).contains(&header_read_timeout_ms) {
        return Err(invalid("http.header_read_timeout_ms", "must be between 1 and 60000"));
    }
    Ok(HttpConfig {
        max_body_bytes,
        cors_allowed_origins: http_f.cors_allowed_origins.unwrap_or_else(|| vec!["*".into()]),
        sdk_config_header: sdk_config,
        ofrep_rate_limit: http_f.ofrep_rate_limit.unwrap_or(0),
        ofrep_rate_limit_max_clients,
        trusted_proxies: trusted_proxies(http_f.trusted_proxies.unwrap_or_default())?,
        max_context_bytes,
        body_budget_bytes,
        stream_token_secret,
        max_connections: http_f.max_connections.unwrap_or(0),
        header_read_timeout: Duration::from_millis(header_read_timeout_ms),
        compress_min_bytes: http_f.compress_min_bytes.unwrap_or(1024),
    })
}

/// The default of `http.max_context_bytes`: a context at this size is held by its evaluation
/// stream group in about this many bytes (docs/reliability.md has the figures).
const MAX_CONTEXT_BYTES: usize = 32 * 1024;

/// `http.trusted_proxies`: CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses.
fn trusted_proxies(raw: Vec<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(format!("http.trusted_proxies[{i}]"), format!("{s:?} is not a CIDR like 10.0.0.0/8 or an address")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{load, MIN};
    use crate::config::{Overrides, Upstream};

    #[test]
    fn defaults() {
        let c = load(MIN, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.sse.heartbeat, Duration::from_secs(15));
        assert!(matches!(c.upstream, Upstream::File(_)));
        assert_eq!(c.http.max_body_bytes, 1 << 20);
    }

    #[test]
    fn cli_beats_file() {
        let text = format!("listen = \"127.0.0.1:1\"\n{MIN}");
        let args = Overrides { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        assert_eq!(load(&text, &args).unwrap().listen.port(), 2);
        assert_eq!(load(&text, &Overrides::default()).unwrap().listen.port(), 1);
    }

    #[test]
    fn names_the_bad_field() {
        let e = load(&format!("listen = \"nope\"\n{MIN}"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = load(&format!("{MIN}[sse]\nheartbeat_secs = 0\n"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("sse.heartbeat_secs"), "{e}");
    }

    #[test]
    fn a_log_filter_is_a_level_or_target_directives() {
        use super::check_log_filter;
        for ok in ["info", "WARN", "off", "flagrelay=debug", "info,flagrelay=debug,hyper=warn", "info,[request]=trace"] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [("verbose", "not a level"), ("warn[", "not a log filter"), ("info,lots", "\"lots\""), ("", "empty")] {
            let e = check_log_filter(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_bad_log_level_is_named_by_where_it_came_from() {
        let file = format!("log_level = \"verbose\"\n{MIN}");
        let e = load(&file, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("`log_level`") && e.contains("verbose"), "{e}");
        let flag = Overrides { log_level: Some("warn[".into()), ..Default::default() };
        let e = load(MIN, &flag).unwrap_err().to_string();
        assert!(e.contains("`--log-level`"), "{e}");
        let rust_log = Overrides { rust_log: Some("loud".into()), ..Default::default() };
        assert!(load(MIN, &rust_log).unwrap_err().to_string().contains("`RUST_LOG`"));
    }

    #[test]
    fn the_log_level_flag_beats_rust_log_which_beats_the_variable_and_the_file() {
        let file = format!("log_level = \"error\"\n{MIN}");
        let level = |o: Overrides| load(&file, &o).unwrap().log_level;
        let all = Overrides {
            log_level: Some("debug".into()),
            rust_log: Some("trace".into()),
            log_level_env: Some("warn".into()),
            ..Default::default()
        };
        assert_eq!(level(all.clone()), "debug");
        assert_eq!(level(Overrides { log_level: None, ..all.clone() }), "trace");
        assert_eq!(level(Overrides { log_level: None, rust_log: None, ..all }), "warn");
        assert_eq!(level(Overrides::default()), "error");
        assert_eq!(load(MIN, &Overrides::default()).unwrap().log_level, "info");
    }

    #[test]
    fn duplicate_keys_rejected() {
        let text = r#"
[[environments]]
id = "a"
server_keys = ["k1"]
[[environments]]
id = "b"
server_keys = ["k1"]
"#;
        let e = load(text, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        assert!(!e.to_string().contains("k1\""), "key leaked: {e}");
    }

    #[test]
    fn the_drain_window_must_fit_in_the_shutdown_deadline() {
        let e = load(&format!("shutdown_timeout_secs = 5\n{MIN}[sse]\ndrain_window_secs = 5\n"), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("sse.drain_window_secs"), "{e}");
        assert!(load(&format!("shutdown_timeout_secs = 5\n{MIN}[sse]\ndrain_window_secs = 4\n"), &Overrides::default()).is_ok());
    }

    #[test]
    fn the_memory_limits_have_defaults() {
        let c = load(MIN, &Overrides::default()).unwrap();
        assert_eq!(c.sse.replay_bytes, 64 << 20);
        assert_eq!(c.max_feature_bytes, 1 << 20);
        assert_eq!(c.http.max_context_bytes, 32 << 10);
        assert_eq!(c.http.body_budget_bytes, 32 << 20);
        assert_eq!(c.http.ofrep_rate_limit_max_clients, 100_000);
        assert!(c.http.trusted_proxies.is_empty());
        assert!(c.http.stream_token_secret.is_none());
    }

    #[test]
    fn the_memory_limits_are_read_and_checked_naming_the_key() {
        let text = format!(
            "[upstream]\nmax_feature_bytes = 2048\n{MIN}[sse]\nreplay_bytes = 4096\n[http]\nmax_context_bytes = 1024\nbody_budget_bytes = 2097152\n\
             ofrep_rate_limit_max_clients = 10\nstream_token_secret = \"0123456789abcdef\"\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::1/8\"]\n"
        );
        let c = load(&text, &Overrides::default()).unwrap();
        assert_eq!((c.max_feature_bytes, c.sse.replay_bytes, c.http.max_context_bytes), (2048, 4096, 1024));
        assert_eq!((c.http.body_budget_bytes, c.http.ofrep_rate_limit_max_clients), (2 << 20, 10));
        assert_eq!(c.http.stream_token_secret.as_ref().map(|s| s.0.as_str()), Some("0123456789abcdef"));
        let nets: Vec<String> = c.http.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);
        let rows = [
            ("[upstream]\nmax_feature_bytes = 0\n", "", "upstream.max_feature_bytes"),
            ("", "[sse]\nreplay_bytes = 0\n", "sse.replay_bytes"),
            ("", "[http]\nmax_context_bytes = 10\n", "http.max_context_bytes"),
            ("", "[http]\nbody_budget_bytes = 1000\n", "http.body_budget_bytes"),
            ("", "[http]\nofrep_rate_limit_max_clients = 0\n", "http.ofrep_rate_limit_max_clients"),
            ("", "[http]\nstream_token_secret = \"short\"\n", "http.stream_token_secret"),
            ("", "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n", "http.trusted_proxies[1]"),
        ];
        for (before, after, key) in rows {
            let e = load(&format!("{before}{MIN}{after}"), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn the_flags_file_is_bounded_to_64_mib_and_rehashed_every_30_s_by_default() {
        let Upstream::File(f) = load(MIN, &Overrides::default()).unwrap().upstream else { panic!("file") };
        assert_eq!((f.max_bytes, f.rehash_interval), (64 << 20, Duration::from_secs(30)));
        let text = format!("[upstream]\nmax_file_bytes = 1000\nrehash_interval_ms = 50\n{MIN}");
        let Upstream::File(f) = load(&text, &Overrides::default()).unwrap().upstream else { panic!("file") };
        assert_eq!((f.max_bytes, f.rehash_interval), (1000, Duration::from_millis(50)));
        for (key, field) in [("max_file_bytes = 0", "upstream.max_file_bytes"), ("rehash_interval_ms = 0", "upstream.rehash_interval_ms")] {
            let e = load(&format!("[upstream]\n{key}\n{MIN}"), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn the_api_connection_cap_is_derived_and_the_header_deadline_is_five_seconds_by_default() {
        let c = load(MIN, &Overrides::default()).unwrap();
        assert_eq!(c.http.max_connections, 0);
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(5));
        let c = load(&format!("{MIN}[http]\nmax_connections = 50\nheader_read_timeout_ms = 250\n"), &Overrides::default()).unwrap();
        assert_eq!((c.http.max_connections, c.http.header_read_timeout), (50, Duration::from_millis(250)));
    }

    #[test]
    fn a_header_read_timeout_outside_1_to_60000_ms_names_the_key() {
        for bad in [0, 60_001] {
            let e = load(&format!("{MIN}[http]\nheader_read_timeout_ms = {bad}\n"), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("http.header_read_timeout_ms"), "{e}");
        }
    }

    #[test]
    fn redis_url_switches_upstream() {
        let args = Overrides { redis_url: Some("redis://127.0.0.1:6379".into()), ..Default::default() };
        let c = load(MIN, &args).unwrap();
        let Upstream::Redis(r) = c.upstream else { panic!("expected redis") };
        assert_eq!(r.prefix, "flagrelay");
        assert!(!format!("{:?}", r.url).contains("6379"));
    }
}
