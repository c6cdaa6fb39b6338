//! Fuzz target `ofrep_body`: an OFREP evaluation request body through `parse_request_within`
//! (JSON tokens, never a tree: `OfrepContextSeed`), the way `POST /ofrep/v1/evaluate/flags[/{key}]`
//! reads it.
//!
//! Input: one byte choosing the context byte limit (unlimited, or one of 64 .. 65536 bytes),
//! then the body. Without a limit the result must equal the tree's reading of the same body:
//! the JSON parsed whole, then `Context::from_ofrep` on its `context` member (the module's
//! invariant; where a key appears twice, only the kind of result is compared, as documented).
//! JSON that is not valid (invalid UTF-8 anywhere included) is a `Json` error at every limit.
//! With a limit: accepted exactly when the unlimited context fits (a context of exactly the
//! limit included), and then the same context.

use std::collections::HashSet;
use std::fmt;

use flagrelay::fuzzing::{parse_request, parse_request_within, Context, RequestError};
use flagrelay_fuzz::{check_context, ctx_eq};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Unlimited, then limits the config allows (`http.max_context_bytes` is at least 64).
const LIMITS: [usize; 8] = [usize::MAX, 64, 100, 256, 1024, 4096, 16384, 65536];

/// Whether some object of a JSON document has a key twice (`None` for invalid JSON).
fn has_duplicate_keys(body: &[u8]) -> Option<bool> {
    struct Dup;
    impl<'de> DeserializeSeed<'de> for Dup {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Dup {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut dup = false;
            while let Some(d) = seq.next_element_seed(Dup)? {
                dup |= d;
            }
            Ok(dup)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = false;
            while let Some(k) = map.next_key::<String>()? {
                dup |= !seen.insert(k);
                dup |= map.next_value_seed(Dup)?;
            }
            Ok(dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let d = Dup.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(d)
}

/// serde_json's messages for JSON that is valid grammar but not representable.
const UNREPRESENTABLE: [&str; 3] = ["number out of range", "surrogate", "unexpected end of hex escape"];

/// The body read as a tree (what the token reader must agree with); `None` when the tree
/// refuses it for a reason the token reader may accept in a member it skips (documented in
/// `http::ofrep::request`): a number beyond f64's range, or an unpaired surrogate escape. Both
/// are valid JSON grammar (RFC 8259 §6, §8.2), only not representable.
fn tree(body: &[u8]) -> Option<Result<Context, RequestError>> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Some(Ok(Context::default()));
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            if UNREPRESENTABLE.iter().any(|u| why.contains(u)) {
                return None;
            }
            return Some(Err(RequestError::Json(why)));
        }
    };
    Some(match v {
        Value::Null => Ok(Context::default()),
        Value::Object(m) => match m.get("context") {
            None | Some(Value::Null) => Ok(Context::default()),
            Some(c) => Context::from_ofrep(c).map_err(RequestError::from),
        },
        _ => Err(RequestError::NotAnObject),
    })
}

fn run(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let limit = LIMITS[usize::from(sel) % LIMITS.len()];
    let unlimited = parse_request(body);
    let dup = has_duplicate_keys(body.trim_ascii()).unwrap_or(false);
    if let Some(want) = tree(body) {
        match (&unlimited, &want) {
            (Ok(a), Ok(b)) => assert!(ctx_eq(a, b), "tokens {a:?}, tree {b:?}"),
            (Err(RequestError::Json(_)), Err(RequestError::Json(_))) => {}
            (Err(a), Err(b)) if dup => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{a} / {b}"),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (Err(RequestError::Context(_)), Ok(_)) if dup => {}
            (a, b) => panic!("tokens {a:?}, tree {b:?}"),
        }
    }
    let limited = parse_request_within(body, limit);
    // Under a limit, an attribute over it is skipped, not decoded: a value the tree cannot
    // represent (see `tree`) is then let through there, and the limit is what is reported.
    let unrepresentable = matches!(&unlimited, Err(RequestError::Json(e)) if UNREPRESENTABLE.iter().any(|u| e.contains(u)));
    match (&unlimited, &limited) {
        (Ok(a), Ok(b)) => {
            assert!(a.encoded_len() <= limit, "a {}-byte context accepted under {limit}", a.encoded_len());
            assert!(ctx_eq(a, b));
        }
        // A key given twice counts both values toward the limit while reading (the documented
        // exception of `eval::context_stream`), so such a context may be refused under it.
        (Ok(_), Err(RequestError::Context(_))) if dup => {}
        (Ok(a), Err(RequestError::Context(_))) => assert!(a.encoded_len() > limit, "a {}-byte context refused under {limit}", a.encoded_len()),
        // Both report the syntax error; a skipped value may report it a column apart.
        (Err(RequestError::Json(_)), Err(RequestError::Json(_))) => {}
        (Err(RequestError::Json(_)), Err(RequestError::Context(_))) if unrepresentable => {}
        (Err(RequestError::NotAnObject), Err(RequestError::NotAnObject)) => {}
        (Err(RequestError::Context(_)), Err(RequestError::Context(_))) => {}
        (a, b) => panic!("unlimited {a:?}, within {limit}: {b:?}"),
    }
    if let Ok(ctx) = &unlimited {
        check_context(ctx);
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
