//! What the clients of a relay hold: polling ([`poll_flags`], [`wait_poll`]) and an SSE client
//! that applies events the way an SDK does ([`WatchingClient`]), compared exactly with what Redis
//! holds ([`converge`]), and one read continuously in the background ([`Background`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use flagrelay::config::RedisUpstream;
use flagrelay::upstream::redis::writer::Writer;

use super::{tool_config, Flags};
use crate::{within, SseClient, SseEvent, TestRelay, WAIT};

/// Exact JSON text of every feature (object member order included).
pub fn exact(map: &Flags) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), serde_json::to_string(v).expect("json"))).collect()
}

fn object_to_flags(v: Value) -> Flags {
    match v {
        Value::Object(o) => o.into_iter().collect(),
        other => panic!("expected a JSON object, got {other}"),
    }
}

/// The relay's map for a key, by polling.
pub async fn poll_flags(relay: &TestRelay, key: &str) -> Flags {
    poll_flags_at(&relay.base, key).await
}

/// [`poll_flags`] of the relay at `base` (`http://host:port`, in process or not).
pub async fn poll_flags_at(base: &str, key: &str) -> Flags {
    let r = within("a poll", crate::http().get(format!("{base}/api/sdk/v1/features")).bearer_auth(key).send()).await.expect("poll");
    assert_eq!(r.status(), 200);
    object_to_flags(within("poll body", r.json()).await.expect("poll json"))
}

/// Polls until the relay serves exactly `want` for `key`.
pub async fn wait_poll(relay: &TestRelay, key: &str, want: &Flags) {
    wait_poll_at(&relay.base, key, want).await
}

/// [`wait_poll`] of the relay at `base`.
pub async fn wait_poll_at(base: &str, key: &str, want: &Flags) {
    let want = exact(want);
    let mut last = BTreeMap::new();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            last = exact(&poll_flags_at(base, key).await);
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if r.is_err() {
        panic!("polling never served the expected flags\n want: {want:?}\n last: {last:?}");
    }
}

/// An SSE client that applies events the way an SDK does. `replace_on_first` = replace the map
/// with the first event of every connection (full state); otherwise only upsert and remove
/// (Java SDK semantics).
pub struct WatchingClient {
    pub sse: SseClient,
    pub flags: Flags,
    replace_on_first: bool,
    first: bool,
    url: String,
    key: String,
    pub events: usize,
    pub last_id: Option<u64>,
}

impl WatchingClient {
    pub async fn upsert_only(relay: &TestRelay, key: &str) -> WatchingClient {
        Self::connect(relay, key, false).await
    }

    pub async fn replacing(relay: &TestRelay, key: &str) -> WatchingClient {
        Self::connect(relay, key, true).await
    }

    async fn connect(relay: &TestRelay, key: &str, replace_on_first: bool) -> WatchingClient {
        Self::at(&relay.base, key, replace_on_first).await
    }

    /// A client of the relay at `base` (`http://host:port`, in process or not).
    pub async fn at(base: &str, key: &str, replace_on_first: bool) -> WatchingClient {
        let url = format!("{base}/api/sdk/v1/features");
        let sse = SseClient::connect(&url, &[("authorization", &format!("Bearer {key}"))]).await;
        assert_eq!(sse.status, 200);
        WatchingClient { sse, flags: Flags::new(), replace_on_first, first: true, url, key: key.into(), events: 0, last_id: None }
    }

    /// Drops the connection and opens a fresh one (no Last-Event-ID): full state again.
    pub async fn reconnect(&mut self) {
        self.sse.close();
        self.sse = SseClient::connect(&self.url, &[("authorization", &format!("Bearer {}", self.key))]).await;
        assert_eq!(self.sse.status, 200);
        self.first = true;
    }

    fn apply(&mut self, e: &SseEvent) {
        self.events += 1;
        if let Some(id) = e.id.as_deref().and_then(|i| i.parse().ok()) {
            self.last_id = Some(id);
        }
        match e.event.as_str() {
            "features.updated" => {
                let m = object_to_flags(e.json());
                if self.first && self.replace_on_first {
                    self.flags = m;
                } else {
                    self.flags.extend(m);
                }
            }
            "features.deleted" => {
                for k in e.json().as_array().expect("deleted keys array") {
                    self.flags.remove(k.as_str().expect("key"));
                }
            }
            other => panic!("unexpected SSE event {other}: {}", e.data),
        }
        self.first = false;
    }

    /// Reads one event and applies it.
    pub async fn step(&mut self) {
        let e = self.sse.expect().await;
        self.apply(&e);
    }

    /// Reads events until the held map is exactly `want`.
    pub async fn wait_for(&mut self, want: &Flags) {
        let want_x = exact(want);
        let r = tokio::time::timeout(WAIT, async {
            while exact(&self.flags) != want_x {
                let e = match self.sse.next_any().await {
                    Some(e) => e,
                    None => panic!("SSE stream ended"),
                };
                if e.data.starts_with("{\"heartbeat\"") {
                    continue;
                }
                self.apply(&e);
            }
        })
        .await;
        if r.is_err() {
            panic!("SSE client never held the expected flags\n want: {want_x:?}\n held: {:?}", exact(&self.flags));
        }
    }
}

/// Waits until every watcher and polling hold exactly what Redis holds (`flags export`).
pub async fn converge(relay: &TestRelay, url: &str, env: &str, key: &str, clients: &mut [&mut WatchingClient]) -> Flags {
    converge_to(relay, &tool_config(url), env, key, clients).await
}

/// [`converge`], exporting with the writer settings `cfg` (a cluster, TLS).
pub async fn converge_to(relay: &TestRelay, cfg: &RedisUpstream, env: &str, key: &str, clients: &mut [&mut WatchingClient]) -> Flags {
    converge_at(&relay.base, cfg, env, key, clients).await
}

/// [`converge_to`] for the relay at `base` (`http://host:port`, in process or not).
pub async fn converge_at(base: &str, cfg: &RedisUpstream, env: &str, key: &str, clients: &mut [&mut WatchingClient]) -> Flags {
    let mut w = within("the writer to connect", Writer::connect(cfg, env)).await.expect("writer connects");
    let want = within("export", w.export()).await.expect("export");
    wait_poll_at(base, key, &want).await;
    for c in clients.iter_mut() {
        c.wait_for(&want).await;
    }
    want
}

/// What one SSE client holds, read continuously in the background.
pub struct Background {
    flags: Arc<Mutex<Flags>>,
    pub reconnect: tokio::sync::mpsc::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub fn spawn(mut c: WatchingClient) -> Background {
        let flags = Arc::new(Mutex::new(Flags::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let shared = flags.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = rx.recv() => c.reconnect().await,
                    _ = c.step() => {
                        *shared.lock().unwrap() = c.flags.clone();
                    }
                }
            }
        });
        Background { flags, reconnect: tx, task }
    }

    pub fn get(&self) -> Flags {
        self.flags.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, want: &Flags, who: &str) {
        let want = exact(want);
        let r = tokio::time::timeout(WAIT, async {
            while exact(&self.get()) != want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if r.is_err() {
            let held = exact(&self.get());
            let diff: Vec<_> = want.keys().chain(held.keys()).filter(|k| want.get(*k) != held.get(*k)).collect();
            panic!("the {who} client differs from Redis on {} feature(s): {diff:?}", diff.len());
        }
    }
}
