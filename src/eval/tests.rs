//! Unit tests for whole-feature evaluation, reasons, compile errors and thin-client output.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::model::FeatureControl;

fn feature(v: Value) -> CompiledFeature {
    let f = Feature::from_value("f", v).unwrap_or_else(|e| panic!("{e}"));
    CompiledFeature::compile(&f)
}

/// Builds a feature without validation (to reach states a validated feature cannot be in).
fn unvalidated(v: Value) -> CompiledFeature {
    let control: FeatureControl = serde_json::from_value(v.clone()).unwrap();
    let f = Arc::new(Feature { key: control.key.clone(), control, json: Bytes::from(v.to_string()) });
    CompiledFeature::compile(&f)
}

fn rule(conditions: Value, splits: Value) -> Value {
    json!({"defaultRule": false, "audience": {"conditions": conditions}, "variantSplits": splits})
}

fn default(splits: Value) -> Value {
    json!({"defaultRule": true, "variantSplits": splits})
}

fn checkout() -> CompiledFeature {
    feature(json!({"key": "f", "enabled": true, "offVariantKey": "off",
        "variants": [{"key": "on", "value": {"color": "#0066cc"}}, {"key": "off"}, {"key": "blue", "value": "b"}],
        "rules": [
            rule(json!([{"target": "user_role", "operator": "in", "values": ["beta", "pvt_tester"]},
                        {"target": "tier", "operator": "equals", "values": ["gold"]}]),
                 json!([{"variantKey": "on", "split": 100}, {"variantKey": "off", "split": 0}])),
            rule(json!([{"target": "tier", "operator": "equals", "values": ["silver"]}]),
                 json!([{"variantKey": "on", "split": 50}, {"variantKey": "off", "split": 50}])),
            default(json!([{"variantKey": "blue", "split": 100}])),
        ]}))
}

#[test]
fn first_matching_rule_wins_with_reasons() {
    let f = checkout();
    let e = f.evaluate(&Context::new("alice").with("user_role", "alpha").with("user_role", "beta").with("tier", "gold")).unwrap();
    assert_eq!((e.variant, e.reason, e.rule_index), ("on", Reason::TargetingMatch, Some(0)));
    assert_eq!(e.value, Some(&json!({"color": "#0066cc"})));
    let e = f.evaluate(&Context::new("alice").with("user_role", "beta")).unwrap();
    assert_eq!((e.variant, e.reason, e.rule_index, e.value), ("blue", Reason::Default, Some(2), Some(&json!("b"))));
    let e = f.evaluate(&Context::new("alice").with("tier", "silver")).unwrap();
    assert_eq!((e.reason, e.rule_index), (Reason::Split, Some(1)));
    let want = split_walk(&f.feature().control.rules[1].variant_splits, bucket("1", "f", "alice"));
    assert_eq!(Some(e.variant), want);
}

#[test]
fn disabled_and_no_match_serve_off_variant() {
    let f = feature(json!({"enabled": false, "rules": [default(json!([{"variantKey": "on", "split": 100}]))]}));
    let e = f.evaluate(&Context::new("u")).unwrap();
    assert_eq!((e.variant, e.reason, e.rule_index, e.value), ("off", Reason::Disabled, None, None));
    let f = feature(json!({"enabled": true, "offVariantKey": "dark", "variants": [{"key": "dark", "value": 0}],
        "rules": [rule(json!([{"target": "x", "operator": "equals", "values": ["y"]}]), json!([{"variantKey": "on", "split": 100}]))]}));
    let e = f.evaluate(&Context::new("u")).unwrap();
    assert_eq!((e.variant, e.reason, e.rule_index, e.value), ("dark", Reason::Default, None, Some(&json!(0))));
}

#[test]
fn salt_and_anonymous_bucketing() {
    let splits = json!([{"variantKey": "a", "split": 50}, {"variantKey": "b", "split": 50}]);
    let walk = |salt: &str, user: &str| {
        let s: Vec<crate::model::VariantSplit> = serde_json::from_value(splits.clone()).unwrap();
        split_walk(&s, bucket(salt, "f", user)).unwrap().to_string()
    };
    let f = feature(json!({"enabled": true, "salt": "7", "rules": [default(splits.clone())]}));
    for user in ["alice", "bob", "carol", "dave", "eve", ""] {
        let got = f.evaluate(&Context::new(user)).unwrap().variant;
        assert_eq!(got, walk("7", if user.is_empty() { "anonymous" } else { user }), "{user}");
    }
    let f = feature(json!({"enabled": true, "salt": "", "rules": [default(splits.clone())]}));
    assert_eq!(f.evaluate(&Context::new("alice")).unwrap().variant, walk("1", "alice"));
}

#[test]
fn broken_feature_fails_only_itself_unless_disabled() {
    let broken = json!({"key": "f", "enabled": true, "rules": [default(json!([{"variantKey": "on", "split": 60}]))]});
    let f = unvalidated(broken.clone());
    assert_eq!(f.compile_error(), Some("rule 0: splits sum to 60, not 100"));
    let err = f.evaluate(&Context::new("u")).unwrap_err();
    assert_eq!(err.to_string(), "feature \"f\" cannot be evaluated: rule 0: splits sum to 60, not 100");
    assert!(f.evaluate_thin(&Context::new("u")).is_err());
    let mut off = broken;
    off["enabled"] = json!(false);
    assert_eq!(unvalidated(off).evaluate(&Context::new("u")).unwrap().reason, Reason::Disabled);
    assert!(checkout().compile_error().is_none());
}

