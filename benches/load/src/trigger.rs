//! Ways to make one change happen upstream of the server, each carrying a marker string.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub enum Trigger {
    /// Rewrite a flags file (write + rename): one feature's first variant name carries the marker.
    File { path: PathBuf, doc: Value, env: String, key: String },
    /// POST a message of about `bytes` bytes to nchan's publisher location.
    Nchan { url: Url, bytes: usize },
    /// Upsert one feature through the relay's reference Redis writer (its atomic Lua script):
    /// the feature's first variant name carries the marker.
    Redis { writer: Box<flagrelay::upstream::redis::writer::Writer>, key: String },
    None,
}

#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(u: &str) -> anyhow::Result<Url> {
    let rest = u.strip_prefix("http://").ok_or_else(|| anyhow!("only http:// URLs: {u}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().with_context(|| format!("port in {u}"))?),
        None => (hostport.to_string(), 80),
    };
    Ok(Url { host, port, path })
}

impl Trigger {
    /// `file:PATH` (with `feature` = `ENV/KEY`, or the first feature of the first environment),
    /// `nchan:URL`, `redis:URL` (`feature` = `ENV/KEY`, default `bench/bench-flag`; key prefix
    /// `prefix`), `none`.
    pub async fn parse(spec: &str, feature: Option<&str>, bytes: usize, prefix: Option<&str>) -> anyhow::Result<Trigger> {
        if spec == "none" {
            return Ok(Trigger::None);
        }
        if let Some(p) = spec.strip_prefix("file:") {
            let path = PathBuf::from(p);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {p}"))?;
            let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {p}"))?;
            let (env, key) = match feature {
                Some(f) => {
                    let (e, k) = f.split_once('/').ok_or_else(|| anyhow!("--feature wants ENV/KEY"))?;
                    (e.to_string(), k.to_string())
                }
                None => {
                    let (e, fs) = doc.as_object().and_then(|o| o.iter().next()).ok_or_else(|| anyhow!("{p}: no environment"))?;
                    let k = fs.as_object().and_then(|o| o.keys().next()).ok_or_else(|| anyhow!("{p}: environment {e} has no feature"))?;
                    (e.clone(), k.clone())
                }
            };
            if doc.get(&env).and_then(|e| e.get(&key)).is_none() {
                bail!("{p}: no feature {env}/{key}");
            }
            return Ok(Trigger::File { path, doc, env, key });
        }
        if let Some(u) = spec.strip_prefix("nchan:") {
            return Ok(Trigger::Nchan { url: parse_url(u)?, bytes });
        }
        if spec.starts_with("redis:") || spec.starts_with("rediss:") {
            let (env, key) = feature.unwrap_or("bench/bench-flag").split_once('/').ok_or_else(|| anyhow!("--feature wants ENV/KEY"))?;
            let overrides = flagrelay::config::Overrides {
                config: "/nonexistent/flagrelay-load.toml".into(),
                // `redis:redis://HOST:PORT` or just `redis://HOST:PORT`.
                redis_url: Some(spec.strip_prefix("redis:").filter(|u| u.contains("://")).unwrap_or(spec).to_string()),
                prefix: prefix.map(str::to_string),
                ..Default::default()
            };
            let (cfg, _) = flagrelay::config::RedisUpstream::for_tool(&overrides).map_err(|e| anyhow!("{e}"))?;
            let writer = flagrelay::upstream::redis::writer::Writer::connect(&cfg, env).await.map_err(|e| anyhow!("{e}"))?;
            return Ok(Trigger::Redis { writer: Box::new(writer), key: key.to_string() });
        }
        bail!("unknown --trigger {spec:?} (file:PATH, nchan:URL, redis:URL, none)")
    }

    /// Makes the change carrying `marker`; returns how long the trigger itself took.
    pub async fn fire(&mut self, marker: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        match self {
            Trigger::None => {}
            Trigger::File { path, doc, env, key } => {
                let f = doc.get_mut(env.as_str()).and_then(|e| e.get_mut(key.as_str())).ok_or_else(|| anyhow!("feature vanished"))?;
                let name = format!("{marker}.");
                match f.get_mut("variants").and_then(|v| v.get_mut(0)).and_then(|v| v.as_object_mut()) {
                    Some(v) => {
                        v.insert("name".into(), Value::String(name));
                    }
                    None => {
                        f.as_object_mut().ok_or_else(|| anyhow!("feature is not an object"))?.insert("flagrelayLoadMarker".into(), Value::String(name));
                    }
                }
                let tmp = path.with_extension("flagrelay-load.tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(doc)?)?;
                std::fs::rename(&tmp, &*path)?;
            }
            Trigger::Redis { writer, key } => {
                let doc = serde_json::json!({
                    "key": key.as_str(),
                    "enabled": true,
                    "variants": [{"key": "on", "name": format!("{marker}.")}, {"key": "off"}],
                    "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}],
                });
                let rep = writer.put(vec![(key.clone(), doc.clone())]).await.map_err(|e| anyhow!("{e}"))?;
                if !rep.inited {
                    // A fresh environment: the relay ignores it until an import marks it inited.
                    let mut m = serde_json::Map::new();
                    m.insert(key.clone(), doc);
                    writer.import(m).await.map_err(|e| anyhow!("{e}"))?;
                }
            }
            Trigger::Nchan { url, bytes } => {
                let body = nchan_body(marker, *bytes);
                let req = format!(
                    "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    url.path, url.host, url.port, body.len(), body
                );
                let mut s = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?;
                s.set_nodelay(true)?;
                s.write_all(req.as_bytes()).await?;
                let mut resp = Vec::new();
                tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp)).await??;
                let status = String::from_utf8_lossy(&resp).split_whitespace().nth(1).unwrap_or("").to_string();
                if !status.starts_with('2') {
                    bail!("nchan publish answered {status:?}");
                }
            }
        }
        Ok(t.elapsed())
    }
}

/// A JSON message shaped like a one-feature `features.updated` payload, padded to `bytes`.
pub fn nchan_body(marker: &str, bytes: usize) -> String {
    let head = format!("{{\"bench-flag\":{{\"key\":\"bench-flag\",\"enabled\":true,\"variants\":[{{\"key\":\"on\",\"name\":\"{marker}.\"}}],\"pad\":\"");
    let tail = "\"}}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}
