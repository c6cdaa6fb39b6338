//! Percentage-rollout bucketing and split walking (spec §4).
//!
//! Owns: the SHA-1 hash of `salt:featureKey:userKey`, the bucket 1..=100 derived from it, and the
//! walk that turns a bucket into a variant key.
//!
//! Invariants:
//! - Integer arithmetic only: the first 15 hex digits of the digest are the top 60 bits of the first
//!   8 bytes, read as a `u64`; the bucket is `that % 100 + 1`, so always in `1..=100`.
//! - No allocation and no formatting: the three parts and the separators are fed to the hasher.
//! - The split walk visits splits in array order with a running total and picks the first split whose
//!   total is `>=` the bucket, so zero-width splits are never picked.

use sha1::{Digest, Sha1};

use crate::model::VariantSplit;

/// The salt every SDK but Java/Python hashes with, and Java's default (spec §4).
pub const DEFAULT_SALT: &str = "1";

/// The user key used when the user id is empty (spec §4).
pub const ANONYMOUS: &str = "anonymous";

/// The first 15 hex digits of `SHA1(salt + ":" + feature_key + ":" + user_key)` as a number
/// (`format!("{:015x}", h)` gives the testbed's hash column).
pub fn bucket_hash(salt: &str, feature_key: &str, user_key: &str) -> u64 {
    let mut h = Sha1::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(feature_key.as_bytes());
    h.update(b":");
    h.update(user_key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 4
}

/// The bucket in `1..=100` of a user for a feature (spec §4). The arguments are used verbatim; the
/// engine substitutes [`DEFAULT_SALT`] and [`ANONYMOUS`] before calling this.
pub fn bucket(salt: &str, feature_key: &str, user_key: &str) -> u32 {
    // `% 100` of a u64 is < 100, so the cast is lossless.
    (bucket_hash(salt, feature_key, user_key) % 100) as u32 + 1
}

/// The index of the split a bucket falls into: the first whose running total is `>= bucket`.
/// `None` when the splits total less than the bucket (only possible for splits not summing to 100).
pub fn split_index(splits: &[VariantSplit], bucket: u32) -> Option<usize> {
    let mut total: i64 = 0;
    splits.iter().position(|s| {
        total = total.saturating_add(s.split);
        total >= i64::from(bucket)
    })
}

/// The variant key a bucket selects from `splits` (see [`split_index`]).
pub fn split_walk(splits: &[VariantSplit], bucket: u32) -> Option<&str> {
    split_index(splits, bucket).map(|i| splits[i].variant_key.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splits(s: &[(&str, i64)]) -> Vec<VariantSplit> {
        s.iter().map(|&(k, split)| VariantSplit { variant_key: k.into(), split }).collect()
    }

    #[test]
    fn worked_examples_from_spec() {
        assert_eq!(format!("{:015x}", bucket_hash("1", "f1", "alice")), "de5ce0fbc583fd8");
        assert_eq!(bucket("1", "f1", "alice"), 9);
        assert_eq!(format!("{:015x}", bucket_hash("5", "myfeature", "username")), "d6597d8516fcf35");
        assert_eq!(bucket("5", "myfeature", "username"), 74);
        assert_eq!(format!("{:015x}", bucket_hash("5", "my-feature-key", "username")), "8a694775bf85e89");
        assert_eq!(bucket("5", "my-feature-key", "username"), 42);
    }

    #[test]
    fn walk_uses_running_total_and_ge() {
        let s = splits(&[("off", 10), ("on", 90)]);
        assert_eq!(split_walk(&s, 9), Some("off"));
        assert_eq!(split_walk(&s, 10), Some("off"));
        assert_eq!(split_walk(&s, 11), Some("on"));
        assert_eq!(split_walk(&s, 100), Some("on"));
        let s = splits(&[("off", 0), ("on", 30), ("alpha", 30), ("alphav2", 0), ("beta", 30), ("betav2", 10)]);
        for (b, want) in [(1, "on"), (30, "on"), (31, "alpha"), (60, "alpha"), (61, "beta"), (91, "betav2"), (100, "betav2")] {
            assert_eq!(split_walk(&s, b), Some(want), "bucket {b}");
        }
    }

    #[test]
    fn walk_falls_through_when_short() {
        assert_eq!(split_walk(&splits(&[("on", 50)]), 51), None);
        assert_eq!(split_walk(&[], 1), None);
    }
}
