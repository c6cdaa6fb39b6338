//! Fuzz target `redis_message`: a payload on `{p:env}:changes` through
//! `ChangeMessage::parse`, and an upsert's body through `Feature::from_slice` as the Redis
//! source does. An accepted message re-encodes (the contract's shape) and parses to the same
//! message; its keys are not empty and an upsert's body is a JSON object. A refusal's reason is
//! short whatever the payload (it is logged and shown in `/status`; the module promises the
//! payload is not echoed in full). `truncate`, which cuts payloads for the logs, keeps to char
//! boundaries and its limit.

use flagrelay::fuzzing::{truncate, ChangeMessage, Feature, Op};
use flagrelay_fuzz::check_feature;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The longest reason a refusal may give (a short text, a serde error without the payload).
const MAX_REASON: usize = 256;

fn run(data: &[u8]) {
    let shown = String::from_utf8_lossy(data);
    for n in [0usize, 1, 2, 3, 5, 8, 13, 32, 40, 64, 200] {
        let t = truncate(&shown, n);
        assert!(shown.starts_with(t));
        if shown.len() <= n {
            assert_eq!(t, shown);
        } else {
            assert!(t.len() <= n && t.len() + 4 > n, "truncate({n}) gave {} bytes", t.len());
        }
    }
    let m = match ChangeMessage::parse(data) {
        Ok(m) => m,
        Err(e) => {
            let why = e.to_string();
            assert!(why.len() <= MAX_REASON, "a {}-byte reason for a {}-byte payload: {}", why.len(), data.len(), truncate(&why, 400));
            return;
        }
    };
    let (op, key, feature) = match &m.op {
        Op::Upsert { key, feature } => ("upsert", Some(key), feature.as_deref()),
        Op::Delete { key } => ("delete", Some(key), None),
        Op::Reset => ("reset", None, None),
    };
    let mut wire = json!({"v": 1, "env": m.env, "epoch": m.epoch, "rev": m.rev, "op": op});
    if let Some(k) = key {
        assert!(!k.is_empty());
        wire["key"] = Value::String(k.clone());
    }
    if let Some(ts) = m.ts {
        wire["ts"] = json!(ts);
    }
    let mut text = serde_json::to_string(&wire).unwrap();
    if let Some(body) = feature {
        assert!(body.trim_start().starts_with('{'), "{body}");
        let raw = RawValue::from_string(body.to_string()).unwrap();
        text.pop();
        text.push_str(",\"feature\":");
        text.push_str(raw.get());
        text.push('}');
        if let (Some(k), Ok(f)) = (key, Feature::from_slice(key.map_or("", |k| k.as_str()), body.as_bytes())) {
            check_feature(k, &f);
        }
    }
    let again = ChangeMessage::parse(text.as_bytes()).unwrap();
    assert_eq!(again, m, "{text}");
}

fn main() {
    flagrelay_fuzz::main(run);
}
