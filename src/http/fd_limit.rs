//! The process's open-files limit and the API connection cap derived from it: at start the soft
//! `RLIMIT_NOFILE` is raised to the hard limit where the kernel allows ([`raise_open_files_limit`]),
//! and unless `[http] max_connections` sets it, the cap is the limit less a reserve for what else
//! needs descriptors ([`api_connection_cap`], a pure function).
//!
//! The formula: `cap = limit − min(256 + 4 × environments, limit / 2)`. The 256 keep room for the
//! admin listener and its scrapes, the flags file and snapshot files, stdio, the runtime's own
//! descriptors (epoll, eventfd, blocking threads) and the sockets being accepted-and-closed over
//! the cap; the 4 per environment are its Redis connections (snapshot, commands, subscriber and a
//! Sentinel lookup). The reserve never takes more than half, so a tiny limit still serves.

use std::io;

/// The open-files limit in force, and what [`raise_open_files_limit`] did to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in force: what `accept` runs into.
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-files limit to the hard limit (an unprivileged process may), and reads
/// what is in force. An unlimited hard limit is left alone (Linux refuses an unlimited soft one).
/// Elsewhere than Unix: an `Unsupported` error (no derived cap).
#[cfg(unix)]
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft >= hard || hard == rlimit::INFINITY {
        return Ok(OpenFiles { soft, hard, raised_from: None });
    }
    match rlimit::Resource::NOFILE.set(hard, hard) {
        Ok(()) => Ok(OpenFiles { soft: hard, hard, raised_from: Some(soft) }),
        // Not allowed here (a sandbox): serve within the soft limit.
        Err(_) => Ok(OpenFiles { soft, hard, raised_from: None }),
    }
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Descriptors kept out of the API connection cap (see the module docs for the formula).
pub fn reserve(limit: u64, environments: usize) -> u64 {
    (256 + 4 * environments as u64).min(limit / 2)
}

/// Where the API connection cap came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapSource {
    /// `[http] max_connections`.
    Configured,
    /// The open-files limit less [`reserve`].
    Derived { limit: u64 },
    /// The limit could not be read and none was configured: no cap.
    Unknown,
}

/// The cap on open API connections: the configured one (`configured > 0`), else derived from the
/// open-files `limit`; `None` means uncapped (the limit is unknown).
pub fn api_connection_cap(configured: usize, limit: Option<u64>, environments: usize) -> (Option<usize>, CapSource) {
    if configured > 0 {
        return (Some(configured), CapSource::Configured);
    }
    match limit {
        Some(limit) => {
            let cap = limit - reserve(limit, environments);
            (Some(usize::try_from(cap).unwrap_or(usize::MAX)), CapSource::Derived { limit })
        }
        None => (None, CapSource::Unknown),
    }
}

/// Whether a configured cap leaves less than the reserve free under `limit` (worth a warning:
/// accept may then fail with EMFILE before the cap is reached, admin included).
pub fn cap_exceeds_limit(cap: usize, limit: u64, environments: usize) -> bool {
    cap as u64 > limit.saturating_sub(reserve(limit, environments))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_keeps_a_reserve_of_256_plus_4_per_environment_at_most_half_the_limit() {
        // (limit, environments, cap)
        let table = [
            (20_000, 1, 19_740),
            (1_024, 1, 764),
            (1_024, 10, 728),
            (512, 1, 256),
            (256, 1, 128),
            (65_536, 100, 64_880),
            (1_048_576, 2, 1_048_312),
            (1, 1, 1),
            (0, 1, 0),
        ];
        for (limit, envs, cap) in table {
            assert_eq!(api_connection_cap(0, Some(limit), envs), (Some(cap), CapSource::Derived { limit }), "{limit} {envs}");
        }
    }

    #[test]
    fn a_configured_cap_wins_over_the_limit() {
        assert_eq!(api_connection_cap(50, Some(20_000), 1), (Some(50), CapSource::Configured));
        assert_eq!(api_connection_cap(50, None, 1), (Some(50), CapSource::Configured));
    }

    #[test]
    fn an_unknown_limit_without_a_configured_cap_means_no_cap() {
        assert_eq!(api_connection_cap(0, None, 1), (None, CapSource::Unknown));
    }

    #[test]
    fn a_configured_cap_above_what_the_limit_leaves_is_flagged() {
        assert!(cap_exceeds_limit(5_000, 512, 1));
        assert!(!cap_exceeds_limit(256, 512, 1));
        assert!(cap_exceeds_limit(257, 512, 1));
    }

    #[cfg(unix)]
    #[test]
    fn the_limit_in_force_is_readable_and_never_lowered() {
        let before = rlimit::Resource::NOFILE.get().unwrap();
        let now = raise_open_files_limit().unwrap();
        assert!(now.soft >= before.0 && now.hard == before.1, "{before:?} → {now:?}");
    }
}
