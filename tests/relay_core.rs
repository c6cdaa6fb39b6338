//! The core relay over real HTTP on loopback: polling with ETags, keys, SSE, the watched flags
//! file, bad input, admin endpoints.

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::*;

fn two_envs() -> Value {
    json!({
        "production": {"alpha": simple_feature("alpha", "on"), "beta": role_feature("beta", &["pvt_user"])},
        "staging": {"gamma": simple_feature("gamma", "off")}
    })
}

#[tokio::test]
async fn poll_returns_the_bare_map_with_etag_and_sdk_config() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let r = relay.poll(SERVER_KEY).await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong quoted ETag: {etag}");
    assert!(r.headers().contains_key("x-featureflow-sdk-config"));
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 2);
    assert_eq!(body["alpha"]["key"], "alpha");
}

#[tokio::test]
async fn matching_if_none_match_gets_304_with_sdk_config() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let etag = relay.poll(SERVER_KEY).await.headers()["etag"].to_str().unwrap().to_string();
    let r = within("poll", http().get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).header("if-none-match", &etag).send()).await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.headers().contains_key("x-featureflow-sdk-config"));
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn blank_if_none_match_counts_as_absent() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    for blank in ["", "''", " "] {
        let r = within("poll", http().get(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).header("if-none-match", blank).send()).await.unwrap();
        assert_eq!(r.status(), 200, "If-None-Match {blank:?}");
    }
}

#[tokio::test]
async fn etag_changes_exactly_when_content_changes() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let etag1 = relay.poll(SERVER_KEY).await.headers()["etag"].to_str().unwrap().to_string();
    // Same content, different formatting: the file changes, the served content does not.
    relay.write_flags_raw(serde_json::to_string(&two_envs()).unwrap().as_bytes());
    let mut sse = relay.sse(STAGING_SERVER_KEY).await;
    sse.expect().await;
    // A change in the other environment is a sync point: the file was re-read.
    let mut f = two_envs();
    f["staging"]["gamma"] = simple_feature("gamma", "on");
    relay.write_flags(&f);
    sse.expect().await;
    let etag2 = relay.poll(SERVER_KEY).await.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag1, etag2, "unchanged content keeps its ETag");
    let mut prod = relay.sse(SERVER_KEY).await;
    prod.expect().await;
    f["production"]["alpha"] = simple_feature("alpha", "off");
    relay.write_flags(&f);
    prod.expect().await;
    let etag3 = relay.poll(SERVER_KEY).await.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(etag2, etag3, "changed content gets a new ETag");
}

#[tokio::test]
async fn missing_or_unknown_key_is_401_and_client_key_is_403() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let r = within("poll", http().get(relay.url("/api/sdk/v1/features")).send()).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "missing_key");
    let r = relay.poll("sdk-srv-env-nope").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_key");
    let r = relay.poll(CLIENT_KEY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "server_key_required");
    // The scheme is matched case-insensitively.
    let r = within("poll", http().get(relay.url("/api/sdk/v1/features")).header("authorization", format!("bearer {SERVER_KEY}")).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    // SSE too.
    let sse = SseClient::connect(&relay.url("/api/sdk/v1/features"), &[("authorization", &format!("Bearer {CLIENT_KEY}"))]).await;
    assert_eq!(sse.status, 403);
}

#[tokio::test]
async fn sse_sends_full_state_then_updates_and_deletes_with_increasing_ids() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let mut sse = relay.sse(SERVER_KEY).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    let first = sse.expect().await;
    assert_eq!(first.event, "features.updated");
    assert_eq!(sse.retry, Some(3000), "retry: comes first");
    let full = first.json();
    assert_eq!(full.as_object().unwrap().len(), 2);
    let id0: u64 = first.id.clone().unwrap().parse().unwrap();

    let mut f = two_envs();
    f["production"]["alpha"] = simple_feature("alpha", "off");
    relay.write_flags(&f);
    let upd = sse.expect().await;
    assert_eq!(upd.event, "features.updated");
    let data = upd.json();
    assert_eq!(data.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["alpha"], "only what changed");
    assert_eq!(data["alpha"]["rules"][0]["variantSplits"][0]["variantKey"], "off");
    let id1: u64 = upd.id.clone().unwrap().parse().unwrap();
    assert!(id1 > id0);

    f["production"].as_object_mut().unwrap().remove("beta");
    relay.write_flags(&f);
    let del = sse.expect().await;
    assert_eq!(del.event, "features.deleted");
    assert_eq!(del.json(), json!(["beta"]));
    let id2: u64 = del.id.clone().unwrap().parse().unwrap();
    assert!(id2 > id1);
    // Polling agrees with the stream.
    let body: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    assert!(body.get("beta").is_none());
    assert_eq!(body["alpha"]["rules"][0]["variantSplits"][0]["variantKey"], "off");
}

