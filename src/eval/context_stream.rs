//! Reading an OFREP evaluation context straight from JSON tokens ([`OfrepContextSeed`]), with
//! its limits applied while it is read: no JSON tree is built, an attribute with more than
//! [`MAX_VALUES`] values stops being collected at the first value over, and the attributes stop
//! being collected once the context is known to be over its byte limit. So reading a hostile
//! body costs memory bounded by the limits, not by the body (a 1 MB `[0,0,…]` is a few bytes of
//! state, where its JSON tree took ~37 MB).
//!
//! Invariants:
//! - For every context [`Context::from_ofrep`] accepts or rejects, the seed gives the same
//!   context or the same error (`tests/thin_props.rs` checks it on generated bodies): a
//!   non-object is `NotAnObject`; a non-string `targetingKey` (the last one, wherever it is)
//!   is `InvalidId` before any other problem; then the first attribute over a limit. The one
//!   difference is with a key given twice: a limit crossed by the earlier value, or by both
//!   values together (each counts toward the byte limit while reading), is reported, where the
//!   JSON tree would have kept only the later one.
//! - Whatever is over a limit is still read to its end (as ignored tokens, which allocate
//!   nothing), so a syntax error anywhere in the body is still reported as one.
//! - The byte limit is checked exactly on the finished context ([`Context::check_bytes`]);
//!   while reading, a lower bound of the encoded size decides when to stop collecting.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::context::{Context, ContextError, MAX_VALUES};

/// Reads an OFREP context (`null` is the anonymous context) of at most `max_bytes` encoded.
/// Its value is the context, or why it is not one; the `Err` of `deserialize` is only ever a
/// JSON syntax error.
#[derive(Debug, Clone, Copy)]
pub struct OfrepContextSeed {
    pub max_bytes: usize,
}

/// Drains a sequence without keeping anything.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drains a map without keeping anything.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A JSON value's kind as the context errors name it, for values that are not what was wanted.
macro_rules! reject_scalars {
    ($out:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out("a string"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok($out("an array"))
        }
    };
}

impl<'de> DeserializeSeed<'de> for OfrepContextSeed {
    type Value = Result<Context, ContextError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn not_an_object(got: &'static str) -> Result<Context, ContextError> {
    Err(ContextError::NotAnObject { what: "OFREP context", got })
}

impl<'de> Visitor<'de> for OfrepContextSeed {
    type Value = Result<Context, ContextError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OFREP evaluation context")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Context::default()))
    }

    reject_scalars!(not_an_object);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ctx = Context::default();
        let mut id: Result<String, &'static str> = Ok(String::new());
        let mut problem: Option<ContextError> = None;
        // A lower bound of the encoded size: `["",{}]` and, per attribute, its name and values.
        let mut size = 7usize;
        while let Some(name) = map.next_key::<String>()? {
            if name == "targetingKey" {
                id = map.next_value_seed(IdSeed)?;
                continue;
            }
            if problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let budget = self.max_bytes.saturating_sub(size + name.len() + 5);
            match map.next_value_seed(AttributeSeed { budget })? {
                Attribute::Values(values, bytes) => {
                    if !values.is_empty() {
                        size += name.len() + 5 + bytes;
                    }
                    if let Err(e) = ctx.insert_values(&name, values) {
                        problem = Some(e);
                    }
                }
                Attribute::TooMany => problem = Some(ContextError::TooLarge { what: "values in one attribute", limit: MAX_VALUES }),
                Attribute::TooBig => problem = Some(ContextError::TooManyBytes { limit: self.max_bytes }),
            }
        }
        ctx.id = match id {
            Ok(id) => id,
            Err(got) => return Ok(Err(ContextError::InvalidId { field: "targetingKey", got })),
        };
        if let Some(e) = problem {
            return Ok(Err(e));
        }
        Ok(ctx.check_bytes(self.max_bytes).map(|()| ctx))
    }
}

/// `targetingKey`: a string, or `null` for none; anything else is named.
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Result<String, &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = Result<String, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a targetingKey")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(String::new()))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Ok(s))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Ok(s.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(Err("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Err("an object"))
    }
}

/// One attribute's values as stored (see `context`), with a lower bound of their encoded size,
/// or why collecting them stopped.
enum Attribute {
    Values(Vec<Value>, usize),
    TooMany,
    TooBig,
}

/// The stored form of one scalar and a lower bound of its encoded size: a string's bytes and
/// its quotes, one byte for a number. The comma before every value but the first is added where
/// the values are collected ([`AttributeSeed::visit_seq`]); counting it with every value made
/// the bound one byte too high per attribute, so a context of exactly the limit was refused.
fn stored(v: Value) -> (Value, usize) {
    let n = match &v {
        Value::String(s) => s.len() + 2,
        _ => 1,
    };
    (v, n)
}

fn bool_value(b: bool) -> Value {
    Value::String(if b { "true" } else { "false" }.to_string())
}

fn float_value(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

/// An attribute's value: a scalar, or an array of them, with `budget` bytes left to fill.
struct AttributeSeed {
    budget: usize,
}

impl<'de> DeserializeSeed<'de> for AttributeSeed {
    type Value = Attribute;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl AttributeSeed {
    fn one(self, v: Option<Value>) -> Attribute {
        match v.map(stored) {
            Some((_, n)) if n > self.budget => Attribute::TooBig,
            Some((v, n)) => Attribute::Values(vec![v], n),
            None => Attribute::Values(Vec::new(), 0),
        }
    }
}

impl<'de> Visitor<'de> for AttributeSeed {
    type Value = Attribute;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attribute value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Attribute::Values(Vec::new(), 0))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.one(Some(bool_value(b))))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.one(Some(Value::from(n))))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.one(Some(Value::from(n))))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(self.one(float_value(f)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.one(Some(Value::String(s.to_string()))))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(self.one(Some(Value::String(s))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Attribute::Values(Vec::new(), 0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        while let Some(item) = seq.next_element_seed(ElementSeed)? {
            count += 1;
            if count > MAX_VALUES {
                drain_seq(seq)?;
                return Ok(Attribute::TooMany);
            }
            if let Some((v, n)) = item.map(stored) {
                bytes += n + usize::from(!values.is_empty());
                if bytes > self.budget {
                    drain_seq(seq)?;
                    return Ok(Attribute::TooBig);
                }
                values.push(v);
            }
        }
        Ok(Attribute::Values(values, bytes))
    }
}

/// One element of an attribute's array: a scalar, or `None` for what is ignored (`null`, and
/// arrays and objects, which are skipped without being kept).
struct ElementSeed;

impl<'de> DeserializeSeed<'de> for ElementSeed {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementSeed {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attribute value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Some(bool_value(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(n)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(n)))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(float_value(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::String(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Some(Value::String(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(None)
    }
}

#[cfg(test)]
#[path = "context_stream_tests.rs"]
mod tests;
