//! The 13 operators of the rule language (spec §3.5), compiled once per condition.
//!
//! Owns: [`CompiledCondition`] (a condition with its rule values pre-parsed: numbers, instants,
//! regexes, hash sets) and the test of one context value against it.
//!
//! Invariants (the exact semantics; the *context value* is one value of the user's attribute):
//! - Types are strict: a string never equals a number (`"98"` ≠ `98`). String operators need both
//!   sides to be strings, numeric operators both sides numbers; a mismatch is `false`.
//! - `equals`, `contains`, `startsWith`, `endsWith`, `matches`, the four numeric comparisons and
//!   `before` / `after` use `values[0]` only. `in` / `notIn` use all of `values`.
//! - Numbers compare by value and exactly: two integers as integers (no `f64` rounding of large
//!   ids), otherwise with an exact integer/float comparison.
//! - `matches` is an unanchored, case-sensitive search (Rust `regex` syntax, linear time). An invalid
//!   (or oversized) pattern makes the condition `false`.
//! - `before` / `after` compare instants parsed by [`super::date`] (strict ISO-8601, date-only = UTC
//!   midnight); equal instants are `false` for both; an unparseable side is `false`. Numbers are not
//!   dates (Java's epoch-millis is not supported).
//! - `notIn` is true when the context value equals none of `values` (same strict typing as `in`).
//!   With the ANY rule across a multi-valued attribute, `["admin","beta"] notIn ["admin"]` is true.
//! - An unknown operator, an empty `values` or a `values[0]` of the wrong type compiles to a
//!   condition that is always `false`, and leaves a diagnostic; it never fails the feature.

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::{Regex, RegexBuilder};
use serde_json::{Number, Value};

use super::context::{is_time_target, Context, USER_ID};
use super::date::{parse_instant, Instant};
use crate::model::Condition;

/// Regex programs larger than this fail to compile (and so never match): a guard against a
/// pathological pattern costing memory on every feature change.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Contexts with at most this many attributes are searched by a linear scan of the keys, which for
/// short keys costs less than hashing the name with the map's SipHash.
const LINEAR_LOOKUP_MAX: usize = 16;
/// `in` / `notIn` sets up to this size are scanned linearly (faster than hashing for a few values).
const LINEAR_SET_MAX: usize = 8;

/// A number in a form that compares exactly: the integer if it is one, else the float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub(crate) fn of(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Num::Int(i128::from(u))
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    /// `None` only for NaN (which serde_json numbers never hold).
    pub(crate) fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => int_float(a, b),
            (Num::Float(a), Num::Int(b)) => int_float(b, a).map(Ordering::reverse),
        }
    }
}

/// Exact comparison of an integer (|i| < 2^65) with a finite float.
fn int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        None
    } else if f.fract() == 0.0 && f.abs() < 1e30 {
        Some(i.cmp(&(f as i128)))
    } else {
        // f is fractional (so |f| < 2^53, where i as f64 keeps the order) or far beyond any i.
        (i as f64).partial_cmp(&f)
    }
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

/// The `values` of an `in` / `notIn` condition, split by type.
#[derive(Debug)]
struct ValueSet {
    small: Vec<Box<str>>,
    large: HashSet<Box<str>>,
    numbers: Vec<Num>,
}

impl ValueSet {
    fn new(values: &[Value]) -> ValueSet {
        let strings: Vec<Box<str>> = values.iter().filter_map(Value::as_str).map(Box::from).collect();
        let numbers = values.iter().filter_map(Value::as_number).map(Num::of).collect();
        if strings.len() <= LINEAR_SET_MAX {
            ValueSet { small: strings, large: HashSet::new(), numbers }
        } else {
            ValueSet { small: Vec::new(), large: strings.into_iter().collect(), numbers }
        }
    }

    fn contains(&self, v: Subject<'_>) -> bool {
        match v {
            Subject::Str(s) => self.small.iter().any(|x| &**x == s) || self.large.contains(s),
            Subject::Num(n) => self.numbers.iter().any(|x| x.cmp(n) == Some(Ordering::Equal)),
            Subject::Other => false,
        }
    }
}

#[derive(Debug)]
enum Op {
    EqStr(Box<str>),
    EqNum(Num),
    Contains(Box<str>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Matches(Regex),
    In(ValueSet),
    NotIn(ValueSet),
    Compare(Cmp, Num),
    Before(Instant),
    After(Instant),
    Never,
}

/// One context value, viewed for comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    Str(&'a str),
    Num(Num),
    Other,
}

