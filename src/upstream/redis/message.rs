//! The change message of the upstream contract: one JSON document per revision on
//! `{p:env}:changes`.
//!
//! ```json
//! {"v":1,"env":"production","epoch":"7f3c…","rev":1234,"op":"upsert","key":"new-checkout",
//!  "feature":{"key":"new-checkout","version":1234,"...":"..."},"ts":1795618261123}
//! ```
//!
//! Invariant: parsing never panics; anything that does not fit the contract is a
//! [`MalformedMessage`] with a short reason (the payload itself is not echoed in full).

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The feature `key` was written; `feature` is its document, or `None` when the writer left a
    /// large body out (the relay reads it with `HGET`).
    Upsert { key: String, feature: Option<String> },
    Delete { key: String },
    /// The whole environment was replaced: resync.
    Reset,
}

#[derive(Debug, Clone)]
pub struct ChangeMessage {
    pub env: String,
    pub epoch: String,
    pub rev: u64,
    pub op: Op,
    /// Publish time, Unix ms (Redis `TIME`), for the propagation metric.
    pub ts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed change message: {0}")]
pub struct MalformedMessage(pub String);

#[derive(Deserialize)]
struct Wire<'a> {
    v: Option<u64>,
    env: Option<String>,
    #[serde(default)]
    epoch: Option<String>,
    rev: Option<u64>,
    op: Option<String>,
    key: Option<String>,
    #[serde(borrow)]
    feature: Option<&'a RawValue>,
    ts: Option<u64>,
}

impl PartialEq for ChangeMessage {
    fn eq(&self, o: &Self) -> bool {
        self.env == o.env && self.epoch == o.epoch && self.rev == o.rev && self.op == o.op && self.ts == o.ts
    }
}

impl ChangeMessage {
    pub fn parse(payload: &[u8]) -> Result<ChangeMessage, MalformedMessage> {
        let w: Wire<'_> = serde_json::from_slice(payload).map_err(|e| MalformedMessage(format!("not a JSON object of the contract's shape: {}", short(&e))))?;
        match w.v {
            Some(1) => {}
            Some(v) => return Err(MalformedMessage(format!("unsupported version v={v}"))),
            None => return Err(MalformedMessage("missing \"v\"".into())),
        }
        let env = w.env.ok_or_else(|| MalformedMessage("missing \"env\"".into()))?;
        let rev = w.rev.ok_or_else(|| MalformedMessage("missing or non-integer \"rev\"".into()))?;
        let key = |k: Option<String>| match k {
            Some(k) if !k.is_empty() => Ok(k),
            _ => Err(MalformedMessage("missing \"key\"".into())),
        };
        let op = match w.op.as_deref() {
            Some("upsert") => {
                let feature = match w.feature {
                    Some(f) if f.get().trim_start().starts_with('{') => Some(f.get().to_string()),
                    Some(f) if f.get() == "null" => None,
                    Some(_) => return Err(MalformedMessage("\"feature\" must be an object".into())),
                    None => None,
                };
                Op::Upsert { key: key(w.key)?, feature }
            }
            Some("delete") => Op::Delete { key: key(w.key)? },
            Some("reset") => Op::Reset,
            Some(other) => return Err(MalformedMessage(format!("unknown op {:?}", truncate(other, 32)))),
            None => return Err(MalformedMessage("missing \"op\"".into())),
        };
        Ok(ChangeMessage { env, epoch: w.epoch.unwrap_or_default(), rev, op, ts: w.ts })
    }
}

/// A JSON error without the payload: serde quotes an unexpected value whole ("invalid type:
/// string \"…\""), so a long one is cut, keeping the position.
fn short(e: &serde_json::Error) -> String {
    let full = e.to_string();
    if full.len() <= 160 {
        return full;
    }
    format!("{}… at line {} column {}", truncate(&full, 120), e.line(), e.column())
}

/// At most `n` bytes of `s`, on a char boundary, for logs.
pub fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upsert() {
        let m = ChangeMessage::parse(br#"{"v":1,"env":"p","epoch":"e1","rev":7,"op":"upsert","key":"a","feature":{"key":"a","version":7},"ts":5}"#).unwrap();
        assert_eq!(m.rev, 7);
        assert_eq!(m.epoch, "e1");
        assert_eq!(m.ts, Some(5));
        match m.op {
            Op::Upsert { key, feature: Some(f) } => {
                assert_eq!(key, "a");
                assert_eq!(f, r#"{"key":"a","version":7}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upsert_without_body_and_delete_and_reset() {
        let m = ChangeMessage::parse(br#"{"v":1,"env":"p","epoch":"","rev":8,"op":"upsert","key":"a","ts":5}"#).unwrap();
        assert_eq!(m.op, Op::Upsert { key: "a".into(), feature: None });
        let m = ChangeMessage::parse(br#"{"v":1,"env":"p","epoch":"","rev":9,"op":"delete","key":"a","ts":5}"#).unwrap();
        assert_eq!(m.op, Op::Delete { key: "a".into() });
        let m = ChangeMessage::parse(br#"{"v":1,"env":"p","epoch":"x","rev":10,"op":"reset","ts":5}"#).unwrap();
        assert_eq!(m.op, Op::Reset);
    }

    #[test]
    fn rejects_what_does_not_fit() {
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"env":"p","rev":1,"op":"delete","key":"a"}"#,
            br#"{"v":2,"env":"p","rev":1,"op":"delete","key":"a"}"#,
            br#"{"v":1,"env":"p","rev":-1,"op":"delete","key":"a"}"#,
            br#"{"v":1,"env":"p","rev":"1","op":"delete","key":"a"}"#,
            br#"{"v":1,"env":"p","rev":1,"op":"explode","key":"a"}"#,
            br#"{"v":1,"env":"p","rev":1,"op":"delete"}"#,
            br#"{"v":1,"env":"p","rev":1,"op":"upsert","key":"a","feature":[1]}"#,
            br#"{"v":1,"rev":1,"op":"reset"}"#,
        ] {
            assert!(ChangeMessage::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_refusal_does_not_echo_a_long_value() {
        // Found by the `redis_message` fuzz target's bounded-reason check: serde's "invalid type"
        // error quoted the value whole, and the reason is logged and kept in /status.
        let long = "é".repeat(5_000);
        for payload in [
            format!(r#"{{"v":"{long}"}}"#),
            format!(r#"{{"v":1,"env":"p","rev":1,"op":"delete","key":["{long}"]}}"#),
            format!(r#"{{"v":1,"env":{{"{long}":1}},"rev":1,"op":"reset"}}"#),
        ] {
            let e = ChangeMessage::parse(payload.as_bytes()).unwrap_err().to_string();
            assert!(e.len() <= 256, "{} bytes: {}", e.len(), truncate(&e, 300));
            assert!(e.contains("invalid type") && e.contains("column"), "{e}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
