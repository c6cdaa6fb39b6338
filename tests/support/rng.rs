//! A seeded SplitMix64 generator for property tests: reproducible, no crate needed.
//! `FLAGRELAY_PROPS_SEED` overrides the seed; the seed in use is printed.
#![allow(dead_code)]

pub struct Rng(u64);

impl Rng {
    pub fn seeded(default: u64) -> Rng {
        let seed = std::env::var("FLAGRELAY_PROPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        println!("FLAGRELAY_PROPS_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// A proptest config with `cases` cases drawn from the seed `FLAGRELAY_PROPS_SEED`, or
/// `default_seed` if it is unset; the seed is printed. Failures are not persisted: the fixed seed
/// reproduces them.
pub fn config(default_seed: u64, cases: u32) -> proptest::test_runner::Config {
    let seed = std::env::var("FLAGRELAY_PROPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default_seed);
    println!("FLAGRELAY_PROPS_SEED={seed}");
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Default::default()
    }
}
