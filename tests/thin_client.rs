//! The Featureflow thin-client API over real HTTP (spec §5): the evaluate endpoint, client events,
//! CORS, the legacy change stream, the per-context evaluation stream, bad input, and the real
//! featureflow-client@2.1.0 from npm.

use flagrelay_testkit as support;

use base64::Engine;
use serde_json::{json, Value};
use support::node::NodeScript;
use support::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn user(id: &str, attributes: Value) -> String {
    b64(&json!({"id": id, "attributes": attributes}).to_string())
}

/// `on` from 2000 on (resolved by the client, which holds the clock), for people with `email`
/// at example.com (resolved by the relay); `off` otherwise.
fn dated_feature(key: &str) -> Value {
    json!({
        "key": key, "enabled": true, "offVariantKey": "off",
        "variants": [{"key": "on"}, {"key": "off"}],
        "rules": [
            {"defaultRule": false, "audience": {"conditions": [
                {"target": "email", "operator": "endsWith", "values": ["@secret-customer.example"]},
                {"target": "featureflow.date", "operator": "after", "values": ["2000-01-01T00:00:00Z"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}
        ]
    })
}

fn valued_feature(key: &str) -> Value {
    json!({
        "key": key, "enabled": true, "offVariantKey": "off",
        "variants": [{"key": "on", "value": {"color": "#0066cc", "maxItems": 10}}, {"key": "off"}],
        "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]
    })
}

fn flags() -> Value {
    json!({
        "production": {
            "pvt-feature": role_feature("pvt-feature", &["pvt_user"]),
            "alpha-feature": role_feature("alpha-feature", &["alpha_role"]),
            "everyone": simple_feature("everyone", "on"),
            "dated": dated_feature("dated"),
            "valued": valued_feature("valued"),
        },
        "staging": {}
    })
}

async fn relay() -> TestRelay {
    TestRelay::builder().flags(flags()).start().await
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("a GET", req.send()).await.expect("GET")
}

async fn evaluate(relay: &TestRelay, key: &str, segment: &str) -> reqwest::Response {
    get(&relay.url(&format!("/api/js/v1/evaluate/{key}/user/{segment}")), &[("x-featureflow-client", "JavascriptClient/2.1.0")]).await
}

/// Writes the flags and waits until the relay has published the change (seen on a server-SDK
/// stream of production).
async fn publish(relay: &TestRelay, f: &Value) {
    let mut server = relay.sse(SERVER_KEY).await;
    server.expect().await;
    relay.write_flags(f);
    server.expect().await;
}

async fn body_json(r: reqwest::Response) -> Value {
    within("a body", r.json::<Value>()).await.expect("JSON body")
}

// ---- evaluate -------------------------------------------------------------------------------

#[tokio::test]
async fn evaluate_answers_with_the_exact_content_type_featureflow_client_requires() {
    let relay = relay().await;
    let r = evaluate(&relay, CLIENT_KEY, &user("u1", json!({}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json;charset=UTF-8");
}

#[tokio::test]
async fn evaluate_resolves_targeting_on_the_relay() {
    let relay = relay().await;
    let pvt = body_json(evaluate(&relay, CLIENT_KEY, &user("p", json!({"user_role": ["staff", "pvt_user"]}))).await).await;
    let plain = body_json(evaluate(&relay, CLIENT_KEY, &user("c", json!({"user_role": "customer"}))).await).await;
    assert_eq!((pvt["pvt-feature"].as_str(), pvt["alpha-feature"].as_str()), (Some("on"), Some("off")));
    assert_eq!((plain["pvt-feature"].as_str(), plain["everyone"].as_str()), (Some("off"), Some("on")));
}

#[tokio::test]
async fn time_conditions_go_to_the_client_and_no_other_rule_value_does() {
    let relay = relay().await;
    let r = evaluate(&relay, CLIENT_KEY, &user("c", json!({"email": "ann@secret-customer.example"}))).await;
    let text = within("body", r.text()).await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["dated"],
        json!({"rules": [
            {"audience": {"conditions": [{"target": "featureflow.date", "operator": "after", "values": ["2000-01-01T00:00:00Z"]}]}, "variant": "on"},
            {"variant": "off"}]})
    );
    assert!(!text.contains("secret-customer"), "a non-time rule value leaked: {text}");
    assert!(!text.contains("pvt_user") && !text.contains("alpha_role"), "role lists leaked: {text}");
}

#[tokio::test]
async fn a_user_failing_the_other_conditions_gets_the_resolved_variant() {
    let relay = relay().await;
    let v = body_json(evaluate(&relay, CLIENT_KEY, &user("c", json!({"email": "bob@else.example"}))).await).await;
    assert_eq!(v["dated"], "off");
}

#[tokio::test]
async fn variant_values_from_the_catalogue_are_included() {
    let relay = relay().await;
    let v = body_json(evaluate(&relay, CLIENT_KEY, &user("c", json!({}))).await).await;
    assert_eq!(v["valued"], json!({"rules": [{"variant": "on", "value": {"color": "#0066cc", "maxItems": 10}}]}));
}

#[tokio::test]
async fn keys_query_returns_only_those_features() {
    let relay = relay().await;
    let url = relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}/user/{}?keys=everyone,valued,nope", user("c", json!({}))));
    let v = body_json(get(&url, &[]).await).await;
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["everyone", "valued"]);
}

#[tokio::test]
async fn the_observed_latin1_segment_with_slashes_decodes() {
    // featureflow-client 2.1.0 sent this for name "Zoë/+?" (spec §5.1): ë is the single byte 0xEB
    // and the base64 contains `/` and `+`.
    let seg = "eyJpZCI6ImFsaWNlIiwiYXR0cmlidXRlcyI6eyJyb2xlIjpbImJldGEiXSwidGllciI6ImdvbGQiLCJuYW1lIjoiWm/rLys/In19";
    let mut f = flags();
    f["production"]["zoe"] = json!({
        "key": "zoe", "enabled": true, "offVariantKey": "off", "variants": [{"key": "on"}, {"key": "off"}],
        "rules": [
            {"defaultRule": false, "audience": {"conditions": [{"target": "name", "operator": "equals", "values": ["Zoë/+?"]}]},
             "variantSplits": [{"variantKey": "on", "split": 100}]},
            {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]
    });
    let relay = TestRelay::builder().flags(f).start().await;
    let v = body_json(evaluate(&relay, CLIENT_KEY, seg).await).await;
    assert_eq!(v["zoe"], "on");
}

#[tokio::test]
async fn a_server_key_in_a_thin_client_url_is_refused_with_403() {
    let relay = relay().await;
    let r = evaluate(&relay, SERVER_KEY, &user("u", json!({}))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(body_json(r).await["error"], "client_key_required");
}

#[tokio::test]
async fn the_key_selects_the_environment() {
    let relay = relay().await;
    let v = body_json(evaluate(&relay, STAGING_CLIENT_KEY, &user("u", json!({}))).await).await;
    assert_eq!(v, json!({}));
}

#[tokio::test]
async fn an_unknown_key_is_401_with_a_json_error() {
    let relay = relay().await;
    let r = evaluate(&relay, "sdk-js-nope", &user("u", json!({}))).await;
    assert_eq!(r.status(), 401);
    assert_eq!(body_json(r).await["error"], "unknown_key");
}

#[tokio::test]
async fn malformed_users_are_400_with_a_json_error() {
    let relay = relay().await;
    let cases = [
        ("not base64", "%%%%!!".to_string()),
        ("not JSON", b64("{\"id\":")),
        ("not an object", b64("[\"alice\"]")),
        ("a numeric id", b64(r#"{"id": 42}"#)),
        ("attributes not an object", b64(r#"{"id": "a", "attributes": "admin"}"#)),
        ("nesting past the parser limit", b64(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)))),
    ];
    for (what, seg) in cases {
        let r = evaluate(&relay, CLIENT_KEY, &seg).await;
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(r.headers()["content-type"], "application/json", "{what}");
        assert_eq!(body_json(r).await["error"], "bad_request", "{what}");
    }
}

#[tokio::test]
async fn a_path_without_a_user_segment_is_404() {
    let relay = relay().await;
    let r = get(&relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}")), &[]).await;
    assert_eq!(r.status(), 404);
}

// ---- CORS -----------------------------------------------------------------------------------

#[tokio::test]
async fn preflight_allows_the_client_headers_and_exposes_retry_after() {
    let relay = relay().await;
    let url = relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}/user/{}", user("u", json!({}))));
    let r = within("preflight", http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-featureflow-client")
        .send())
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-headers"], "X-Featureflow-Client, Content-Type");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    assert_eq!(h["access-control-expose-headers"], "Retry-After");
}

#[tokio::test]
async fn responses_and_errors_carry_cors_headers() {
    let relay = relay().await;
    let ok = evaluate(&relay, CLIENT_KEY, &user("u", json!({}))).await;
    let err = evaluate(&relay, "nope", &user("u", json!({}))).await;
    assert_eq!(ok.headers()["access-control-allow-origin"], "*");
    assert_eq!(err.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn only_configured_origins_are_allowed() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\ncors_allowed_origins = [\"https://shop.example\"]").start().await;
    let url = relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}/user/{}", user("u", json!({}))));
    let allowed = get(&url, &[("origin", "https://shop.example")]).await;
    let other = get(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    // Vary names Origin (and Accept-Encoding: the answer may be compressed).
    let vary: Vec<&str> = allowed.headers().get_all("vary").iter().filter_map(|v| v.to_str().ok()).collect();
    assert!(vary.contains(&"Origin") && vary.contains(&"Accept-Encoding"), "{vary:?}");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

// ---- client events --------------------------------------------------------------------------

async fn post_events(relay: &TestRelay, key: &str, body: Vec<u8>) -> reqwest::Response {
    let url = relay.url(&format!("/api/js/v1/event/{key}"));
    within("events POST", http().post(url).header("content-type", "application/json").body(body).send()).await.unwrap()
}

#[tokio::test]
async fn client_events_are_accepted_and_counted() {
    let relay = relay().await;
    let r = post_events(&relay, CLIENT_KEY, br#"[{"type":"evaluate","featureKey":"everyone","evaluatedVariant":"on"}]"#.to_vec()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await, json!({}));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_sdk_events_received_total", &[("env", "production"), ("kind", "client_events")]), Some(1.0));
}

#[tokio::test]
async fn client_events_must_be_a_json_array() {
    let relay = relay().await;
    assert_eq!(post_events(&relay, CLIENT_KEY, b"{\"type\":\"evaluate\"}".to_vec()).await.status(), 400);
    assert_eq!(post_events(&relay, CLIENT_KEY, b"[".to_vec()).await.status(), 400);
}

#[tokio::test]
async fn client_events_over_the_body_limit_are_413() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\nmax_body_bytes = 1024").start().await;
    let big = format!("[{}]", vec!["{\"type\":\"evaluate\"}"; 200].join(","));
    let r = post_events(&relay, CLIENT_KEY, big.into_bytes()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(body_json(r).await["error"], "payload_too_large");
}

#[tokio::test]
async fn client_events_with_an_unknown_key_are_401() {
    let relay = relay().await;
    assert_eq!(post_events(&relay, "nope", b"[]".to_vec()).await.status(), 401);
}

// ---- legacy stream --------------------------------------------------------------------------

#[tokio::test]
async fn legacy_stream_sends_the_changed_keys_as_an_unnamed_event() {
    let relay = relay().await;
    let mut sse = SseClient::connect(&relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}")), &[]).await;
    assert_eq!(sse.status, 200);
    let mut f = flags();
    f["production"]["everyone"] = simple_feature("everyone", "off");
    f["production"].as_object_mut().unwrap().remove("valued");
    relay.write_flags(&f);
    let e = sse.expect().await;
    assert_eq!(e.event, "message");
    assert_eq!(e.json(), json!(["everyone", "valued"]));
}

#[tokio::test]
async fn legacy_stream_resumes_with_the_keys_changed_since_last_event_id() {
    let relay = relay().await;
    let mut sse = SseClient::connect(&relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}")), &[]).await;
    let mut f = flags();
    f["production"]["everyone"] = simple_feature("everyone", "off");
    relay.write_flags(&f);
    let seen = sse.expect().await.id.expect("an id");
    sse.close();
    f["production"]["alpha-feature"] = role_feature("alpha-feature", &["alpha_role", "beta"]);
    publish(&relay, &f).await;
    let mut resumed = SseClient::connect(&relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}")), &[("last-event-id", &seen)]).await;
    assert_eq!(resumed.expect().await.json(), json!(["alpha-feature"]));
}

// ---- per-context evaluation stream ----------------------------------------------------------

async fn eval_stream(relay: &TestRelay, segment: &str) -> SseClient {
    SseClient::connect(&relay.url(&format!("/api/v1/eval/stream/{CLIENT_KEY}/user/{segment}")), &[]).await
}

#[tokio::test]
async fn eval_stream_sends_the_evaluated_map_on_connect() {
    let relay = relay().await;
    let mut sse = eval_stream(&relay, &user("p", json!({"user_role": "pvt_user"}))).await;
    assert_eq!(sse.status, 200);
    let e = sse.expect().await;
    assert_eq!(e.event, "features.evaluated");
    let v = e.json();
    assert_eq!((v["pvt-feature"].as_str(), v["alpha-feature"].as_str()), (Some("on"), Some("off")));
    assert_eq!(v["valued"]["rules"][0]["value"]["maxItems"], 10);
}

#[tokio::test]
async fn eval_stream_sends_only_features_whose_result_changed_for_the_context() {
    let relay = relay().await;
    let mut sse = eval_stream(&relay, &user("p", json!({"user_role": "pvt_user"}))).await;
    sse.expect().await;
    // First a change that does not change this user's result, then one that does.
    let mut f = flags();
    f["production"]["alpha-feature"] = role_feature("alpha-feature", &["alpha_role", "beta"]);
    publish(&relay, &f).await;
    f["production"]["pvt-feature"]["enabled"] = json!(false);
    relay.write_flags(&f);
    let e = sse.expect().await;
    assert_eq!(e.event, "features.updated");
    assert_eq!(e.json(), json!({"pvt-feature": "off"}));
}

#[tokio::test]
async fn eval_stream_sends_deleted_keys() {
    let relay = relay().await;
    let mut sse = eval_stream(&relay, &user("p", json!({}))).await;
    sse.expect().await;
    let mut f = flags();
    f["production"].as_object_mut().unwrap().remove("everyone");
    relay.write_flags(&f);
    let e = sse.expect().await;
    assert_eq!((e.event.as_str(), e.json()), ("features.deleted", json!(["everyone"])));
}

#[tokio::test]
async fn identical_contexts_share_one_evaluation_per_change() {
    let relay = relay().await;
    // The same context, attributes written in a different order.
    let a = b64(r#"{"id":"same","attributes":{"user_role":"pvt_user","tier":"gold"}}"#);
    let b = b64(r#"{"attributes":{"tier":"gold","user_role":"pvt_user"},"id":"same"}"#);
    let mut s1 = eval_stream(&relay, &a).await;
    let mut s2 = eval_stream(&relay, &b).await;
    assert_eq!(s1.expect().await.data, s2.expect().await.data);
    let mut f = flags();
    f["production"]["pvt-feature"]["enabled"] = json!(false);
    relay.write_flags(&f);
    assert_eq!(s1.expect().await.json(), json!({"pvt-feature": "off"}));
    assert_eq!(s2.expect().await.json(), json!({"pvt-feature": "off"}));
    let m = relay.metrics().await;
    // One evaluation on connect and one for the change, for both streams together.
    assert_eq!(metric(&m, "flagrelay_evaluations_total", &[("env", "production"), ("api", "stream")]), Some(2.0));
    assert_eq!(metric(&m, "flagrelay_sse_clients", &[("env", "production"), ("protocol", "eval")]), Some(2.0));
}

#[tokio::test]
async fn eval_stream_with_a_malformed_user_is_400() {
    let relay = relay().await;
    let r = get(&relay.url(&format!("/api/v1/eval/stream/{CLIENT_KEY}/user/{}", b64("nope"))), &[]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(body_json(r).await["error"], "bad_request");
}

// ---- the real featureflow-client ------------------------------------------------------------

#[tokio::test]
async fn featureflow_client_2_1_0_gets_the_right_variants_and_posts_its_events() {
    let relay = relay().await;
    let keys = "pvt-feature,alpha-feature,everyone,dated,valued,missing";
    let mut client = NodeScript::spawn("featureflow-client.js", &[&relay.base, CLIENT_KEY, keys]);
    let pvt = client.next().await;
    let alpha = client.next().await;
    let anonymous = client.next().await;
    assert_eq!(client.next().await["step"], "done");

    assert_eq!(pvt["who"], "pvt");
    assert_eq!(pvt["variants"], json!({"pvt-feature": "on", "alpha-feature": "off", "everyone": "on", "dated": "off", "valued": "on", "missing": "off"}));
    assert_eq!(alpha["variants"], json!({"pvt-feature": "off", "alpha-feature": "on", "everyone": "on", "dated": "off", "valued": "on", "missing": "off"}));
    assert!(anonymous["id"].as_str().unwrap().starts_with("anonymous:"), "{anonymous}");
    assert_eq!(anonymous["variants"], json!({"pvt-feature": "off", "alpha-feature": "off", "everyone": "on", "dated": "off", "valued": "on", "missing": "off"}));

    // The client posts its evaluate events to /api/js/v1/event/{key} (after 2 s).
    within("the client's events", async {
        loop {
            let m = relay.metrics().await;
            if metric(&m, "flagrelay_sdk_events_received_total", &[("env", "production"), ("kind", "client_events")]).unwrap_or(0.0) >= 1.0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    client.send("exit").await;
    assert!(client.wait().await.success());
}

#[tokio::test]
async fn featureflow_client_2_1_0_resolves_a_date_condition_itself() {
    let mut f = flags();
    // The same rule with a date in the past and one in the far future.
    f["production"]["future"] = dated_feature("future");
    f["production"]["future"]["rules"][0]["audience"]["conditions"][1]["values"] = json!(["2999-01-01T00:00:00Z"]);
    let relay = TestRelay::builder().flags(f).start().await;
    let email = "ann@secret-customer.example";
    // The relay leaves both date conditions to the client...
    let raw = body_json(evaluate(&relay, CLIENT_KEY, &user("pvt-1", json!({"email": email}))).await).await;
    assert!(raw["dated"]["rules"].is_array() && raw["future"]["rules"].is_array(), "{raw}");
    // ...and the client decides them with its own clock.
    let mut client = NodeScript::spawn_env("featureflow-client.js", &[&relay.base, CLIENT_KEY, "dated,future"], &[("FF_EMAIL", email)]);
    let pvt = client.next().await;
    assert_eq!(pvt["variants"], json!({"dated": "on", "future": "off"}));
    client.send("exit").await;
    assert!(client.wait().await.success());
}

#[tokio::test]
async fn thin_client_streams_heartbeat_with_sse_comments_not_data_events() {
    use futures_util::StreamExt;
    let relay = TestRelay::builder().flags(flags()).config("[sse]\nheartbeat_secs = 1").start().await;
    let resp = within("legacy stream", http().get(relay.url(&format!("/api/js/v1/stream/{CLIENT_KEY}"))).header("accept", "text/event-stream").send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = Vec::new();
    within("a heartbeat comment", async {
        while !seen.windows(13).any(|w| w == b": heartbeat\n\n") {
            let chunk = body.next().await.expect("stream open").expect("chunk");
            seen.extend_from_slice(&chunk);
        }
    })
    .await;
    assert!(!String::from_utf8_lossy(&seen).contains("{\"heartbeat\""), "a 1.3.x client would take that for a key list");
}

#[tokio::test]
async fn features_marked_out_of_the_client_api_never_reach_thin_clients() {
    let mut f = flags();
    let mut hidden = simple_feature("server-only", "on");
    hidden["inClientApi"] = json!(false);
    f["production"]["server-only"] = hidden;
    let mut shown = simple_feature("client-ok", "on");
    shown["inClientApi"] = json!(true);
    f["production"]["client-ok"] = shown;
    let relay = TestRelay::builder().flags(f).start().await;
    let v = body_json(evaluate(&relay, CLIENT_KEY, &user("u", json!({}))).await).await;
    assert!(v.get("server-only").is_none(), "{v}");
    assert_eq!(v["client-ok"], "on");
    let ofrep = within("ofrep", http().post(relay.url("/ofrep/v1/evaluate/flags/server-only")).header("x-api-key", CLIENT_KEY).body("{}").send()).await.unwrap();
    assert_eq!(ofrep.status(), 404);
    // Server SDKs still get it.
    let all: Value = relay.poll(SERVER_KEY).await.json().await.unwrap();
    assert!(all.get("server-only").is_some());
}
