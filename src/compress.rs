//! Content codings of response bodies (RFC 9110 §8.4, §12.5.3): which one a request accepts
//! ([`negotiate`], from its `Accept-Encoding` value), compressing a body once ([`compress`]),
//! and the strong ETag of a coded representation ([`coded_etag`], [`base_etag`]). No I/O and no
//! HTTP types: the store caches each snapshot body per coding with these, the HTTP layer picks
//! the coding per request.
//!
//! Choices: `br` is preferred over `gzip` at an equal weight (smaller for JSON at a similar
//! cost); `identity` is always acceptable unless refused (`identity;q=0`, or `*;q=0` without
//! it), and even then served, as RFC 9110 allows a server that has no better choice; `deflate`
//! and `zstd` are not offered.

use std::io::Write;

use bytes::Bytes;

/// A content coding the relay can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Identity,
    Gzip,
    Br,
}

impl Coding {
    /// The `Content-Encoding` value (`None` for identity).
    pub fn header(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Br => Some("br"),
        }
    }

    /// The ETag suffix of this coding's representation.
    fn suffix(self) -> &'static str {
        match self {
            Coding::Identity => "",
            Coding::Gzip => "-gzip",
            Coding::Br => "-br",
        }
    }
}

/// The weight `q` of one `Accept-Encoding` member (`1` without a `q`; `0` for a malformed one).
fn weight(params: &str) -> f32 {
    for p in params.split(';') {
        let p = p.trim();
        if let Some(q) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
            return q.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0);
        }
    }
    1.0
}

/// The coding to answer with, given the request's `Accept-Encoding` values (all of its header
/// lines). No header: identity.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Coding {
    let (mut br, mut gzip, mut star) = (None::<f32>, None::<f32>, None::<f32>);
    for value in values {
        for member in value.split(',') {
            let (name, params) = member.split_once(';').unwrap_or((member, ""));
            let q = weight(params);
            match name.trim().to_ascii_lowercase().as_str() {
                "br" => br = Some(q),
                "gzip" | "x-gzip" => gzip = Some(q),
                "*" => star = Some(q),
                _ => {}
            }
        }
    }
    let br = br.or(star).unwrap_or(0.0);
    let gzip = gzip.or(star).unwrap_or(0.0);
    if br > 0.0 && br >= gzip {
        Coding::Br
    } else if gzip > 0.0 {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

/// `body` in `coding` (identity: the same bytes). Levels: gzip 6 and brotli quality 5, made once
/// per snapshot body, so ratio matters more than speed; [`compress_fast`] is for bodies made
/// per request.
pub fn compress(coding: Coding, body: &Bytes) -> Bytes {
    encode(coding, body, 6, 5)
}

/// As [`compress`], at the fast levels (gzip 1, brotli 1) for bodies compressed per request.
pub fn compress_fast(coding: Coding, body: &Bytes) -> Bytes {
    encode(coding, body, 1, 1)
}

fn encode(coding: Coding, body: &Bytes, gzip_level: u32, br_quality: u32) -> Bytes {
    match coding {
        Coding::Identity => body.clone(),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::new(gzip_level));
            // Writing to a Vec cannot fail.
            match e.write_all(body).and_then(|()| e.finish()) {
                Ok(v) => Bytes::from(v),
                Err(_) => body.clone(),
            }
        }
        Coding::Br => {
            let mut out = Vec::with_capacity(body.len() / 4 + 64);
            let params = brotli::enc::BrotliEncoderParams { quality: br_quality as i32, lgwin: 22, ..Default::default() };
            match brotli::BrotliCompress(&mut &body[..], &mut out, &params) {
                Ok(_) => Bytes::from(out),
                Err(_) => body.clone(),
            }
        }
    }
}

/// The strong ETag of `coding`'s representation of the body whose ETag is `etag` (a quoted
/// strong tag): `"abc"` → `"abc-br"`. Another coding is another representation (RFC 9110
/// §8.8.3), so it has its own tag.
pub fn coded_etag(etag: &str, coding: Coding) -> String {
    match etag.strip_suffix('"') {
        Some(open) if coding != Coding::Identity => format!("{open}{}\"", coding.suffix()),
        _ => etag.to_string(),
    }
}

/// The tag of the body behind a coded tag (`"abc-gzip"` → `"abc"`), so that a client that
/// cached another coding of the same body still gets its 304.
pub fn base_etag(tag: &str) -> String {
    for c in [Coding::Gzip, Coding::Br] {
        if let Some(open) = tag.strip_suffix('"').and_then(|t| t.strip_suffix(c.suffix())) {
            return format!("{open}\"");
        }
    }
    tag.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_coding_follows_the_weights_preferring_br() {
        for (header, want) in [
            ("", Coding::Identity),
            ("identity", Coding::Identity),
            ("gzip", Coding::Gzip),
            ("gzip, deflate", Coding::Gzip),
            ("gzip, deflate, br", Coding::Br),
            ("br;q=0.5, gzip", Coding::Gzip),
            ("br;q=1.0, gzip;q=1.0", Coding::Br),
            ("GZIP", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("*", Coding::Br),
            ("*;q=0.1, br;q=0", Coding::Gzip),
            ("gzip;q=0", Coding::Identity),
            ("gzip;q=bad", Coding::Identity),
            ("gzip;q=2", Coding::Identity),
            ("zstd, deflate", Coding::Identity),
        ] {
            assert_eq!(negotiate([header]), want, "{header:?}");
        }
        assert_eq!(negotiate(["deflate", "br"]), Coding::Br, "several header lines");
        assert_eq!(negotiate(std::iter::empty()), Coding::Identity);
    }

    #[test]
    fn compressed_bodies_decode_to_the_original() {
        let body = Bytes::from(format!("{{{}}}", (0..500).map(|i| format!("\"f{i}\":{{\"key\":\"f{i}\",\"enabled\":true}}")).collect::<Vec<_>>().join(",")));
        let gz = compress(Coding::Gzip, &body);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, body);
        assert!(gz.len() * 5 < body.len(), "{} of {}", gz.len(), body.len());
        for br in [compress(Coding::Br, &body), compress_fast(Coding::Br, &body)] {
            let mut out = Vec::new();
            brotli::BrotliDecompress(&mut &br[..], &mut out).unwrap();
            assert_eq!(out, body);
        }
        assert_eq!(compress(Coding::Identity, &body), body);
    }

    #[test]
    fn each_coding_has_its_own_strong_tag_and_leads_back_to_the_body_tag() {
        assert_eq!(coded_etag("\"abc\"", Coding::Identity), "\"abc\"");
        assert_eq!(coded_etag("\"abc\"", Coding::Gzip), "\"abc-gzip\"");
        assert_eq!(coded_etag("\"abc\"", Coding::Br), "\"abc-br\"");
        assert_eq!(base_etag("\"abc-gzip\""), "\"abc\"");
        assert_eq!(base_etag("W/\"abc-br\""), "W/\"abc\"");
        assert_eq!(base_etag("\"abc\""), "\"abc\"");
    }
}
