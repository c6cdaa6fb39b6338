//! Reading an OFREP request body into a context, leniently (see the [`super`] module docs), as
//! JSON tokens and never as a tree: the context's limits apply while it is read
//! ([`OfrepContextSeed`]) and every other member is skipped without being kept, so the memory a
//! body costs is bounded by the limits, not by its size. The body must be UTF-8 throughout, in
//! the skipped members too; a skipped member is otherwise checked for JSON syntax only, so an
//! unpaired surrogate escape or a number beyond f64's range there (valid JSON grammar, RFC 8259
//! §6 and §8.2, that a JSON tree cannot represent) is let through, where the context refuses it.
//! Pure functions, no HTTP types.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::eval::{Context, ContextError, OfrepContextSeed};

/// Why a request body is not an OFREP request (a 400 `INVALID_CONTEXT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body must be a JSON object like {{\"context\": {{...}}}}")]
    NotAnObject,
    #[error(transparent)]
    Context(#[from] ContextError),
}

/// Reads an OFREP request body into a context, leniently (see the module docs), with no limit on
/// the context's encoded size. Never panics.
pub fn parse_request(body: &[u8]) -> Result<Context, RequestError> {
    parse_request_within(body, usize::MAX)
}

/// [`parse_request`] for a context of at most `max_context_bytes` encoded. The body is read as
/// JSON tokens, never as a tree: the context's limits apply while it is read
/// ([`OfrepContextSeed`]) and every other member is skipped without being kept.
pub fn parse_request_within(body: &[u8], max_context_bytes: usize) -> Result<Context, RequestError> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Ok(Context::default());
    }
    // JSON text is UTF-8 (RFC 8259 §8.1). Checked whole and up front: the members that are
    // skipped are never decoded, so the token reader alone would let invalid bytes in them pass.
    let body = std::str::from_utf8(body)
        .map_err(|e| RequestError::Json(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let json = |e: serde_json::Error| RequestError::Json(e.to_string());
    let mut de = serde_json::Deserializer::from_str(body);
    let got = BodySeed { max_context_bytes }.deserialize(&mut de).map_err(json)?;
    de.end().map_err(json)?;
    got
}

/// The request body: an object whose `context` member is read by [`OfrepContextSeed`] (the last
/// one if there are several), or `null`; anything else is [`RequestError::NotAnObject`].
struct BodySeed {
    max_context_bytes: usize,
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Result<Context, RequestError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Result<Context, RequestError>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an OFREP request")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Context::default()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(RequestError::NotAnObject))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut context = Ok(Context::default());
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if k == "context" {
                context = map.next_value_seed(OfrepContextSeed { max_bytes: self.max_context_bytes })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(context.map_err(RequestError::from))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lenient_request_bodies() {
        for body in [&b""[..], b"  ", b"null", b"{}", b"{\"context\":null}", b"{\"context\":{}}"] {
            assert_eq!(parse_request(body), Ok(Context::default()), "{:?}", String::from_utf8_lossy(body));
        }
        let c = parse_request(br#"{"context":{"targetingKey":"u1","plan":"pro"}}"#).unwrap();
        assert_eq!((c.id.as_str(), c.values("plan").unwrap()), ("u1", &[json!("pro")][..]));
        for bad in [&b"{"[..], b"[]", b"\"x\"", b"{\"context\":[]}", b"{\"context\":{\"targetingKey\":1}}"] {
            assert!(parse_request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_bad_request_body_says_why() {
        assert!(matches!(parse_request(b"{"), Err(RequestError::Json(_))));
        assert_eq!(parse_request(b"[]"), Err(RequestError::NotAnObject));
        assert_eq!(RequestError::NotAnObject.to_string(), "the body must be a JSON object like {\"context\": {...}}");
        let e = parse_request(b"{\"context\":[]}").unwrap_err();
        assert_eq!(e.to_string(), Context::from_ofrep(&json!([])).unwrap_err().to_string());
    }

    #[test]
    fn a_context_over_the_byte_limit_is_an_invalid_context_naming_the_limit() {
        let body = format!("{{\"context\":{{\"targetingKey\":\"u\",\"a\":{:?}}}}}", "x".repeat(200));
        assert!(parse_request_within(body.as_bytes(), 1_000).is_ok());
        let e = parse_request_within(body.as_bytes(), 100).unwrap_err();
        assert_eq!(e, RequestError::Context(ContextError::TooManyBytes { limit: 100 }));
        assert!(e.to_string().contains("http.max_context_bytes"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_refused_wherever_it_is_even_in_a_skipped_member() {
        // Found by the `ofrep_body` fuzz target: a skipped member's string was never checked,
        // so a body that is not JSON (RFC 8259 §8.1: UTF-8) was answered as if it were.
        for body in [
            &b"{\"flagConfigEtag\":\"x\xc3\"}"[..],
            b"{\"noise\":[\"\xff\"],\"context\":{\"targetingKey\":\"u\"}}",
            b"{\"context\":{\"targetingKey\":\"u\",\"nested\":{\"a\":\"\xed\xa0\x80\"}}}",
            b"{\"context\":{\"tags\":[[\"\xc0\xaf\"]]}}",
            b"{\"\xfe\":1}",
        ] {
            for limit in [usize::MAX, 64] {
                match parse_request_within(body, limit) {
                    Err(RequestError::Json(e)) => assert!(e.contains("UTF-8"), "{e}"),
                    other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
                }
            }
        }
        // Non-ASCII that is UTF-8 is fine anywhere.
        let c = parse_request("{\"x\":\"zoë\",\"context\":{\"targetingKey\":\"ü\"}}".as_bytes()).unwrap();
        assert_eq!(c.id, "ü");
    }

    #[test]
    fn unrepresentable_json_is_let_through_only_where_it_is_skipped() {
        for skipped in [&br#"{"x":"\ud800","context":{"targetingKey":"u"}}"#[..], br#"{"x":1e400,"context":{"targetingKey":"u"}}"#] {
            assert_eq!(parse_request(skipped).map(|c| c.id), Ok("u".to_string()), "{}", String::from_utf8_lossy(skipped));
        }
        for read in [&br#"{"context":{"targetingKey":"\ud800"}}"#[..], br#"{"context":{"a":["\udc00"]}}"#, br#"{"context":{"a":1e400}}"#] {
            assert!(matches!(parse_request(read), Err(RequestError::Json(_))), "{}", String::from_utf8_lossy(read));
        }
    }

    #[test]
    fn members_beside_the_context_are_skipped_however_large() {
        let body = format!("{{\"noise\":[{}0],\"context\":{{\"targetingKey\":\"u\"}}}}", "[0],".repeat(200_000));
        assert_eq!(parse_request_within(body.as_bytes(), 100).map(|c| c.id), Ok("u".to_string()));
    }
}
