//! The OFREP request budget (`http.ofrep_rate_limit`): per key **and** client address, so one
//! caller with a public client key cannot spend everyone's budget. A keyed GCRA limiter from
//! `governor`, owned by the API state, with bounded memory; and who the client is
//! ([`client_addr`]), pure.
//!
//! Invariants:
//! - Each (key, client address) pair may make `rate` requests per second, in bursts of up to one
//!   second's worth; over it a request is refused with the whole seconds to wait (at least 1).
//!   Keys are authenticated before they are counted.
//! - The client address is the connection's peer, or, when the peer is a trusted proxy
//!   (`http.trusted_proxies`), the first hop of `X-Forwarded-For` (read right to left) that is
//!   not one; a hop that is not an address ends the walk at the last trusted one. IPv6 clients
//!   are counted by their /64 (what one host is usually given), IPv4-mapped ones as IPv4.
//! - At most `max_clients` pairs are tracked (`http.ofrep_rate_limit_max_clients`): pairs whose
//!   budget is full again are dropped every [`SWEEP_EVERY`] checks and whenever the table is
//!   full; if it is then still over three quarters full, every pair is forgotten at once (each
//!   starts a fresh budget) and counted in `flagrelay_rate_limit_evictions_total`, so a sweep
//!   (linear in the table) comes at most once per quarter of the cap of new pairs. The pairs held are
//!   `flagrelay_rate_limit_clients`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use hyper::header::HeaderMap;
use ipnet::IpNet;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;

/// Stale pairs are dropped every this many checks.
pub const SWEEP_EVERY: u64 = 4096;

/// Who a budget belongs to: the key and the client address ([`client_addr`]).
type Client = (String, IpAddr);

type Limiter<C> = RateLimiter<Client, HashMapStateStore<Client>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Requests per second per key and client address. See the module docs.
pub struct KeyedRateLimit<C: Clock + Clone = DefaultClock> {
    quota: Quota,
    clock: C,
    max_clients: usize,
    /// Replaced by an empty one when the table is full of clients still spending.
    limiter: Mutex<Arc<Limiter<C>>>,
    checks: AtomicU64,
    clients: IntGauge,
    evictions: IntCounter,
}

