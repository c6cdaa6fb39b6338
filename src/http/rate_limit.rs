//! The per-key request budget of the OFREP endpoints (`http.ofrep_rate_limit`), a keyed GCRA
//! limiter from `governor`, owned by the API state.
//!
//! Invariants: each key may make `rate` requests per second, in bursts of up to one second's
//! worth; over the budget a request is refused with the whole seconds to wait (at least 1). Keys
//! are authenticated before they are counted, so the table holds at most the configured keys.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Requests per second per key.
pub struct KeyedRateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
}

impl KeyedRateLimit {
    /// `rate` requests per second per key; `None` for 0 (unlimited).
    pub fn per_second(rate: u32) -> Option<KeyedRateLimit> {
        NonZeroU32::new(rate).map(|r| KeyedRateLimit::with_clock(r, DefaultClock::default()))
    }
}

impl<C: Clock> KeyedRateLimit<C> {
    /// A limiter on `clock` (tests pass governor's fake clock).
    pub fn with_clock(rate: NonZeroU32, clock: C) -> KeyedRateLimit<C> {
        KeyedRateLimit { limiter: RateLimiter::hashmap_with_clock(Quota::per_second(rate), clock) }
    }

    /// Takes one request from `key`'s budget, or says how many whole seconds to wait.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        match self.limiter.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(rate: u32) -> (KeyedRateLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (KeyedRateLimit::with_clock(NonZeroU32::new(rate).unwrap(), clock.clone()), clock)
    }

    #[test]
    fn the_rate_limit_says_when_to_retry() {
        let (l, _) = limit(2);
        assert_eq!(l.check("k"), Ok(()));
        assert_eq!(l.check("k"), Ok(()));
        assert_eq!(l.check("k"), Err(1));
        assert_eq!(l.check("other"), Ok(()));
    }

    #[test]
    fn the_budget_refills_at_the_rate() {
        let (l, clock) = limit(2);
        assert_eq!((l.check("k"), l.check("k"), l.check("k")), (Ok(()), Ok(()), Err(1)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check("k"), Ok(()));
        assert_eq!(l.check("k"), Err(1));
        clock.advance(Duration::from_secs(10));
        assert_eq!((l.check("k"), l.check("k"), l.check("k")), (Ok(()), Ok(()), Err(1)), "a burst is one second's worth");
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(KeyedRateLimit::per_second(0).is_none());
        assert!(KeyedRateLimit::per_second(1).is_some());
    }
}
