//! The evaluation context: a user id plus multi-valued attributes (spec §6), and its construction
//! from the two wire shapes the relay receives (a Featureflow user, an OFREP context).
//!
//! Invariants:
//! - Every attribute value stored by the constructors is a JSON **string or number**; booleans are
//!   turned into the strings `"true"` / `"false"` (rule values can only be strings or numbers, so
//!   this is the only way a boolean can be targeted). `null`, objects and arrays nested inside an
//!   array are **ignored** (not an error): SDKs send richer contexts than Featureflow rules can target.
//!   An attribute left with no value is dropped, which behaves like a missing attribute.
//! - A scalar attribute is stored as a one-element list; an array keeps its order.
//! - The constructors never inject implicit attributes: the engine supplies `featureflow.user.id`
//!   itself at evaluation time, and `featureflow.date` / `featureflow.hourofday` are the caller's
//!   (see [`Context::inject_now`]).
//! - Construction never panics on any JSON input and does not recurse into nested values.
//! - A context's size is the length of its canonical encoding ([`Context::canonical`]: the id and
//!   the attributes sorted by name, as JSON), which is also what an evaluation-stream group holds
//!   of it; requests cap it ([`Context::check_bytes`], `http.max_context_bytes`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde_json::{Map, Value};

use super::bucket::ANONYMOUS;

/// Implicit attribute: the user id. Always supplied by the engine as the effective user key; an
/// attribute of this name in the context is ignored.
pub const USER_ID: &str = "featureflow.user.id";
/// Implicit attribute: the current instant as an ISO-8601 string (caller-supplied).
pub const DATE: &str = "featureflow.date";
/// Implicit attribute: the hour of day 0..=23 as a number (caller-supplied).
pub const HOUR_OF_DAY: &str = "featureflow.hourofday";

/// Whether a condition target is resolved on the thin client (spec §5.1).
pub(crate) fn is_time_target(target: &str) -> bool {
    target == DATE || target == HOUR_OF_DAY
}

/// Who is being evaluated. `id` may be empty (anonymous; buckets as `"anonymous"`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    pub id: String,
    pub attributes: HashMap<String, Vec<Value>>,
}

/// Why a JSON document is not a usable context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("the {what} must be a JSON object, got {got}")]
    NotAnObject { what: &'static str, got: &'static str },
    #[error("\"{field}\" must be a string, got {got}")]
    InvalidId { field: &'static str, got: &'static str },
    #[error("the context has more than {limit} {what}")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the context is larger than {limit} bytes encoded (the relay's limit, http.max_context_bytes)")]
    TooManyBytes { limit: usize },
}

/// At most this many attributes per context, and values per attribute: evaluation cost grows
/// with features × values, so a request must not be able to make it arbitrary.
pub const MAX_ATTRIBUTES: usize = 512;
pub const MAX_VALUES: usize = 256;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string id field: absent or `null` gives `""`, a string is taken, anything else is an error.
fn id_field(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, ContextError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ContextError::InvalidId { field, got: kind(other) }),
    }
}

