//! Ways to make one change happen upstream of the server, each carrying a marker string.
//!
//! The file trigger edits someone's flags file: it keeps the original bytes and permissions
//! ([`FileRestore`]) and puts them back when the run ends, however it ends (the coordinator
//! calls [`Trigger::restore`] after success, error and SIGINT/SIGTERM; a panic restores on drop).

use std::fs::Permissions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub enum Trigger {
    /// Rewrite a flags file (write + rename): one feature's first variant name carries the marker.
    File { path: PathBuf, doc: Value, env: String, key: String, restore: FileRestore },
    /// POST a message of about `bytes` bytes to nchan's publisher location.
    Nchan { url: Url, bytes: usize },
    /// Upsert one feature through the relay's reference Redis writer (its atomic Lua script):
    /// the feature's first variant name carries the marker.
    Redis { writer: Box<flagrelay::upstream::redis::writer::Writer>, key: String },
    None,
}

/// A file as it was before the load tool first edited it.
pub struct FileRestore {
    path: PathBuf,
    original: Vec<u8>,
    perms: Option<Permissions>,
    edited: bool,
}

impl FileRestore {
    /// Puts the original bytes (and permissions) back if the file was edited; `Ok(true)` then.
    pub fn restore(&mut self) -> std::io::Result<bool> {
        if !self.edited {
            return Ok(false);
        }
        write_atomically(&self.path, &self.original, self.perms.as_ref())?;
        self.edited = false;
        Ok(true)
    }
}

impl Drop for FileRestore {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// Write + rename, as an editor or deploy would (the relay never reads a half-written file).
fn write_atomically(path: &Path, bytes: &[u8], perms: Option<&Permissions>) -> std::io::Result<()> {
    let tmp = path.with_extension("flagrelay-load.tmp");
    let r = std::fs::write(&tmp, bytes)
        .and_then(|()| perms.map_or(Ok(()), |p| std::fs::set_permissions(&tmp, p.clone())))
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
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
            let original = std::fs::read(&path).with_context(|| format!("reading {p}"))?;
            let perms = std::fs::metadata(&path).ok().map(|m| m.permissions());
            let doc: Value = serde_json::from_slice(&original).with_context(|| format!("parsing {p}"))?;
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
            let restore = FileRestore { path: path.clone(), original, perms, edited: false };
            return Ok(Trigger::File { path, doc, env, key, restore });
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
            Trigger::File { path, doc, env, key, restore } => {
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
                let bytes = serde_json::to_vec_pretty(doc)?;
                restore.edited = true;
                write_atomically(path, &bytes, restore.perms.as_ref()).with_context(|| format!("writing {}", path.display()))?;
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
                let io = async {
                    let mut s = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?;
                    s.set_nodelay(true)?;
                    s.write_all(req.as_bytes()).await?;
                    let mut resp = Vec::new();
                    s.read_to_end(&mut resp).await?;
                    Ok::<_, std::io::Error>(resp)
                };
                let resp = tokio::time::timeout(Duration::from_secs(30), io)
                    .await
                    .map_err(|_| anyhow!("nchan publish to {}:{}{}: no answer within 30 s", url.host, url.port, url.path))?
                    .with_context(|| format!("nchan publish to {}:{}{}", url.host, url.port, url.path))?;
                let status = String::from_utf8_lossy(&resp).split_whitespace().nth(1).unwrap_or("").to_string();
                if !status.starts_with('2') {
                    bail!("nchan publish answered {status:?}");
                }
            }
        }
        Ok(t.elapsed())
    }
}

impl Trigger {
    /// Undoes what the trigger left behind: the file trigger puts its file back. Returns the
    /// path restored, if any.
    pub fn restore(&mut self) -> std::io::Result<Option<PathBuf>> {
        match self {
            Trigger::File { path, restore, .. } => Ok(restore.restore()?.then(|| path.clone())),
            _ => Ok(None),
        }
    }
}

/// A JSON message shaped like a one-feature `features.updated` payload, padded to `bytes`.
pub fn nchan_body(marker: &str, bytes: usize) -> String {
    let head = format!("{{\"bench-flag\":{{\"key\":\"bench-flag\",\"enabled\":true,\"variants\":[{{\"key\":\"on\",\"name\":\"{marker}.\"}}],\"pad\":\"");
    let tail = "\"}}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flagrelay-load-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("flags.json");
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        p
    }

    // Not pretty-printed and with a trailing space: a rewrite of the JSON would not match.
    const FLAGS: &[u8] = b"{\"production\": {\"a\": {\"key\":\"a\",\"variants\":[{\"key\":\"on\",\"name\":\"On\"}]}}} \n";

    #[tokio::test]
    async fn the_file_trigger_puts_the_original_bytes_and_mode_back() {
        let p = temp_file("restore", FLAGS);
        let spec = format!("file:{}", p.display());
        let mut t = Trigger::parse(&spec, None, 200, None).await.unwrap();
        assert_eq!(t.restore().unwrap(), None, "nothing edited yet: nothing to restore");
        t.fire("FLMx-1").await.unwrap();
        t.fire("FLMx-2").await.unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("FLMx-2."));
        assert_eq!(t.restore().unwrap(), Some(p.clone()));
        assert_eq!(std::fs::read(&p).unwrap(), FLAGS);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(t.restore().unwrap(), None, "once");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[tokio::test]
    async fn a_dropped_file_trigger_restores_too() {
        let p = temp_file("drop", FLAGS);
        let mut t = Trigger::parse(&format!("file:{}", p.display()), Some("production/a"), 200, None).await.unwrap();
        t.fire("FLMx-1").await.unwrap();
        drop(t);
        assert_eq!(std::fs::read(&p).unwrap(), FLAGS);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
