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

/// Where the file and Redis triggers put the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MarkerIn {
    /// The feature's first variant *name*: seen by streams that send feature controls (the
    /// server-SDK stream).
    #[default]
    VariantName,
    /// The *key* of the variant the feature serves to everyone (variants
    /// `[{"key":"<marker>.","name":"m"},{"key":"off"}]`, the default rule 100 % to the first):
    /// seen by streams that send evaluated results (`/api/v1/eval/stream/...`, whose
    /// `features.updated` is `{"<feature>":"<variant key>"}`).
    VariantKey,
}

pub enum Trigger {
    /// Rewrite a flags file (write + rename): one feature carries the marker (see [`MarkerIn`]).
    File { path: PathBuf, doc: Value, env: String, key: String, restore: FileRestore, marker_in: MarkerIn },
    /// POST a message of about `bytes` bytes to nchan's publisher location.
    Nchan { url: Url, bytes: usize },
    /// Upsert one feature through the relay's reference Redis writer (its atomic Lua script):
    /// the feature carries the marker (see [`MarkerIn`]).
    Redis { writer: Box<flagrelay::upstream::redis::writer::Writer>, key: String, marker_in: MarkerIn },
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
    /// `prefix`), `none`. `marker_in` is for the file and Redis triggers.
    pub async fn parse(spec: &str, feature: Option<&str>, bytes: usize, prefix: Option<&str>, marker_in: MarkerIn) -> anyhow::Result<Trigger> {
        if marker_in != MarkerIn::VariantName && !(spec.starts_with("file:") || spec.starts_with("redis:") || spec.starts_with("rediss:")) {
            bail!("--marker-in variant-key is for the file and Redis triggers, not {spec:?}");
        }
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
            return Ok(Trigger::File { path, doc, env, key, restore, marker_in });
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
            return Ok(Trigger::Redis { writer: Box::new(writer), key: key.to_string(), marker_in });
        }
        bail!("unknown --trigger {spec:?} (file:PATH, nchan:URL, redis:URL, none)")
    }

    /// Makes the change carrying `marker`; returns how long the trigger itself took.
    pub async fn fire(&mut self, marker: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        match self {
            Trigger::None => {}
            Trigger::File { path, doc, env, key, restore, marker_in } => {
                let f = doc.get_mut(env.as_str()).and_then(|e| e.get_mut(key.as_str())).ok_or_else(|| anyhow!("feature vanished"))?;
                let name = format!("{marker}.");
                match *marker_in {
                    MarkerIn::VariantKey => {
                        let f = f.as_object_mut().ok_or_else(|| anyhow!("feature is not an object"))?;
                        serve_marker_key(f, marker);
                    }
                    MarkerIn::VariantName => match f.get_mut("variants").and_then(|v| v.get_mut(0)).and_then(|v| v.as_object_mut()) {
                        Some(v) => {
                            v.insert("name".into(), Value::String(name));
                        }
                        None => {
                            f.as_object_mut().ok_or_else(|| anyhow!("feature is not an object"))?.insert("flagrelayLoadMarker".into(), Value::String(name));
                        }
                    },
                }
                let bytes = serde_json::to_vec_pretty(doc)?;
                restore.edited = true;
                write_atomically(path, &bytes, restore.perms.as_ref()).with_context(|| format!("writing {}", path.display()))?;
            }
            Trigger::Redis { writer, key, marker_in } => {
                let doc = marked_feature(key, marker, *marker_in);
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

/// The feature the Redis trigger writes: enabled, served to everyone through its default rule,
/// with `marker` in its first variant's name ([`MarkerIn::VariantName`]) or key
/// ([`MarkerIn::VariantKey`]).
pub fn marked_feature(key: &str, marker: &str, marker_in: MarkerIn) -> Value {
    let mut f = serde_json::Map::new();
    f.insert("key".into(), Value::String(key.to_string()));
    f.insert("enabled".into(), Value::Bool(true));
    match marker_in {
        MarkerIn::VariantName => {
            f.insert("variants".into(), serde_json::json!([{"key": "on", "name": format!("{marker}.")}, {"key": "off"}]));
            f.insert("rules".into(), serde_json::json!([{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]));
        }
        MarkerIn::VariantKey => serve_marker_key(&mut f, marker),
    }
    Value::Object(f)
}

/// Makes feature `f` serve the variant key `<marker>.` to every context: enabled, variants
/// `[{"key":"<marker>.","name":"m"},{"key":"off"}]`, one default rule 100 % to that key (the
/// feature's other rules go: they could serve something else). Other fields stay.
pub fn serve_marker_key(f: &mut serde_json::Map<String, Value>, marker: &str) {
    let k = format!("{marker}.");
    f.insert("enabled".into(), Value::Bool(true));
    f.insert("variants".into(), serde_json::json!([{"key": k, "name": "m"}, {"key": "off"}]));
    f.insert("rules".into(), serde_json::json!([{"defaultRule": true, "variantSplits": [{"variantKey": k, "split": 100}]}]));
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
        let mut t = Trigger::parse(&spec, None, 200, None, MarkerIn::VariantName).await.unwrap();
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
        let mut t = Trigger::parse(&format!("file:{}", p.display()), Some("production/a"), 200, None, MarkerIn::VariantName).await.unwrap();
        t.fire("FLMx-1").await.unwrap();
        drop(t);
        assert_eq!(std::fs::read(&p).unwrap(), FLAGS);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    /// What the relay's per-context stream would send for `f` (validated as the relay validates
    /// it: `model::Feature::from_value`) and the bench context of group 3: the thin evaluation.
    fn evaluated(f: &Value) -> Value {
        let key = f["key"].as_str().unwrap_or_default();
        let feat = flagrelay::model::Feature::from_value(key, f.clone()).unwrap_or_else(|e| panic!("invalid feature: {e}"));
        let user: Value = serde_json::from_str(&crate::ctx::user_json(3)).unwrap();
        let ctx = flagrelay::eval::Context::from_featureflow_user(&user).unwrap();
        let c = flagrelay::eval::CompiledFeature::compile(&feat);
        serde_json::to_value(c.evaluate_thin(&ctx).unwrap()).unwrap()
    }

    #[test]
    fn a_marker_in_the_variant_key_is_what_the_feature_evaluates_to() {
        let f = marked_feature("bench-flag", "FLMab-7", MarkerIn::VariantKey);
        assert_eq!(f["variants"][0]["key"], "FLMab-7.");
        assert_eq!(evaluated(&f), Value::String("FLMab-7.".into()));
        // The default form: valid too, evaluates to "on", the marker only in the name.
        let g = marked_feature("bench-flag", "FLMab-7", MarkerIn::VariantName);
        assert_eq!(g["variants"][0]["name"], "FLMab-7.");
        assert_eq!(evaluated(&g), Value::String("on".into()));
    }

    #[test]
    fn serve_marker_key_overrides_a_feature_s_rules_and_keeps_the_rest() {
        let mut f = serde_json::json!({"key": "bench-flag", "enabled": false, "offVariantKey": "off", "custom": 1,
            "variants": [{"key": "on"}, {"key": "off"}],
            "rules": [{"audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["9"]}]},
                       "variantSplits": [{"variantKey": "off", "split": 100}]},
                      {"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]});
        serve_marker_key(f.as_object_mut().unwrap(), "FLMab-2");
        assert_eq!(f["custom"], 1);
        assert_eq!(f["rules"].as_array().unwrap().len(), 1);
        assert_eq!(evaluated(&f), Value::String("FLMab-2.".into()));
    }

    #[tokio::test]
    async fn the_file_trigger_can_put_the_marker_in_the_served_key() {
        let p = temp_file("key", FLAGS);
        let mut t = Trigger::parse(&format!("file:{}", p.display()), Some("production/a"), 200, None, MarkerIn::VariantKey).await.unwrap();
        t.fire("FLMx-3").await.unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(evaluated(&doc["production"]["a"]), Value::String("FLMx-3.".into()));
        drop(t);
        assert_eq!(std::fs::read(&p).unwrap(), FLAGS);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
        assert!(Trigger::parse("nchan:http://127.0.0.1:1/pub", None, 200, None, MarkerIn::VariantKey).await.is_err());
    }
}