impl<'a> Subject<'a> {
    pub(crate) fn of(v: &'a Value) -> Subject<'a> {
        match v {
            Value::String(s) => Subject::Str(s),
            Value::Number(n) => Subject::Num(Num::of(n)),
            _ => Subject::Other,
        }
    }
}

/// Where a condition reads its context values from.
#[derive(Debug)]
enum Target {
    /// `featureflow.user.id`: the context's effective id, supplied by the engine.
    UserId,
    Attribute(Box<str>),
}

/// The context values a condition reads: looked up once, possibly shared by several conditions.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'c> {
    UserId(&'c str),
    Values(&'c [Value]),
    Missing,
}

/// A condition ready to test: target resolved, rule values pre-parsed.
#[derive(Debug)]
pub struct CompiledCondition {
    target: Target,
    op: Op,
    /// Targets `featureflow.date` or `featureflow.hourofday` (resolved on the thin client, §5.1).
    pub(crate) is_time: bool,
}

impl CompiledCondition {
    /// Compiles a condition. Never fails; a problem that makes it always false is described in the
    /// returned diagnostic.
    pub fn compile(c: &Condition) -> (CompiledCondition, Option<String>) {
        let (op, problem) = compile_op(&c.operator, &c.values);
        let target = if c.target == USER_ID { Target::UserId } else { Target::Attribute(c.target.as_str().into()) };
        let is_time = is_time_target(&c.target);
        let diagnostic = problem.map(|p| format!("condition on {:?} ({}) never matches: {p}", c.target, c.operator));
        (CompiledCondition { target, op, is_time }, diagnostic)
    }

    /// True when any of the context's values for the target passes; false when it has none.
    pub fn matches(&self, ctx: &Context) -> bool {
        self.matches_lookup(self.lookup(ctx))
    }

    /// Whether two conditions read the same context values.
    pub(crate) fn same_target(&self, other: &CompiledCondition) -> bool {
        match (&self.target, &other.target) {
            (Target::UserId, Target::UserId) => true,
            (Target::Attribute(a), Target::Attribute(b)) => a == b,
            _ => false,
        }
    }

    #[inline]
    pub(crate) fn lookup<'c>(&self, ctx: &'c Context) -> Lookup<'c> {
        match &self.target {
            Target::UserId => Lookup::UserId(ctx.effective_id()),
            Target::Attribute(name) => {
                let found = if ctx.attributes.len() <= LINEAR_LOOKUP_MAX {
                    ctx.attributes.iter().find(|(k, _)| k.as_str() == &**name).map(|(_, v)| v)
                } else {
                    ctx.attributes.get(&**name)
                };
                found.map_or(Lookup::Missing, |v| Lookup::Values(v))
            }
        }
    }

    /// [`CompiledCondition::matches`] on values already looked up for this condition's target.
    #[inline]
    pub(crate) fn matches_lookup(&self, found: Lookup<'_>) -> bool {
        match found {
            Lookup::UserId(id) => self.test(Subject::Str(id)),
            Lookup::Values(values) => values.iter().any(|v| self.test(Subject::of(v))),
            Lookup::Missing => false,
        }
    }

    /// Tests one context value.
    #[inline]
    pub(crate) fn test(&self, v: Subject<'_>) -> bool {
        match (&self.op, v) {
            (Op::EqStr(r), Subject::Str(s)) => s == &**r,
            (Op::EqNum(r), Subject::Num(n)) => n.cmp(*r) == Some(Ordering::Equal),
            (Op::Contains(r), Subject::Str(s)) => s.contains(&**r),
            (Op::StartsWith(r), Subject::Str(s)) => s.starts_with(&**r),
            (Op::EndsWith(r), Subject::Str(s)) => s.ends_with(&**r),
            (Op::Matches(re), Subject::Str(s)) => re.is_match(s),
            (Op::In(set), v) => set.contains(v),
            (Op::NotIn(set), v @ (Subject::Str(_) | Subject::Num(_))) => !set.contains(v),
            (Op::Compare(c, r), Subject::Num(n)) => match (c, n.cmp(*r)) {
                (_, None) => false,
                (Cmp::Gt, Some(o)) => o == Ordering::Greater,
                (Cmp::Ge, Some(o)) => o != Ordering::Less,
                (Cmp::Lt, Some(o)) => o == Ordering::Less,
                (Cmp::Le, Some(o)) => o != Ordering::Greater,
            },
            (Op::Before(r), Subject::Str(s)) => parse_instant(s).is_some_and(|t| t < *r),
            (Op::After(r), Subject::Str(s)) => parse_instant(s).is_some_and(|t| t > *r),
            _ => false,
        }
    }
}

fn compile_op(operator: &str, values: &[Value]) -> (Op, Option<String>) {
    let first = values.first();
    let string = |make: fn(Box<str>) -> Op| match first {
        Some(Value::String(s)) => (make(s.as_str().into()), None),
        _ => (Op::Never, Some("values[0] must be a string".to_string())),
    };
    let number = |cmp: Cmp| match first {
        Some(Value::Number(n)) => (Op::Compare(cmp, Num::of(n)), None),
        _ => (Op::Never, Some("values[0] must be a number".to_string())),
    };
    let instant = |make: fn(Instant) -> Op| match first.and_then(Value::as_str).map(parse_instant) {
        Some(Some(t)) => (make(t), None),
        _ => (Op::Never, Some("values[0] must be an ISO-8601 date".to_string())),
    };
    match operator {
        "equals" => match first {
            Some(Value::String(s)) => (Op::EqStr(s.as_str().into()), None),
            Some(Value::Number(n)) => (Op::EqNum(Num::of(n)), None),
            _ => (Op::Never, Some("values[0] must be a string or a number".to_string())),
        },
        "contains" => string(Op::Contains),
        "startsWith" => string(Op::StartsWith),
        "endsWith" => string(Op::EndsWith),
        "matches" => match first {
            Some(Value::String(p)) => match RegexBuilder::new(p).size_limit(REGEX_SIZE_LIMIT).build() {
                Ok(re) => (Op::Matches(re), None),
                Err(e) => (Op::Never, Some(format!("invalid regex: {}", first_line(&e.to_string())))),
            },
            _ => (Op::Never, Some("values[0] must be a regex string".to_string())),
        },
        "in" => (Op::In(ValueSet::new(values)), None),
        "notIn" => (Op::NotIn(ValueSet::new(values)), None),
        "greaterThan" => number(Cmp::Gt),
        "greaterThanOrEqual" => number(Cmp::Ge),
        "lessThan" => number(Cmp::Lt),
        "lessThanOrEqual" => number(Cmp::Le),
        "before" => instant(Op::Before),
        "after" => instant(Op::After),
        other => (Op::Never, Some(format!("unknown operator {other:?}"))),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| l.starts_with("error:")).unwrap_or(s).trim()
}

#[cfg(test)]
#[path = "operators_tests.rs"]
mod tests;
