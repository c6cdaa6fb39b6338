//! Step definitions: each testbed step drives the public `flagrelay::eval` API.
//!
//! Rule and operator rows are run through whole-feature evaluation (a one-rule feature, matched iff
//! the evaluation reports `rule_index == Some(0)`), so they exercise compilation, context
//! construction and matching together. Features for rows that a validated model would reject (the
//! `fakeOperator` row) are built without validation, as the engine must still cope with them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flagrelay::eval::{bucket, bucket_hash, split_walk, CompiledFeature, Context, ContextError};
use flagrelay::model::{Audience, Condition, Feature, FeatureControl, Rule, Variant, VariantSplit};
use regex::Regex;
use serde_json::{json, Map, Value};

use gherkin::Step;

use super::rows::Row;

pub enum Outcome {
    Pass,
    Fail(String),
    NotApplicable(String),
}

/// Tags (without the `@`) whose scenarios describe an SDK architecture this engine does not have.
const NOT_APPLICABLE_TAGS: [(&str, &str); 2] = [
    (
        "builder-injects-implicit-attributes",
        "the engine defers implicit attributes to evaluation time (the @builder-defers scenario runs)",
    ),
    (
        "user-builder-validates-empty-id",
        "contexts are lenient by design: an empty id is the anonymous user (OFREP allows no targetingKey)",
    ),
];

#[derive(Default)]
struct World {
    salt: String,
    feature: String,
    id: String,
    hash: Option<u64>,
    bucket: Option<u32>,
    attributes: Map<String, Value>,
    conditions: Vec<Condition>,
    default_rule: bool,
    matched: Option<bool>,
    variant_value: u32,
    splits: Vec<VariantSplit>,
    split_key: Option<String>,
    target: Option<Value>,
    rule_values: Vec<Value>,
    output: Option<bool>,
    compiled: Option<CompiledFeature>,
    evaluated: Option<String>,
    json_value: Option<Option<Value>>,
    value_result: Option<String>,
    built: Option<Result<Context, ContextError>>,
}

type StepResult = Result<(), Outcome>;
type Handler = fn(&mut World, &[String], &Step) -> StepResult;

