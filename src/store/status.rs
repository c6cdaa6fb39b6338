//! The state of an environment's source as the source reports it ([`SourceStatus`]), for
//! `/status` and readiness: which state it is in and since when, its last error, and whether the
//! data it serves is confirmed current.

use std::time::SystemTime;

use serde::Serialize;

/// The state of an environment's source, for `/status` and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// e.g. `loading`, `ok`, `error`, `connected`, `resyncing`, `disconnected`.
    pub state: &'static str,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Free-form note (e.g. "environment missing from the flags file").
    pub detail: Option<String>,
    pub epoch: Option<String>,
    /// True while serving data not confirmed by the source (warm start, upstream not initialised).
    pub stale: bool,
    /// When the source last confirmed the data current (a sync, a message, a file read).
    pub confirmed_at: Option<SystemTime>,
    /// Redis: the node serving this environment (`host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Redis Cluster: `cluster_state` as that node reports it (`ok`, `fail`, `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<String>,
    /// Relay upstream: where this relay is in the tree and how far behind its parent it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayLink>,
}

/// A relay upstream's view of its parent, for `/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RelayLink {
    /// The parent's URL.
    pub parent: String,
    /// Hops from the root source: 1 for a relay whose parent follows Redis or a file.
    pub hops: u32,
    /// The parent's revision at its last event minus the one held here (0 when caught up).
    pub lag_revisions: u64,
    /// Milliseconds from the original publish of the last change applied here until it was
    /// applied (`None` when the root gave no publish time).
    pub lag_ms: Option<u64>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            state: "loading",
            since: SystemTime::now(),
            last_error: None,
            last_error_at: None,
            detail: None,
            epoch: None,
            stale: false,
            confirmed_at: None,
            server: None,
            cluster_state: None,
            relay: None,
        }
    }
}

impl SourceStatus {
    /// Applies `f`; a change of `state` moves `since` to `now`.
    pub(super) fn update(&mut self, f: impl FnOnce(&mut SourceStatus), now: SystemTime) {
        let before = self.state;
        f(self);
        if self.state != before {
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_starts_loading() {
        let s = SourceStatus::default();
        assert_eq!((s.state, s.stale, s.confirmed_at), ("loading", false, None));
    }

    #[test]
    fn a_change_of_state_moves_since_and_any_other_change_keeps_it() {
        let mut s = SourceStatus::default();
        let start = s.since;
        let later = start + Duration::from_secs(5);
        s.update(|s| s.detail = Some("note".into()), later);
        assert_eq!(s.since, start, "same state");
        s.update(|s| s.state = "loading", later);
        assert_eq!(s.since, start, "the same state set again");
        s.update(|s| s.state = "ok", later);
        assert_eq!((s.state, s.since), ("ok", later));
    }
}