/// A scalar attribute value in stored form, or `None` if it is ignored.
pub(super) fn scalar(v: &Value) -> Option<Value> {
    match v {
        Value::String(_) | Value::Number(_) => Some(v.clone()),
        Value::Bool(b) => Some(Value::String(if *b { "true" } else { "false" }.to_string())),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The stored values of one attribute (see the module invariants).
fn attribute_values(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

impl Context {
    /// A context with an id and no attributes.
    pub fn new(id: impl Into<String>) -> Context {
        Context { id: id.into(), attributes: HashMap::new() }
    }

    /// Appends one value to an attribute (builder style; attributes are multi-valued).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Context {
        self.attributes.entry(name.into()).or_default().push(value.into());
        self
    }

    /// The key used for bucketing and for `featureflow.user.id`: the id, or `"anonymous"` if empty.
    pub fn effective_id(&self) -> &str {
        if self.id.is_empty() {
            ANONYMOUS
        } else {
            &self.id
        }
    }

    /// The values of an attribute as stored (not including the engine's `featureflow.user.id`).
    pub fn values(&self, name: &str) -> Option<&[Value]> {
        self.attributes.get(name).map(Vec::as_slice)
    }

    /// Sets `featureflow.date` (`now` as RFC 3339 UTC with milliseconds, like node's `toISOString`)
    /// and `featureflow.hourofday` (the **UTC** hour: the server does not know the user's zone) unless
    /// the caller already supplied them.
    pub fn inject_now(&mut self, now: DateTime<Utc>) {
        if !self.attributes.contains_key(DATE) {
            let iso = now.to_rfc3339_opts(SecondsFormat::Millis, true);
            self.attributes.insert(DATE.to_string(), vec![Value::String(iso)]);
        }
        if !self.attributes.contains_key(HOUR_OF_DAY) {
            self.attributes.insert(HOUR_OF_DAY.to_string(), vec![Value::from(now.hour())]);
        }
    }

    /// Reads a Featureflow user (the thin-client shape, spec §5.1/§6.1):
    /// `{"id": string, "attributes": {name: string|number|bool|[..]}}`.
    ///
    /// Lenient where SDKs differ: the id may be under `key` (older SDKs; `id` wins when both are
    /// present) or absent (anonymous); `attributes` may be absent or `null`, and the older misspelling
    /// `attribute` is read when `attributes` is absent; `sessionAttributes` are merged over
    /// `attributes` (Java semantics: a session attribute replaces a same-named attribute).
    /// Rejected: a non-object user, a non-string id, non-object attributes.
    pub fn from_featureflow_user(user: &Value) -> Result<Context, ContextError> {
        let obj = user
            .as_object()
            .ok_or(ContextError::NotAnObject { what: "Featureflow user", got: kind(user) })?;
        let id = match id_field(obj, "id")? {
            Some(id) => id,
            None => id_field(obj, "key")?.unwrap_or_default(),
        };
        let mut ctx = Context::new(id);
        let primary = if obj.contains_key("attributes") { "attributes" } else { "attribute" };
        for field in [primary, "sessionAttributes"] {
            match obj.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Object(attrs)) => ctx.insert_all(attrs.iter())?,
                Some(other) => return Err(ContextError::NotAnObject { what: field_what(field), got: kind(other) }),
            }
        }
        Ok(ctx)
    }

    /// Reads an OFREP evaluation context (a flat object, ofrep.md §1.3): `targetingKey` is the id
    /// (absent or `null` is fine: anonymous); every other key is an attribute.
    /// Rejected: a non-object context, a non-string `targetingKey`.
    pub fn from_ofrep(context: &Value) -> Result<Context, ContextError> {
        let obj = context
            .as_object()
            .ok_or(ContextError::NotAnObject { what: "OFREP context", got: kind(context) })?;
        let mut ctx = Context::new(id_field(obj, "targetingKey")?.unwrap_or_default());
        ctx.insert_all(obj.iter().filter(|(k, _)| k.as_str() != "targetingKey"))?;
        Ok(ctx)
    }

    /// The canonical encoding: `["<id>",{"<name>":[values],...}]` with the attributes sorted by
    /// name (values keep their order). Equal contexts, whatever their attribute order, have equal
    /// encodings; [`Context::from_canonical`] reads it back.
    pub fn canonical(&self) -> String {
        let attrs: BTreeMap<&String, &Vec<Value>> = self.attributes.iter().collect();
        // Serializing strings and JSON values cannot fail.
        serde_json::to_string(&(&self.id, attrs)).unwrap_or_default()
    }

    /// Reads a [`Context::canonical`] encoding back.
    pub fn from_canonical(text: &str) -> Result<Context, serde_json::Error> {
        let (id, attributes): (String, HashMap<String, Vec<Value>>) = serde_json::from_str(text)?;
        Ok(Context { id, attributes })
    }

    /// The length of [`Context::canonical`], computed without building it.
    pub fn encoded_len(&self) -> usize {
        let mut n = Counter(0);
        // Order does not change the length; writing to a counter cannot fail.
        let _ = serde_json::to_writer(&mut n, &(&self.id, &self.attributes));
        n.0
    }

    /// Fails if the context is longer than `limit` bytes encoded ([`Context::encoded_len`]).
    pub fn check_bytes(&self, limit: usize) -> Result<(), ContextError> {
        if self.encoded_len() > limit {
            return Err(ContextError::TooManyBytes { limit });
        }
        Ok(())
    }

    /// Inserts one attribute as the constructors do: too many values is an error, no value
    /// removes it, more attributes than allowed is an error.
    pub(super) fn insert_values(&mut self, name: &str, values: Vec<Value>) -> Result<(), ContextError> {
        if values.is_empty() {
            self.attributes.remove(name);
        } else {
            self.attributes.insert(name.to_string(), values);
            if self.attributes.len() > MAX_ATTRIBUTES {
                return Err(ContextError::TooLarge { what: "attributes", limit: MAX_ATTRIBUTES });
            }
        }
        Ok(())
    }

    fn insert_all<'a>(&mut self, attrs: impl Iterator<Item = (&'a String, &'a Value)>) -> Result<(), ContextError> {
        for (name, value) in attrs {
            if matches!(value, Value::Array(a) if a.len() > MAX_VALUES) {
                return Err(ContextError::TooLarge { what: "values in one attribute", limit: MAX_VALUES });
            }
            self.insert_values(name, attribute_values(value))?;
        }
        Ok(())
    }
}

