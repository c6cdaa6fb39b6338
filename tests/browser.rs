//! A real browser (issue 15 item 3): headless Chromium, driven by `tests/clients/browser.js`
//! through playwright-core, on a page served from another origin than the relay. The real
//! featureflow-client browser bundle evaluates through CORS preflights; an OFREP bulk POST reads
//! its ETag cross-origin and revalidates to a 304; the OFREP `eventStreams` SSE and the
//! per-context stream, both browser `EventSource`s, receive a live change.
//!
//! Needs Debian's `chromium` (`scripts/test` names it when missing; `.ci/run` installs it).

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::node::NodeScript;
use support::*;

fn flags(beta_roles: &[&str]) -> Value {
    json!({
        "production": {
            "alpha": simple_feature("alpha", "on"),
            "beta": role_feature("beta", beta_roles),
        },
        "staging": {}
    })
}

/// The next line of `step`, failing on an error line (console errors are shown, not fatal:
/// Chromium reports a 304 or an aborted stream on the console).
async fn next_step(b: &mut NodeScript, step: &str) -> Value {
    loop {
        let v = b.next().await;
        match v["step"].as_str() {
            Some(s) if s == step => return v,
            Some("error") => panic!("the browser page failed: {v}"),
            _ => eprintln!("browser: {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_evaluates_polls_with_etags_and_streams_live_changes() {
    assert!(std::path::Path::new("/usr/bin/chromium").exists() || std::env::var("CHROMIUM").is_ok(), "Chromium is required: apt-get install chromium");
    let relay = TestRelay::builder().flags(flags(&["admin"])).start().await;
    let mut b = NodeScript::spawn("browser.js", &[&relay.base, CLIENT_KEY]);
    let page = next_step(&mut b, "page").await;
    assert_ne!(page["origin"].as_str().unwrap_or(""), relay.base, "the page is on its own origin");

    // featureflow-client (its X-Featureflow-Client header makes the browser preflight).
    let ff = next_step(&mut b, "featureflow").await;
    assert_eq!(ff["value"], "on", "{ff}");
    assert_eq!(ff["features"]["beta"], "off", "{ff}");

    // OFREP bulk: the ETag is readable cross-origin, and revalidating with it is a 304.
    let bulk = next_step(&mut b, "bulk").await;
    assert_eq!(bulk["status"], 200, "{bulk}");
    let etag = bulk["etag"].as_str().unwrap_or_default().to_string();
    assert!(etag.starts_with('"'), "the ETag was exposed to the page: {bulk}");
    let beta = bulk["flags"].as_array().and_then(|f| f.iter().find(|f| f["key"] == "beta")).cloned().unwrap_or_default();
    assert_eq!(beta["value"], false, "{bulk}");
    assert_eq!(next_step(&mut b, "revalidate").await["status"], 304);

    // Both EventSources open (in either order with) the per-context stream's first event, the
    // evaluated map.
    let (mut ready, mut first) = (false, None);
    while !ready || first.is_none() {
        let v = b.next().await;
        match v["step"].as_str() {
            Some("ready") => ready = true,
            Some("eval-event") if first.is_none() => first = Some(v),
            Some("error") => panic!("the browser page failed: {v}"),
            _ => eprintln!("browser: {v}"),
        }
    }
    let first = first.unwrap_or_default();
    assert_eq!(first["type"], "features.evaluated", "{first}");
    assert_eq!(first["data"]["beta"], "off");

    // A live change: beta now on for pvt_user, which the page's user is.
    relay.write_flags(&flags(&["admin", "pvt_user"]));
    let mut ofrep_seen = false;
    let mut eval_seen = false;
    while !(ofrep_seen && eval_seen) {
        let v = b.next().await;
        match v["step"].as_str() {
            Some("ofrep-event") => {
                let data: Value = serde_json::from_str(v["data"].as_str().unwrap_or("{}")).unwrap_or_default();
                assert_eq!(data["type"], "refetchEvaluation", "{v}");
                ofrep_seen = true;
            }
            Some("eval-event") => {
                assert_eq!(v["type"], "features.updated", "{v}");
                assert_eq!(v["data"], json!({"beta": "on"}), "only what changed for this user");
                eval_seen = true;
            }
            Some("error") => panic!("the browser page failed: {v}"),
            _ => eprintln!("browser: {v}"),
        }
    }
    b.send("exit").await;
    assert!(b.wait().await.success());
}
