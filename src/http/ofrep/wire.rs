//! OFREP wire encoding: writing evaluations in OFREP's shapes (value, reason, variant; success and
//! failure items; the bulk body with its `eventStreams`), the advertised stream URL and the bulk
//! ETag. Pure functions, no HTTP types; the mapping rules are in the [`super`] module docs. Reading
//! a request is [`super::request`].

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::eval::thin::served;
use crate::eval::{CompiledFeature, Context, Evaluation, Reason};
use crate::http::error::OfrepCode;
use crate::store::CompiledMap;

/// Where the advertised event stream lives; the token follows.
const STREAM: &str = "/ofrep/v1/stream/";
/// `inactivityDelaySec` advertised with the event stream (the ADR-0008 default).
const INACTIVITY_DELAY_SECS: u64 = 120;
/// What a path segment keeps unescaped: RFC 3986's unreserved set.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

// ---- mapping --------------------------------------------------------------------------------

/// The OFREP reason for an evaluation (see the module docs).
fn reason(f: &CompiledFeature, e: &Evaluation<'_>) -> &'static str {
    match e.reason {
        Reason::Disabled => "DISABLED",
        Reason::TargetingMatch => "TARGETING_MATCH",
        Reason::Split => "SPLIT",
        Reason::Default if has_targeting(f) => "DEFAULT",
        Reason::Default => "STATIC",
    }
}

/// True if some rule has conditions (so the answer can depend on the context).
fn has_targeting(f: &CompiledFeature) -> bool {
    f.feature().control.rules.iter().any(|r| !r.default_rule && r.audience.as_ref().is_some_and(|a| !a.conditions.is_empty()))
}

/// True if every variant the feature can serve is `on` or `off`, and both occur.
fn is_boolean(f: &CompiledFeature) -> bool {
    let c = &f.feature().control;
    let keys = c
        .variants
        .iter()
        .map(|v| v.key.as_str())
        .chain(c.rules.iter().flat_map(|r| r.variant_splits.iter().map(|s| s.variant_key.as_str())))
        .chain(std::iter::once(c.off_variant()));
    let (mut on, mut off) = (false, false);
    for k in keys {
        match k {
            "on" => on = true,
            "off" => off = true,
            _ => return false,
        }
    }
    on && off
}

/// Writes the OFREP `value` of an evaluation (see the module docs).
fn write_value(out: &mut Vec<u8>, f: &CompiledFeature, e: &Evaluation<'_>) {
    // Serializing JSON values and strings into a Vec cannot fail.
    match e.value {
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        None if matches!(e.variant, "on" | "off") && is_boolean(f) => {
            out.extend_from_slice(if e.variant == "on" { b"true" } else { b"false" })
        }
        None => {
            let _ = serde_json::to_writer(&mut *out, e.variant);
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"key","value","reason","variant"[,"metadata"]}`.
pub fn write_success(out: &mut Vec<u8>, key: &str, f: &CompiledFeature, e: &Evaluation<'_>, metadata: Option<&[u8]>) {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key);
    out.extend_from_slice(b",\"value\":");
    write_value(out, f, e);
    out.extend_from_slice(b",\"reason\":\"");
    out.extend_from_slice(reason(f, e).as_bytes());
    out.extend_from_slice(b"\",\"variant\":");
    write_str(out, e.variant);
    if let Some(m) = metadata {
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(m);
    }
    out.push(b'}');
}

fn write_failure(out: &mut Vec<u8>, key: &str, code: OfrepCode, details: &str) {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key);
    out.extend_from_slice(b",\"errorCode\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"errorDetails\":");
    write_str(out, details);
    out.push(b'}');
}

/// The bulk body for `ctx`: every served flag, then the event stream at `stream_uri`. Returns the
/// body and how many flags failed to evaluate.
pub fn bulk_body(compiled: &CompiledMap, ctx: &Context, stream_uri: &str) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(128 + compiled.len() * 96);
    let mut errors = 0;
    out.extend_from_slice(b"{\"flags\":[");
    let mut first = true;
    for (key, f) in compiled.iter().filter(|(_, f)| served(f)) {
        if !first {
            out.push(b',');
        }
        first = false;
        match f.evaluate(ctx) {
            Ok(e) => write_success(&mut out, key, f, &e, None),
            Err(err) => {
                errors += 1;
                write_failure(&mut out, key, OfrepCode::ParseError, &err.to_string());
            }
        }
    }
    out.extend_from_slice(b"],\"eventStreams\":[{\"type\":\"sse\",\"endpoint\":{\"requestUri\":");
    write_str(&mut out, stream_uri);
    out.extend_from_slice(b"},\"inactivityDelaySec\":");
    out.extend_from_slice(INACTIVITY_DELAY_SECS.to_string().as_bytes());
    out.extend_from_slice(b"}]}");
    (out, errors)
}

/// `/ofrep/v1/stream/<key>`, the key percent-encoded outside the URL-unreserved set.
pub fn stream_uri(key: &str) -> String {
    format!("{STREAM}{}", utf8_percent_encode(key, NOT_UNRESERVED))
}

/// A strong ETag for a bulk body: a 64-bit hash of the exact bytes plus their length. The hasher is
/// std's `DefaultHasher::new()` (SipHash, fixed keys: the same on every replica; a third of SHA-1's
/// cost on this hot path). The ETag only has to change when the body does; a Rust upgrade that
/// changes the algorithm costs each client one 200.
pub fn bulk_etag(body: &[u8]) -> String {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(body);
    format!("\"{:016x}{:x}\"", h.finish(), body.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::json;

    use serde_json::Value;

    use super::*;
    use crate::model::{Feature, FeatureControl};

    fn compiled(raw: Value) -> Arc<CompiledFeature> {
        let key = raw["key"].as_str().unwrap().to_string();
        Arc::new(CompiledFeature::compile(&Feature::from_value(&key, raw).unwrap()))
    }

    /// A feature that skipped validation (splits sum to 90): it compiles with an error.
    fn broken(key: &str) -> Arc<CompiledFeature> {
        let raw = json!({"key": key, "enabled": true,
            "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 90}]}]});
        let control: FeatureControl = serde_json::from_value(raw.clone()).unwrap();
        let json = Bytes::from(serde_json::to_vec(&raw).unwrap());
        Arc::new(CompiledFeature::compile(&Arc::new(Feature { key: key.into(), control, json })))
    }

    fn one(f: &Arc<CompiledFeature>, ctx: &Context) -> Value {
        let mut out = Vec::new();
        let e = f.evaluate(ctx).unwrap();
        write_success(&mut out, f.key(), f, &e, Some(b"{}"));
        serde_json::from_slice(&out).unwrap()
    }

    fn feature(variants: Value, rules: Value) -> Arc<CompiledFeature> {
        compiled(json!({"key": "f", "enabled": true, "offVariantKey": "off", "variants": variants, "rules": rules}))
    }

    fn default_rule(variant: &str) -> Value {
        json!([{"defaultRule": true, "variantSplits": [{"variantKey": variant, "split": 100}]}])
    }

    #[test]
    fn on_off_features_are_booleans() {
        let f = feature(json!([{"key": "on"}, {"key": "off"}]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u")), json!({"key": "f", "value": true, "reason": "STATIC", "variant": "on", "metadata": {}}));
    }

    #[test]
    fn a_catalogue_value_wins_over_the_boolean() {
        let f = feature(json!([{"key": "on", "value": {"max": 3}}, {"key": "off"}]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!({"max": 3}));
    }

    #[test]
    fn other_variant_keys_are_strings() {
        let f = feature(json!([{"key": "blue"}, {"key": "off"}]), default_rule("blue"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!("blue"));
        // No catalogue: the split keys and offVariantKey decide.
        let f = feature(json!([]), default_rule("on"));
        assert_eq!(one(&f, &Context::new("u"))["value"], json!(true));
    }

    #[test]
    fn reasons() {
        let rules = json!([
            {"defaultRule": false, "audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["gold"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 50}, {"variantKey": "off", "split": 50}]}]);
        let f = feature(json!([{"key": "on"}, {"key": "off"}]), rules);
        assert_eq!(one(&f, &Context::new("u").with("tier", "gold"))["reason"], "TARGETING_MATCH");
        assert_eq!(one(&f, &Context::new("u"))["reason"], "SPLIT");
        let rules = json!([
            {"defaultRule": false, "audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["gold"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]);
        let f = feature(json!([]), rules);
        assert_eq!(one(&f, &Context::new("u"))["reason"], "DEFAULT");
        let f = compiled(json!({"key": "f", "enabled": false, "rules": default_rule("on")}));
        let v = one(&f, &Context::new("u"));
        assert_eq!((v["reason"].as_str(), v["variant"].as_str(), &v["value"]), (Some("DISABLED"), Some("off"), &json!(false)));
    }

    #[test]
    fn a_feature_that_fails_to_compile_fails_alone_in_bulk() {
        let mut map = CompiledMap::new();
        map.insert("bad".into(), broken("bad"));
        map.insert("good".into(), feature(json!([]), default_rule("on")));
        let (body, errors) = bulk_body(&map, &Context::default(), "/ofrep/v1/stream/k");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(errors, 1);
        assert_eq!(v["flags"][0]["key"], "bad");
        assert_eq!(v["flags"][0]["errorCode"], "PARSE_ERROR");
        assert!(v["flags"][0]["errorDetails"].as_str().unwrap().contains("splits sum to 90"));
        assert_eq!(v["flags"][1]["value"], true);
        assert_eq!(v["eventStreams"][0]["endpoint"]["requestUri"], "/ofrep/v1/stream/k");
    }

    #[test]
    fn stream_uri_encodes_the_token() {
        assert_eq!(stream_uri("sdk-js_1.x~"), "/ofrep/v1/stream/sdk-js_1.x~");
        assert_eq!(stream_uri("a/b c"), "/ofrep/v1/stream/a%2Fb%20c");
        assert_eq!(stream_uri("+%ë"), "/ofrep/v1/stream/%2B%25%C3%AB");
    }

    #[test]
    fn equal_bulk_bodies_have_equal_strong_etags() {
        let a = bulk_etag(b"{\"flags\":[]}");
        assert_eq!(a, bulk_etag(b"{\"flags\":[]}"));
        assert_ne!(a, bulk_etag(b"{\"flags\":[1]}"));
        assert!(a.starts_with('"') && a.ends_with('"') && !a.starts_with("W/"));
    }
}
