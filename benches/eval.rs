//! Criterion benchmarks for the rule engine (`flagrelay::eval`).
//!
//! `cargo bench --bench eval -- --warm-up-time 1 --measurement-time 2`; results are recorded in
//! docs/benchmarks.md ("Rule engine (criterion)").

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flagrelay::eval::{CompiledFeature, Context};
use flagrelay::model::Feature;
use serde_json::{json, Value};

fn feature(key: &str, v: Value) -> Arc<Feature> {
    Feature::from_value(key, v).unwrap_or_else(|e| panic!("{e}"))
}

fn default_rule(splits: Value) -> Value {
    json!({"defaultRule": true, "variantSplits": splits})
}

fn no_rules() -> Value {
    json!({"enabled": true, "offVariantKey": "off", "rules": []})
}

/// One rule of 10 conditions, all passing for [`context`], covering 10 different operators.
fn ten_conditions() -> Value {
    let conds = json!([
        {"target": "user_role", "operator": "in", "values": ["admin", "beta", "pvt_tester"]},
        {"target": "tier", "operator": "equals", "values": ["gold"]},
        {"target": "age", "operator": "greaterThan", "values": [18]},
        {"target": "email", "operator": "endsWith", "values": ["@example.com"]},
        {"target": "email", "operator": "matches", "values": ["^[a-z.]+@"]},
        {"target": "signup", "operator": "before", "values": ["2026-07-03"]},
        {"target": "country", "operator": "notIn", "values": ["NZ", "US"]},
        {"target": "plan", "operator": "startsWith", "values": ["prem"]},
        {"target": "featureflow.user.id", "operator": "contains", "values": ["user-"]},
        {"target": "logins", "operator": "lessThanOrEqual", "values": [1000]}
    ]);
    json!({"enabled": true, "variants": [{"key": "on", "value": {"color": "#0066cc"}}], "rules": [
        {"defaultRule": false, "audience": {"conditions": conds}, "variantSplits": [{"variantKey": "on", "split": 100}]},
        default_rule(json!([{"variantKey": "off", "split": 100}]))]})
}

fn rollout() -> Value {
    json!({"enabled": true, "rules": [default_rule(json!([{"variantKey": "on", "split": 25}, {"variantKey": "off", "split": 75}]))]})
}

fn targeted() -> Value {
    json!({"enabled": true, "rules": [
        {"defaultRule": false, "audience": {"conditions": [
            {"target": "user_role", "operator": "in", "values": ["nobody"]},
            {"target": "tier", "operator": "equals", "values": ["gold"]}]},
         "variantSplits": [{"variantKey": "on", "split": 100}]},
        {"defaultRule": false, "audience": {"conditions": [{"target": "featureflow.date", "operator": "after", "values": ["2026-12-01"]}]},
         "variantSplits": [{"variantKey": "on", "split": 100}]},
        default_rule(json!([{"variantKey": "off", "split": 100}]))]})
}

fn context() -> Context {
    Context::new("user-42")
        .with("user_role", "beta")
        .with("user_role", "admin")
        .with("tier", "gold")
        .with("age", 30)
        .with("email", "ada.lovelace@example.com")
        .with("signup", "2025-01-01T10:00:00Z")
        .with("country", "AU")
        .with("plan", "premium")
        .with("logins", 42)
        .with("featureflow.date", "2026-08-01T12:00:00.000Z")
}

/// A realistic mix for evaluate-all: disabled, default-only, targeted, rollout and 10-condition
/// features in equal parts.
fn environment(n: usize) -> Vec<CompiledFeature> {
    (0..n)
        .map(|i| {
            let key = format!("feature-{i}");
            let v = match i % 5 {
                0 => json!({"enabled": false, "rules": [default_rule(json!([{"variantKey": "on", "split": 100}]))]}),
                1 => json!({"enabled": true, "rules": [default_rule(json!([{"variantKey": "on", "split": 100}]))]}),
                2 => targeted(),
                3 => rollout(),
                _ => ten_conditions(),
            };
            CompiledFeature::compile(&feature(&key, v))
        })
        .collect()
}

fn single(c: &mut Criterion) {
    let ctx = context();
    let mut g = c.benchmark_group("evaluate");
    for (name, v) in [("no_rules", no_rules()), ("ten_conditions", ten_conditions()), ("percentage_rollout", rollout())] {
        let f = CompiledFeature::compile(&feature("bench-feature", v));
        g.bench_function(name, |b| b.iter(|| black_box(f.evaluate(black_box(&ctx)))));
    }
    g.finish();

    let mut g = c.benchmark_group("other");
    let f = CompiledFeature::compile(&feature("bench-feature", ten_conditions()));
    g.bench_function("evaluate_thin/ten_conditions", |b| b.iter(|| black_box(f.evaluate_thin(black_box(&ctx)))));
    let raw = feature("bench-feature", ten_conditions());
    g.bench_function("compile/ten_conditions", |b| b.iter(|| black_box(CompiledFeature::compile(black_box(&raw)))));
    let user = json!({"id": "user-42", "attributes": {"user_role": ["beta", "admin"], "tier": "gold", "age": 30,
        "email": "ada.lovelace@example.com", "country": "AU", "plan": "premium", "logins": 42}});
    g.bench_function("context/from_featureflow_user", |b| b.iter(|| black_box(Context::from_featureflow_user(black_box(&user)))));
    g.finish();
}

fn evaluate_all(c: &mut Criterion) {
    let ctx = context();
    let mut g = c.benchmark_group("evaluate_all");
    for n in [20, 200, 2000] {
        let env = environment(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &env, |b, env| {
            b.iter(|| {
                for f in env {
                    let _ = black_box(f.evaluate(black_box(&ctx)));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, single, evaluate_all);
criterion_main!(benches);
