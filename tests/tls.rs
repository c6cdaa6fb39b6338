//! TLS on the API listener with HTTP/2 (issue 15 item 2): a poll over TLS (HTTP/1.1 and h2), an
//! OFREP bulk request and an event stream over h2, a certificate rotated under the running relay
//! (the next handshake presents the new one), the admin listener staying plain by default, and a
//! bad `[tls]` refused at startup naming the key.

use flagrelay_testkit as support;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::redis::tls::TlsFiles;
use support::*;

fn flags(variant: &str) -> Value {
    json!({"production": {"alpha": simple_feature("alpha", variant)}, "staging": {}})
}

/// A relay with `[tls]` on the API listener, its certificates in `dir/live/`.
async fn tls_relay(dir: &Path) -> (TestRelay, TlsFiles, String) {
    let files = TlsFiles::generate(&dir.join("first"), false);
    let live = dir.join("live");
    std::fs::create_dir_all(&live).expect("live dir");
    std::fs::copy(&files.server_cert, live.join("cert.pem")).expect("copy cert");
    std::fs::copy(&files.server_key, live.join("key.pem")).expect("copy key");
    let cfg = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval_secs = 1\n",
        live.join("cert.pem").display().to_string(),
        live.join("key.pem").display().to_string()
    );
    let relay = TestRelay::builder().flags(flags("on")).config(&cfg).start().await;
    let base = relay.base.replacen("http://", "https://", 1);
    (relay, files, base)
}

fn client(cas: &[&Path], h1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(WAIT).tls_info(true);
    for ca in cas {
        let pem = std::fs::read(ca).expect("read CA");
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"));
    }
    if h1 {
        b = b.http1_only();
    }
    b.build().expect("client")
}

async fn poll(c: &reqwest::Client, base: &str) -> reqwest::Response {
    within("a TLS poll", c.get(format!("{base}/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send()).await.expect("poll over TLS")
}

#[tokio::test]
async fn polls_are_served_over_tls_with_h2_offered_by_alpn_and_http1_still_possible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, files, base) = tls_relay(dir.path()).await;
    let h2 = poll(&client(&[&files.ca], false), &base).await;
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let body: Value = h2.json().await.expect("json");
    assert_eq!(body["alpha"]["key"], "alpha");
    let h1 = poll(&client(&[&files.ca], true), &base).await;
    assert_eq!((h1.status(), h1.version()), (reqwest::StatusCode::OK, reqwest::Version::HTTP_11));
    // Plain HTTP on the TLS listener gets no HTTP answer.
    assert!(http().get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send().await.is_err());
    // The admin listener stays plain unless [tls] admin = true.
    let r = within("healthz", http().get(relay.admin_url("/healthz")).send()).await.expect("admin over plain HTTP");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_ofrep_bulk_request_and_an_event_stream_run_over_one_h2_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, files, base) = tls_relay(dir.path()).await;
    let c = client(&[&files.ca], false);
    let bulk = within(
        "an h2 bulk",
        c.post(format!("{base}/ofrep/v1/evaluate/flags")).bearer_auth(CLIENT_KEY).header("content-type", "application/json").body(r#"{"context":{"targetingKey":"u1"}}"#).send(),
    )
    .await
    .expect("bulk over h2");
    assert_eq!((bulk.status(), bulk.version()), (reqwest::StatusCode::OK, reqwest::Version::HTTP_2));
    let v: Value = bulk.json().await.expect("json");
    assert_eq!(v["flags"][0]["key"], "alpha");

    let stream = within("an h2 event stream", c.get(format!("{base}/api/sdk/v1/features")).bearer_auth(SERVER_KEY).header("accept", "text/event-stream").send())
        .await
        .expect("stream over h2");
    assert_eq!((stream.status(), stream.version()), (reqwest::StatusCode::OK, reqwest::Version::HTTP_2));
    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    read_until(&mut body, &mut seen, |s| s.contains("event: features.updated")).await;
    let before = seen.matches("event: features.updated").count();
    relay.write_flags(&flags("off"));
    read_until(&mut body, &mut seen, |s| s.matches("event: features.updated").count() > before && s.contains("\"variantKey\":\"off\"")).await;
}

/// Reads the stream's chunks into `seen` until `done(seen)`.
async fn read_until<S>(body: &mut S, seen: &mut String, done: impl Fn(&str) -> bool)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    within("the event stream", async {
        while !done(seen) {
            let chunk = body.next().await.expect("the stream goes on").expect("a chunk");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
}

#[tokio::test]
async fn a_certificate_rotated_in_place_is_presented_from_the_next_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_relay, first, base) = tls_relay(dir.path()).await;
    let second = TlsFiles::generate(&dir.path().join("second"), false);
    let peer = |r: &reqwest::Response| r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).map(<[u8]>::to_vec);
    let der = |pem: &Path| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(pem).expect("a PEM certificate").to_vec()
    };
    let r = poll(&client(&[&first.ca], false), &base).await;
    assert_eq!(peer(&r), Some(der(&first.server_cert)));

    // cert-manager style: new files renamed over the old ones.
    let live = dir.path().join("live");
    for (from, to) in [(&second.server_cert, "cert.pem"), (&second.server_key, "key.pem")] {
        std::fs::copy(from, live.join(format!("{to}.tmp"))).expect("copy");
        std::fs::rename(live.join(format!("{to}.tmp")), live.join(to)).expect("rename");
    }
    within("the rotated certificate", async {
        loop {
            // A new client per attempt: a fresh handshake.
            if let Ok(r) = client(&[&first.ca, &second.ca], false).get(format!("{base}/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send().await {
                if peer(&r) == Some(der(&second.server_cert)) {
                    assert_eq!(r.status(), 200);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[test]
fn a_bad_tls_section_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles::generate(&dir.path().join("t"), false);
    let base = "[[environments]]\nid = \"production\"\nserver_keys = [\"sdk-srv-x\"]\n";
    let load = |tls: &str| {
        let path = dir.path().join("flagrelay.toml");
        std::fs::write(&path, format!("{tls}\n{base}")).expect("write config");
        flagrelay::config::Config::load(&flagrelay::config::Overrides { config: path, ..Default::default() })
    };
    let cert = files.server_cert.display().to_string();
    let key = files.server_key.display().to_string();
    for (tls, key_named) in [
        (format!("[tls]\ncert_file = {cert:?}"), "tls"),
        (format!("[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = {key:?}"), "tls.cert_file"),
        (format!("[tls]\ncert_file = {key:?}\nkey_file = {key:?}"), "tls.cert_file"),
        (format!("[tls]\ncert_file = {cert:?}\nkey_file = {cert:?}"), "tls.key_file"),
        (format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\napi = false"), "tls"),
        (format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nreload_interval_secs = 0"), "tls.reload_interval_secs"),
    ] {
        let e = load(&tls).expect_err(&tls).to_string();
        assert!(e.contains(key_named), "{tls}: {e}");
    }
    assert!(load(&format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nadmin = true")).is_ok());
}