fn fail<T>(m: impl Into<String>) -> Result<T, Outcome> {
    Err(Outcome::Fail(m.into()))
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> StepResult {
    if got == want {
        Ok(())
    } else {
        fail(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn parse_json(s: &str) -> Result<Value, Outcome> {
    serde_json::from_str(s).or_else(|e| fail(format!("bad JSON {s:?} in the testbed: {e}")))
}

fn parse_bool(s: &str) -> Result<bool, Outcome> {
    s.parse().or_else(|_| fail(format!("not a boolean: {s:?}")))
}

/// A data table as header-keyed rows.
fn records(step: &Step) -> Result<Vec<Map<String, Value>>, Outcome> {
    let Some((header, rows)) = step.table.as_ref().and_then(|t| t.rows.split_first()) else { return fail("step needs a table") };
    Ok(rows
        .iter()
        .map(|r| header.iter().cloned().zip(r.iter().map(|c| Value::String(c.clone()))).collect())
        .collect())
}

fn field<'a>(rec: &'a Map<String, Value>, k: &str) -> Result<&'a str, Outcome> {
    rec.get(k).and_then(Value::as_str).ok_or_else(|| Outcome::Fail(format!("table has no {k:?} column")))
}

/// Compiles a feature from a typed control, without the model's validation.
fn compile(control: FeatureControl) -> CompiledFeature {
    let raw = serde_json::to_value(&control).unwrap_or_default();
    let json = Bytes::from(serde_json::to_vec(&raw).unwrap_or_default());
    CompiledFeature::compile(&Arc::new(Feature { key: control.key.clone(), control, json }))
}

fn control(key: &str, enabled: bool, rules: Vec<Rule>, variants: Vec<Variant>) -> FeatureControl {
    FeatureControl {
        key: key.into(),
        enabled,
        off_variant_key: Some("off".into()),
        rules,
        variants,
        salt: None,
        deleted: false,
        in_client_api: None,
        track_events: false,
    }
}

fn served(variant: &str) -> Vec<VariantSplit> {
    vec![VariantSplit { variant_key: variant.into(), split: 100 }]
}

/// Whether the one-rule feature built from `conditions` matches `user`.
fn rule_matches(default_rule: bool, conditions: Vec<Condition>, user: Value) -> Result<bool, Outcome> {
    let ctx = Context::from_featureflow_user(&user).or_else(|e| fail(format!("context: {e}")))?;
    let audience = (!default_rule).then_some(Audience { conditions });
    let rule = Rule { default_rule, audience, variant_splits: served("matched") };
    let f = compile(control("rule-under-test", true, vec![rule], Vec::new()));
    match f.evaluate(&ctx) {
        Ok(e) => Ok(e.rule_index == Some(0)),
        Err(e) => fail(format!("evaluate: {e}")),
    }
}

fn scalar(kind: &str, s: &str) -> Result<Value, Outcome> {
    match kind {
        "string" => Ok(Value::String(s.into())),
        "number" => Ok(Value::Number(s.parse().or_else(|_| fail(format!("not a number: {s:?}")))?)),
        other => fail(format!("unknown value type {other:?}")),
    }
}

fn evaluate_world(w: &mut World, user: &str) -> StepResult {
    let Some(f) = &w.compiled else { return fail("no feature was given") };
    match f.evaluate(&Context::new(user)) {
        Ok(e) => {
            w.evaluated = Some(e.variant.to_string());
            w.json_value = Some(e.value.cloned());
            Ok(())
        }
        Err(e) => fail(format!("evaluate: {e}")),
    }
}

fn feature_with_variants(w: &mut World, a: &[String], step: Option<&Step>) -> StepResult {
    let mut variants = Vec::new();
    for rec in step.map(records).transpose()?.unwrap_or_default() {
        let value = match field(&rec, "value")? {
            "" => None,
            v => Some(parse_json(v)?),
        };
        variants.push(Variant { key: field(&rec, "key")?.into(), name: None, value });
    }
    let rule = Rule { default_rule: true, audience: None, variant_splits: served(&a[1]) };
    w.compiled = Some(compile(control(&a[0], true, vec![rule], variants)));
    evaluate_world(w, "user")
}

fn steps() -> &'static [(Regex, Handler)] {
    static STEPS: OnceLock<Vec<(Regex, Handler)>> = OnceLock::new();
    STEPS.get_or_init(|| {
        let defs: Vec<(&str, Handler)> = vec![
            // bucketing.feature
            (r#"^the salt is "(.*)", the feature is "(.*)" and the id is "(.*)"$"#, |w, a, _| {
                (w.salt, w.feature, w.id) = (a[0].clone(), a[1].clone(), a[2].clone());
                Ok(())
            }),
            ("^the variant value is calculated$", |w, _, _| {
                w.hash = Some(bucket_hash(&w.salt, &w.feature, &w.id));
                w.bucket = Some(bucket(&w.salt, &w.feature, &w.id));
                Ok(())
            }),
            (r#"^the hash value calculated should equal "(.*)"$"#, |w, a, _| {
                check("hash", w.hash.map(|h| format!("{h:015x}")), Some(a[0].clone()))
            }),
            (r"^the result from the variant calculation should be (\d+)$", |w, a, _| {
                check("bucket", w.bucket.map(|b| b.to_string()), Some(a[0].clone()))
            }),
            // rules.feature
            ("^the rule is a default rule$", |w, _, _| {
                w.default_rule = true;
                Ok(())
            }),
            ("^the user attributes are$", |w, _, step| {
                for rec in records(step)? {
                    w.attributes.insert(field(&rec, "key")?.into(), parse_json(field(&rec, "value")?)?);
                }
                Ok(())
            }),
            ("^the rule's audience conditions are$", |w, _, step| {
                for rec in records(step)? {
                    let values = match parse_json(field(&rec, "values")?)? {
                        Value::Array(v) => v,
                        other => return fail(format!("values must be an array, got {other}")),
                    };
                    let (target, operator) = (field(&rec, "target")?.into(), field(&rec, "operator")?.into());
                    w.conditions.push(Condition { target, operator, values });
                }
                Ok(())
            }),
            ("^the rule is matched against the user$", |w, _, _| {
                let user = json!({"id": "user", "attributes": w.attributes});
                w.matched = Some(rule_matches(w.default_rule, std::mem::take(&mut w.conditions), user)?);
                Ok(())
            }),
            ("^the result from the match should be (true|false)$", |w, a, _| {
                check("match", w.matched, Some(parse_bool(&a[0])?))
            }),
            (r"^the variant value of (\d+)$", |w, a, _| {
                w.variant_value = a[0].parse().or_else(|_| fail("bad bucket"))?;
                Ok(())
            }),
            ("^the variant splits are$", |w, _, step| {
                for rec in records(step)? {
                    let split = field(&rec, "split")?.parse().or_else(|_| fail("bad split"))?;
                    w.splits.push(VariantSplit { variant_key: field(&rec, "variantKey")?.into(), split });
                }
                Ok(())
            }),
            ("^the variant split key is calculated$", |w, _, _| {
                w.split_key = split_walk(&w.splits, w.variant_value).map(str::to_string);
                Ok(())
            }),
            (r#"^the resulting variant should be "(.*)"$"#, |w, a, _| check("variant", w.split_key.clone(), Some(a[0].clone()))),
            // conditions.feature ("target" = the user's context value, "attribute" = the rule value)
            (r#"^the target is a "(\w+)" with the value of "(.*)"$"#, |w, a, _| {
                w.target = Some(scalar(&a[0], &a[1])?);
                Ok(())
            }),
            (r#"^the attribute is a "(\w+)" with the value of "(.*)"$"#, |w, a, _| {
                w.rule_values = vec![scalar(&a[0], &a[1])?];
                Ok(())
            }),
            (r#"^the attribute is an array of values "(.*)"$"#, |w, a, _| {
                w.rule_values = a[0].split(',').map(|s| Value::String(s.trim().into())).collect();
                Ok(())
            }),
            (r#"^the operator test "(.*)" is run$"#, |w, a, _| {
                let Some(target) = w.target.clone() else { return fail("no target value") };
                let cond = Condition { target: "attr".into(), operator: a[0].clone(), values: w.rule_values.clone() };
                w.output = Some(rule_matches(false, vec![cond], json!({"id": "user", "attributes": {"attr": target}}))?);
                Ok(())
            }),
            (r#"^the output should equal "(true|false)"$"#, |w, a, _| check("output", w.output, Some(parse_bool(&a[0])?))),
            // feature_evaluation.feature
            (r#"^the feature "(.*)" with an offVariantKey "(.*)", a default key of "(.*)" is (enabled|disabled)$"#, |w, a, _| {
                let rule = Rule { default_rule: true, audience: None, variant_splits: served(&a[2]) };
                let mut c = control(&a[0], a[3] == "enabled", vec![rule], Vec::new());
                c.off_variant_key = Some(a[1].clone());
                w.compiled = Some(compile(c));
                Ok(())
            }),
            (r#"^the feature is evaluated with a user "(.*)"$"#, |w, a, _| evaluate_world(w, &a[0])),
            (r#"^the evaluated variant should be "(.*)"$"#, |w, a, _| check("variant", w.evaluated.clone(), Some(a[0].clone()))),
            // json_value.feature
            (r#"^the feature "(.*)" evaluates to variant "(.*)" with variants$"#, |w, a, step| feature_with_variants(w, a, Some(step))),
            (r#"^the feature "(.*)" evaluates to variant "(.*)" with no variants$"#, |w, a, _| feature_with_variants(w, a, None)),
            ("^jsonValue is called$", |_, _, _| Ok(())),
            ("^value is called$", |w, _, _| {
                w.value_result = w.evaluated.clone();
                Ok(())
            }),
            ("^the json value should equal$", |w, _, step| {
                let want = parse_json(step.docstring.as_deref().unwrap_or_default())?;
                check("json value", w.json_value.clone(), Some(Some(want)))
            }),
            ("^the json value should be undefined$", |w, _, _| check("json value", w.json_value.clone(), Some(None))),
            (r#"^the result should be "(.*)"$"#, |w, a, _| check("value()", w.value_result.clone(), Some(a[0].clone()))),
            ("^an evaluate event should be queued", |_, _, _| {
                Err(Outcome::NotApplicable("asserts an SDK analytics event; the rule engine queues none".into()))
            }),
            // user_builder.feature: the builder is read as "a Featureflow user JSON given to Context::from_featureflow_user"
            ("^there is access to the User Builder module$", |_, _, _| Ok(())),
            (r#"^the builder is initialised with the id "(.*)"$"#, |w, a, _| {
                w.id = a[0].clone();
                Ok(())
            }),
            ("^the builder is given the following attributes$", |w, _, step| {
                for rec in records(step)? {
                    w.attributes.insert(field(&rec, "key")?.into(), json!(field(&rec, "value")?));
                }
                Ok(())
            }),
            ("^the user is built using the builder$", |w, _, _| {
                w.built = Some(Context::from_featureflow_user(&json!({"id": w.id, "attributes": w.attributes})));
                Ok(())
            }),
            (r#"^the result user should have an id "(.*)"$"#, |w, a, _| check("id", built(w)?.id.clone(), a[0].clone())),
            ("^the result user should have no attributes$", |w, _, _| check("attribute count", built(w)?.attributes.len(), 0)),
            (r#"^the result user should have a attribute with key "(.*)" and value "(.*)"$"#, |w, a, _| {
                check(&a[0], built(w)?.values(&a[0]).map(<[Value]>::to_vec), Some(vec![json!(a[1])]))
            }),
            (r#"^the result user should not have a attribute with key "(.*)"$"#, |w, a, _| {
                check(&a[0], built(w)?.values(&a[0]).map(<[Value]>::to_vec), None)
            }),
        ];
        defs.into_iter().map(|(p, h)| (Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}")), h)).collect()
    })
}

