//! The relay upstream section (`[upstream] kind = "relay"`, or `--relay-url`) validated into a
//! [`RelayUpstream`]: the parent's URL split once ([`parse_url`]), each environment's key on the
//! parent (`upstream_key`, else its first server key), the timings, and, with `kind = "relay"`,
//! the keys that belong to the other kinds refused (they would be silently ignored otherwise;
//! `--relay-url` over a file of another kind ignores that kind's keys, as `--redis-url` does).

use super::raw::RawUpstream;
use super::{invalid, ms, ConfigError, EnvironmentConfig, RelayUpstream, RelayUrl};

/// `http://host[:port][/base]` or `https://…`; the port defaults to 80 / 443.
pub fn parse_url(text: &str) -> Result<RelayUrl, String> {
    let (tls, rest) = if let Some(r) = text.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = text.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{text:?}: expected an http:// or https:// URL"));
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.contains('@') || path.contains('?') || path.contains('#') {
        return Err(format!("{text:?}: give scheme, host, port and path only"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("{text:?}: unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().map_err(|_| format!("{text:?}: bad port"))?),
            None if after.is_empty() => (host, default_port),
            None => return Err(format!("{text:?}: bad address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{text:?}: bad port"))?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?}: no host"));
    }
    let base_path = if path.trim_end_matches('/').is_empty() { String::new() } else { format!("/{}", path.trim_end_matches('/')) };
    Ok(RelayUrl { text: text.to_string(), tls, host: host.to_string(), port, base_path })
}

/// Keys of the other upstream kinds, refused in relay mode.
fn foreign_key(up: &RawUpstream) -> Option<&'static str> {
    [
        ("path", up.path.is_some()),
        ("poll_interval_ms", up.poll_interval_ms.is_some()),
        ("prefix", up.prefix.is_some()),
        ("sentinel", up.sentinel.is_some()),
        ("cluster", up.cluster.is_some()),
        ("cluster_seeds", up.cluster_seeds.is_some()),
        ("probe_interval_ms", up.probe_interval_ms.is_some()),
        ("events_maxlen", up.events_maxlen.is_some()),
        ("tls_client_cert_file", up.tls_client_cert_file.is_some()),
        ("tls_client_key_file", up.tls_client_key_file.is_some()),
    ]
    .into_iter()
    .find_map(|(k, set)| set.then_some(k))
}

pub(super) fn relay_upstream(url: String, up: &RawUpstream, envs: &[EnvironmentConfig], heartbeat: std::time::Duration) -> Result<RelayUpstream, ConfigError> {
    let url = parse_url(&url).map_err(|e| invalid("upstream.url", e))?;
    // With `--relay-url` over a file of another kind, that kind's keys are the file's, not ours.
    if let Some(k) = foreign_key(up).filter(|_| up.kind.as_deref() == Some("relay")) {
        return Err(invalid(format!("upstream.{k}"), "is not a key of a relay upstream (kind = \"relay\")"));
    }
    if up.tls_ca_file.is_some() && !url.tls {
        return Err(invalid("upstream.tls_ca_file", "needs an https:// url"));
    }
    if let Some(path) = &up.tls_ca_file {
        std::fs::metadata(path).map_err(|e| invalid("upstream.tls_ca_file", format!("{}: {e}", path.display())))?;
    }
    let mut keys = Vec::new();
    for (i, e) in envs.iter().enumerate() {
        let key = match (&e.upstream_key, e.server_keys.first()) {
            (Some(k), _) if k.0.trim().is_empty() || k.0.chars().any(char::is_whitespace) => {
                return Err(invalid(format!("environments[{i}].upstream_key"), "must be non-empty and without spaces"))
            }
            (Some(k), _) | (None, Some(k)) => k.clone(),
            (None, None) => return Err(invalid(format!("environments[{i}].upstream_key"), "a relay upstream needs a server key of this environment on the parent (upstream_key, or a server_keys entry)")),
        };
        keys.push((e.id.clone(), key));
    }
    let heartbeat_timeout = up.heartbeat_timeout_ms.map_or(heartbeat.saturating_mul(3), std::time::Duration::from_millis);
    if heartbeat_timeout.is_zero() {
        return Err(invalid("upstream.heartbeat_timeout_ms", "must be > 0"));
    }
    let r = RelayUpstream {
        url,
        keys,
        tls_ca_file: up.tls_ca_file.clone(),
        connect_timeout: ms(up.connect_timeout_ms, 5000),
        heartbeat_timeout,
        backoff_base: ms(up.backoff_base_ms, 100),
        backoff_cap: ms(up.backoff_cap_ms, 10_000),
        stable_after: std::time::Duration::from_secs(up.stable_after_secs.unwrap_or(30)),
        snapshot_dir: up.snapshot_dir.clone(),
    };
    if r.connect_timeout.is_zero() || r.backoff_base.is_zero() {
        return Err(invalid("upstream", "connect_timeout_ms and backoff_base_ms must be > 0"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::parse_url;
    use crate::config::testing::load;
    use crate::config::{Overrides, Upstream};

    #[test]
    fn urls_split_into_scheme_host_port_and_base_path() {
        let cases = [
            ("http://parent:7700", false, "parent", 7700, ""),
            ("http://parent:7700/", false, "parent", 7700, ""),
            ("https://relay.example", true, "relay.example", 443, ""),
            ("http://10.0.0.1/flags/", false, "10.0.0.1", 80, "/flags"),
            ("http://[::1]:7700", false, "::1", 7700, ""),
        ];
        for (text, tls, host, port, base) in cases {
            let u = parse_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((u.tls, u.host.as_str(), u.port, u.base_path.as_str()), (tls, host, port, base), "{text}");
        }
    }

    #[test]
    fn urls_that_are_not_a_parent_relay_are_refused() {
        for text in ["redis://h:1", "parent:7700", "http://:80", "http://h:x", "http://u:p@h:1", "http://h/?q", "http://[::1"] {
            assert!(parse_url(text).is_err(), "{text}");
        }
    }

    fn relay_config(upstream_extra: &str, envs: &str) -> String {
        format!("[upstream]\nkind = \"relay\"\nurl = \"http://parent:7700\"\n{upstream_extra}\n{envs}")
    }

    const ENVS: &str = "[[environments]]\nid = \"production\"\nserver_keys = [\"srv-1\", \"srv-2\"]\n[[environments]]\nid = \"staging\"\nserver_keys = [\"srv-3\"]\nupstream_key = \"parent-staging\"\n";

    #[test]
    fn each_environment_follows_with_its_upstream_key_or_its_first_server_key() {
        let c = load(&relay_config("", ENVS), &Overrides::default()).unwrap();
        let Upstream::Relay(r) = c.upstream else { panic!("a relay upstream") };
        let keys: Vec<(&str, &str)> = r.keys.iter().map(|(e, k)| (e.as_str(), k.0.as_str())).collect();
        assert_eq!(keys, [("production", "srv-1"), ("staging", "parent-staging")]);
        assert_eq!(r.heartbeat_timeout, std::time::Duration::from_secs(45), "three heartbeats of 15 s");
    }

    #[test]
    fn the_relay_url_flag_makes_any_config_a_relay_upstream() {
        let o = Overrides { relay_url: Some("http://central:7700".into()), ..Overrides::default() };
        let c = load(ENVS, &o).unwrap();
        assert!(matches!(c.upstream, Upstream::Relay(r) if r.url.host == "central"));
    }

    #[test]
    fn the_relay_url_flag_over_a_file_upstream_ignores_the_files_keys() {
        let o = Overrides { relay_url: Some("http://central:7700".into()), ..Overrides::default() };
        let text = format!("[upstream]\nkind = \"file\"\npath = \"flags.json\"\n{ENVS}");
        assert!(matches!(load(&text, &o).unwrap().upstream, Upstream::Relay(_)));
    }

    #[test]
    fn keys_of_the_other_kinds_and_missing_keys_are_refused() {
        let e = load(&relay_config("prefix = \"x\"", ENVS), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("upstream.prefix"), "{e}");
        let only_client = "[[environments]]\nid = \"production\"\nclient_keys = [\"cli-1\"]\n";
        let e = load(&relay_config("", only_client), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("environments[0].upstream_key"), "{e}");
        let e = load(&relay_config("tls_ca_file = \"/x.pem\"", ENVS), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("needs an https"), "{e}");
    }
}
