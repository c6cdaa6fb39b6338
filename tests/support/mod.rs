//! Test harness: a real relay on loopback ports the test owns, real HTTP and SSE clients.
//! Every network await has a timeout so nothing hangs.

pub mod node;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod sse;
pub mod tcp;

use std::path::PathBuf;
use std::time::Duration;

use flagrelay::config::{Config, Overrides};
use flagrelay::shutdown::Shutdown;
use serde_json::Value;
use tokio::net::TcpListener;

pub use sse::{SseClient, SseEvent};

/// The timeout for any single network await in tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const SERVER_KEY: &str = "sdk-srv-env-test-production-1";
pub const CLIENT_KEY: &str = "sdk-js-env-test-production-1";
pub const STAGING_SERVER_KEY: &str = "sdk-srv-env-test-staging-1";
pub const STAGING_CLIENT_KEY: &str = "sdk-js-env-test-staging-1";

/// Awaits `f` or panics with `what` after [`WAIT`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().expect("http client")
}

/// A feature that serves `variant` to everyone (default rule only).
pub fn simple_feature(key: &str, variant: &str) -> Value {
    serde_json::json!({
        "key": key, "enabled": true, "offVariantKey": "off",
        "variants": [{"key": "on", "name": "On"}, {"key": "off", "name": "Off"}],
        "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}]
    })
}

/// A feature on for users whose `user_role` is one of `roles`, off for everyone else.
pub fn role_feature(key: &str, roles: &[&str]) -> Value {
    serde_json::json!({
        "key": key, "enabled": true, "offVariantKey": "off",
        "variants": [{"key": "on", "name": "On"}, {"key": "off", "name": "Off"}],
        "rules": [
            {"defaultRule": false, "audience": {"conditions": [{"target": "user_role", "operator": "in", "values": roles}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}
        ]
    })
}

pub struct TestRelayBuilder {
    shutdown_timeout_secs: u64,
    flags: Value,
    extra_toml: String,
    upstream_toml: Option<String>,
    /// Extra `key = value` lines of the default file `[upstream]` section.
    file_upstream_extra: String,
    environments: Vec<(String, Vec<String>, Vec<String>)>,
}

impl TestRelayBuilder {
    /// The initial flags file content (`{env: {key: control}}`).
    pub fn flags(mut self, flags: Value) -> Self {
        self.flags = flags;
        self
    }

    /// Extra TOML sections appended to the config (e.g. `[sse]\nheartbeat_secs = 1`).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// The relay's shutdown deadline (default 8 s).
    pub fn shutdown_timeout(mut self, secs: u64) -> Self {
        self.shutdown_timeout_secs = secs;
        self
    }

    /// Replaces the `[upstream]` section (e.g. a Redis upstream).
    pub fn upstream(mut self, toml: &str) -> Self {
        self.upstream_toml = Some(toml.to_string());
        self
    }

    /// Adds `key = value` lines to the default (file) `[upstream]` section.
    pub fn file_upstream(mut self, lines: &str) -> Self {
        self.file_upstream_extra.push_str(lines);
        self.file_upstream_extra.push('\n');
        self
    }

    /// Replaces the environments (id, server keys, client keys).
    pub fn environments(mut self, envs: &[(&str, &[&str], &[&str])]) -> Self {
        self.environments = envs
            .iter()
            .map(|(id, s, c)| (id.to_string(), s.iter().map(|k| k.to_string()).collect(), c.iter().map(|k| k.to_string()).collect()))
            .collect();
        self
    }

    fn render_config(&self, flags_path: &std::path::Path) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = {}\n",
            self.shutdown_timeout_secs
        ));
        match &self.upstream_toml {
            Some(u) => t.push_str(u),
            None => t.push_str(&format!(
                "[upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\n{}",
                flags_path.display().to_string(),
                self.file_upstream_extra
            )),
        }
        t.push('\n');
        for (id, s, c) in &self.environments {
            t.push_str(&format!("[[environments]]\nid = {id:?}\nserver_keys = {s:?}\nclient_keys = {c:?}\n"));
        }
        t.push_str(&self.extra_toml);
        t
    }

    /// Starts the relay in this process on ports chosen by the OS and waits until it is ready.
    pub async fn start(self) -> TestRelay {
        let relay = self.start_unready().await;
        relay.wait_ready().await;
        relay
    }

    /// Starts the relay without waiting for readiness.
    pub async fn start_unready(self) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags_path = dir.path().join("flags.json");
        std::fs::write(&flags_path, serde_json::to_vec_pretty(&self.flags).expect("json")).expect("write flags");
        let config_text = self.render_config(&flags_path);
        let config_path = dir.path().join("flagrelay.toml");
        std::fs::write(&config_path, &config_text).expect("write config");
        let args = Overrides { config: config_path.clone(), ..Default::default() };
        let config = Config::load(&args).unwrap_or_else(|e| panic!("test config invalid: {e}\n{config_text}"));
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = api.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(flagrelay::app::run(config, api, admin, shutdown.clone()));
        TestRelay { base: format!("http://{addr}"), admin: format!("http://{admin_addr}"), flags_path, config_path, shutdown, handle: Some(handle), _dir: dir }
    }
}

