//! Property tests for the thin-client and OFREP request decoders, with proptest (a failing case is
//! shrunk to a minimal one): tens of thousands of generated inputs — random bytes and ASCII, corrupted base64,
//! percent-escapes, deep nesting, odd unicode, every accepted base64 dialect, OFREP bodies of every
//! JSON shape — fed to the decoders and then to evaluation.
//!
//! Properties: `decode_user`, `percent_decode`, `requested_keys`, `ofrep::parse_request`,
//! `evaluate_thin` and `ofrep::bulk_body` never panic; a Featureflow user encoded in any dialect a
//! client uses (standard, unpadded, URL-safe, percent-escaped, UTF-8 or featureflow-client 2.x's
//! Latin-1 bytes) decodes to exactly the context read from its JSON; OFREP bodies decode to the
//! context of their `context`; every bulk body is valid JSON with one item per flag.
//!
//! The seed is fixed (`support/rng.rs`): set `FLAGRELAY_PROPS_SEED` to draw other cases; the seed
//! is printed, and a failure prints its shrunk input.

use std::cell::Cell;
use std::sync::Arc;

use base64::Engine;
use flagrelay::eval::{CompiledFeature, Context};
use flagrelay::http::ofrep::{bulk_body, parse_request};
use flagrelay::http::thin::{decode_user, percent_decode, requested_keys};
use flagrelay::model::Feature;
use flagrelay::store::CompiledMap;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

#[path = "support/rng.rs"]
mod rng;

/// The default seed of every property here (`FLAGRELAY_PROPS_SEED` overrides it).
const SEED: u64 = 0x7415_c0de;

const STRINGS: &[&str] = &[
    "", "a", "pvt_user", "alpha_role", "gold", "ada@example.com", "NaN", "1e999", "-0", "true", "null", "2026-07-03",
    "not-a-date", "[unclosed", "\\", "\"", "\u{0}", "\u{202e}rtl", "ü", "Zoë/+?", "ÿ", "🎉", "日本", "%41", "%zz", "+", "/", "=",
];

const NAMES: &[&str] = &["user_role", "tier", "email", "age", "featureflow.date", "featureflow.hourofday", "featureflow.user.id", "targetingKey", "id", ""];

/// One to three of the odd strings above, joined.
fn string() -> impl Strategy<Value = String> {
    vec(select(STRINGS), 1..=3).prop_map(|pieces| pieces.concat())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        string().prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        (0..10_000u32).prop_map(|n| json!(f64::from(n) / 7.0)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        (0..24u32).prop_map(|n| json!(n)),
    ]
}

fn object(kv: Vec<(&str, Value)>) -> Value {
    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Any JSON value, nesting up to `depth`.
fn any_value(depth: usize) -> BoxedStrategy<Value> {
    if depth == 0 {
        return scalar().boxed();
    }
    let inner = any_value(depth - 1);
    prop_oneof![
        2 => scalar(),
        1 => vec(inner.clone(), 0..4).prop_map(Value::Array),
        1 => vec((select(NAMES), inner), 0..4).prop_map(object),
    ]
    .boxed()
}

/// An attribute value a Featureflow user may carry (scalars and arrays of scalars).
fn attribute() -> impl Strategy<Value = Value> {
    prop_oneof![3 => vec(scalar(), 0..4).prop_map(Value::Array), 7 => scalar()]
}

/// A well-formed Featureflow user (string id, object attributes).
fn user() -> impl Strategy<Value = Value> {
    (string(), vec((select(NAMES), attribute()), 0..5)).prop_map(|(id, attrs)| json!({"id": id, "attributes": object(attrs)}))
}

fn strip_above_latin1(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.chars().filter(|&c| (c as u32) <= 0xff).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_above_latin1).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k.chars().filter(|&c| (c as u32) <= 0xff).collect(), strip_above_latin1(v))).collect()),
        other => other,
    }
}

/// The encodings of the user segment that clients send.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dialect {
    Standard,
    Unpadded,
    UrlSafe,
    PercentEscaped,
    /// featureflow-client 2.x: one byte per UTF-16 code unit (Latin-1 for text up to U+00FF).
    Latin1Bytes,
}

const DIALECTS: &[Dialect] = &[Dialect::Standard, Dialect::Unpadded, Dialect::UrlSafe, Dialect::PercentEscaped, Dialect::Latin1Bytes];

