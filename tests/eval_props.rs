//! Property tests for `flagrelay::eval` with a seeded PRNG (no extra crate): thousands of generated
//! contexts (odd JSON shapes, odd unicode, huge numbers, NaN-ish strings, deep nesting) and features.
//!
//! Properties: context construction, compilation, `evaluate` and `evaluate_thin` never panic; a
//! validated feature never fails to evaluate; the variant served is the off variant or one of the
//! matched rule's splits; thin output carries only time conditions and agrees with `evaluate` when
//! there are none; `bucket` is in 1..=100; a single 100% default rule always serves its variant;
//! evaluating a warmed-up feature allocates nothing.
//!
//! Set `FLAGRELAY_PROPS_SEED` to replay a run; the seed is printed and every failure names its case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;
use flagrelay::eval::{bucket, CompiledFeature, Context, Reason, ThinResult, DATE, HOUR_OF_DAY};
use flagrelay::model::{Feature, FeatureControl, OPERATORS};
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
use rng::Rng;

const STRINGS: &[&str] = &[
    "", "a", "beta", "alpha", "gold", "Beta", "NaN", "Infinity", "-0", "1e999", "0x10", "98", " 98", "true",
    "2026-07-03", "2026-07-03T00:00:01Z", "2026-07-32", "2026-7-3", "not-a-date", "2026-07-21T02:00:00-05:00",
    "9999-12-31T23:59:59.999999999Z", "[unclosed", "(a|b)*c", ".*", "^$", "\\", "\u{0}", "\u{202e}rtl", "ü", "🎉🎉",
    "e\u{301}", "\u{fffd}", "featureflow.user.id", "anonymous", "ａｂｃ", "a\nb", "\"quoted\"",
];
const TARGETS: &[&str] = &["a", "b", "role", "tier", "featureflow.user.id", DATE, HOUR_OF_DAY, "ü", ""];
const VARIANTS: &[&str] = &["on", "off", "blue", "green", "ü-variant", "x"];

fn string(r: &mut Rng) -> String {
    match r.below(4) {
        0 => {
            let n = r.below(12);
            (0..n).filter_map(|_| char::from_u32(r.next() as u32 % 0x11_0000)).collect()
        }
        1 => r.pick(STRINGS).repeat(1 + r.below(3)),
        _ => r.pick(STRINGS).to_string(),
    }
}

fn number(r: &mut Rng) -> Value {
    match r.below(8) {
        0 => json!(u64::MAX),
        1 => json!(i64::MIN),
        2 => json!(1e308),
        3 => json!(-1e-308),
        4 => json!(r.below(24)),
        5 => json!(r.next() as i64),
        6 => json!(f64::from_bits(r.next() & !(0x7ff << 52)) + r.below(10000) as f64),
        _ => json!(9000.5),
    }
}

fn scalar(r: &mut Rng) -> Value {
    if r.chance(50) {
        json!(string(r))
    } else {
        number(r)
    }
}

fn any_json(r: &mut Rng, depth: usize) -> Value {
    match if depth == 0 { r.below(4) } else { r.below(7) } {
        0 => Value::Null,
        1 => json!(r.chance(50)),
        2 => number(r),
        3 => json!(string(r)),
        4 => Value::Array((0..r.below(5)).map(|_| any_json(r, depth - 1)).collect()),
        5 => {
            let depth = 60 + r.below(60);
            deep(r, depth)
        }
        _ => Value::Object((0..r.below(5)).map(|_| (string(r), any_json(r, depth - 1))).collect()),
    }
}

/// A chain of nested arrays/objects, deeper than any attribute shape.
fn deep(r: &mut Rng, depth: usize) -> Value {
    (0..depth).fold(scalar(r), |v, i| if i % 2 == 0 { json!([v]) } else { json!({"k": v}) })
}

fn attributes(r: &mut Rng) -> Value {
    let mut m = Map::new();
    for _ in 0..r.below(6) {
        let v = match r.below(4) {
            0 => Value::Array((0..r.below(4)).map(|_| scalar(r)).collect()),
            1 => any_json(r, 3),
            _ => scalar(r),
        };
        m.insert(r.pick(TARGETS).to_string(), v);
    }
    Value::Object(m)
}

/// A context from a random document: usually a plausible user, sometimes anything at all.
fn context(r: &mut Rng) -> (Value, Context) {
    let doc = match r.below(6) {
        0 => any_json(r, 4),
        1 => {
            let mut m = attributes(r);
            if let Value::Object(o) = &mut m {
                o.insert("targetingKey".into(), if r.chance(80) { json!(string(r)) } else { any_json(r, 1) });
            }
            m
        }
        _ => json!({"id": if r.chance(90) { json!(string(r)) } else { any_json(r, 1) }, "attributes": attributes(r)}),
    };
    let a = Context::from_featureflow_user(&doc);
    let b = Context::from_ofrep(&doc);
    let ctx = a.or(b).unwrap_or_else(|_| Context::new(string(r)));
    (doc, ctx)
}

fn splits(r: &mut Rng) -> Value {
    let n = 1 + r.below(4);
    let mut left = 100i64;
    let mut out = Vec::new();
    for i in 0..n {
        let s = if i + 1 == n { left } else { r.below(left as usize + 1) as i64 };
        left -= s;
        out.push(json!({"variantKey": r.pick(VARIANTS), "split": s}));
    }
    Value::Array(out)
}

