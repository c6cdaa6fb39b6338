//! Fuzz target `thin_user`: the thin-client user segment (`/api/js/v1/evaluate/{key}/user/{…}`,
//! `/api/v1/eval/stream/{key}/user/{…}`) through `decode_user` (percent-decoding, base64 in
//! either alphabet, UTF-8 or Latin-1, JSON, `Context::from_featureflow_user`), and the `keys`
//! query through `requested_keys`.
//!
//! Input: one mode byte, then the payload. Mode 0 takes the payload as the segment itself;
//! modes 1-3 encode it first (standard base64, URL-safe unpadded, standard percent-encoded), so
//! the fuzzer works on the JSON directly, and the result must then equal reading the payload
//! straight (UTF-8 else Latin-1, JSON, `from_featureflow_user`). Every accepted context passes
//! `check_context`, and `decode_user_within` refuses it exactly below its encoded size.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use flagrelay::fuzzing::{decode_user, decode_user_within, requested_keys, Context, UserError};
use flagrelay_fuzz::{check_context, ctx_eq};

fn percent_all(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// What the segment encoding `payload` must decode to.
fn straight(payload: &[u8]) -> Result<Context, UserError> {
    if payload.is_empty() {
        return Err(UserError::Empty);
    }
    let text: String = match std::str::from_utf8(payload) {
        Ok(s) => s.to_string(),
        Err(_) => payload.iter().map(|&b| b as char).collect(),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| UserError::Json(e.to_string()))?;
    Context::from_featureflow_user(&v).map_err(|e| UserError::Shape(e.to_string()))
}

fn run(data: &[u8]) {
    let Some((&mode, payload)) = data.split_first() else { return };
    let segment = match mode % 4 {
        0 => String::from_utf8_lossy(payload).into_owned(),
        1 => STANDARD.encode(payload),
        2 => URL_SAFE_NO_PAD.encode(payload),
        _ => percent_all(&STANDARD.encode(payload)),
    };
    if let Some(keys) = requested_keys(Some(&segment)) {
        assert!(!keys.is_empty());
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert!(keys.iter().all(|k| !k.is_empty()));
    }
    let got = decode_user(&segment);
    if mode % 4 != 0 {
        match (&got, &straight(payload)) {
            (Ok(a), Ok(b)) => assert!(ctx_eq(a, b), "{a:?} / {b:?}"),
            (Err(a), Err(b)) => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{a} / {b}"),
            (a, b) => panic!("decoded {a:?}, straight {b:?}"),
        }
    }
    let Ok(ctx) = got else { return };
    check_context(&ctx);
    let n = ctx.encoded_len();
    assert!(decode_user_within(&segment, n).is_ok());
    assert!(matches!(decode_user_within(&segment, n - 1), Err(UserError::TooLarge(_))));
}

fn main() {
    flagrelay_fuzz::main(run);
}