fn built(w: &World) -> Result<&Context, Outcome> {
    match &w.built {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => fail(format!("user rejected: {e}")),
        None => fail("no user was built"),
    }
}

/// Rows about dates: run again under non-UTC time zones.
pub fn is_date_row(row: &Row) -> bool {
    row.steps.iter().any(|s| {
        s.value.contains("\"before\"")
            || s.value.contains("\"after\"")
            || s.table.iter().flat_map(|t| t.rows.iter().flatten()).any(|c| c == "before" || c == "after" || c == "featureflow.date")
    })
}

pub fn run_row(row: &Row) -> Outcome {
    if let Some((tag, why)) = NOT_APPLICABLE_TAGS.iter().find(|(t, _)| row.tags.iter().any(|x| x == t)) {
        return Outcome::NotApplicable(format!("@{tag}: {why}"));
    }
    let mut w = World::default();
    for step in &row.steps {
        let Some((re, handler)) = steps().iter().find(|(re, _)| re.is_match(&step.value)) else {
            return Outcome::Fail(format!("line {}: no step definition for {:?}", step.position.line, step.value));
        };
        let caps: Vec<String> = re
            .captures(&step.value)
            .map(|c| c.iter().skip(1).map(|m| m.map_or(String::new(), |m| m.as_str().to_string())).collect())
            .unwrap_or_default();
        if let Err(o) = handler(&mut w, &caps, step) {
            return match o {
                Outcome::Fail(m) => {
                    Outcome::Fail(format!("line {} {} {:?}: {m}", step.position.line, step.keyword.trim(), step.value))
                }
                other => other,
            };
        }
    }
    Outcome::Pass
}