fn condition(r: &mut Rng) -> Value {
    let target = match r.pick(TARGETS) {
        &"" => "t",
        t => t,
    };
    let values: Vec<Value> = (0..1 + r.below(4)).map(|_| scalar(r)).collect();
    json!({"target": target, "operator": r.pick(&OPERATORS), "values": values})
}

/// A feature that passes the model's validation.
fn valid_feature(r: &mut Rng) -> Value {
    let mut rules: Vec<Value> = (0..r.below(5))
        .map(|_| {
            let conds: Vec<Value> = (0..r.below(5)).map(|_| condition(r)).collect();
            json!({"defaultRule": false, "audience": {"conditions": conds}, "variantSplits": splits(r)})
        })
        .collect();
    if r.chance(70) {
        rules.push(json!({"defaultRule": true, "variantSplits": splits(r)}));
    }
    let mut variants = Vec::new();
    for k in VARIANTS {
        match r.below(3) {
            0 => {}
            1 => variants.push(json!({"key": k})),
            _ => variants.push(json!({"key": k, "value": any_json(r, 2)})),
        }
    }
    let mut f = json!({"key": format!("k{}", string(r)), "enabled": r.chance(85), "rules": rules, "variants": variants});
    if r.chance(30) {
        f["offVariantKey"] = json!(r.pick(VARIANTS));
    }
    if r.chance(30) {
        f["salt"] = json!(string(r));
    }
    f
}

/// A feature the model would reject (random operators, bad splits), built without validation.
fn unvalidated_feature(r: &mut Rng) -> Option<Arc<Feature>> {
    let mut v = valid_feature(r);
    if let Some(rules) = v["rules"].as_array_mut() {
        for rule in rules.iter_mut() {
            if r.chance(30) {
                rule["variantSplits"] = json!([{"variantKey": "on", "split": r.below(250) as i64 - 50}]);
            }
            if let Some(conds) = rule["audience"]["conditions"].as_array_mut() {
                for c in conds.iter_mut() {
                    if !r.chance(30) {
                        continue;
                    }
                    c["operator"] = json!(string(r));
                    c["values"] = Value::Array((0..r.below(3)).map(|_| scalar(r)).collect());
                }
            }
        }
    }
    let control: FeatureControl = serde_json::from_value(v.clone()).ok()?;
    Some(Arc::new(Feature { key: control.key.clone(), control, json: Bytes::from(v.to_string()) }))
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

fn run_case(what: &str, case: usize, f: &Value, doc: &Value, body: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(body)) {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("{what} case {case} failed: {}\nfeature: {f}\ncontext: {doc}", msg.unwrap_or_default());
    }
}

#[test]
fn generated_features_and_contexts_never_panic_and_agree() {
    let mut r = Rng::seeded(0x5eed_f1a9);
    for case in 0..2000 {
        let fv = valid_feature(&mut r);
        let f = Feature::from_value(fv["key"].as_str().unwrap_or("k"), fv.clone());
        let f = f.unwrap_or_else(|e| panic!("case {case}: generator made an invalid feature: {e}\n{fv}"));
        for _ in 0..4 {
            let (doc, ctx) = context(&mut r);
            run_case("validated", case, &fv, &doc, || check_case(&f, &ctx, true));
        }
        if let Some(u) = unvalidated_feature(&mut r) {
            let (doc, ctx) = context(&mut r);
            run_case("unvalidated", case, &serde_json::from_slice(&u.json).unwrap_or_default(), &doc, || check_case(&u, &ctx, false));
        }
    }
}

#[test]
fn context_constructors_never_panic() {
    let mut r = Rng::seeded(0x5eed_f1a9);
    for _ in 0..5_000 {
        let doc = any_json(&mut r, 4);
        let _ = Context::from_featureflow_user(&doc);
        let _ = Context::from_ofrep(&doc);
        let _ = Context::from_featureflow_user(&json!({"id": string(&mut r), "attributes": doc.clone(), "sessionAttributes": doc}));
    }
    let deep_doc = deep(&mut r, 100);
    assert!(Context::from_ofrep(&json!({"x": deep_doc})).unwrap().values("x").is_none());
}

#[test]
fn bucket_is_always_1_to_100() {
    let mut r = Rng::seeded(0x5eed_f1a9);
    let mut seen = [false; 101];
    for _ in 0..20_000 {
        let b = bucket(&string(&mut r), &string(&mut r), &string(&mut r));
        assert!((1..=100).contains(&b), "bucket {b}");
        seen[b as usize] = true;
    }
    assert!(seen[1..].iter().all(|&s| s), "every bucket is reachable");
}

#[test]
fn a_single_full_default_rule_always_serves_its_variant() {
    let mut r = Rng::seeded(0x5eed_f1a9);
    for case in 0..3000 {
        let x = string(&mut r);
        let x = if x.is_empty() { "x".to_string() } else { x };
        let mut splits = vec![json!({"variantKey": x, "split": 100})];
        for _ in 0..r.below(3) {
            let at = r.below(splits.len() + 1);
            splits.insert(at, json!({"variantKey": r.pick(VARIANTS), "split": 0}));
        }
        let fv = json!({"key": format!("f{case}"), "enabled": true, "salt": string(&mut r),
            "rules": [{"defaultRule": true, "variantSplits": splits}]});
        let f = CompiledFeature::compile(&Feature::from_value(&format!("f{case}"), fv.clone()).unwrap());
        let (doc, ctx) = context(&mut r);
        run_case("single default", case, &fv, &doc, || {
            let e = f.evaluate(&ctx).unwrap();
            assert_eq!((e.variant, e.reason, e.rule_index), (x.as_str(), Reason::Default, Some(0)));
        });
    }
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
