//! Property tests for `flagrelay::eval` with proptest (a failing case is shrunk to a minimal one):
//! thousands of generated contexts (odd JSON shapes, odd unicode, huge numbers, NaN-ish strings,
//! deep nesting) and features.
//!
//! Properties: context construction, compilation, `evaluate` and `evaluate_thin` never panic; a
//! validated feature never fails to evaluate; the variant served is the off variant or one of the
//! matched rule's splits; thin output carries only time conditions and agrees with `evaluate` when
//! there are none; `bucket` is in 1..=100; a single 100% default rule always serves its variant;
//! evaluating a warmed-up feature allocates nothing.
//!
//! The seed is fixed (`support/rng.rs`): set `FLAGRELAY_PROPS_SEED` to draw other cases; the seed
//! is printed, and a failure prints its shrunk input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use flagrelay::eval::{bucket, CompiledFeature, Context, Reason, ThinResult, DATE, HOUR_OF_DAY};
use flagrelay::model::{Feature, FeatureControl, OPERATORS};
use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

#[path = "support/rng.rs"]
mod rng;

/// The default seed of every property here (`FLAGRELAY_PROPS_SEED` overrides it).
const SEED: u64 = 0x5eed_f1a9;

const STRINGS: &[&str] = &[
    "", "a", "beta", "alpha", "gold", "Beta", "NaN", "Infinity", "-0", "1e999", "0x10", "98", " 98", "true",
    "2026-07-03", "2026-07-03T00:00:01Z", "2026-07-32", "2026-7-3", "not-a-date", "2026-07-21T02:00:00-05:00",
    "9999-12-31T23:59:59.999999999Z", "[unclosed", "(a|b)*c", ".*", "^$", "\\", "\u{0}", "\u{202e}rtl", "ü", "🎉🎉",
    "e\u{301}", "\u{fffd}", "featureflow.user.id", "anonymous", "ａｂｃ", "a\nb", "\"quoted\"",
];
const TARGETS: &[&str] = &["a", "b", "role", "tier", "featureflow.user.id", DATE, HOUR_OF_DAY, "ü", ""];
const VARIANTS: &[&str] = &["on", "off", "blue", "green", "ü-variant", "x"];

/// Any unicode, or the odd strings above (sometimes repeated).
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => (select(STRINGS), 1..4usize).prop_map(|(s, n)| s.repeat(n)),
        2 => select(STRINGS).prop_map(str::to_string),
    ]
}

/// Extremes, small integers, any integer, finite floats of every magnitude.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!(-1e-308)),
        (0..24u64).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (any::<u64>(), 0..10_000u32).prop_map(|(bits, n)| json!(f64::from_bits(bits & !(0x7ff << 52)) + f64::from(n))),
        Just(json!(9000.5)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![string().prop_map(Value::String), number()]
}

