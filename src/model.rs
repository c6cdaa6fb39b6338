//! The flag data model: Featureflow feature controls (spec §3), their validation (§3.3), and the
//! revision type. No I/O here.
//!
//! Invariants:
//! - A [`Feature`] is immutable once built. It keeps the JSON object exactly as upstream wrote it
//!   (`json`: its compact serialization, unknown fields and field order included, encoded once and
//!   shared by every response and frame that carries the feature) so the relay re-serves what it
//!   was given, plus a typed view (`control`) that the rule engine and validation read. The parsed
//!   JSON tree itself is not kept: it cost as much again as the typed view.
//! - Every `Feature` the sources build comes from [`Feature::from_value`] / `from_slice`, which run
//!   [`validate`]: invalid controls are rejected with a reason. The fields are public, so code (tests)
//!   can assemble an unvalidated one; the rule engine must not panic on it either.
//! - [`check_size`] is the one size rule, applied by the store's write path with its configured cap.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An environment revision: increases with every change the relay applies (in Redis mode it is the
/// upstream `rev`, which may go lower after a failover; see `store`).
pub type Revision = u64;

/// The operators of the Featureflow rule language (spec §3.5).
pub const OPERATORS: [&str; 13] = [
    "equals",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "in",
    "notIn",
    "greaterThan",
    "greaterThanOrEqual",
    "lessThan",
    "lessThanOrEqual",
    "before",
    "after",
];

/// Typed view of a feature control. Unknown fields are not modelled here; they stay in `Feature::json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureControl {
    pub key: String,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_variant_key: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_client_api: Option<bool>,
    #[serde(default)]
    pub track_events: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub default_rule: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    #[serde(default)]
    pub variant_splits: Vec<VariantSplit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audience {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub target: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariantSplit {
    pub variant_key: String,
    pub split: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl FeatureControl {
    /// The variant served when the feature is off (`"off"` when upstream gave none, as .NET/Python do).
    pub fn off_variant(&self) -> &str {
        self.off_variant_key.as_deref().unwrap_or("off")
    }

    /// The catalogue value of a variant, if the catalogue has one.
    pub fn variant_value(&self, variant_key: &str) -> Option<&Value> {
        self.variants
            .iter()
            .find(|v| v.key == variant_key)
            .and_then(|v| v.value.as_ref())
    }
}

/// Why a feature control was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feature {key:?}: {reason}")]
pub struct InvalidFeature {
    pub key: String,
    pub reason: String,
}

impl InvalidFeature {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        InvalidFeature { key: key.to_string(), reason: reason.into() }
    }
}

/// A validated feature: upstream's JSON verbatim (encoded) and its typed view.
#[derive(Debug)]
pub struct Feature {
    pub key: String,
    pub control: FeatureControl,
    pub json: Bytes,
}

impl PartialEq for Feature {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.json == other.json
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

impl Feature {
    /// Parses and validates one control stored under `map_key`. A control without `key` takes the
    /// map key; a control whose `key` differs from the map key is rejected.
    pub fn from_value(map_key: &str, mut raw: Value) -> Result<Arc<Feature>, InvalidFeature> {
        let obj = raw
            .as_object_mut()
            .ok_or_else(|| InvalidFeature::new(map_key, "a feature control must be a JSON object"))?;
        match obj.get("key") {
            None => {
                obj.insert("key".into(), Value::String(map_key.to_string()));
            }
            Some(Value::String(k)) if k == map_key => {}
            Some(Value::String(k)) => {
                return Err(InvalidFeature::new(
                    map_key,
                    format!("\"key\" is {k:?} but the feature is stored under {map_key:?}"),
                ))
            }
            Some(_) => return Err(InvalidFeature::new(map_key, "\"key\" must be a string")),
        }
        validate_shape(map_key, obj)?;
        // Serializing a Value we just parsed cannot fail; keep a typed error anyway.
        let json = serde_json::to_vec(&raw).map_err(|e| InvalidFeature::new(map_key, e.to_string()))?;
        let control: FeatureControl = serde_json::from_value(raw)
            .map_err(|e| InvalidFeature::new(map_key, e.to_string()))?;
        validate(&control)?;
        // Held for the feature's life: without the encoder's spare capacity.
        let json = Bytes::from(json.into_boxed_slice());
        Ok(Arc::new(Feature { key: map_key.to_string(), control, json }))
    }

    /// Parses a control from JSON bytes.
    pub fn from_slice(map_key: &str, bytes: &[u8]) -> Result<Arc<Feature>, InvalidFeature> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| InvalidFeature::new(map_key, format!("invalid JSON: {e}")))?;
        Feature::from_value(map_key, raw)
    }
}

