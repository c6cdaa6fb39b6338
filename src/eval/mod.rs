//! The Featureflow rule engine (spec §3.4, §3.5, §4, §6.3): pure, synchronous, no I/O.
//!
//! Owns: [`CompiledFeature`] (a feature version with its conditions pre-compiled), full evaluation
//! ([`CompiledFeature::evaluate`]) and, in [`thin`], the partial evaluation served to thin clients;
//! the [`Context`] evaluated, its canonical encoding and size, and reading an OFREP context from
//! JSON tokens within its limits ([`OfrepContextSeed`]).
//!
//! Invariants:
//! - Compilation never fails and never panics. A feature whose splits cannot be walked (a rule whose
//!   splits are negative, empty-keyed or do not total 100; impossible for a validated
//!   [`Feature`]) is kept with a compile error, and only *its* evaluations report
//!   [`EvalError::InvalidFeature`]. Problems that only make one condition always false (unknown
//!   operator, invalid regex, unparseable date, wrongly typed value) are recorded as diagnostics.
//! - Evaluation order is the contract: disabled → `offVariantKey` (default `"off"`); otherwise the
//!   first matching rule in array order wins; conditions are AND-ed; a multi-valued attribute passes
//!   a condition if any of its values does; a missing attribute fails it; a rule with
//!   `defaultRule: true`, no audience or no conditions matches everyone; no match → `offVariantKey`.
//! - `featureflow.user.id` is always the context's effective id (`"anonymous"` when empty).
//! - Bucketing hashes `salt:featureKey:userKey` with the feature's `salt` (`"1"` when absent or empty),
//!   the feature's key, and the effective id. It is only computed when the matched rule really splits,
//!   which gives the same answer (zero-width splits are never picked) without the SHA-1.
//! - Evaluating does not allocate (`tests/eval_props.rs` counts): results borrow from the feature.
//! - Within a rule, conditions on the same target are placed next to each other at compile time and
//!   share one attribute lookup. Conditions are pure and AND-ed, so order does not change the result.
//!   Attribute lookup in a small context is a linear scan of the keys (see `operators`).

mod bucket;
mod context;
mod context_stream;
mod date;
mod operators;
pub mod thin;

use std::sync::Arc;

use serde_json::Value;

pub use bucket::{bucket, bucket_hash, split_index, split_walk, ANONYMOUS, DEFAULT_SALT};
pub use context::{Context, ContextError, DATE, HOUR_OF_DAY, MAX_ATTRIBUTES, MAX_VALUES, USER_ID};
pub use context_stream::OfrepContextSeed;
pub use date::{parse_instant, Instant};
pub use operators::CompiledCondition;
use operators::Lookup;
pub use thin::{ThinResult, ThinRule};

use crate::model::{Feature, FeatureControl, Rule};

/// Why an evaluation produced its variant. Mapping (for OFREP the HTTP layer uses the same names):
/// - `Disabled`: the feature is off; the variant is `offVariantKey`.
/// - `TargetingMatch`: a non-default rule (one with an audience and `defaultRule` not set) matched and
///   serves a single variant (one split of 100, or all weight on one variant).
/// - `Split`: the matched rule, default or not, divides weight among more than one variant, so the
///   variant came from the user's bucket.
/// - `Default`: the default rule (`defaultRule: true`, or no audience) matched and serves a single
///   variant; **also** when no rule matched and `offVariantKey` was served (`rule_index` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Disabled,
    TargetingMatch,
    Split,
    Default,
}

/// The result of evaluating one feature for one context. Borrows from the [`CompiledFeature`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation<'a> {
    pub variant: &'a str,
    pub reason: Reason,
    /// Index in `rules` of the rule that matched; `None` when disabled or nothing matched.
    pub rule_index: Option<usize>,
    /// The variant's `value` from the feature's `variants` catalogue, if it has one.
    pub value: Option<&'a Value>,
}

