//! The seeded random source of the property tests (`tests/eval_props.rs`, `tests/thin_props.rs`):
//! a proptest [`Config`] with a fixed RNG seed, `FLAGRELAY_PROPS_SEED` or the test file's default,
//! printed, so every run draws the same cases and a failure replays by itself. Failures are not
//! persisted to regression files: the fixed seed already reproduces them, and proptest prints the
//! shrunk input. proptest's own `PROPTEST_*` variables (e.g. `PROPTEST_CASES`) still apply on top.

use proptest::test_runner::{Config, RngSeed};

/// `cases` cases drawn from the seed `FLAGRELAY_PROPS_SEED`, or `default_seed` if it is unset.
pub fn config(default_seed: u64, cases: u32) -> Config {
    let seed = std::env::var("FLAGRELAY_PROPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default_seed);
    println!("FLAGRELAY_PROPS_SEED={seed}");
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}