impl KeyedRateLimit {
    /// `rate` requests per second per key and client, tracking at most `max_clients` of them;
    /// `None` for a rate of 0 (unlimited).
    pub fn per_second(rate: u32, max_clients: usize, metrics: &Metrics) -> Option<KeyedRateLimit> {
        NonZeroU32::new(rate).map(|r| KeyedRateLimit::with_clock(r, max_clients, DefaultClock::default(), metrics))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The critical section only swaps an Arc; a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<C: Clock + Clone> KeyedRateLimit<C> {
    /// A limiter on `clock` (tests pass governor's fake clock).
    pub fn with_clock(rate: NonZeroU32, max_clients: usize, clock: C, metrics: &Metrics) -> KeyedRateLimit<C> {
        let quota = Quota::per_second(rate);
        KeyedRateLimit {
            limiter: Mutex::new(Arc::new(RateLimiter::hashmap_with_clock(quota, clock.clone()))),
            quota,
            clock,
            max_clients: max_clients.max(1),
            checks: AtomicU64::new(0),
            clients: metrics.rate_limit_clients.clone(),
            evictions: metrics.rate_limit_evictions.clone(),
        }
    }

    /// Takes one request from the budget of `key` at `addr`, or says how many whole seconds to
    /// wait.
    pub fn check(&self, key: &str, addr: IpAddr) -> Result<(), u64> {
        let mut limiter = lock(&self.limiter).clone();
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(SWEEP_EVERY) || limiter.len() >= self.max_clients {
            limiter = self.make_room(limiter);
        }
        let result = match limiter.check_key(&(key.to_string(), bucket_addr(addr))) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        };
        self.clients.set(limiter.len() as i64);
        result
    }

    /// Drops the pairs whose budget is full again; if that leaves the table over three quarters
    /// full (so the next sweep would come soon again), starts an empty one, counting the pairs
    /// forgotten. Returns the limiter to use.
    fn make_room(&self, limiter: Arc<Limiter<C>>) -> Arc<Limiter<C>> {
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let held = limiter.len();
        if held.saturating_mul(4) <= self.max_clients.saturating_mul(3) {
            return limiter;
        }
        self.evictions.inc_by(held as u64);
        tracing::warn!(clients = held, limit = self.max_clients, "the OFREP rate limit forgot every client: more were spending than http.ofrep_rate_limit_max_clients");
        let fresh = Arc::new(RateLimiter::hashmap_with_clock(self.quota, self.clock.clone()));
        *lock(&self.limiter) = fresh.clone();
        fresh
    }

    /// The (key, client) pairs tracked now.
    pub fn tracked(&self) -> usize {
        lock(&self.limiter).len()
    }
}

/// The address a budget is counted under: IPv4 as it is, IPv4-mapped IPv6 as IPv4, other IPv6
/// by its /64.
fn bucket_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// One `X-Forwarded-For` hop as an address (`1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`).
fn hop_addr(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The client a request counts for: `peer`, or when it is a trusted proxy the first untrusted
/// hop of `X-Forwarded-For` from the right (see the module docs). `None` (no peer known) reads
/// as the unspecified address.
pub fn client_addr(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut client = canonical(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
    let is_trusted = |a: IpAddr| trusted.iter().any(|n| n.contains(&a));
    if peer.is_none() || !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    for hop in hops.iter().rev() {
        match hop_addr(hop) {
            Some(a) => {
                client = canonical(a);
                if !is_trusted(client) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use hyper::header::HeaderValue;

    use super::*;

    fn limit(rate: u32, max_clients: usize) -> (KeyedRateLimit<FakeRelativeClock>, FakeRelativeClock, Arc<Metrics>) {
        let clock = FakeRelativeClock::default();
        let m = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
        (KeyedRateLimit::with_clock(NonZeroU32::new(rate).expect("> 0"), max_clients, clock.clone(), &m), clock, m)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_rate_limit_says_when_to_retry() {
        let (l, _, _) = limit(2, 100);
        let a = ip("10.0.0.1");
        assert_eq!(l.check("k", a), Ok(()));
        assert_eq!(l.check("k", a), Ok(()));
        assert_eq!(l.check("k", a), Err(1));
        assert_eq!(l.check("other", a), Ok(()));
    }

    #[test]
    fn one_client_at_its_limit_leaves_the_keys_budget_to_every_other_client() {
        let (l, _, _) = limit(2, 100);
        let abuser = ip("203.0.113.9");
        while l.check("public-key", abuser).is_ok() {}
        for i in 1..=20 {
            assert_eq!(l.check("public-key", ip(&format!("198.51.100.{i}"))), Ok(()), "user {i}");
        }
        assert_eq!(l.check("public-key", abuser), Err(1));
    }

    #[test]
    fn the_budget_refills_at_the_rate() {
        let (l, clock, _) = limit(2, 100);
        let a = ip("10.0.0.1");
        assert_eq!((l.check("k", a), l.check("k", a), l.check("k", a)), (Ok(()), Ok(()), Err(1)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check("k", a), Ok(()));
        assert_eq!(l.check("k", a), Err(1));
        clock.advance(Duration::from_secs(10));
        assert_eq!((l.check("k", a), l.check("k", a), l.check("k", a)), (Ok(()), Ok(()), Err(1)), "a burst is one second's worth");
    }

    #[test]
    fn zero_means_unlimited() {
        let m = Metrics::new(prometheus::Registry::new()).expect("metrics");
        assert!(KeyedRateLimit::per_second(0, 10, &m).is_none());
        assert!(KeyedRateLimit::per_second(1, 10, &m).is_some());
    }

    #[test]
    fn more_clients_than_the_cap_never_hold_more_than_the_cap() {
        let (l, _, m) = limit(5, 100);
        for i in 0..1_000u32 {
            let _ = l.check("k", IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert!(l.tracked() <= 100, "after {i}: {}", l.tracked());
        }
        assert!(m.rate_limit_evictions.get() >= 900, "evictions counted: {}", m.rate_limit_evictions.get());
        assert!(m.rate_limit_clients.get() <= 100);
    }

    #[test]
    fn clients_whose_budget_is_full_again_are_dropped_first_without_an_eviction() {
        let (l, clock, m) = limit(5, 100);
        for i in 0..99u32 {
            let _ = l.check("k", IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        clock.advance(Duration::from_secs(2));
        for i in 0..10u32 {
            let _ = l.check("k", IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)));
        }
        assert_eq!(m.rate_limit_evictions.get(), 0);
        assert!(l.tracked() <= 11, "{}", l.tracked());
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let (l, _, _) = limit(1, 100);
        assert_eq!(l.check("k", ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(l.check("k", ip("2001:db8:1:2:ffff::9")), Err(1), "the same /64");
        assert_eq!(l.check("k", ip("2001:db8:1:3::1")), Ok(()), "another /64");
        assert_eq!(l.check("k", ip("192.0.2.1")), Ok(()));
        assert_eq!(l.check("k", ip("::ffff:192.0.2.1")), Err(1));
    }

    #[test]
    fn the_client_is_the_peer_or_the_first_untrusted_forwarded_hop_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32"].iter().map(|s| s.parse().expect("a net")).collect();
        let rows: [(&str, &[&str], &str); 9] = [
            ("203.0.113.5", &["1.1.1.1"], "203.0.113.5"),                // untrusted peer: its header is not believed
            ("10.1.1.1", &[], "10.1.1.1"),                               // a trusted peer with no header
            ("10.1.1.1", &["198.51.100.7"], "198.51.100.7"),
            ("10.1.1.1", &["6.6.6.6, 198.51.100.7, 10.2.2.2"], "198.51.100.7"), // a spoofed first hop is not reached
            ("10.1.1.1", &["6.6.6.6", "198.51.100.7:4711"], "198.51.100.7"),    // several headers, a port
            ("10.1.1.1", &["[2001:db8::1]:80"], "2001:db8::1"),
            ("127.0.0.1", &["10.3.3.3, 10.2.2.2"], "10.3.3.3"),         // every hop trusted: the leftmost
            ("10.1.1.1", &["198.51.100.7, unknown"], "10.1.1.1"),      // a hop that is not an address
            ("::ffff:10.1.1.1", &["198.51.100.7"], "198.51.100.7"),     // a mapped trusted peer
        ];
        for (peer, xff, want) in rows {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", HeaderValue::from_str(v).expect("a header"));
            }
            assert_eq!(client_addr(Some(ip(peer)), &h, &trusted), ip(want), "peer {peer}, X-Forwarded-For {xff:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        assert_eq!(client_addr(None, &h, &trusted), ip("0.0.0.0"), "no peer: nothing is believed");
    }
}