/// A feature that cannot be evaluated (see the module invariants).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("feature {key:?} cannot be evaluated: {reason}")]
    InvalidFeature { key: String, reason: String },
}

/// One rule, compiled.
#[derive(Debug)]
struct CompiledRule {
    /// Served without an audience: `defaultRule: true` or no `audience` (spec §3.3).
    is_default: bool,
    /// Grouped by target (see the module invariants). Empty for a rule that matches everyone:
    /// `defaultRule`, no audience, or no conditions.
    conditions: Vec<RuleCondition>,
    /// Some condition targets `featureflow.date` / `featureflow.hourofday`.
    has_time: bool,
    /// The only split with non-zero weight, if there is exactly one: no bucketing needed.
    single: Option<usize>,
    /// Per split, the index in `variants` of its catalogue entry (first with that key).
    values: Vec<Option<usize>>,
}

#[derive(Debug)]
struct RuleCondition {
    cond: CompiledCondition,
    /// Same target as the previous condition: reuse its lookup.
    reuse_lookup: bool,
}

impl CompiledRule {
    /// Whether every condition passes (thin clients: every non-time condition).
    fn matches(&self, ctx: &Context, skip_time: bool) -> bool {
        let mut found = Lookup::Missing;
        self.conditions.iter().all(|c| {
            if skip_time && c.cond.is_time {
                return true; // its whole group is time conditions too, so `found` is not reused
            }
            if !c.reuse_lookup {
                found = c.cond.lookup(ctx);
            }
            c.cond.matches_lookup(found)
        })
    }
}

/// Orders conditions so those on the same target are adjacent, keeping first-appearance order.
fn group_by_target(conditions: Vec<CompiledCondition>) -> Vec<RuleCondition> {
    let mut out: Vec<RuleCondition> = Vec::with_capacity(conditions.len());
    for cond in conditions {
        match out.iter().rposition(|g| g.cond.same_target(&cond)) {
            Some(i) => out.insert(i + 1, RuleCondition { cond, reuse_lookup: true }),
            None => out.push(RuleCondition { cond, reuse_lookup: false }),
        }
    }
    out
}

/// A feature version ready to evaluate; build it once per change with [`CompiledFeature::compile`].
#[derive(Debug)]
pub struct CompiledFeature {
    feature: Arc<Feature>,
    rules: Vec<CompiledRule>,
    off_value: Option<usize>,
    error: Option<String>,
    diagnostics: Vec<String>,
}

fn catalogue_index(c: &FeatureControl, variant_key: &str) -> Option<usize> {
    c.variants.iter().position(|v| v.key == variant_key).filter(|&i| c.variants[i].value.is_some())
}

/// Why a rule's splits cannot be walked, if they cannot.
fn split_problem(rule: &Rule) -> Option<String> {
    if rule.variant_splits.iter().any(|s| !(0..=100).contains(&s.split)) {
        return Some("a split is outside 0..=100".into());
    }
    if rule.variant_splits.iter().any(|s| s.variant_key.is_empty()) {
        return Some("a split has an empty variantKey".into());
    }
    let total: i64 = rule.variant_splits.iter().map(|s| s.split).sum();
    (total != 100).then(|| format!("splits sum to {total}, not 100"))
}