#[test]
fn bad_conditions_are_diagnostics_not_errors() {
    let f = unvalidated(json!({"key": "f", "enabled": true, "rules": [
        rule(json!([{"target": "a", "operator": "fakeOperator", "values": ["x"]}]), json!([{"variantKey": "on", "split": 100}])),
        rule(json!([{"target": "a", "operator": "matches", "values": ["[unclosed"]}]), json!([{"variantKey": "on", "split": 100}])),
        default(json!([{"variantKey": "fallback", "split": 100}]))]}));
    assert_eq!(f.diagnostics().len(), 2, "{:?}", f.diagnostics());
    assert!(f.diagnostics()[0].starts_with("rule 0 condition 0:"));
    assert_eq!(f.evaluate(&Context::new("u").with("a", "x")).unwrap().variant, "fallback");
}

fn thin_json(f: &CompiledFeature, ctx: &Context) -> Value {
    serde_json::to_value(f.evaluate_thin(ctx).unwrap()).unwrap()
}

#[test]
fn thin_resolves_role_server_side_and_emits_only_the_date_condition() {
    let f = feature(json!({"key": "f", "enabled": true,
        "variants": [{"key": "on", "value": {"x": 1}}],
        "rules": [
            rule(json!([{"target": "user_role", "operator": "in", "values": ["secret-role", "beta"]},
                        {"target": "featureflow.date", "operator": "after", "values": ["2026-12-01"]}]),
                 json!([{"variantKey": "on", "split": 100}])),
            default(json!([{"variantKey": "off", "split": 100}]))]}));
    let beta = Context::new("alice").with("user_role", "beta");
    let out = thin_json(&f, &beta);
    assert_eq!(out, json!({"rules": [
        {"audience": {"conditions": [{"target": "featureflow.date", "operator": "after", "values": ["2026-12-01"]}]},
         "variant": "on", "value": {"x": 1}},
        {"variant": "off"}]}));
    assert!(!out.to_string().contains("secret-role"), "non-time rule values never leave the server");
    assert_eq!(thin_json(&f, &Context::new("bob").with("user_role", "alpha")), json!("off"));
}

#[test]
fn thin_single_results_and_off_fallback() {
    let f = checkout();
    let gold = Context::new("alice").with("user_role", "beta").with("tier", "gold");
    assert_eq!(thin_json(&f, &gold), json!({"rules": [{"variant": "on", "value": {"color": "#0066cc"}}]}));
    let f = feature(json!({"enabled": true, "offVariantKey": "dark", "rules": [
        rule(json!([{"target": "featureflow.hourofday", "operator": "lessThan", "values": [12]}]),
             json!([{"variantKey": "morning", "split": 100}]))]}));
    assert_eq!(thin_json(&f, &Context::new("u")), json!({"rules": [
        {"audience": {"conditions": [{"target": "featureflow.hourofday", "operator": "lessThan", "values": [12]}]}, "variant": "morning"},
        {"variant": "dark"}]}));
    let f = feature(json!({"enabled": false, "offVariantKey": "dark", "variants": [{"key": "dark", "value": [1]}]}));
    assert_eq!(thin_json(&f, &Context::new("u")), json!({"rules": [{"variant": "dark", "value": [1]}]}));
    let f = feature(json!({"enabled": true, "rules": [default(json!([{"variantKey": "on", "split": 100}]))]}));
    assert_eq!(thin_json(&f, &Context::new("u")), json!("on"));
}

#[test]
fn thin_buckets_each_emitted_rule() {
    let f = feature(json!({"enabled": true, "rules": [
        rule(json!([{"target": "featureflow.date", "operator": "before", "values": ["2030-01-01"]}]),
             json!([{"variantKey": "a", "split": 50}, {"variantKey": "b", "split": 50}])),
        default(json!([{"variantKey": "c", "split": 1}, {"variantKey": "d", "split": 99}]))]}));
    let ctx = Context::new("alice");
    let b = bucket("1", "f", "alice");
    let ThinResult::Rules(rules) = f.evaluate_thin(&ctx).unwrap() else { panic!("expected rules") };
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].variant, if b <= 50 { "a" } else { "b" });
    assert_eq!(rules[1].variant, if b <= 1 { "c" } else { "d" });
    assert!(rules[1].conditions.is_empty());
}

#[test]
fn grouping_by_target_keeps_results_and_thin_condition_order() {
    let conds = json!([
        {"target": "featureflow.date", "operator": "after", "values": ["2026-01-01"]},
        {"target": "role", "operator": "in", "values": ["beta"]},
        {"target": "featureflow.hourofday", "operator": "lessThan", "values": [12]},
        {"target": "featureflow.date", "operator": "before", "values": ["2027-01-01"]},
        {"target": "role", "operator": "notIn", "values": ["banned"]}]);
    let f = feature(json!({"enabled": true, "rules": [rule(conds.clone(), json!([{"variantKey": "on", "split": 100}]))]}));
    let ctx = |role: &str, date: &str, hour: u32| Context::new("u").with("role", role).with(DATE, date).with(HOUR_OF_DAY, hour);
    assert_eq!(f.evaluate(&ctx("beta", "2026-06-01", 9)).unwrap().rule_index, Some(0));
    assert_eq!(f.evaluate(&ctx("beta", "2027-06-01", 9)).unwrap().rule_index, None);
    assert_eq!(f.evaluate(&ctx("beta", "2026-06-01", 13)).unwrap().rule_index, None);
    assert_eq!(f.evaluate(&ctx("alpha", "2026-06-01", 9)).unwrap().rule_index, None);
    let time: Vec<&Value> = conds.as_array().unwrap().iter().filter(|c| c["target"] != "role").collect();
    assert_eq!(thin_json(&f, &ctx("beta", "x", 0)), json!({"rules": [{"audience": {"conditions": time}, "variant": "on"}, {"variant": "off"}]}));
}