#[tokio::test]
async fn sse_heartbeat_is_java_compatible() {
    let relay = TestRelay::builder().flags(two_envs()).config("[sse]\nheartbeat_secs = 1").start().await;
    let mut sse = relay.sse(SERVER_KEY).await;
    sse.expect().await;
    let hb = sse.next_any().await.expect("a heartbeat");
    assert!(hb.data.starts_with("{\"heartbeat\""), "{hb:?}");
    assert_eq!(hb.event, "message");
}

#[tokio::test]
async fn environments_are_isolated() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let prod: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    let staging: Value = relay.poll(STAGING_SERVER_KEY).await.json().await.unwrap();
    assert!(prod.get("gamma").is_none());
    assert!(staging.get("alpha").is_none() && staging.get("gamma").is_some());
    let mut prod_sse = relay.sse(SERVER_KEY).await;
    let mut staging_sse = relay.sse(STAGING_SERVER_KEY).await;
    prod_sse.expect().await;
    staging_sse.expect().await;
    let mut f = two_envs();
    f["staging"]["gamma"] = simple_feature("gamma", "on");
    f["production"]["delta"] = simple_feature("delta", "on");
    relay.write_flags(&f);
    let s = staging_sse.expect().await.json();
    assert_eq!(s.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["gamma"]);
    let p = prod_sse.expect().await.json();
    assert_eq!(p.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["delta"]);
}

#[tokio::test]
async fn a_broken_flags_file_keeps_the_last_good_data_and_shows_in_status() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let before: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    relay.write_flags_raw(b"{ \"production\": { oops");
    let st = relay.wait_status("production", "the parse error in /status", |s| s["source"]["state"] == "error").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("invalid JSON"), "{st}");
    let after: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    assert_eq!(before, after);
    let m = relay.metrics().await;
    assert!(metric(&m, "flagrelay_source_reload_errors_total", &[("env", "production"), ("source", "file")]).unwrap() >= 1.0);
    // Fixing the file recovers.
    let mut f = two_envs();
    f["production"]["alpha"] = simple_feature("alpha", "off");
    relay.write_flags(&f);
    relay.wait_status("production", "recovery", |s| s["source"]["state"] == "ok").await;
}

#[tokio::test]
async fn an_invalid_feature_is_rejected_and_its_previous_version_kept() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let mut sse = relay.sse(SERVER_KEY).await;
    sse.expect().await;
    let mut f = two_envs();
    // Splits summing to 90 are invalid; a valid new feature in the same write still lands.
    f["production"]["alpha"]["rules"][0]["variantSplits"][0]["split"] = json!(90);
    f["production"]["epsilon"] = simple_feature("epsilon", "on");
    relay.write_flags(&f);
    let upd = sse.expect().await.json();
    assert_eq!(upd.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["epsilon"]);
    let body: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    assert_eq!(body["alpha"]["rules"][0]["variantSplits"][0]["split"], 100, "previous version served");
    let st = relay.env_status("production").await;
    assert!(st["source"]["last_error"].as_str().unwrap().contains("sum to 90"), "{st}");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_invalid_features_total", &[("env", "production")]), Some(1.0));
}

#[tokio::test]
async fn an_environment_missing_from_the_file_serves_an_empty_set() {
    let relay = TestRelay::builder().flags(json!({"production": {"alpha": simple_feature("alpha", "on")}})).start().await;
    let staging: Value = relay.poll(STAGING_SERVER_KEY).await.json().await.unwrap();
    assert_eq!(staging, json!({}));
    let st = relay.env_status("staging").await;
    assert!(st["source"]["detail"].as_str().unwrap().contains("missing"), "{st}");
}

