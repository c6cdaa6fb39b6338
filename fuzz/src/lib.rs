//! The fuzz harness's shared part: the driver every target's `main` hands its `run` to
//! ([`main`]: AFL++'s persistent loop when built by `cargo afl build`, which sets `--cfg
//! fuzzing`; a replay of files otherwise), and the invariant checks several targets share
//! (a validated feature, a context, JSON equality that tolerates serde_json's best-effort float
//! parsing).
//!
//! Harness code: a broken invariant is a panic (`assert!`, `unwrap`), which AFL records as a
//! crash and the replay as a failure.

use std::sync::Arc;

use flagrelay::fuzzing::{check_size, validate, CompiledFeature, Context, Feature, Reason, MAX_ATTRIBUTES, MAX_VALUES};
use serde_json::Value;

mod replay;

/// Runs `run` on each input: under AFL++ (persistent mode) or, in a plain build, on the files
/// and directories named on the command line, or stdin (see [`replay`]).
pub fn main(run: fn(&[u8])) {
    #[cfg(fuzzing)]
    afl::fuzz(true, run);
    #[cfg(not(fuzzing))]
    replay::main(run);
}

/// `data` split at its first NUL byte (which valid JSON text never holds raw), and the rest.
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Two floats equal up to a few units in the last place: serde_json parses floats best-effort
/// (without its `float_roundtrip` feature, as the relay builds it), so re-parsing what it
/// printed may differ in the last bit. The relay passes numbers through; this is not its bug.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 8.0 * f64::EPSILON * a.abs().max(b.abs())
}

/// JSON equality, objects in order, floats with [`close`].
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if close(p, q))
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((kp, p), (kq, q))| kp == kq && json_eq(p, q))
        }
        _ => a == b,
    }
}

/// Context equality with [`json_eq`] for the values.
pub fn ctx_eq(a: &Context, b: &Context) -> bool {
    a.id == b.id
        && a.attributes.len() == b.attributes.len()
        && a.attributes.iter().all(|(k, va)| {
            b.attributes.get(k).is_some_and(|vb| va.len() == vb.len() && va.iter().zip(vb).all(|(p, q)| json_eq(p, q)))
        })
}

/// What every context a constructor accepted must satisfy: the stored-form rules of
/// `eval::context`, and a canonical encoding that reads back to it and whose length is the
/// size the limits check.
pub fn check_context(ctx: &Context) {
    assert!(ctx.attributes.len() <= MAX_ATTRIBUTES, "{} attributes", ctx.attributes.len());
    for (name, values) in &ctx.attributes {
        assert!(!values.is_empty(), "attribute {name:?} kept with no value");
        assert!(values.len() <= MAX_VALUES, "attribute {name:?}: {} values", values.len());
        assert!(values.iter().all(|v| v.is_string() || v.is_number()), "attribute {name:?}: {values:?}");
    }
    let canonical = ctx.canonical();
    assert_eq!(ctx.encoded_len(), canonical.len(), "encoded_len is not the canonical length");
    let back = Context::from_canonical(&canonical).unwrap();
    assert!(ctx_eq(ctx, &back), "canonical encoding does not read back: {canonical}");
    let n = ctx.encoded_len();
    assert!(ctx.check_bytes(n).is_ok());
    assert!(ctx.check_bytes(n - 1).is_err(), "a context of {n} bytes fits in {}", n - 1);
}

/// What every feature the model accepted must satisfy: its key, its validation, its size rule,
/// an encoding that validates again to the same feature, and a compilation without error whose
/// evaluations succeed and name a variant the feature can serve.
pub fn check_feature(map_key: &str, f: &Arc<Feature>) {
    assert_eq!(f.key, map_key);
    assert_eq!(f.control.key, map_key);
    validate(&f.control).unwrap();
    let n = f.json.len();
    assert!(check_size(f, n).is_ok());
    assert!(check_size(f, n - 1).is_err());
    let json: Value = serde_json::from_slice(&f.json).unwrap();
    assert_eq!(json.get("key"), Some(&Value::String(map_key.to_string())), "{json}");
    let again = Feature::from_slice(map_key, &f.json).unwrap();
    let again_json: Value = serde_json::from_slice(&again.json).unwrap();
    assert!(json_eq(&json, &again_json), "re-validated encoding differs:\n{json}\n{again_json}");
    let (c1, c2) = (serde_json::to_value(&f.control).unwrap(), serde_json::to_value(&again.control).unwrap());
    assert!(json_eq(&c1, &c2), "re-validated control differs:\n{c1}\n{c2}");

    let compiled = CompiledFeature::compile(f);
    assert_eq!(compiled.compile_error(), None, "a validated feature has a compile error");
    for ctx in [Context::default(), Context::new("user-1").with("tier", "gold"), Context::new("u").with("n", 7)] {
        let e = compiled.evaluate(&ctx).unwrap();
        check_evaluation(&compiled, &e);
        compiled.evaluate_thin(&ctx).unwrap();
    }
}

/// An evaluation's result is one the feature can produce: the off variant when disabled or
/// nothing matched, else a split of the matched rule; with the catalogue value of its variant.
pub fn check_evaluation(f: &CompiledFeature, e: &flagrelay::fuzzing::Evaluation<'_>) {
    let c = &f.feature().control;
    match e.rule_index {
        None => {
            assert_eq!(e.variant, c.off_variant());
            assert!(matches!(e.reason, Reason::Disabled | Reason::Default), "{e:?}");
            assert_eq!(e.reason == Reason::Disabled, !c.enabled, "{e:?}");
        }
        Some(i) => {
            assert!(c.enabled);
            let rule = &c.rules[i];
            assert!(rule.variant_splits.iter().any(|s| s.variant_key == e.variant), "{e:?} not a split of rule {i}");
        }
    }
    assert_eq!(e.value, c.variant_value(e.variant), "{e:?}");
}
