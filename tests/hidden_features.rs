//! Issue 10 item 4: nothing hidden reaches a thin client. Features marked `inClientApi: false` or
//! `deleted: true` never appear in the legacy stream (change frames, replayed resumes, full-state
//! resumes); thin-client URLs take client keys only; the OFREP stream token is keyed by a
//! server-side secret.

use flagrelay_testkit as support;

use base64::Engine;
use serde_json::{json, Value};
use support::*;

fn hidden(key: &str, marker: &str) -> Value {
    let mut f = simple_feature(key, "on");
    f[marker] = if marker == "deleted" { json!(true) } else { json!(false) };
    f
}

/// Two served features and two hidden ones (one of each marker).
fn flags() -> Value {
    json!({
        "production": {
            "shown": simple_feature("shown", "on"),
            "also-shown": simple_feature("also-shown", "on"),
            "secret": hidden("secret", "inClientApi"),
            "soft-deleted": hidden("soft-deleted", "deleted"),
        },
        "staging": {}
    })
}

async fn legacy(relay: &TestRelay, last_event_id: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = last_event_id.map(|id| ("last-event-id", id)).into_iter().collect();
    SseClient::connect(&relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}")), &headers).await
}

/// Writes `flags` and waits until the relay serves its revision (the poll's ETag changes).
async fn publish(relay: &TestRelay, flags: &Value) {
    let before = relay.poll(SERVER_KEY).await.headers().get("etag").cloned();
    relay.write_flags(flags);
    within("the change to be served", async {
        while relay.poll(SERVER_KEY).await.headers().get("etag").cloned() == before {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn keys_of(e: &SseEvent) -> Vec<String> {
    serde_json::from_value(e.json()).unwrap_or_else(|err| panic!("a key list ({err}): {}", e.data))
}

#[tokio::test]
async fn a_change_to_hidden_features_only_is_not_announced_on_the_legacy_stream() {
    let relay = TestRelay::builder().flags(flags()).start().await;
    let mut sse = legacy(&relay, None).await;
    let mut f = flags();
    f["production"]["secret"]["offVariantKey"] = json!("dark");
    f["production"]["soft-deleted"]["offVariantKey"] = json!("dark");
    f["production"]["new-secret"] = hidden("new-secret", "inClientApi");
    publish(&relay, &f).await;
    f["production"]["shown"] = simple_feature("shown", "off");
    relay.write_flags(&f);
    assert_eq!(keys_of(&sse.expect().await), ["shown"], "the first frame is the served change");
}

#[tokio::test]
async fn a_change_frame_names_only_what_thin_clients_are_or_were_served() {
    let relay = TestRelay::builder().flags(flags()).start().await;
    let mut sse = legacy(&relay, None).await;
    let mut f = flags();
    f["production"]["shown"] = hidden("shown", "deleted"); // being hidden: clients must refetch it
    f["production"]["secret"]["offVariantKey"] = json!("dark");
    f["production"].as_object_mut().map(|o| o.remove("soft-deleted"));
    f["production"]["new-secret"] = hidden("new-secret", "inClientApi");
    f["production"]["new"] = simple_feature("new", "on");
    relay.write_flags(&f);
    assert_eq!(keys_of(&sse.expect().await), ["new", "shown"]);
}

#[tokio::test]
async fn a_resume_replays_no_hidden_key() {
    let relay = TestRelay::builder().flags(flags()).start().await;
    let mut sse = legacy(&relay, None).await;
    let mut f = flags();
    f["production"]["also-shown"] = simple_feature("also-shown", "off");
    relay.write_flags(&f);
    let seen = sse.expect().await.id.expect("an id");
    sse.close();
    f["production"]["secret"]["offVariantKey"] = json!("dark");
    f["production"].as_object_mut().map(|o| o.remove("soft-deleted"));
    publish(&relay, &f).await;
    f["production"]["shown"] = simple_feature("shown", "off");
    publish(&relay, &f).await;
    let mut resumed = legacy(&relay, Some(&seen)).await;
    assert_eq!(keys_of(&resumed.expect().await), ["shown"]);
}

#[tokio::test]
async fn a_full_state_resume_names_served_features_and_deletions_of_served_ones_only() {
    let relay = TestRelay::builder().flags(flags()).start().await;
    let mut f = flags();
    let o = f["production"].as_object_mut().expect("an object");
    o.remove("secret");
    o.remove("also-shown");
    publish(&relay, &f).await;
    // An id from before this relay's history cannot be replayed: full state with deletions.
    let mut resumed = legacy(&relay, Some("1")).await;
    assert_eq!(keys_of(&resumed.expect().await), ["also-shown", "shown"]);
}

// ---- keys in URLs ---------------------------------------------------------------------------

#[tokio::test]
async fn every_thin_client_url_refuses_a_server_key_with_403_and_takes_a_client_key() {
    let relay = TestRelay::builder().flags(flags()).start().await;
    let user = base64::engine::general_purpose::STANDARD.encode(br#"{"id":"u"}"#);
    let c = http();
    for key in [SERVER_KEY, CLIENT_KEY] {
        let want = if key == SERVER_KEY { 403 } else { 200 };
        let requests = [
            c.get(relay.url(&format!("/api/js/v1/evaluate/{key}/user/{user}"))),
            c.post(relay.url(&format!("/api/js/v1/event/{key}"))).body("[]"),
            c.get(relay.url(&format!("/api/js/v1/stream/{key}"))).header("accept", "text/event-stream"),
            c.get(relay.url(&format!("/api/v1/eval/stream/{key}/user/{user}"))).header("accept", "text/event-stream"),
        ];
        for req in requests {
            let r = within("a thin-client request", req.send()).await.expect("response");
            let url = r.url().path().replace(key, "{key}");
            assert_eq!(r.status(), want, "{url} with a {} key", if key == SERVER_KEY { "server" } else { "client" });
            if want == 403 {
                let body: Value = within("the error body", r.json()).await.expect("JSON error");
                assert_eq!(body["error"], "client_key_required", "{url}");
            }
        }
    }
}

// ---- OFREP stream token ---------------------------------------------------------------------

async fn advertised_token(relay: &TestRelay) -> String {
    let r = within(
        "a bulk evaluation",
        http().post(relay.url("/ofrep/v1/evaluate/flags")).header("x-api-key", CLIENT_KEY).body("{}").send(),
    )
    .await
    .expect("bulk");
    let v: Value = within("the bulk body", r.json()).await.expect("JSON");
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"].as_str().expect("a stream URI").to_string();
    uri.rsplit('/').next().unwrap_or_default().to_string()
}

fn with_secret(secret: &str) -> String {
    format!("[http]\nstream_token_secret = {secret:?}\n")
}

#[tokio::test]
async fn the_stream_token_is_keyed_by_the_configured_secret_so_replicas_agree() {
    let a = TestRelay::builder().flags(flags()).config(&with_secret("replicas-share-this-one")).start().await;
    let b = TestRelay::builder().flags(flags()).config(&with_secret("replicas-share-this-one")).start().await;
    let other = TestRelay::builder().flags(flags()).config(&with_secret("a-different-secret-here")).start().await;
    let token = advertised_token(&a).await;
    assert_eq!(token, advertised_token(&b).await, "one secret, one token");
    assert_ne!(token, advertised_token(&other).await, "without the secret the token cannot be computed");
    let mut sse = SseClient::connect(&b.url(&format!("/ofrep/v1/stream/{token}")), &[]).await;
    assert_eq!(sse.status, 200, "a token from one replica opens the stream on another");
    sse.close();
}

#[tokio::test]
async fn without_a_configured_secret_the_token_is_good_for_this_process_only() {
    let a = TestRelay::builder().flags(flags()).start().await;
    let b = TestRelay::builder().flags(flags()).start().await;
    let token = advertised_token(&a).await;
    assert_ne!(token, advertised_token(&b).await);
    let r = within("a stream with another process's token", http().get(b.url(&format!("/ofrep/v1/stream/{token}"))).send()).await.expect("response");
    assert_eq!(r.status(), 401);
}
