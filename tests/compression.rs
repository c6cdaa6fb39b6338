//! The server-SDK poll with content codings (issue 15 item 1): compressed when the request
//! accepts gzip or br, the same bytes for every request of one snapshot, a strong ETag per
//! coding, `Vary: Accept-Encoding`, and a 304 for a tag of any coding of the current body.

use flagrelay_testkit as support;

use std::io::Read;

use serde_json::{json, Value};
use support::*;

fn many(n: usize) -> Value {
    let env: serde_json::Map<String, Value> = (0..n).map(|i| (format!("f{i:04}"), simple_feature(&format!("f{i:04}"), "on"))).collect();
    json!({ "production": env, "staging": {} })
}

async fn poll_with(relay: &TestRelay, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http().get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("a poll", req.send()).await.expect("poll")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).expect("gzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &b[..], &mut out).expect("brotli");
    out
}

#[tokio::test]
async fn a_poll_that_accepts_gzip_or_br_gets_the_same_map_compressed() {
    let relay = TestRelay::builder().flags(many(500)).start().await;
    let plain = poll_with(&relay, &[]).await;
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary").as_deref(), Some("Accept-Encoding"));
    let plain_etag = header(&plain, "etag").expect("etag");
    let plain = plain.bytes().await.expect("body");

    let gz = poll_with(&relay, &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(header(&gz, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(header(&gz, "vary").as_deref(), Some("Accept-Encoding"));
    let gz_etag = header(&gz, "etag").expect("etag");
    let gz = gz.bytes().await.expect("body");
    assert_eq!(gunzip(&gz), plain);
    assert!(gz.len() * 5 < plain.len(), "gzip {} of {} bytes", gz.len(), plain.len());

    let br = poll_with(&relay, &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(header(&br, "content-encoding").as_deref(), Some("br"));
    let br_etag = header(&br, "etag").expect("etag");
    let br = br.bytes().await.expect("body");
    assert_eq!(unbrotli(&br), plain);

    // Three representations, three strong tags.
    assert_ne!(plain_etag, gz_etag);
    assert_ne!(plain_etag, br_etag);
    assert_ne!(gz_etag, br_etag);
    assert!(gz_etag.starts_with('"') && br_etag.ends_with('"'));
    // Compressed once per snapshot: a second request gets the very same bytes.
    let again = poll_with(&relay, &[("accept-encoding", "gzip")]).await.bytes().await.expect("body");
    assert_eq!(again, gz);
}

#[tokio::test]
async fn any_codings_tag_of_the_current_body_gets_a_304_and_a_change_a_200() {
    let relay = TestRelay::builder().flags(many(20)).start().await;
    let gz_etag = header(&poll_with(&relay, &[("accept-encoding", "gzip")]).await, "etag").expect("etag");
    for (accept, tag) in [("gzip", gz_etag.as_str()), ("", gz_etag.as_str()), ("br", gz_etag.as_str())] {
        let r = poll_with(&relay, &[("accept-encoding", accept), ("if-none-match", tag)]).await;
        assert_eq!(r.status(), 304, "accept {accept:?}, tag {tag}");
        assert_eq!(header(&r, "content-encoding"), None, "a 304 has no body to code");
        assert_eq!(header(&r, "vary").as_deref(), Some("Accept-Encoding"));
    }
    relay.write_flags(&json!({"production": {"only": simple_feature("only", "off")}, "staging": {}}));
    let r = within("the change", async {
        loop {
            let r = poll_with(&relay, &[("accept-encoding", "gzip"), ("if-none-match", &gz_etag)]).await;
            if r.status() == 200 {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let body: Value = serde_json::from_slice(&gunzip(&r.bytes().await.expect("body"))).expect("json");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1));
}

#[tokio::test]
async fn a_refused_or_unknown_coding_gets_the_plain_map() {
    let relay = TestRelay::builder().flags(many(20)).start().await;
    for accept in ["identity", "gzip;q=0, br;q=0", "zstd", "deflate"] {
        let r = poll_with(&relay, &[("accept-encoding", accept)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-encoding"), None, "{accept}");
        let body: Value = r.json().await.expect("plain json");
        assert_eq!(body.as_object().map(|o| o.len()), Some(20));
    }
}

#[tokio::test]
async fn computed_answers_are_compressed_only_above_the_threshold() {
    use base64::Engine;
    let user = base64::engine::general_purpose::STANDARD.encode(br#"{"id":"u1","attributes":{}}"#);
    let bulk = |relay: &TestRelay| {
        let url = relay.url("/ofrep/v1/evaluate/flags");
        async move {
            let req = http()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .header("content-type", "application/json")
                .header("accept-encoding", "gzip")
                .body(r#"{"context":{"targetingKey":"u1"}}"#);
            within("a bulk evaluation", req.send()).await.expect("bulk")
        }
    };
    let thin = |relay: &TestRelay| {
        let url = relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}/user/{user}"));
        async move { within("a thin evaluation", http().get(url).header("accept-encoding", "br").send()).await.expect("thin") }
    };
    // Two features: a few hundred bytes, under the default 1 KiB threshold.
    let small = TestRelay::builder().flags(many(2)).start().await;
    for r in [bulk(&small).await, thin(&small).await] {
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-encoding"), None);
        assert_eq!(header(&r, "vary").as_deref(), Some("Accept-Encoding"));
    }
    // 200 features: compressed per request, and still the same answer.
    let big = TestRelay::builder().flags(many(200)).start().await;
    let r = bulk(&big).await;
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert!(header(&r, "etag").is_some_and(|t| t.ends_with("-gzip\"")));
    let v: Value = serde_json::from_slice(&gunzip(&r.bytes().await.expect("body"))).expect("json");
    assert_eq!(v["flags"].as_array().map(Vec::len), Some(200));
    let r = thin(&big).await;
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("br"));
    let v: Value = serde_json::from_slice(&unbrotli(&r.bytes().await.expect("body"))).expect("json");
    assert_eq!(v.as_object().map(|o| o.len()), Some(200));
}

/// The real Python SDK (featureflow-sdk 0.3.0 with requests, from PyPI; `scripts/test` installs it
/// in tests/clients/python/.venv): it asks for gzip (and br, with brotli installed), gets the map
/// compressed, and evaluates from it. It sends no ETag, so it always gets a 200.
#[tokio::test]
async fn the_real_python_sdk_gets_the_compressed_map_and_evaluates_from_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "the Python client packages are missing: run the tests with `scripts/test` (it installs them)");
    let relay = TestRelay::builder().flags(many(50)).start().await;
    let out = within(
        "the Python SDK",
        tokio::process::Command::new(&python).arg(dir.join("featureflow_python.py")).args([&relay.base, SERVER_KEY, "f0007"]).output(),
    )
    .await
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("a JSON line");
    assert_eq!(v["value"], "on", "{v}");
    assert_eq!(v["features"], 50, "{v}");
    assert!(v["accept_encoding"].as_str().is_some_and(|a| a.contains("gzip")), "{v}");
    assert_eq!(v["content_encoding"], "br", "requests asks for br once brotli is installed: {v}");
}