impl CompiledFeature {
    /// Compiles a feature. Cheap (one pass over the rules; regexes are the costliest part) and total.
    pub fn compile(feature: &Arc<Feature>) -> CompiledFeature {
        let c = &feature.control;
        let mut diagnostics = Vec::new();
        let mut error = None;
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, rule) in c.rules.iter().enumerate() {
            if let (None, Some(p)) = (&error, split_problem(rule)) {
                error = Some(format!("rule {i}: {p}"));
            }
            let conds = rule.audience.as_ref().map(|a| a.conditions.as_slice()).unwrap_or_default();
            let match_all = rule.default_rule || conds.is_empty();
            let mut conditions = Vec::new();
            if !match_all {
                for (j, cond) in conds.iter().enumerate() {
                    let (compiled, diag) = CompiledCondition::compile(cond);
                    diagnostics.extend(diag.map(|d| format!("rule {i} condition {j}: {d}")));
                    conditions.push(compiled);
                }
            }
            let mut weighted = rule.variant_splits.iter().enumerate().filter(|(_, s)| s.split > 0);
            let single = match (weighted.next(), weighted.next()) {
                (Some((k, _)), None) => Some(k),
                _ => None,
            };
            rules.push(CompiledRule {
                is_default: rule.default_rule || rule.audience.is_none(),
                has_time: conditions.iter().any(|c| c.is_time),
                conditions: group_by_target(conditions),
                single,
                values: rule.variant_splits.iter().map(|s| catalogue_index(c, &s.variant_key)).collect(),
            });
        }
        CompiledFeature {
            off_value: catalogue_index(c, c.off_variant()),
            feature: Arc::clone(feature),
            rules,
            error,
            diagnostics,
        }
    }

    /// The feature this was compiled from.
    pub fn feature(&self) -> &Arc<Feature> {
        &self.feature
    }

    /// The feature key.
    pub fn key(&self) -> &str {
        &self.feature.control.key
    }

    /// Why the feature cannot be evaluated, if it cannot (see the module invariants).
    pub fn compile_error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Conditions that can never match, with the reason (for logs and the admin API).
    pub fn diagnostics(&self) -> &[String] {
        &self.diagnostics
    }

    /// Evaluates the feature for a context (spec §3.4). A disabled feature evaluates to its
    /// `offVariantKey` even when it has a compile error; an enabled one with a compile error fails.
    pub fn evaluate(&self, ctx: &Context) -> Result<Evaluation<'_>, EvalError> {
        let c = &self.feature.control;
        if !c.enabled {
            return Ok(self.off(Reason::Disabled));
        }
        self.check()?;
        let mut bucket = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(ctx, false) {
                let (split, reason) = self.pick(i, ctx, &mut bucket)?;
                return Ok(Evaluation {
                    variant: &c.rules[i].variant_splits[split].variant_key,
                    reason,
                    rule_index: Some(i),
                    value: self.value(rule.values[split]),
                });
            }
        }
        Ok(self.off(Reason::Default))
    }

    fn check(&self) -> Result<(), EvalError> {
        match &self.error {
            None => Ok(()),
            Some(reason) => Err(EvalError::InvalidFeature { key: self.key().to_string(), reason: reason.clone() }),
        }
    }

    fn off(&self, reason: Reason) -> Evaluation<'_> {
        Evaluation {
            variant: self.feature.control.off_variant(),
            reason,
            rule_index: None,
            value: self.value(self.off_value),
        }
    }

    fn value(&self, index: Option<usize>) -> Option<&Value> {
        index.and_then(|i| self.feature.control.variants.get(i)).and_then(|v| v.value.as_ref())
    }

    /// The split rule `i` serves to `ctx`, and why; `bucket` caches the user's bucket.
    fn pick(&self, i: usize, ctx: &Context, bucket: &mut Option<u32>) -> Result<(usize, Reason), EvalError> {
        let rule = &self.rules[i];
        if let Some(k) = rule.single {
            let reason = if rule.is_default { Reason::Default } else { Reason::TargetingMatch };
            return Ok((k, reason));
        }
        let b = *bucket.get_or_insert_with(|| self.bucket_of(ctx));
        let split = split_index(&self.feature.control.rules[i].variant_splits, b).ok_or_else(|| {
            EvalError::InvalidFeature { key: self.key().to_string(), reason: format!("rule {i}: bucket {b} is past the splits") }
        })?;
        Ok((split, Reason::Split))
    }

    fn bucket_of(&self, ctx: &Context) -> u32 {
        let c = &self.feature.control;
        let salt = c.salt.as_deref().filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SALT);
        let key = if c.key.is_empty() { "feature" } else { c.key.as_str() };
        bucket(salt, key, ctx.effective_id())
    }
}

#[cfg(test)]
mod tests;
