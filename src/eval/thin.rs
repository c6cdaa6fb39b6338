//! Thin-client partial evaluation (spec §5.1, "Suggested server-side compilation").
//!
//! Owns: which features thin clients see at all ([`served`], [`served_control`]: the one rule
//! every thin-client path, stream and OFREP filters through), [`CompiledFeature::evaluate_thin`]
//! and the per-feature value of the `/api/js/v1/evaluate` response body ([`ThinResult`]).
//!
//! Invariants:
//! - Only conditions on the time targets `featureflow.date` / `featureflow.hourofday` are ever
//!   emitted, exactly as upstream wrote them; every other condition is resolved here and its rule
//!   values never leave the server. A rule whose non-time conditions fail is dropped.
//! - Each emitted rule serves the variant the user's bucket selects from that rule's splits, and
//!   carries `value` from the catalogue when the variant has one.
//! - The list stops after the first rule without time conditions (it always matches). If no such rule
//!   was reached, an unconditional `{"variant": offVariantKey}` rule is appended so that the client,
//!   whose own fallback is `"off"`, serves what full evaluation would serve: `offVariantKey`.
//! - Shape decision: a result that is one unconditional rule (disabled, or no time conditions on the
//!   way) is the plain variant string when the variant has no catalogue value, and
//!   `{"rules":[{"variant":..,"value":..}]}` when it has one (so `jsonValue()` works on 2.2+ clients).
//! - For a context with no time attributes and a feature with no time conditions, the result always
//!   names the same variant as [`CompiledFeature::evaluate`] (`tests/eval_props.rs` checks this).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::context::is_time_target;
use super::{CompiledFeature, Context, EvalError};
use crate::model::{Condition, FeatureControl};

/// One entry of a feature's `{"rules": [...]}`: serializes as
/// `{"audience":{"conditions":[...]}, "variant": k, "value": v}` with `audience` omitted when there
/// are no conditions and `value` omitted when the variant has none.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinRule<'a> {
    /// The rule's time conditions; empty means unconditional.
    pub conditions: Vec<&'a Condition>,
    pub variant: &'a str,
    pub value: Option<&'a Value>,
}

/// A feature's entry in the thin-client response: a JSON string, or `{"rules": [...]}`.
#[derive(Debug, Clone, PartialEq)]
pub enum ThinResult<'a> {
    Variant(&'a str),
    Rules(Vec<ThinRule<'a>>),
}

struct Audience<'r, 'a>(&'r [&'a Condition]);

impl Serialize for Audience<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("conditions", self.0)?;
        m.end()
    }
}

impl Serialize for ThinRule<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = 1 + usize::from(!self.conditions.is_empty()) + usize::from(self.value.is_some());
        let mut m = s.serialize_map(Some(n))?;
        if !self.conditions.is_empty() {
            m.serialize_entry("audience", &Audience(&self.conditions))?;
        }
        m.serialize_entry("variant", self.variant)?;
        if let Some(v) = self.value {
            m.serialize_entry("value", v)?;
        }
        m.end()
    }
}

impl Serialize for ThinResult<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ThinResult::Variant(v) => s.serialize_str(v),
            ThinResult::Rules(rules) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("rules", rules)?;
                m.end()
            }
        }
    }
}

impl<'a> ThinResult<'a> {
    fn single(variant: &'a str, value: Option<&'a Value>) -> ThinResult<'a> {
        match value {
            None => ThinResult::Variant(variant),
            Some(_) => ThinResult::Rules(vec![ThinRule { conditions: Vec::new(), variant, value }]),
        }
    }
}

/// True if thin clients (the thin-client API, its streams, OFREP) may see this feature: not one
/// marked `deleted: true` (hidden as the Java SDK hides it), nor one with `inClientApi: false`
/// (upstream keeps it out of the client API, so browsers never see it). Absent means served.
pub fn served(f: &CompiledFeature) -> bool {
    served_control(&f.feature().control)
}

/// [`served`] on a feature control (for the store, which records what thin clients may hear of).
pub fn served_control(c: &FeatureControl) -> bool {
    !c.deleted && c.in_client_api != Some(false)
}

impl CompiledFeature {
    /// Partially evaluates the feature for a thin client: everything but the time conditions is
    /// resolved for `ctx` (see the module invariants). Fails like [`CompiledFeature::evaluate`] for an
    /// enabled feature with a compile error; the HTTP layer can then omit the feature (the client
    /// serves `"off"`).
    pub fn evaluate_thin(&self, ctx: &Context) -> Result<ThinResult<'_>, EvalError> {
        let c = &self.feature.control;
        if !c.enabled {
            return Ok(ThinResult::single(c.off_variant(), self.value(self.off_value)));
        }
        self.check()?;
        let mut out = Vec::new();
        let mut bucket = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(ctx, true) {
                continue;
            }
            let (split, _) = self.pick(i, ctx, &mut bucket)?;
            let conditions = match (&c.rules[i].audience, rule.has_time) {
                (Some(a), true) => a.conditions.iter().filter(|m| is_time_target(&m.target)).collect(),
                _ => Vec::new(),
            };
            let variant = c.rules[i].variant_splits[split].variant_key.as_str();
            let value = self.value(rule.values[split]);
            let last = conditions.is_empty();
            out.push(ThinRule { conditions, variant, value });
            if last {
                break;
            }
        }
        if out.last().is_none_or(|r| !r.conditions.is_empty()) {
            out.push(ThinRule { conditions: Vec::new(), variant: c.off_variant(), value: self.value(self.off_value) });
        }
        if out.len() == 1 {
            if let Some(r) = out.pop() {
                return Ok(ThinResult::single(r.variant, r.value));
            }
        }
        Ok(ThinResult::Rules(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Feature;

    fn feature(extra: Value) -> CompiledFeature {
        let mut v = json!({"key": "f", "enabled": true, "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        CompiledFeature::compile(&Feature::from_value("f", v).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn thin_clients_see_every_feature_but_deleted_ones_and_those_kept_out_of_the_client_api() {
        let cases = [
            (json!({}), true),
            (json!({"inClientApi": true}), true),
            (json!({"inClientApi": false}), false),
            (json!({"deleted": true}), false),
            (json!({"deleted": false, "inClientApi": true}), true),
        ];
        for (extra, want) in cases {
            assert_eq!(served(&feature(extra.clone())), want, "{extra}");
        }
    }
}
