//! What a feature version costs in memory, estimated from its shape ([`feature_bytes`]): the
//! replay ring's byte budget counts this, so that `sse.replay_bytes` bounds what the ring really
//! holds, not the (much smaller) encoded size. A big feature is mostly condition values, each a
//! JSON value of its own in the typed view: a 700 kB control of 50,000 user ids is ~5 MB parsed.
//!
//! Invariants: pure and deterministic (the ring adds and subtracts the same number); linear in
//! the feature, with no recursion (values are walked with an explicit stack); within ~20% of the
//! allocator's count for big features (`tests/held_memory.rs` checks it).

use std::mem::size_of;

use serde_json::Value;

use crate::model::{Condition, Feature, Rule, Variant, VariantSplit};

/// What one map entry costs beyond its key and value: the index map's bucket hash and index slot.
const MAP_ENTRY: usize = 2 * size_of::<usize>();

/// The heap a JSON value holds below itself (not counting its own `size_of::<Value>()`).
pub fn value_bytes(v: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => total += s.capacity(),
            Value::Array(a) => {
                total += a.capacity() * size_of::<Value>();
                stack.extend(a.iter());
            }
            Value::Object(o) => {
                total += o.len() * (size_of::<(String, Value)>() + MAP_ENTRY);
                for (k, v) in o {
                    total += k.capacity();
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

fn string(s: &str) -> usize {
    s.len()
}

fn condition(c: &Condition) -> usize {
    let values: usize = c.values.iter().map(value_bytes).sum();
    size_of::<Condition>() + string(&c.target) + string(&c.operator) + c.values.capacity() * size_of::<Value>() + values
}

fn split(s: &VariantSplit) -> usize {
    size_of::<VariantSplit>() + string(&s.variant_key)
}

fn rule(r: &Rule) -> usize {
    let conditions: usize = r.audience.iter().flat_map(|a| &a.conditions).map(condition).sum();
    size_of::<Rule>() + conditions + r.variant_splits.iter().map(split).sum::<usize>()
}

fn variant(v: &Variant) -> usize {
    size_of::<Variant>() + string(&v.key) + v.name.as_deref().map_or(0, string) + v.value.as_ref().map_or(0, value_bytes)
}

/// The memory a feature version holds: the struct behind its `Arc`, its encoded JSON and its
/// typed view.
pub fn feature_bytes(f: &Feature) -> usize {
    let c = &f.control;
    let strings = string(&f.key) + string(&c.key) + c.off_variant_key.as_deref().map_or(0, string) + c.salt.as_deref().map_or(0, string);
    size_of::<Feature>() + 16 + f.json.len() + strings + c.rules.iter().map(rule).sum::<usize>() + c.variants.iter().map(variant).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_value_counts_its_strings_arrays_and_maps() {
        assert_eq!(value_bytes(&json!(1)), 0);
        assert_eq!(value_bytes(&json!("abc")), 3);
        let a = json!(["ab", "c"]);
        assert_eq!(value_bytes(&a), 2 * size_of::<Value>() + 3);
        let o = json!({"k": "vv"});
        assert_eq!(value_bytes(&o), size_of::<(String, Value)>() + MAP_ENTRY + 1 + 2);
    }

    #[test]
    fn a_feature_with_many_condition_values_weighs_far_more_than_its_encoding() {
        let ids: Vec<String> = (0..1_000).map(|i| format!("user-{i:04}")).collect();
        let v = json!({"key": "f", "enabled": true, "rules": [
            {"audience": {"conditions": [{"target": "featureflow.user.id", "operator": "in", "values": ids}]}, "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]});
        let f = Feature::from_value("f", v).expect("valid");
        let bytes = feature_bytes(&f);
        assert!(bytes > 1_000 * size_of::<Value>(), "{bytes}");
        assert!(bytes > 5 * f.json.len(), "{bytes} for {} encoded", f.json.len());
    }
}
