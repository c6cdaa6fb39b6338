//! The effective [`Config`] turned back into the file's shape ([`RawConfig`], the structs the
//! file is read with) and printed as TOML for `check-config`: every key the relay uses, with its
//! effective value (defaults and overrides applied), under the name the file gives it. Secrets
//! are redacted: each SDK key as its [`redact`] label, the Redis URL's user, password and query
//! as `***` ([`redact_url`]). The printout reads back as a config file with the same keys; the
//! redacted keys, of course, no longer authenticate anyone.

use std::time::Duration;

use super::raw::{RawConfig, RawEnvironment, RawHttp, RawSentinel, RawSse, RawTls, RawUpstream};
use super::{redact, Config, LogFormat, Upstream};

impl Config {
    /// The effective configuration as TOML, secrets redacted (see the module doc).
    pub fn redacted(&self) -> String {
        // Every value is a string, integer, list or table: serializing cannot fail, but say so
        // rather than print half a file.
        toml::to_string(&to_raw(self)).unwrap_or_else(|e| format!("# the effective config cannot be printed as TOML: {e}\n"))
    }
}

/// A URL with its user, password and query (where redis URLs may carry a password) replaced by
/// `***`; scheme, host, port and database are kept, so the printout still says where it goes.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let (rest, query) = match rest.split_once('?') {
        Some((r, _)) => (r, "?***"),
        None => (rest, ""),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}{query}")
}

fn to_raw(c: &Config) -> RawConfig {
    RawConfig {
        listen: Some(c.listen.to_string()),
        admin_listen: Some(c.admin_listen.to_string()),
        shutdown_timeout_secs: Some(c.shutdown_timeout.as_secs()),
        log_level: Some(c.log_level.clone()),
        log_format: Some(match c.log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        }),
        upstream: Some(upstream(&c.upstream, c.max_feature_bytes)),
        environments: c
            .environments
            .iter()
            .map(|e| RawEnvironment {
                id: e.id.clone(),
                server_keys: e.server_keys.iter().map(|k| redact(&k.0)).collect(),
                client_keys: e.client_keys.iter().map(|k| redact(&k.0)).collect(),
                upstream_key: e.upstream_key.as_ref().map(|k| redact(&k.0)),
            })
            .collect(),
        sse: Some(RawSse {
            heartbeat_secs: Some(c.sse.heartbeat.as_secs()),
            retry_ms: Some(c.sse.retry_ms),
            replay_revisions: Some(c.sse.replay_revisions),
            replay_bytes: Some(c.sse.replay_bytes),
            tombstones_max: Some(c.sse.tombstones_max),
            tombstone_ttl_secs: Some(c.sse.tombstone_ttl.as_secs()),
            client_buffer_bytes: Some(c.sse.client_buffer_bytes),
            socket_send_buffer_bytes: Some(c.sse.socket_send_buffer_bytes.unwrap_or(0)),
            slow_client_timeout_ms: Some(ms(c.sse.slow_client_timeout)),
            max_connections: Some(c.sse.max_connections),
            max_connection_age_secs: Some(c.sse.max_connection_age.map_or(0, |d| d.as_secs())),
            drain_window_secs: Some(c.sse.drain_window.as_secs()),
            writer_shards: Some(c.sse.writer_shards),
        }),
        http: Some(RawHttp {
            max_body_bytes: Some(c.http.max_body_bytes),
            cors_allowed_origins: Some(c.http.cors_allowed_origins.clone()),
            // The header was encoded from a TOML table, so it decodes back into one.
            sdk_config: serde_json::from_str(&c.http.sdk_config_header).ok(),
            ofrep_rate_limit: Some(c.http.ofrep_rate_limit),
            max_connections: Some(c.http.max_connections),
            header_read_timeout_ms: Some(ms(c.http.header_read_timeout)),
            compress_min_bytes: Some(c.http.compress_min_bytes),
            ofrep_rate_limit_max_clients: Some(c.http.ofrep_rate_limit_max_clients),
            trusted_proxies: Some(c.http.trusted_proxies.iter().map(ToString::to_string).collect()),
            max_context_bytes: Some(c.http.max_context_bytes),
            body_budget_bytes: Some(c.http.body_budget_bytes),
            // Nothing of the secret but its length (it still reads back as a valid one).
            stream_token_secret: c.http.stream_token_secret.as_ref().map(|s| format!("<redacted: {} characters>", s.0.chars().count())),
        }),
        tls: c.tls.as_ref().map(|t| RawTls {
            cert_file: Some(t.cert_file.clone()),
            key_file: Some(t.key_file.clone()),
            api: Some(t.api),
            admin: Some(t.admin),
            reload_interval_secs: Some(t.reload_interval.as_secs()),
        }),
    }
}

