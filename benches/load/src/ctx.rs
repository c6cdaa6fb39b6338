//! Per-client URLs for the per-context evaluation stream
//! (`GET /api/v1/eval/stream/{clientKey}/user/{base64 user JSON}`): `{ctx}` in `--url` becomes,
//! for client i of G context groups, the standard base64 of
//! `{"id":"bench-user-<i % G>","attributes":{"tier":"<i % G>"}}`, so each of the G distinct
//! contexts is held by N/G connections.

/// The placeholder in `--url` that [`expand`] replaces.
pub const PLACEHOLDER: &str = "{ctx}";

/// The Featureflow user JSON of context group `g`.
pub fn user_json(g: usize) -> String {
    format!("{{\"id\":\"bench-user-{g}\",\"attributes\":{{\"tier\":\"{g}\"}}}}")
}

/// `template` with every `{ctx}` replaced by the base64 user of client `i`'s group (`i % groups`).
/// `groups` = 0 leaves the template as it is.
pub fn expand(template: &str, i: usize, groups: usize) -> String {
    if groups == 0 {
        return template.to_string();
    }
    template.replace(PLACEHOLDER, &base64_std(user_json(i % groups).as_bytes()))
}

/// Standard base64 (RFC 4648 alphabet, `=` padding), as the relay's user segment decoder reads it.
pub fn base64_std(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Checks that `--url` and `--contexts` agree: a `{ctx}` needs G > 0 and G > 0 needs a `{ctx}`.
pub fn check(template: &str, groups: usize, clients: usize) -> Result<(), String> {
    let has = template.contains(PLACEHOLDER);
    match (has, groups) {
        (true, 0) => Err(format!("--url has {PLACEHOLDER}: give --contexts G")),
        (false, g) if g > 0 => Err(format!("--contexts {g}: --url needs {PLACEHOLDER} where the base64 user goes")),
        (_, g) if g > clients => Err(format!("--contexts {g} is more than the {clients} clients: some groups would have no connection")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64_std(i.as_bytes()), o);
        }
        assert_eq!(base64_std(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_template_gets_client_i_s_group() {
        let t = "http://127.0.0.1:7700/api/v1/eval/stream/K/user/{ctx}";
        // 7 % 5 = 2
        let u = expand(t, 7, 5);
        let seg = u.rsplit('/').next().unwrap();
        assert_eq!(seg, base64_std(br#"{"id":"bench-user-2","attributes":{"tier":"2"}}"#));
        assert_eq!(seg, "eyJpZCI6ImJlbmNoLXVzZXItMiIsImF0dHJpYnV0ZXMiOnsidGllciI6IjIifX0=");
        assert_eq!(expand(t, 2, 5), u, "same group, same URL");
        assert_ne!(expand(t, 3, 5), u);
        assert_eq!(expand(t, 7, 0), t, "no groups: as given");
        let v: serde_json::Value = serde_json::from_str(&user_json(2)).unwrap();
        assert_eq!(v["attributes"]["tier"], "2");
    }

    #[test]
    fn url_and_groups_must_agree() {
        assert!(check("http://h/x/{ctx}", 10, 100).is_ok());
        assert!(check("http://h/x", 0, 100).is_ok());
        assert!(check("http://h/x/{ctx}", 0, 100).is_err());
        assert!(check("http://h/x", 10, 100).is_err());
        assert!(check("http://h/x/{ctx}", 101, 100).is_err());
    }
}