/// Any JSON value, nesting up to `depth` (plus, sometimes, a chain far deeper).
fn any_json(depth: usize) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), string().prop_map(Value::String)];
    if depth == 0 {
        return leaf.boxed();
    }
    let inner = any_json(depth - 1);
    prop_oneof![
        4 => leaf,
        1 => vec(inner.clone(), 0..5).prop_map(Value::Array),
        1 => (60..120usize).prop_flat_map(deep),
        1 => vec((string(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
    ]
    .boxed()
}

/// A chain of `depth` nested arrays/objects around a scalar, deeper than any attribute shape.
fn deep(depth: usize) -> impl Strategy<Value = Value> {
    // Built by moving each level in (`json!` would re-serialize the whole chain at every level).
    let nest = |v, i| if i % 2 == 0 { Value::Array(vec![v]) } else { Value::Object(Map::from_iter([("k".to_string(), v)])) };
    scalar().prop_map(move |v| (0..depth).fold(v, nest))
}

fn attributes() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![1 => vec(scalar(), 0..4).prop_map(Value::Array), 1 => any_json(3), 2 => scalar()];
    vec((select(TARGETS), value), 0..6).prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A context and the document it was read from: usually a plausible user, sometimes anything at
/// all (then the context of a random id).
fn context() -> impl Strategy<Value = (Value, Context)> {
    let id = prop_oneof![9 => string().prop_map(Value::String), 1 => any_json(1)];
    let targeting_key = prop_oneof![4 => string().prop_map(Value::String), 1 => any_json(1)];
    let doc = prop_oneof![
        1 => any_json(4),
        1 => (attributes(), targeting_key).prop_map(|(mut m, k)| {
            m.insert("targetingKey".into(), k);
            Value::Object(m)
        }),
        4 => (id, attributes()).prop_map(|(id, a)| json!({"id": id, "attributes": a})),
    ];
    (doc, string()).prop_map(|(doc, fallback_id)| {
        let a = Context::from_featureflow_user(&doc);
        let b = Context::from_ofrep(&doc);
        let ctx = a.or(b).unwrap_or_else(|_| Context::new(fallback_id));
        (doc, ctx)
    })
}

/// 1 to 4 splits summing to 100.
fn splits() -> impl Strategy<Value = Value> {
    vec((select(VARIANTS), 0..=100i64), 1..=4).prop_map(|parts| {
        let n = parts.len();
        let mut left = 100;
        let out = parts.into_iter().enumerate().map(|(i, (variant, r))| {
            let s = if i + 1 == n { left } else { r % (left + 1) };
            left -= s;
            json!({"variantKey": variant, "split": s})
        });
        Value::Array(out.collect())
    })
}

fn condition() -> impl Strategy<Value = Value> {
    (select(TARGETS), select(OPERATORS.to_vec()), vec(scalar(), 1..=4)).prop_map(|(target, operator, values)| {
        let target = if target.is_empty() { "t" } else { target };
        json!({"target": target, "operator": operator, "values": values})
    })
}

/// A variant `key` of a feature: absent, without a value, or with any value.
fn variant(key: &'static str) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!({"key": key}))),
        any_json(2).prop_map(move |v| Some(json!({"key": key, "value": v}))),
    ]
}

/// A feature that passes the model's validation.
fn valid_feature() -> impl Strategy<Value = Value> {
    let rule = (vec(condition(), 0..5), splits())
        .prop_map(|(conds, splits)| json!({"defaultRule": false, "audience": {"conditions": conds}, "variantSplits": splits}));
    let variants: Vec<_> = VARIANTS.iter().map(|k| variant(k)).collect();
    (
        vec(rule, 0..5),
        weighted(0.7, splits()),
        variants,
        string(),
        weighted(0.85, Just(())),
        weighted(0.3, select(VARIANTS)),
        weighted(0.3, string()),
    )
        .prop_map(|(mut rules, default_splits, variants, key, enabled, off, salt)| {
            if let Some(s) = default_splits {
                rules.push(json!({"defaultRule": true, "variantSplits": s}));
            }
            let variants: Vec<Value> = variants.into_iter().flatten().collect();
            let mut f = json!({"key": format!("k{key}"), "enabled": enabled.is_some(), "rules": rules, "variants": variants});
            if let Some(off) = off {
                f["offVariantKey"] = json!(off);
            }
            if let Some(salt) = salt {
                f["salt"] = json!(salt);
            }
            f
        })
}

/// A feature the model would reject (random operators, bad splits), built without validation:
/// a valid feature with some rules' splits and some conditions replaced.
fn unvalidated_feature() -> impl Strategy<Value = Option<Arc<Feature>>> {
    let condition_damage = weighted(0.3, (string(), vec(scalar(), 0..3)));
    (valid_feature(), vec((weighted(0.3, -50..200i64), vec(condition_damage, 5)), 6)).prop_map(|(mut v, damage)| {
        for (rule, (split, conds)) in v["rules"].as_array_mut().into_iter().flatten().zip(damage) {
            if let Some(s) = split {
                rule["variantSplits"] = json!([{"variantKey": "on", "split": s}]);
            }
            for (c, d) in rule["audience"]["conditions"].as_array_mut().into_iter().flatten().zip(conds) {
                if let Some((operator, values)) = d {
                    c["operator"] = json!(operator);
                    c["values"] = Value::Array(values);
                }
            }
        }
        let control: FeatureControl = serde_json::from_value(v.clone()).ok()?;
        Some(Arc::new(Feature { key: control.key.clone(), control, json: Bytes::from(v.to_string()) }))
    })
}

fn has_time_conditions(f: &Feature) -> bool {
    let rules = f.control.rules.iter().filter(|r| !r.default_rule);
    rules.flat_map(|r| r.audience.iter().flat_map(|a| &a.conditions)).any(|c| c.target == DATE || c.target == HOUR_OF_DAY)
}

fn check_case(f: &Arc<Feature>, ctx: &Context, validated: bool) {
    let compiled = CompiledFeature::compile(f);
    let e = compiled.evaluate(ctx);
    let thin = compiled.evaluate_thin(ctx);
    assert_eq!(e.is_err(), thin.is_err(), "evaluate and evaluate_thin disagree on failing");
    if validated {
        assert!(compiled.compile_error().is_none(), "validated feature failed to compile");
    }
    let (Ok(e), Ok(thin)) = (e, thin) else { return };
    assert_eq!(Ok(e), compiled.evaluate(ctx), "evaluation is deterministic");
    match e.rule_index {
        Some(i) => assert!(f.control.rules[i].variant_splits.iter().any(|s| s.variant_key == e.variant && s.split > 0)),
        None => assert_eq!(e.variant, f.control.off_variant()),
    }
    assert_eq!(e.value, f.control.variant_value(e.variant));
    let json = serde_json::to_value(&thin).unwrap();
    for cond in json["rules"].as_array().into_iter().flatten().flat_map(|r| r["audience"]["conditions"].as_array().into_iter().flatten()) {
        let t = cond["target"].as_str().unwrap();
        assert!(t == DATE || t == HOUR_OF_DAY, "thin output leaked a non-time condition: {cond}");
    }
    let no_time_attrs = ctx.values(DATE).is_none() && ctx.values(HOUR_OF_DAY).is_none();
    if !has_time_conditions(f) && no_time_attrs {
        let thin_variant = match &thin {
            ThinResult::Variant(v) => *v,
            ThinResult::Rules(rules) => {
                assert_eq!(rules.len(), 1, "no time conditions, so one unconditional rule");
                assert!(rules[0].conditions.is_empty() && rules[0].value.is_some());
                rules[0].variant
            }
        };
        assert_eq!(thin_variant, e.variant, "thin and full evaluation disagree");
    }
}

#[test]
fn generated_features_and_contexts_never_panic_and_agree() {
    let cases = (valid_feature(), vec(context(), 4), unvalidated_feature(), context());
    proptest!(rng::config(SEED, 2000), |((fv, contexts, unvalidated, (_, unvalidated_ctx)) in cases)| {
        let f = Feature::from_value(fv["key"].as_str().unwrap_or("k"), fv.clone());
        let f = f.unwrap_or_else(|e| panic!("generator made an invalid feature: {e}\n{fv}"));
        for (_, ctx) in &contexts {
            check_case(&f, ctx, true);
        }
        if let Some(u) = unvalidated {
            check_case(&u, &unvalidated_ctx, false);
        }
    });
}

#[test]
fn context_constructors_never_panic() {
    proptest!(rng::config(SEED, 5000), |(doc in any_json(4), id in string(), deep_doc in deep(100))| {
        let _ = Context::from_featureflow_user(&doc);
        let _ = Context::from_ofrep(&doc);
        let _ = Context::from_featureflow_user(&json!({"id": id, "attributes": doc.clone(), "sessionAttributes": doc}));
        let nested = Context::from_ofrep(&json!({"x": deep_doc})).unwrap();
        prop_assert!(nested.values("x").is_none(), "an attribute nested 100 deep was kept");
    });
}

#[test]
fn bucket_is_always_1_to_100() {
    let seen = Cell::new([false; 101]);
    proptest!(rng::config(SEED, 20_000), |((salt, feature, id) in (string(), string(), string()))| {
        let b = bucket(&salt, &feature, &id);
        prop_assert!((1..=100).contains(&b), "bucket {}", b);
        let mut s = seen.get();
        s[b as usize] = true;
        seen.set(s);
    });
    assert!(seen.get()[1..].iter().all(|&s| s), "every bucket is reachable");
}

#[test]
fn a_single_full_default_rule_always_serves_its_variant() {
    let zero_splits = vec((any::<Index>(), select(VARIANTS)), 0..3);
    proptest!(rng::config(SEED, 3000), |(x in string(), zero_splits in zero_splits, salt in string(), (_, ctx) in context())| {
        let x = if x.is_empty() { "x".to_string() } else { x };
        let mut splits = vec![json!({"variantKey": x, "split": 100})];
        for (at, variant) in zero_splits {
            splits.insert(at.index(splits.len() + 1), json!({"variantKey": variant, "split": 0}));
        }
        let fv = json!({"key": "f", "enabled": true, "salt": salt, "rules": [{"defaultRule": true, "variantSplits": splits}]});
        let f = CompiledFeature::compile(&Feature::from_value("f", fv).unwrap());
        let e = f.evaluate(&ctx).unwrap();
        prop_assert_eq!((e.variant, e.reason, e.rule_index), (x.as_str(), Reason::Default, Some(0)));
    });
}

#[test]
fn evaluation_does_not_allocate() {
    let conds: Vec<Value> = (0..10)
        .map(|i| match i % 5 {
            0 => json!({"target": "role", "operator": "in", "values": ["beta", "admin", "pvt"]}),
            1 => json!({"target": "tier", "operator": "equals", "values": ["gold"]}),
            2 => json!({"target": "age", "operator": "greaterThan", "values": [18]}),
            3 => json!({"target": "email", "operator": "matches", "values": ["@example\\.com$"]}),
            _ => json!({"target": "signup", "operator": "before", "values": ["2026-07-03"]}),
        })
        .collect();
    let features = [
        json!({"enabled": true, "rules": []}),
        json!({"enabled": true, "rules": [{"defaultRule": false, "audience": {"conditions": conds}, "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]}),
        json!({"enabled": true, "variants": [{"key": "on", "value": {"a": 1}}],
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 50}, {"variantKey": "off", "split": 50}]}]}),
    ];
    let ctx = Context::new("user-42").with("role", "beta").with("tier", "gold").with("age", 30)
        .with("email", "a@example.com").with("signup", "2025-01-01T10:00:00Z");
    for fv in features {
        let f = CompiledFeature::compile(&Feature::from_value("f", fv).unwrap());
        let warm = f.evaluate(&ctx).unwrap();
        let before = allocations();
        for _ in 0..1000 {
            assert_eq!(f.evaluate(&ctx).unwrap(), warm);
        }
        let n = allocations() - before;
        println!("{:?}: {n} allocations in 1000 evaluations", warm.reason);
        assert_eq!(n, 0, "evaluate allocated");
    }
}