/// The user segment as a client would send `json` in `dialect`.
fn encode(dialect: Dialect, json: &str) -> String {
    let std = base64::engine::general_purpose::STANDARD;
    match dialect {
        Dialect::Standard => std.encode(json.as_bytes()),
        Dialect::Unpadded => std.encode(json.as_bytes()).trim_end_matches('=').to_string(),
        Dialect::UrlSafe => base64::engine::general_purpose::URL_SAFE.encode(json.as_bytes()),
        Dialect::PercentEscaped => std.encode(json.as_bytes()).replace('=', "%3D").replace('/', "%2F").replace('+', "%2B"),
        Dialect::Latin1Bytes => std.encode(json.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>()),
    }
}

/// One piece of random damage, applied at a position chosen among the string's length + 1.
#[derive(Debug, Clone)]
enum Damage {
    FlipBit(Index, u8),
    Remove(Index),
    Insert(Index, u8),
    Truncate(Index),
    InsertPercent(Index),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, bit)| Damage::FlipBit(i, bit)),
        any::<Index>().prop_map(Damage::Remove),
        (any::<Index>(), select(&b"%/+=-_ \n\x00\xff"[..])).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<Index>().prop_map(Damage::Truncate),
        any::<Index>().prop_map(Damage::InsertPercent),
    ];
    vec(one, 1..=4)
}

/// `s` with `damage` done to its bytes (flipped, dropped or inserted bytes, truncation).
fn corrupt(s: &str, damage: &[Damage]) -> String {
    let mut b: Vec<u8> = s.bytes().collect();
    for d in damage {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match d {
            Damage::FlipBit(i, bit) if at(i, b.len()) < b.len() => {
                let i = at(i, b.len());
                b[i] ^= 1 << bit;
            }
            Damage::Remove(i) if at(i, b.len()) < b.len() => {
                b.remove(at(i, b.len()));
            }
            Damage::Insert(i, byte) => b.insert(at(i, b.len()), *byte),
            Damage::Truncate(i) => b.truncate(at(i, b.len())),
            Damage::FlipBit(i, _) | Damage::Remove(i) | Damage::InsertPercent(i) => b.insert(at(i, b.len()), b'%'),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_ascii() -> impl Strategy<Value = String> {
    let alphabet = &b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_%.,&? "[..];
    vec(select(alphabet), 0..200).prop_map(|b| b.into_iter().map(char::from).collect())
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..300)
}

/// A handful of features to evaluate decoded contexts against: targeting, dates, hours, splits.
fn features() -> CompiledMap {
    let raw = json!({
        "roles": {"key": "roles", "enabled": true, "offVariantKey": "off", "variants": [{"key": "on", "value": {"n": 1}}, {"key": "off"}],
            "rules": [{"defaultRule": false, "audience": {"conditions": [{"target": "user_role", "operator": "in", "values": ["pvt_user", "alpha_role"]}]},
                       "variantSplits": [{"variantKey": "on", "split": 100}]},
                      {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]},
        "dated": {"key": "dated", "enabled": true, "offVariantKey": "off",
            "rules": [{"defaultRule": false, "audience": {"conditions": [
                        {"target": "featureflow.date", "operator": "after", "values": ["2020-01-01"]},
                        {"target": "featureflow.hourofday", "operator": "lessThan", "values": [12]},
                        {"target": "tier", "operator": "equals", "values": ["gold"]}]},
                       "variantSplits": [{"variantKey": "on", "split": 100}]},
                      {"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 30}, {"variantKey": "off", "split": 70}]}]},
        "regex": {"key": "regex", "enabled": true, "offVariantKey": "x", "variants": [{"key": "y"}, {"key": "x"}],
            "rules": [{"defaultRule": false, "audience": {"conditions": [{"target": "email", "operator": "matches", "values": ["^[a-z]+@example\\.com$"]}]},
                       "variantSplits": [{"variantKey": "y", "split": 100}]}]},
        "off": {"key": "off", "enabled": false, "rules": []}
    });
    raw.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Arc::new(CompiledFeature::compile(&Feature::from_value(k, v.clone()).unwrap()))))
        .collect()
}

/// Evaluates a decoded context every way the HTTP layer does; panics (caught by the caller) or
/// fails if anything is off.
fn evaluate_all(map: &CompiledMap, ctx: &Context, case: &str) {
    for f in map.values() {
        if let Ok(r) = f.evaluate_thin(ctx) {
            serde_json::to_vec(&r).unwrap_or_else(|e| panic!("{case}: thin result does not serialize: {e}"));
        }
    }
    let (body, errors) = bulk_body(map, ctx, "/ofrep/v1/stream/k");
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{case}: bulk body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert_eq!(v["flags"].as_array().map(Vec::len), Some(map.len()), "{case}");
    assert_eq!(errors, 0, "{case}: validated features never fail");
}

#[test]
fn every_client_dialect_of_a_user_decodes_to_the_context_of_its_json() {
    let map = features();
    proptest!(rng::config(SEED, 5_000), |(u in user(), latin1_only in any::<bool>(), dialect in select(DIALECTS))| {
        // The Latin-1 dialect only round-trips for text without characters above U+00FF.
        let u = if latin1_only || dialect == Dialect::Latin1Bytes { strip_above_latin1(u) } else { u };
        let text = u.to_string();
        let seg = encode(dialect, &text);
        // Compared with the context of the JSON text as parsed (serde_json may read a float's last
        // digit differently from the value it printed).
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let want = Context::from_featureflow_user(&parsed).unwrap_or_else(|e| panic!("generator made a bad user: {e}"));
        let got = decode_user(&seg).unwrap_or_else(|e| panic!("{dialect:?}: {e}"));
        prop_assert_eq!(&got, &want, "{:?}", dialect);
        evaluate_all(&map, &got, &format!("{dialect:?} {text}"));
    });
}

/// A user segment that may not decode: a client's, damaged; random ASCII; random bytes; or
/// valid base64 of arbitrary JSON shapes (arrays, scalars, nested objects, bad ids).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        (user(), select(DIALECTS), damage()).prop_map(|(u, d, damage)| corrupt(&encode(d, &u.to_string()), &damage)),
        random_ascii(),
        random_bytes().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        any_value(6).prop_map(|v| base64::engine::general_purpose::STANDARD.encode(v.to_string())),
    ]
}

#[test]
fn damaged_and_random_segments_never_panic_and_decoded_ones_evaluate() {
    let map = features();
    let decoded = Cell::new(0);
    proptest!(rng::config(SEED, 20_000), |(seg in segment())| {
        if let Ok(ctx) = decode_user(&seg) {
            decoded.set(decoded.get() + 1);
            evaluate_all(&map, &ctx, &format!("{seg:?}"));
        }
    });
    println!("{} of 20000 generated segments decoded", decoded.get());
    assert!(decoded.get() > 1_000, "the generator should produce some decodable users");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [100, 1_000, 100_000] {
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let seg = base64::engine::general_purpose::STANDARD.encode(&json);
        assert!(decode_user(&seg).is_err(), "depth {depth}");
        assert!(parse_request(json.as_bytes()).is_err(), "depth {depth}");
        let nested_ctx = format!("{{\"context\":{{\"a\":{}{}}}}}", "[".repeat(depth), "]".repeat(depth));
        let _ = parse_request(nested_ctx.as_bytes());
    }
}

/// An OFREP request body: random bytes, any JSON, a damaged request, or a request with any context.
fn ofrep_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => random_bytes(),
        1 => any_value(5).prop_map(|v| v.to_string().into_bytes()),
        1 => (any_value(4), damage()).prop_map(|(c, damage)| corrupt(&json!({"context": c}).to_string(), &damage).into_bytes()),
        2 => any_value(4).prop_map(|c| json!({"context": c}).to_string().into_bytes()),
    ]
}