fn upstream(u: &Upstream, max_feature_bytes: usize) -> RawUpstream {
    let raw = match u {
        Upstream::File(f) => RawUpstream {
            kind: Some("file".into()),
            path: Some(f.path.clone()),
            poll_interval_ms: Some(ms(f.poll_interval)),
            max_file_bytes: Some(f.max_bytes),
            rehash_interval_ms: Some(ms(f.rehash_interval)),
            ..RawUpstream::default()
        },
        Upstream::Redis(r) => RawUpstream {
            kind: Some("redis".into()),
            url: Some(redact_url(&r.url.0)),
            prefix: Some(r.prefix.clone()),
            sentinel: r.sentinel.as_ref().map(|s| RawSentinel { addresses: s.addresses.clone(), master_name: s.master_name.clone() }),
            cluster: r.cluster.as_ref().map(|_| true),
            cluster_seeds: r.cluster.as_ref().map(|c| c.seeds.iter().skip(1).map(|(h, p)| format!("{h}:{p}")).collect()),
            connect_timeout_ms: Some(ms(r.connect_timeout)),
            response_timeout_ms: Some(ms(r.response_timeout)),
            snapshot_timeout_ms: Some(ms(r.snapshot_timeout)),
            probe_interval_ms: Some(ms(r.probe_interval)),
            backoff_base_ms: Some(ms(r.backoff_base)),
            backoff_cap_ms: Some(ms(r.backoff_cap)),
            stable_after_secs: Some(r.stable_after.as_secs()),
            events_maxlen: Some(r.events_maxlen),
            events_queue_bytes: Some(r.events_queue_bytes),
            snapshot_dir: r.snapshot_dir.clone(),
            tls_ca_file: r.tls_ca_file.clone(),
            tls_client_cert_file: r.tls_client_cert_file.clone(),
            tls_client_key_file: r.tls_client_key_file.clone(),
            ..RawUpstream::default()
        },
        Upstream::Relay(r) => RawUpstream {
            kind: Some("relay".into()),
            url: Some(r.url.text.clone()),
            connect_timeout_ms: Some(ms(r.connect_timeout)),
            heartbeat_timeout_ms: Some(ms(r.heartbeat_timeout)),
            backoff_base_ms: Some(ms(r.backoff_base)),
            backoff_cap_ms: Some(ms(r.backoff_cap)),
            stable_after_secs: Some(r.stable_after.as_secs()),
            snapshot_dir: r.snapshot_dir.clone(),
            tls_ca_file: r.tls_ca_file.clone(),
            ..RawUpstream::default()
        },
    };
    RawUpstream { max_feature_bytes: Some(max_feature_bytes), ..raw }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::redact_url;
    use crate::config::testing::{load, MIN};
    use crate::config::Overrides;

    #[test]
    fn the_printout_is_toml_with_the_file_keys_and_no_key() {
        let c = load(MIN, &Overrides::default()).unwrap();
        let out = c.redacted();
        assert!(!out.contains("sdk-srv-env-1") && !out.contains("sdk-js-env-1"), "{out}");
        let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("not TOML ({e}):\n{out}"));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:7700"));
        assert_eq!(table["sse"]["heartbeat_secs"].as_integer(), Some(15));
        assert_eq!(table["upstream"]["path"].as_str(), Some("config/flags.json"));
        assert_eq!(table["http"]["sdk_config"]["mode"].as_str(), Some("summary"));
    }

    #[test]
    fn the_printout_reads_back_as_the_same_config() {
        let text = format!("log_level = \"warn,flagrelay=debug\"\n{MIN}[sse]\nmax_connection_age_secs = 600\n");
        let c = load(&text, &Overrides::default()).unwrap();
        let again = load(&c.redacted(), &Overrides::default()).unwrap();
        // The keys differ (a label redacted again is another label); every other value is kept.
        let without_keys = |c: &crate::config::Config| {
            let mut t: toml::Table = toml::from_str(&c.redacted()).unwrap();
            t.remove("environments");
            t
        };
        assert_eq!(without_keys(&again), without_keys(&c));
        assert_eq!(again.log_level, "warn,flagrelay=debug");
    }

    #[test]
    fn the_memory_and_abuse_limits_print_and_read_back_and_the_stream_secret_does_not_show() {
        let text = format!(
            "[upstream]\nmax_feature_bytes = 2048\n{MIN}[sse]\nreplay_bytes = 4096\n[http]\nmax_context_bytes = 1024\n\
             stream_token_secret = \"do-not-print-this-secret\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
        );
        let c = load(&text, &Overrides::default()).unwrap();
        let out = c.redacted();
        assert!(!out.contains("do-not-print"), "{out}");
        let again = load(&out, &Overrides::default()).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!((again.max_feature_bytes, again.sse.replay_bytes, again.http.max_context_bytes), (2048, 4096, 1024));
        assert_eq!(again.http.trusted_proxies, c.http.trusted_proxies);
    }

    #[test]
    fn a_redis_upstream_prints_where_it_goes_but_no_password() {
        let text = format!("[upstream]\nkind = \"redis\"\nurl = \"redis://:hunter2@10.0.0.5:6390/2\"\n{MIN}");
        let out = load(&text, &Overrides::default()).unwrap().redacted();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("url = \"redis://***@10.0.0.5:6390/2\""), "{out}");
    }

    #[test]
    fn a_url_keeps_its_host_and_loses_its_credentials() {
        for (url, shown) in [
            ("redis://127.0.0.1:6390", "redis://127.0.0.1:6390"),
            ("rediss://user:pw@h:6380/0", "rediss://***@h:6380/0"),
            ("redis://:p@ss@h", "redis://***@h"),
            ("redis+unix:///run/redis.sock?db=1&pass=pw", "redis+unix:///run/redis.sock?***"),
            ("not a url", "***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