/// An `io::Write` that only counts.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn field_what(field: &'static str) -> &'static str {
    match field {
        "sessionAttributes" => "\"sessionAttributes\" of a Featureflow user",
        "attribute" => "\"attribute\" of a Featureflow user",
        _ => "\"attributes\" of a Featureflow user",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_contexts_are_rejected() {
        let many: Vec<Value> = (0..=MAX_VALUES).map(|i| Value::from(i as u64)).collect();
        let e = Context::from_ofrep(&serde_json::json!({"targetingKey": "u", "ids": many})).unwrap_err();
        assert!(matches!(e, ContextError::TooLarge { .. }), "{e}");
        let wide: Map<String, Value> = (0..=MAX_ATTRIBUTES).map(|i| (format!("a{i}"), Value::from(1))).collect();
        let e = Context::from_featureflow_user(&serde_json::json!({"id": "u", "attributes": wide})).unwrap_err();
        assert!(matches!(e, ContextError::TooLarge { .. }), "{e}");
        let ok: Vec<Value> = (0..MAX_VALUES).map(|i| Value::from(i as u64)).collect();
        assert!(Context::from_ofrep(&serde_json::json!({"ids": ok})).is_ok());
    }
    use serde_json::json;

    #[test]
    fn featureflow_user_shapes() {
        let c = Context::from_featureflow_user(&json!({"id": "alice", "attributes": {
            "role": ["beta", 3, true, null, {"x": 1}, [1]], "tier": "gold", "age": 21, "vip": false,
            "gone": null, "nested": {"a": 1}, "empty": []}}))
        .unwrap();
        assert_eq!(c.id, "alice");
        assert_eq!(c.values("role").unwrap(), &[json!("beta"), json!(3), json!("true")]);
        assert_eq!(c.values("tier").unwrap(), &[json!("gold")]);
        assert_eq!(c.values("age").unwrap(), &[json!(21)]);
        assert_eq!(c.values("vip").unwrap(), &[json!("false")]);
        for absent in ["gone", "nested", "empty"] {
            assert!(c.values(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn featureflow_user_lenient_fields() {
        let c = Context::from_featureflow_user(&json!({"key": "bob"})).unwrap();
        assert_eq!((c.id.as_str(), c.attributes.len()), ("bob", 0));
        let c = Context::from_featureflow_user(&json!({"id": "a", "key": "b", "attributes": null})).unwrap();
        assert_eq!(c.id, "a");
        let c = Context::from_featureflow_user(&json!({})).unwrap();
        assert_eq!(c.effective_id(), "anonymous");
        let c = Context::from_featureflow_user(
            &json!({"id": "a", "attribute": {"x": "1", "y": "1"}, "sessionAttributes": {"y": "2"}}),
        )
        .unwrap();
        assert_eq!(c.values("x").unwrap(), &[json!("1")]);
        assert_eq!(c.values("y").unwrap(), &[json!("2")]);
    }

    #[test]
    fn featureflow_user_rejects_bad_shapes() {
        let e = Context::from_featureflow_user(&json!("alice")).unwrap_err();
        assert_eq!(e.to_string(), "the Featureflow user must be a JSON object, got a string");
        let e = Context::from_featureflow_user(&json!({"id": 7})).unwrap_err();
        assert_eq!(e.to_string(), "\"id\" must be a string, got a number");
        let e = Context::from_featureflow_user(&json!({"id": "a", "attributes": [1]})).unwrap_err();
        assert!(e.to_string().contains("\"attributes\""), "{e}");
    }

    #[test]
    fn ofrep_context() {
        let c = Context::from_ofrep(&json!({"targetingKey": "user-123", "email": "ada@example.com",
            "age": 37, "beta": true, "org": {"id": "acme"}, "tags": ["a", 1]}))
        .unwrap();
        assert_eq!(c.id, "user-123");
        assert!(c.values("targetingKey").is_none());
        assert_eq!(c.values("beta").unwrap(), &[json!("true")]);
        assert_eq!(c.values("tags").unwrap(), &[json!("a"), json!(1)]);
        assert!(c.values("org").is_none());
        assert_eq!(Context::from_ofrep(&json!({})).unwrap(), Context::default());
        assert!(Context::from_ofrep(&json!({"targetingKey": 1})).is_err());
        assert!(Context::from_ofrep(&json!(null)).is_err());
    }

    #[test]
    fn the_canonical_encoding_sorts_attributes_reads_back_and_its_length_is_the_size() {
        let a = Context::new("u").with("b", 2).with("a", "x").with("a", 1.5).with("c", "é\"");
        let b = Context::new("u").with("c", "é\"").with("a", "x").with("a", 1.5).with("b", 2);
        assert_eq!(a.canonical(), r#"["u",{"a":["x",1.5],"b":[2],"c":["é\""]}]"#);
        assert_eq!(a.canonical(), b.canonical(), "attribute order does not matter");
        assert_eq!(Context::from_canonical(&a.canonical()).unwrap(), a);
        assert_eq!(a.encoded_len(), a.canonical().len());
        assert_eq!(a.check_bytes(a.encoded_len()), Ok(()));
        let e = a.check_bytes(a.encoded_len() - 1).unwrap_err();
        assert_eq!(e, ContextError::TooManyBytes { limit: a.encoded_len() - 1 });
        assert!(e.to_string().contains("http.max_context_bytes"), "{e}");
    }

    #[test]
    fn inject_now_respects_caller_values() {
        let now = DateTime::parse_from_rfc3339("2026-07-03T22:15:00.5+05:30").unwrap().with_timezone(&Utc);
        let mut c = Context::new("a");
        c.inject_now(now);
        assert_eq!(c.values(DATE).unwrap(), &[json!("2026-07-03T16:45:00.500Z")]);
        assert_eq!(c.values(HOUR_OF_DAY).unwrap(), &[json!(16)]);
        let mut c = Context::new("a").with(DATE, "2000-01-01");
        c.inject_now(now);
        assert_eq!(c.values(DATE).unwrap(), &[json!("2000-01-01")]);
    }
}
