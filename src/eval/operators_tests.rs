//! Unit tests for every operator's edge cases (spec §3.5, §8.5).

use serde_json::{json, Value};

use super::*;
use crate::eval::{DATE, HOUR_OF_DAY};

fn cond(target: &str, op: &str, values: Value) -> CompiledCondition {
    let values = match values {
        Value::Array(v) => v,
        other => vec![other],
    };
    CompiledCondition::compile(&Condition { target: target.into(), operator: op.into(), values }).0
}

/// `test(op, contextValue, ruleValues)` as the testbed defines it.
fn t(op: &str, ctx_value: Value, rule: Value) -> bool {
    cond("a", op, rule).matches(&Context::new("u").with("a", ctx_value))
}

#[test]
fn equals_is_strict_by_type() {
    assert!(t("equals", json!("my-test-value"), json!("my-test-value")));
    assert!(!t("equals", json!("my-test-value"), json!("My-test-value")));
    assert!(t("equals", json!("98"), json!("98")));
    assert!(!t("equals", json!("98"), json!(98)));
    assert!(!t("equals", json!(98), json!("98")));
    assert!(t("equals", json!(9000), json!(9000.0)));
    assert!(t("equals", json!(9000.1), json!(9000.1)));
    assert!(!t("equals", json!(9000.2), json!(9000.1)));
    assert!(t("equals", json!(u64::MAX), json!(u64::MAX)));
    assert!(!t("equals", json!(9007199254740993u64), json!(9007199254740992u64)));
    assert!(!t("equals", json!(9007199254740993u64), json!(9007199254740992.0)));
    assert!(!t("equals", json!(true), json!("true")), "a raw boolean value never matches");
    assert!(t("equals", json!("x"), json!(["x", "y"])) && !t("equals", json!("y"), json!(["x", "y"])));
}

#[test]
fn string_operators() {
    let v = || json!("my-test-value");
    assert!(t("contains", v(), json!("-test-v")));
    assert!(t("contains", v(), json!("my-test-value")));
    assert!(!t("contains", v(), json!("my-test-value-two")));
    assert!(t("contains", v(), json!("")));
    assert!(t("startsWith", v(), json!("my-test")) && !t("startsWith", v(), json!("-test-v")));
    assert!(t("endsWith", v(), json!("test-value")) && !t("endsWith", v(), json!("long-my-test-value")));
    assert!(!t("contains", json!(123), json!("2")), "numbers are not strings");
    assert!(!t("contains", json!("123"), json!(2)), "rule value must be a string");
    assert!(t("startsWith", json!("ünïcødé 🎉"), json!("ünï")) && t("endsWith", json!("ünïcødé 🎉"), json!("🎉")));
}

#[test]
fn matches_is_unanchored_search_and_fails_closed() {
    let v = || json!("my-test-value");
    assert!(t("matches", v(), json!("my.test.+")));
    assert!(t("matches", v(), json!("test")), "unanchored");
    assert!(!t("matches", v(), json!("wont-match")));
    assert!(t("matches", v(), json!(r"^[A-z\-]+$")));
    assert!(!t("matches", v(), json!("^[A-z]+$")));
    assert!(!t("matches", v(), json!("TEST")), "case-sensitive");
    for bad in ["[unclosed", "(unbalanced", "*bad-quantifier", "a{99999999}"] {
        assert!(!t("matches", v(), json!(bad)), "{bad}");
        let (_, diag) = CompiledCondition::compile(&Condition {
            target: "a".into(), operator: "matches".into(), values: vec![json!(bad)] });
        assert!(diag.unwrap().contains("invalid regex"));
    }
    assert!(t("matches", json!("oliver@featureflow.io"), json!("^(oliver).*$")));
    assert!(!t("matches", json!(42), json!("4")));
}

#[test]
fn in_and_not_in() {
    let set = || json!(["one", "two", "three"]);
    assert!(t("in", json!("two"), set()) && !t("in", json!("four"), set()));
    assert!(t("notIn", json!("four"), set()) && !t("notIn", json!("two"), set()));
    assert!(t("in", json!(3), json!(["3", 3])) && !t("in", json!(3), json!(["3"])));
    assert!(t("notIn", json!(3), json!(["3"])), "strict types: 3 equals none of [\"3\"]");
    let big: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    assert!(t("in", json!("v77"), json!(big)) && !t("in", json!("v100"), json!(big)));
    assert!(t("notIn", json!("v100"), json!(big)) && !t("notIn", json!("v0"), json!(big)));
    // ANY across a multi-valued attribute (spec §3.4).
    let ctx = Context::new("u").with("r", "admin").with("r", "beta");
    assert!(cond("r", "notIn", json!(["admin"])).matches(&ctx));
    assert!(cond("r", "in", json!(["beta"])).matches(&ctx));
}

