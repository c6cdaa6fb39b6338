//! The token reader against `Context::from_ofrep`, and its limits.

use serde_json::json;

use super::*;

fn read(text: &str, max_bytes: usize) -> Result<Context, ContextError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let got = OfrepContextSeed { max_bytes }.deserialize(&mut de).unwrap_or_else(|e| panic!("{text}: {e}"));
    de.end().unwrap_or_else(|e| panic!("{text}: {e}"));
    got
}

#[test]
fn reads_what_from_ofrep_reads() {
    let docs = [
        json!(null),
        json!({}),
        json!({"targetingKey": "u", "email": "a@b", "n": 1, "f": 1.5, "neg": -3, "beta": true,
               "tags": ["a", 1, false, null, [1], {"x": 1}], "org": {"id": 1}, "none": null, "empty": []}),
        json!({"a": 1, "targetingKey": null}),
        json!("x"),
        json!([1, 2]),
        json!({"targetingKey": 7, "big": (0..300).collect::<Vec<_>>()}),
        json!({"big": (0..=MAX_VALUES).collect::<Vec<_>>()}),
        json!({"ok": (0..MAX_VALUES).collect::<Vec<_>>()}),
    ];
    for doc in docs {
        let want = if doc.is_null() { Ok(Context::default()) } else { Context::from_ofrep(&doc) };
        assert_eq!(read(&doc.to_string(), usize::MAX), want, "{doc}");
    }
}

#[test]
fn too_many_attributes_is_the_same_error() {
    let wide: serde_json::Map<String, Value> = (0..=super::super::context::MAX_ATTRIBUTES).map(|i| (format!("a{i}"), json!(1))).collect();
    let doc = Value::Object(wide);
    assert_eq!(read(&doc.to_string(), usize::MAX), Context::from_ofrep(&doc));
}

#[test]
fn a_context_over_the_byte_limit_is_refused_naming_the_limit_and_the_rest_is_skipped() {
    let doc = json!({"targetingKey": "u", "a": "x".repeat(100), "b": (0..200).collect::<Vec<_>>(), "c": 1});
    let size = Context::from_ofrep(&doc).unwrap().encoded_len();
    assert!(read(&doc.to_string(), size).is_ok());
    assert_eq!(read(&doc.to_string(), size - 1), Err(ContextError::TooManyBytes { limit: size - 1 }));
    assert_eq!(read(&doc.to_string(), 50), Err(ContextError::TooManyBytes { limit: 50 }));
}

#[test]
fn a_huge_array_stops_being_collected_after_the_limit() {
    let text = format!("{{\"a\":[{}0]}}", "0,".repeat(500_000));
    assert_eq!(read(&text, usize::MAX), Err(ContextError::TooLarge { what: "values in one attribute", limit: MAX_VALUES }));
}

#[test]
fn an_invalid_targeting_key_anywhere_wins_over_a_limit() {
    let text = format!("{{\"a\":[{}0],\"targetingKey\":{{}}}}", "0,".repeat(1_000));
    assert_eq!(read(&text, usize::MAX), Err(ContextError::InvalidId { field: "targetingKey", got: "an object" }));
}

#[test]
fn a_context_exactly_at_the_byte_limit_is_accepted() {
    // Found by the `ofrep_body` fuzz target: the running estimate counted a comma after every
    // value, the last one too, so it was not a lower bound and a context of exactly
    // `max_context_bytes` (here a 31-character string under a 64-byte limit) was refused.
    let docs = [
        json!({"tragetinmLfj&<%j!c": "x".repeat(31)}),
        json!({"a": "x"}),
        json!({"a": 1}),
        json!({"a": true}),
        json!({"a": [1, 2, 3], "b": ["x", "y"], "c": [null, 4]}),
        json!({"targetingKey": "", "d": [0, 0, 0, 0, 0, 0, 0, 0, 0]}),
    ];
    for doc in docs {
        let size = Context::from_ofrep(&doc).unwrap().encoded_len();
        assert_eq!(read(&doc.to_string(), size), Context::from_ofrep(&doc), "{doc} at its size {size}");
        assert_eq!(read(&doc.to_string(), size - 1), Err(ContextError::TooManyBytes { limit: size - 1 }), "{doc}");
    }
}