#[tokio::test]
async fn register_and_events_accept_json_arrays() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let c = http();
    let r = within("register", c.put(relay.url("/api/sdk/v1/register")).bearer_auth(SERVER_KEY).body(r#"[{"key":"f","failoverVariant":"off","variants":[]}]"#).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");
    let r = within("events", c.post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body(r#"[{"featureKey":"f","evaluatedVariant":"on"}]"#).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = within("events", c.post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body(r#"{"not":"an array"}"#).send()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    let r = within("events", c.post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body("[1,").send()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = within("events", c.post(relay.url("/api/sdk/v1/events")).bearer_auth(CLIENT_KEY).body("[]").send()).await.unwrap();
    assert_eq!(r.status(), 403);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sdk_events_received_total", &[("env", "production"), ("kind", "register")]), Some(1.0));
    assert_eq!(metric(&m, "flagrelay_sdk_events_received_total", &[("env", "production"), ("kind", "events")]), Some(1.0));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let relay = TestRelay::builder().flags(two_envs()).config("[http]\nmax_body_bytes = 1000").start().await;
    let big = format!("[{}]", vec!["{\"a\":1}"; 500].join(","));
    let r = within("events", http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body(big.clone()).send()).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "payload_too_large");
    // Chunked (no Content-Length) too.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big))]);
    let r = within("events", http().post(relay.url("/api/sdk/v1/events")).bearer_auth(SERVER_KEY).body(reqwest::Body::wrap_stream(stream)).send()).await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn unknown_paths_are_404_json_and_wrong_methods_405() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let r = within("404", http().get(relay.url("/nope")).send()).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = within("405", http().delete(relay.url("/api/sdk/v1/features")).bearer_auth(SERVER_KEY).send()).await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "method_not_allowed");
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_status_and_metrics() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let c = http();
    assert_eq!(within("healthz", c.get(relay.admin_url("/healthz")).send()).await.unwrap().status(), 200);
    assert_eq!(within("readyz", c.get(relay.admin_url("/readyz")).send()).await.unwrap().status(), 200);
    let st = relay.env_status("production").await;
    assert_eq!(st["features"], 2);
    assert!(st["revision"].as_u64().unwrap() >= 1);
    assert_eq!(st["source"]["kind"], "file");
    let _sse = relay.sse(SERVER_KEY).await;
    relay.poll(SERVER_KEY).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_features", &[("env", "production")]), Some(2.0));
    assert_eq!(metric(&m, "flagrelay_sse_clients", &[("env", "production"), ("protocol", "featureflow")]), Some(1.0));
    assert!(metric(&m, "flagrelay_http_requests_total", &[("route", "/api/sdk/v1/features"), ("status", "2xx")]).unwrap() >= 1.0);
    assert!(metric(&m, "flagrelay_environment_revision", &[("env", "production")]).unwrap() >= 1.0);
    assert!(!m.contains(SERVER_KEY), "metrics never carry keys");
    let status_text = serde_json::to_string(&relay.status().await).unwrap();
    assert!(!status_text.contains(SERVER_KEY) && !status_text.contains(CLIENT_KEY));
}

#[tokio::test]
async fn readiness_waits_for_data() {
    // An unreadable flags path: the relay serves, but is not ready.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let b = TestRelay::builder().upstream(&format!("[upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\n", missing.display().to_string()));
    let relay = b.start_unready().await;
    let r = within("readyz", http().get(relay.admin_url("/readyz")).send()).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("production"), "{body}");
    std::fs::write(&missing, serde_json::to_vec(&two_envs()).unwrap()).unwrap();
    relay.wait_ready().await;
}

#[tokio::test]
async fn shutdown_ends_open_sse_streams() {
    let relay = TestRelay::builder().flags(two_envs()).config("[sse]\ndrain_window_secs = 1").start().await;
    let mut a = relay.sse(SERVER_KEY).await;
    let mut b = relay.sse(STAGING_SERVER_KEY).await;
    a.expect().await;
    b.expect().await;
    a.retry = None;
    let stop = tokio::spawn(relay.stop());
    a.wait_end(std::time::Duration::from_secs(5)).await;
    b.wait_end(std::time::Duration::from_secs(5)).await;
    assert!(a.retry.is_some(), "a retry hint before the close");
    within("the relay to stop", stop).await.unwrap();
}

#[tokio::test]
async fn before_the_first_load_polls_get_503_and_streams_wait_for_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("later.json");
    let b = TestRelay::builder().upstream(&format!("[upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\n", missing.display().to_string()));
    let relay = b.start_unready().await;
    let r = relay.poll(SERVER_KEY).await;
    assert_eq!(r.status(), 503, "never an empty map that would wipe a replacing SDK");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_ready");
    let mut sse = relay.sse(SERVER_KEY).await;
    assert_eq!(sse.status, 200);
    std::fs::write(&missing, serde_json::to_vec(&two_envs()).unwrap()).unwrap();
    let first = sse.expect().await;
    assert_eq!(first.event, "features.updated");
    assert_eq!(first.json().as_object().unwrap().len(), 2, "the first event is the loaded data, not an empty map");
}

#[tokio::test]
async fn an_in_place_edit_that_keeps_size_inode_and_mtime_is_still_seen() {
    let relay = TestRelay::builder().flags(two_envs()).start().await;
    let mut sse = relay.sse(SERVER_KEY).await;
    sse.expect().await;
    let mut f = two_envs();
    // Same length: "on" -> "no" is not a valid variant change, so flip enabled true -> false
    // on a variant of equal length instead.
    f["production"]["alpha"] = simple_feature("alpha", "of");
    relay.write_flags_in_place_keeping_mtime(&f);
    let e = sse.expect().await;
    assert_eq!(e.json()["alpha"]["rules"][0]["variantSplits"][0]["variantKey"], "of");
}