#[test]
fn numeric_comparisons() {
    let cases = [
        ("greaterThan", 9000.0, 8999.0, true), ("greaterThan", 9000.0, 9000.0, false),
        ("greaterThan", 9000.2, 9000.1, true), ("greaterThan", 9000.5, 9001.0, false),
        ("greaterThanOrEqual", 9000.5, 9000.5, true), ("greaterThanOrEqual", 9000.0, 9001.0, false),
        ("lessThan", 9000.0, 9001.0, true), ("lessThan", 9000.5, 9000.5, false),
        ("lessThanOrEqual", 9000.0, 9000.0, true), ("lessThanOrEqual", 9000.2, 9000.1, false),
    ];
    for (op, c, r, want) in cases {
        assert_eq!(t(op, json!(c), json!(r)), want, "{c} {op} {r}");
    }
    assert!(t("greaterThanOrEqual", json!(1), json!(1)) && !t("lessThan", json!(1), json!(1)));
    assert!(!t("greaterThan", json!("9"), json!(1)), "strings are not numbers");
    assert!(!t("greaterThan", json!(9), json!("1")), "rule value must be a number");
    assert!(t("greaterThan", json!(u64::MAX), json!(i64::MAX)));
    assert!(!t("lessThan", json!(i64::MIN), json!(-1e300)));
    assert!(t("greaterThan", json!(1e300), json!(u64::MAX)));
    assert!(t("lessThan", json!(-1), json!(-0.5)) && t("greaterThan", json!(0), json!(-0.5)));
}

#[test]
fn dates() {
    let z = "2017-03-09T02:39:46.182Z";
    assert!(t("before", json!(z), json!("2017-04-09T02:39:46.182Z")));
    assert!(!t("before", json!(z), json!(z)) && !t("after", json!(z), json!(z)));
    assert!(t("after", json!("2026-07-21T02:00:00-05:00"), json!("2026-07-21T06:00:00Z")));
    assert!(t("before", json!("2026-07-21T23:00:00+10:00"), json!("2026-07-21T14:00:00Z")));
    assert!(t("after", json!("2026-07-03T00:00:01Z"), json!("2026-07-03")));
    assert!(!t("after", json!("2026-07-02T23:59:59Z"), json!("2026-07-03")));
    assert!(t("before", json!("2026-07-03"), json!("2026-07-03T00:00:01Z")));
    for bad in ["not-a-date", "2026-07-32", "2026-7-3", ""] {
        assert!(!t("after", json!(bad), json!("2000-01-01")) && !t("before", json!(bad), json!("2100-01-01")), "{bad}");
        assert!(!t("after", json!("2050-01-01"), json!(bad)), "rule value {bad}");
    }
    assert!(!t("after", json!(1_900_000_000_000u64), json!("2000-01-01")), "epoch millis are not dates");
}

#[test]
fn unknown_operator_and_empty_values_never_match() {
    assert!(!t("fakeOperator", json!("my-test-value"), json!("doesn't matter")));
    let (c, diag) = CompiledCondition::compile(&Condition { target: "a".into(), operator: "equals".into(), values: vec![] });
    assert!(!c.matches(&Context::new("u").with("a", "x")));
    assert!(diag.is_some());
}

#[test]
fn missing_attribute_fails_and_user_id_is_implicit() {
    assert!(!cond("nope", "notIn", json!(["x"])).matches(&Context::new("u")));
    let c = cond(USER_ID, "equals", json!("alice"));
    assert!(c.matches(&Context::new("alice")));
    assert!(!c.matches(&Context::new("bob").with(USER_ID, "alice")), "the engine's id wins");
    assert!(cond(USER_ID, "equals", json!("anonymous")).matches(&Context::new("")));
    assert!(cond(HOUR_OF_DAY, "equals", json!(1)).is_time && cond(DATE, "after", json!("2000-01-01")).is_time);
    assert!(!cond("featureflow.dates", "equals", json!(1)).is_time);
}

#[test]
fn lookup_is_the_same_for_small_and_large_contexts() {
    for n in [0, 1, LINEAR_LOOKUP_MAX - 1, LINEAR_LOOKUP_MAX, LINEAR_LOOKUP_MAX + 1, 100] {
        let ctx = (0..n).fold(Context::new("u"), |c, i| c.with(format!("k{i}"), format!("v{i}")));
        for i in 0..n {
            assert!(cond(&format!("k{i}"), "equals", json!(format!("v{i}"))).matches(&ctx), "n={n} k{i}");
        }
        assert!(!cond(&format!("k{n}"), "notIn", json!(["x"])).matches(&ctx), "n={n}: missing");
        assert!(!cond("k", "notIn", json!(["x"])).matches(&ctx), "n={n}: prefix is not a key");
    }
}