/// Rejects a feature whose encoded JSON is longer than `max_bytes` (`upstream.max_feature_bytes`):
/// the store holds every version a replay may need, so one feature must not be able to make it
/// arbitrarily large. The store applies this to what either source delivers.
pub fn check_size(f: &Feature, max_bytes: usize) -> Result<(), InvalidFeature> {
    if f.json.len() > max_bytes {
        return Err(InvalidFeature::new(
            &f.key,
            format!("the control is {} bytes encoded, more than upstream.max_feature_bytes ({max_bytes})", f.json.len()),
        ));
    }
    Ok(())
}

/// Checks the raw JSON for shapes serde would silently coerce or that SDKs choke on.
fn validate_shape(key: &str, obj: &Map<String, Value>) -> Result<(), InvalidFeature> {
    if let Some(rules) = obj.get("rules") {
        let rules = rules
            .as_array()
            .ok_or_else(|| InvalidFeature::new(key, "\"rules\" must be an array"))?;
        for (i, rule) in rules.iter().enumerate() {
            let splits = rule.get("variantSplits").and_then(Value::as_array);
            for s in splits.into_iter().flatten() {
                match s.get("split") {
                    Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
                    _ => {
                        return Err(InvalidFeature::new(
                            key,
                            format!("rule {i}: every variantSplits[].split must be an integer"),
                        ))
                    }
                }
            }
            let conditions = rule
                .get("audience")
                .and_then(|a| a.get("conditions"))
                .and_then(Value::as_array);
            for (j, c) in conditions.into_iter().flatten().enumerate() {
                if !matches!(c.get("values"), Some(Value::Array(_))) {
                    return Err(InvalidFeature::new(
                        key,
                        format!("rule {i} condition {j}: \"values\" must be an array"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Validation per spec §3.3: rules with `audience` + `conditions`, integer splits summing to 100,
/// known operators, values arrays, at most one default rule and it comes last.
pub fn validate(c: &FeatureControl) -> Result<(), InvalidFeature> {
    let key = c.key.as_str();
    if key.is_empty() {
        return Err(InvalidFeature::new(key, "\"key\" must not be empty"));
    }
    let last = c.rules.len().saturating_sub(1);
    for (i, rule) in c.rules.iter().enumerate() {
        if rule.default_rule {
            if i != last {
                return Err(InvalidFeature::new(key, format!("rule {i}: the default rule must be the last rule")));
            }
            if rule.audience.as_ref().is_some_and(|a| !a.conditions.is_empty()) {
                return Err(InvalidFeature::new(key, format!("rule {i}: the default rule must not have conditions")));
            }
        } else {
            let audience = rule.audience.as_ref().ok_or_else(|| {
                InvalidFeature::new(key, format!("rule {i}: a non-default rule needs an \"audience\" with \"conditions\""))
            })?;
            for (j, cond) in audience.conditions.iter().enumerate() {
                if cond.target.is_empty() {
                    return Err(InvalidFeature::new(key, format!("rule {i} condition {j}: empty \"target\"")));
                }
                if !OPERATORS.contains(&cond.operator.as_str()) {
                    return Err(InvalidFeature::new(
                        key,
                        format!("rule {i} condition {j}: unknown operator {:?}", cond.operator),
                    ));
                }
                if cond.values.is_empty() {
                    return Err(InvalidFeature::new(key, format!("rule {i} condition {j}: \"values\" is empty")));
                }
                if cond.values.iter().any(|v| !(v.is_string() || v.is_number())) {
                    return Err(InvalidFeature::new(
                        key,
                        format!("rule {i} condition {j}: \"values\" may hold only strings and numbers"),
                    ));
                }
            }
        }
        let mut total: i64 = 0;
        for s in &rule.variant_splits {
            if !(0..=100).contains(&s.split) {
                return Err(InvalidFeature::new(key, format!("rule {i}: split {} is outside 0..=100", s.split)));
            }
            if s.variant_key.is_empty() {
                return Err(InvalidFeature::new(key, format!("rule {i}: empty variantKey")));
            }
            total += s.split;
        }
        if total != 100 {
            return Err(InvalidFeature::new(key, format!("rule {i}: splits sum to {total}, not 100")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> Arc<Feature> {
        match Feature::from_value("f", v) {
            Ok(f) => f,
            Err(e) => panic!("expected valid: {e}"),
        }
    }

    fn bad(v: Value) -> String {
        match Feature::from_value("f", v) {
            Ok(_) => panic!("expected invalid"),
            Err(e) => e.reason,
        }
    }

    fn default_rule() -> Value {
        json!({"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]})
    }

    #[test]
    fn keeps_unknown_fields_and_order() {
        let f = ok(json!({"zeta": 1, "key": "f", "enabled": false, "offVariantKey": "off", "custom": {"a": [1]}}));
        assert_eq!(&f.json[..], br#"{"zeta":1,"key":"f","enabled":false,"offVariantKey":"off","custom":{"a":[1]}}"#);
    }

    #[test]
    fn missing_key_takes_map_key() {
        let f = ok(json!({"enabled": false}));
        assert_eq!(f.control.key, "f");
    }

    #[test]
    fn rejects_mismatched_key() {
        assert!(bad(json!({"key": "g", "enabled": false})).contains("stored under"));
    }

    #[test]
    fn rejects_splits_not_summing_to_100() {
        let r = bad(json!({"enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 60}]}]}));
        assert!(r.contains("sum to 60"), "{r}");
    }

    #[test]
    fn rejects_fractional_split() {
        let r = bad(json!({"enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 33.3}, {"variantKey": "off", "split": 66.7}]}]}));
        assert!(r.contains("integer"), "{r}");
    }

    #[test]
    fn rejects_unknown_operator_and_scalar_values() {
        let rule = |op: &str, values: Value| {
            json!({"enabled": true, "rules": [
                {"defaultRule": false, "audience": {"conditions": [{"target": "t", "operator": op, "values": values}]},
                 "variantSplits": [{"variantKey": "on", "split": 100}]},
                default_rule()]})
        };
        assert!(bad(rule("fakeOperator", json!(["x"]))).contains("unknown operator"));
        assert!(bad(rule("equals", json!("x"))).contains("must be an array"));
        ok(rule("in", json!(["a", "b", 3])));
    }

    #[test]
    fn rejects_non_default_rule_without_audience() {
        let r = bad(json!({"enabled": true, "rules": [
            {"defaultRule": false, "variantSplits": [{"variantKey": "on", "split": 100}]}, default_rule()]}));
        assert!(r.contains("audience"), "{r}");
    }

    #[test]
    fn rejects_default_rule_not_last() {
        let r = bad(json!({"enabled": true, "rules": [default_rule(),
            {"defaultRule": false, "audience": {"conditions": []}, "variantSplits": [{"variantKey": "on", "split": 100}]}]}));
        assert!(r.contains("last"), "{r}");
    }

    #[test]
    fn a_feature_over_the_size_cap_is_invalid_and_says_by_how_much() {
        let f = ok(json!({"enabled": false, "padding": "x".repeat(100)}));
        assert_eq!(check_size(&f, f.json.len()), Ok(()));
        let e = check_size(&f, f.json.len() - 1).unwrap_err();
        assert!(e.reason.contains("upstream.max_feature_bytes"), "{e}");
        assert!(e.reason.contains(&f.json.len().to_string()), "{e}");
    }

    #[test]
    fn rejects_non_object() {
        assert!(bad(json!([1, 2])).contains("object"));
    }
}