pub struct TestRelay {
    pub base: String,
    pub admin: String,
    pub flags_path: PathBuf,
    pub config_path: PathBuf,
    pub shutdown: Shutdown,
    handle: Option<tokio::task::JoinHandle<Result<(), flagrelay::app::AppError>>>,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    pub fn builder() -> TestRelayBuilder {
        TestRelayBuilder {
            shutdown_timeout_secs: 8,
            flags: serde_json::json!({"production": {}, "staging": {}}),
            extra_toml: String::new(),
            upstream_toml: None,
            file_upstream_extra: String::new(),
            environments: vec![
                ("production".into(), vec![SERVER_KEY.into()], vec![CLIENT_KEY.into()]),
                ("staging".into(), vec![STAGING_SERVER_KEY.into()], vec![STAGING_CLIENT_KEY.into()]),
            ],
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin, path)
    }

    /// Polls `/readyz` until 200 (the source loaded every environment).
    pub async fn wait_ready(&self) {
        let c = http();
        within("the relay to become ready", async {
            loop {
                if let Ok(r) = c.get(self.admin_url("/readyz")).send().await {
                    if r.status() == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Replaces the flags file atomically (write + rename), as an editor or deploy would.
    pub fn write_flags(&self, flags: &Value) {
        let tmp = self.flags_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(flags).expect("json")).expect("write flags");
        std::fs::rename(&tmp, &self.flags_path).expect("rename flags");
    }

    /// Rewrites the flags file in place (same inode) and puts its old mtime back: a change
    /// that only the content can reveal.
    pub fn write_flags_in_place_keeping_mtime(&self, flags: &Value) {
        use std::io::Write;
        let before = std::fs::metadata(&self.flags_path).expect("stat").modified().expect("mtime");
        let bytes = serde_json::to_vec_pretty(flags).expect("json");
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&self.flags_path).expect("open flags");
        f.write_all(&bytes).expect("write flags");
        f.set_modified(before).expect("restore mtime");
    }

    /// Writes raw bytes to the flags file (for broken files).
    pub fn write_flags_raw(&self, bytes: &[u8]) {
        let tmp = self.flags_path.with_extension("tmp");
        std::fs::write(&tmp, bytes).expect("write flags");
        std::fs::rename(&tmp, &self.flags_path).expect("rename flags");
    }

    pub async fn status(&self) -> Value {
        let r = within("/status", http().get(self.admin_url("/status")).send()).await.expect("status");
        within("/status body", r.json()).await.expect("status json")
    }

    /// The `/status` entry of one environment.
    pub async fn env_status(&self, env: &str) -> Value {
        let s = self.status().await;
        s["environments"].as_array().and_then(|a| a.iter().find(|e| e["id"] == env).cloned()).unwrap_or(Value::Null)
    }

    /// Waits until `/status` of `env` satisfies `pred`.
    pub async fn wait_status(&self, env: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        within(what, async {
            loop {
                let s = self.env_status(env).await;
                if pred(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        let r = within("/metrics", http().get(self.admin_url("/metrics")).send()).await.expect("metrics");
        within("/metrics body", r.text()).await.expect("metrics text")
    }

    /// GET /api/sdk/v1/features with a key.
    pub async fn poll(&self, key: &str) -> reqwest::Response {
        within("a poll", http().get(self.url("/api/sdk/v1/features")).bearer_auth(key).send()).await.expect("poll")
    }

    /// Opens the Featureflow SSE stream with a server key.
    pub async fn sse(&self, key: &str) -> SseClient {
        SseClient::connect(&self.url("/api/sdk/v1/features"), &[("authorization", &format!("Bearer {key}"))]).await
    }

    /// Triggers shutdown and waits for `run` to return (panics past the deadline plus slack).
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            match tokio::time::timeout(Duration::from_secs(15), h).await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("relay did not stop cleanly: {other:?}"),
            }
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The Prometheus sample value of `name{labels}` in `text` (labels given as `k="v"` pairs).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if n != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}
