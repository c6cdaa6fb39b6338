//! A relay whose stderr reader went away (`… 2>&1 | head`, a dead log shipper) keeps working:
//! logging a line never kills or blocks the task that logged it.

use flagrelay_testkit as support;

use std::time::Duration;

use serde_json::{json, Value};
use support::process::{file_config, RelayProcess, Stderr};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flagrelay");

/// Polls the features endpoint with `If-None-Match: etag` until a new version is served, and
/// returns it with its ETag.
async fn next_version(relay: &RelayProcess, etag: &str) -> (String, Value) {
    let c = http();
    within("the flags file change to be served", async {
        loop {
            let r = c.get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).header("if-none-match", etag).send().await.expect("poll");
            if r.status() == 200 {
                let tag = r.headers()["etag"].to_str().expect("etag").to_string();
                return (tag, r.json().await.expect("json"));
            }
            // 503 until the first load (the relay logs that it serves before it has read the file).
            assert!(r.status() == 304 || r.status() == 503, "{}", r.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn write_atomically(path: &std::path::Path, flags: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(flags).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn with_its_stderr_closed_the_relay_still_serves_every_change_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, flags) = file_config(dir.path(), &json!({"production": {"a": simple_feature("a", "on")}}), "", "");
    let relay = RelayProcess::start(BIN, &cfg, &[], Stderr::CloseOnceServing).await;
    let (mut etag, first) = next_version(&relay, "\"none\"").await;
    assert_eq!(first["a"]["rules"][0]["variantSplits"][0]["variantKey"], "on");

    // Each change is logged (info), so each one writes to the closed pipe.
    for variant in ["off", "on"] {
        write_atomically(&flags, &json!({"production": {"a": simple_feature("a", variant)}}));
        let (tag, served) = next_version(&relay, &etag).await;
        assert_eq!(served["a"]["rules"][0]["variantSplits"][0]["variantKey"], variant);
        etag = tag;
    }

    let lost = within("/metrics", http().get(relay.admin_url("/metrics")).send()).await.unwrap().text().await.unwrap();
    assert!(
        metric(&lost, "flagrelay_log_lines_dropped_total", &[("reason", "write_error")]).unwrap_or(0.0) >= 2.0,
        "the lines that could not be written are counted"
    );
    relay.sigterm();
    let (status, _) = relay.wait().await;
    assert!(status.success(), "SIGTERM still stops the relay cleanly: {status:?}");
}