#[test]
fn ofrep_bodies_never_panic_and_contexts_decode_like_from_ofrep() {
    let map = features();
    proptest!(rng::config(SEED, 20_000), |(body in ofrep_body())| {
        let got = parse_request(&body).map_err(|e| e.to_string());
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if let Some(c) = v.get("context").filter(|c| !c.is_null()) {
                prop_assert_eq!(&got, &Context::from_ofrep(c).map_err(|e| e.to_string()));
            }
        }
        if let Ok(ctx) = got {
            evaluate_all(&map, &ctx, &String::from_utf8_lossy(&body));
        }
    });
}

#[test]
fn percent_decoding_inverts_percent_encoding_and_never_panics() {
    proptest!(rng::config(SEED, 20_000), |(bytes in random_bytes(), s in random_ascii())| {
        let encoded: String = bytes.iter().map(|b| format!("%{b:02x}")).collect();
        prop_assert_eq!(&*percent_decode(&encoded), &bytes[..]);
        let d = percent_decode(&s);
        if !s.contains('%') {
            prop_assert_eq!(&*d, s.as_bytes());
        }
    });
}

#[test]
fn keys_queries_never_panic_and_come_back_sorted_and_unique() {
    proptest!(rng::config(SEED, 20_000), |(prefixed in any::<bool>(), ascii in random_ascii())| {
        let q = if prefixed { format!("keys={ascii}") } else { ascii };
        if let Some(keys) = requested_keys(Some(&q)) {
            prop_assert!(!keys.is_empty() && keys.iter().all(|k| !k.is_empty()), "{}", q);
            prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "{}: {:?}", q, keys);
        }
    });
}
