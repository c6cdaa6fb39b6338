//! Fuzz target `rule_engine`: the rule engine on arbitrary features and contexts. The feature
//! is compiled as typed, without validation (the engine must not panic on a feature the model
//! would reject: `CompiledFeature::compile` never fails), and validated too; the context is an
//! OFREP context or a Featureflow user.
//!
//! Input: feature JSON, a NUL byte, context JSON, a NUL byte, option bytes (bit 0: the context is
//! a Featureflow user; bit 1: inject a "now" from the next 4 bytes as the OFREP handler does).
//!
//! Invariants: evaluation is deterministic; it fails only for a feature with a compile error,
//! which a validated feature never has; its result is one the feature can produce
//! (`check_evaluation`); the thin-client evaluation emits only time conditions, and without
//! time conditions or time attributes names the variant the full evaluation names; every date
//! string parses or not without panicking.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use flagrelay::fuzzing::{parse_instant, CompiledFeature, Context, Feature, FeatureControl, ThinResult, DATE, HOUR_OF_DAY};
use flagrelay_fuzz::{check_evaluation, check_feature, split_nul};
use serde_json::Value;

fn is_time(target: &str) -> bool {
    target == DATE || target == HOUR_OF_DAY
}

fn run(data: &[u8]) {
    let (feature, rest) = split_nul(data);
    let (context, opts) = split_nul(rest);
    let Ok(raw) = serde_json::from_slice::<Value>(feature) else { return };
    let Ok(cv) = serde_json::from_slice::<Value>(context) else { return };
    let flags = opts.first().copied().unwrap_or(0);
    let ctx = if flags & 1 == 0 { Context::from_ofrep(&cv) } else { Context::from_featureflow_user(&cv) };
    let Ok(mut ctx) = ctx else { return };
    if flags & 2 != 0 {
        let secs = opts.get(1..5).map_or(0, |b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        if let Some(now) = Utc.timestamp_opt(secs, 0).single() {
            ctx.inject_now(now);
        }
    }
    for v in ctx.attributes.values().flatten() {
        if let Some(s) = v.as_str() {
            let _ = parse_instant(s);
        }
    }
    let key = raw.get("key").and_then(Value::as_str).unwrap_or("f").to_string();
    let validated = Feature::from_value(&key, raw.clone());
    let mut raw = raw;
    if let Some(obj) = raw.as_object_mut() {
        obj.entry("key").or_insert_with(|| Value::String(key.clone()));
    }
    let Ok(control) = serde_json::from_value::<FeatureControl>(raw.clone()) else {
        assert!(validated.is_err(), "validated a control that does not deserialize");
        return;
    };
    for cond in control.rules.iter().filter_map(|r| r.audience.as_ref()).flat_map(|a| &a.conditions) {
        for v in &cond.values {
            if let Some(s) = v.as_str() {
                let _ = parse_instant(s);
            }
        }
    }
    let json = bytes::Bytes::from(serde_json::to_vec(&raw).unwrap());
    let unvalidated = Arc::new(Feature { key: key.clone(), control, json });
    let compiled = CompiledFeature::compile(&unvalidated);
    let e = compiled.evaluate(&ctx);
    assert_eq!(e, compiled.evaluate(&ctx), "evaluation is not deterministic");
    match &e {
        Ok(e) => check_evaluation(&compiled, e),
        Err(err) => assert!(compiled.compile_error().is_some(), "{err} without a compile error"),
    }
    let thin = compiled.evaluate_thin(&ctx);
    assert_eq!(thin.is_err(), e.is_err());
    if let (Ok(e), Ok(t)) = (&e, &thin) {
        let c = &unvalidated.control;
        if let ThinResult::Rules(rules) = t {
            assert!(!rules.is_empty());
            assert!(rules.iter().all(|r| r.conditions.iter().all(|c| is_time(&c.target))), "{t:?}");
        }
        let timed = c.rules.iter().filter_map(|r| r.audience.as_ref()).flat_map(|a| &a.conditions).any(|c| is_time(&c.target));
        let timed_ctx = ctx.attributes.keys().any(|k| is_time(k));
        if !timed && !timed_ctx {
            let variant = match t {
                ThinResult::Variant(v) => *v,
                ThinResult::Rules(r) => {
                    assert_eq!(r.len(), 1, "{t:?}");
                    r[0].variant
                }
            };
            assert_eq!(variant, e.variant, "thin and full evaluation differ");
        }
    }
    if let Ok(f) = validated {
        check_feature(&key, &f);
        let c = CompiledFeature::compile(&f);
        let e = c.evaluate(&ctx).unwrap();
        check_evaluation(&c, &e);
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
