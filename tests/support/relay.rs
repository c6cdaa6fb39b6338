//! Relay chains for tests: a root relay on Redis and child relays whose upstream is another
//! relay, in process ([`root_on`], [`child_of`]) or as killable processes
//! ([`child_process_config`]), all with one-second heartbeats and fault timings short enough
//! for tests.

use std::path::{Path, PathBuf};

use super::redis::relay_on;
use super::{TestRelay, TestRelayBuilder, SERVER_KEY, STAGING_SERVER_KEY};

/// How long a child waits for an event of its parent before it reconnects, in tests.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 2500;

/// The `[upstream]` section of a relay that follows the relay at `parent` (`http://host:port`).
pub fn relay_upstream(parent: &str, extra: &str) -> String {
    format!(
        "[upstream]\nkind = \"relay\"\nurl = \"{parent}\"\nheartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}\nconnect_timeout_ms = 1000\n\
         backoff_base_ms = 20\nbackoff_cap_ms = 300\nstable_after_secs = 1\n{extra}\n"
    )
}

/// Heartbeats every second, so a child notices a frozen parent within [`HEARTBEAT_TIMEOUT_MS`].
const FAST_SSE: &str = "[sse]\nheartbeat_secs = 1\ndrain_window_secs = 1";

/// The root of a chain: a relay on the Redis at `redis_url`, with `sse` lines added to its
/// `[sse]` (e.g. `replay_revisions = 4`).
pub fn root_on(redis_url: &str, sse: &str) -> TestRelayBuilder {
    relay_on(redis_url, "").config(&format!("{FAST_SSE}\n{sse}"))
}

/// A relay that follows the relay at `parent`; `extra` lines go into its `[upstream]`.
pub fn child_of(parent: &str, extra: &str) -> TestRelayBuilder {
    TestRelay::builder().upstream(&relay_upstream(parent, extra)).config(FAST_SSE)
}

/// The config of a relay process with the test environments whose `[upstream]` is `upstream`
/// (loopback ports chosen by the OS); returns its path in `dir`.
pub fn process_config(dir: &Path, upstream: &str) -> PathBuf {
    let cfg = dir.join("flagrelay.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout_secs = 3\n{upstream}\n\
         [[environments]]\nid = \"production\"\nserver_keys = [\"{SERVER_KEY}\"]\n\
         [[environments]]\nid = \"staging\"\nserver_keys = [\"{STAGING_SERVER_KEY}\"]\n{FAST_SSE}\n"
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

/// The config of a relay process that follows the relay at `parent`.
pub fn child_process_config(dir: &Path, parent: &str) -> PathBuf {
    process_config(dir, &relay_upstream(parent, ""))
}
