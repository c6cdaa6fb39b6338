//! OFREP over real HTTP (ofrep.md §0): single and bulk evaluation, the value/reason mapping, auth,
//! ETags, the eventStreams SSE endpoint, errors, rate limiting, CORS, and the real OpenFeature
//! providers from npm (@openfeature/ofrep-provider@0.1.3, @openfeature/ofrep-web-provider@0.4.3).

use flagrelay_testkit as support;

use serde_json::{json, Value};
use support::node::NodeScript;
use support::*;

fn variants(keys_values: &[(&str, Option<Value>)]) -> Value {
    Value::Array(
        keys_values
            .iter()
            .map(|(k, v)| match v {
                Some(v) => json!({"key": k, "value": v}),
                None => json!({"key": k}),
            })
            .collect(),
    )
}

fn static_flag(key: &str, vars: Value, serve: &str) -> Value {
    json!({"key": key, "enabled": true, "offVariantKey": "off", "variants": vars,
           "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": serve, "split": 100}]}]})
}

/// The fixture of ofrep.md §2.6: one flag of each type, targeting, a disabled flag, a split.
fn flags() -> Value {
    json!({
        "production": {
            "bool-flag": static_flag("bool-flag", variants(&[("on", None), ("off", None)]), "on"),
            "string-flag": {
                "key": "string-flag", "enabled": true, "offVariantKey": "external",
                "variants": [{"key": "internal"}, {"key": "external"}],
                "rules": [
                    {"defaultRule": false, "audience": {"conditions": [{"target": "email", "operator": "endsWith", "values": ["@example.com"]}]},
                     "variantSplits": [{"variantKey": "internal", "split": 100}]},
                    {"defaultRule": true, "variantSplits": [{"variantKey": "external", "split": 100}]}]
            },
            "float-flag": static_flag("float-flag", variants(&[("v", Some(json!(3.5))), ("off", Some(json!(0.0)))]), "v"),
            "int-flag": static_flag("int-flag", variants(&[("v", Some(json!(42))), ("off", Some(json!(0)))]), "v"),
            "object-flag": static_flag("object-flag", variants(&[("v", Some(json!({"color": "blue", "sizes": [1, 2]}))), ("off", None)]), "v"),
            "disabled-flag": {
                "key": "disabled-flag", "enabled": false, "offVariantKey": "off", "variants": [{"key": "on"}, {"key": "off"}],
                "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "on", "split": 100}]}]
            },
            "split-flag": {
                "key": "split-flag", "enabled": true, "offVariantKey": "a", "variants": [{"key": "a"}, {"key": "b"}],
                "rules": [{"defaultRule": true, "variantSplits": [{"variantKey": "a", "split": 50}, {"variantKey": "b", "split": 50}]}]
            },
            "pvt-feature": role_feature("pvt-feature", &["pvt_user"]),
        },
        "staging": {"only-staging": simple_feature("only-staging", "on")}
    })
}

async fn relay() -> TestRelay {
    TestRelay::builder().flags(flags()).start().await
}

const ADA: &str = r#"{"context": {"targetingKey": "user-1", "email": "ada@example.com"}}"#;

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut req = http().post(url).header("content-type", "application/json; charset=utf-8").body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("an OFREP POST", req.send()).await.expect("POST")
}

async fn single(relay: &TestRelay, flag: &str, body: &str) -> reqwest::Response {
    post(&relay.url(&format!("/ofrep/v1/evaluate/flags/{flag}")), &[("x-api-key", CLIENT_KEY)], body).await
}

async fn bulk(relay: &TestRelay, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut h = vec![("authorization", format!("Bearer {CLIENT_KEY}"))];
    h.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(&relay.url("/ofrep/v1/evaluate/flags"), &h, body).await
}

async fn body_json(r: reqwest::Response) -> Value {
    within("a body", r.json::<Value>()).await.expect("JSON body")
}

fn by_key(bulk: &Value, key: &str) -> Value {
    bulk["flags"].as_array().unwrap().iter().find(|f| f["key"] == key).cloned().unwrap_or(Value::Null)
}

/// Writes the flags and waits until the relay has published the change (seen on a server-SDK
/// stream of production).
async fn publish(relay: &TestRelay, f: &Value) {
    let mut server = relay.sse(SERVER_KEY).await;
    server.expect().await;
    relay.write_flags(f);
    server.expect().await;
}

// ---- single flag ----------------------------------------------------------------------------

#[tokio::test]
async fn single_flag_answers_key_value_reason_variant_and_metadata() {
    let relay = relay().await;
    let revision = relay.env_status("production").await["revision"].clone();
    let r = single(&relay, "string-flag", ADA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        body_json(r).await,
        json!({"key": "string-flag", "value": "internal", "reason": "TARGETING_MATCH", "variant": "internal", "metadata": {"revision": revision}})
    );
}

#[tokio::test]
async fn values_map_from_the_catalogue_then_on_off_booleans_then_variant_keys() {
    let relay = relay().await;
    let value = |v: Value| v["value"].clone();
    assert_eq!(value(body_json(single(&relay, "bool-flag", ADA).await).await), json!(true));
    assert_eq!(value(body_json(single(&relay, "float-flag", ADA).await).await), json!(3.5));
    assert_eq!(value(body_json(single(&relay, "int-flag", ADA).await).await), json!(42));
    assert_eq!(value(body_json(single(&relay, "object-flag", ADA).await).await), json!({"color": "blue", "sizes": [1, 2]}));
    assert_eq!(value(body_json(single(&relay, "string-flag", ADA).await).await), json!("internal"));
}

#[tokio::test]
async fn floats_keep_their_decimal_point() {
    let relay = relay().await;
    let text = within("body", single(&relay, "float-flag", ADA).await.text()).await.unwrap();
    assert!(text.contains("\"value\":3.5"), "{text}");
}

#[tokio::test]
async fn reasons_name_why_the_variant_was_served() {
    let relay = relay().await;
    let reason = |v: Value| v["reason"].as_str().map(str::to_string);
    let bob = r#"{"context": {"targetingKey": "user-2", "email": "bob@other.org"}}"#;
    assert_eq!(reason(body_json(single(&relay, "bool-flag", ADA).await).await).as_deref(), Some("STATIC"));
    assert_eq!(reason(body_json(single(&relay, "string-flag", ADA).await).await).as_deref(), Some("TARGETING_MATCH"));
    assert_eq!(reason(body_json(single(&relay, "string-flag", bob).await).await).as_deref(), Some("DEFAULT"));
    assert_eq!(reason(body_json(single(&relay, "split-flag", ADA).await).await).as_deref(), Some("SPLIT"));
    assert_eq!(reason(body_json(single(&relay, "disabled-flag", ADA).await).await).as_deref(), Some("DISABLED"));
}

#[tokio::test]
async fn a_disabled_flag_serves_its_off_variant() {
    let relay = relay().await;
    let v = body_json(single(&relay, "disabled-flag", ADA).await).await;
    assert_eq!((v["value"].clone(), v["variant"].clone()), (json!(false), json!("off")));
}

#[tokio::test]
async fn targeting_key_is_the_featureflow_user_id() {
    let relay = relay().await;
    // The split is by bucket of the user id: the relay must agree with the engine for that id.
    let snap = flagrelay::model::Feature::from_value("split-flag", flags()["production"]["split-flag"].clone()).unwrap();
    let compiled = flagrelay::eval::CompiledFeature::compile(&snap);
    for id in ["user-1", "user-2", "user-3", "user-4"] {
        let want = compiled.evaluate(&flagrelay::eval::Context::new(id)).unwrap().variant.to_string();
        let v = body_json(single(&relay, "split-flag", &json!({"context": {"targetingKey": id}}).to_string()).await).await;
        assert_eq!(v["variant"], want.as_str(), "{id}");
    }
}

#[tokio::test]
async fn attributes_sit_flat_beside_the_targeting_key() {
    let relay = relay().await;
    let v = body_json(single(&relay, "pvt-feature", r#"{"context": {"targetingKey": "u", "user_role": ["x", "pvt_user"]}}"#).await).await;
    assert_eq!(v["value"], true);
}

#[tokio::test]
async fn empty_bodies_and_contexts_without_targeting_key_are_accepted() {
    let relay = relay().await;
    for body in ["", "{}", r#"{"context": {}}"#, r#"{"context": null}"#, r#"{"context": {"email": "ada@example.com"}}"#] {
        let r = single(&relay, "bool-flag", body).await;
        assert_eq!(r.status(), 200, "body {body:?}");
    }
}

#[tokio::test]
async fn an_unknown_flag_is_404_flag_not_found_with_key_and_details() {
    let relay = relay().await;
    let r = single(&relay, "no-such-flag", ADA).await;
    assert_eq!(r.status(), 404);
    let v = body_json(r).await;
    assert_eq!((v["key"].as_str(), v["errorCode"].as_str()), (Some("no-such-flag"), Some("FLAG_NOT_FOUND")));
    assert!(v["errorDetails"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn a_flag_of_another_environment_is_not_found() {
    let relay = relay().await;
    assert_eq!(single(&relay, "only-staging", ADA).await.status(), 404);
}

#[tokio::test]
async fn a_malformed_body_is_400_invalid_context_with_key_and_details() {
    let relay = relay().await;
    for body in ["{", "[1]", "\"ctx\"", r#"{"context": [1]}"#, r#"{"context": {"targetingKey": 7}}"#] {
        let r = single(&relay, "bool-flag", body).await;
        assert_eq!(r.status(), 400, "body {body:?}");
        let v = body_json(r).await;
        assert_eq!((v["key"].as_str(), v["errorCode"].as_str()), (Some("bool-flag"), Some("INVALID_CONTEXT")), "body {body:?}");
        assert!(v["errorDetails"].is_string());
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\nmax_body_bytes = 256").start().await;
    let big = json!({"context": {"targetingKey": "u", "pad": "x".repeat(1000)}}).to_string();
    assert_eq!(single(&relay, "bool-flag", &big).await.status(), 413);
    assert_eq!(bulk(&relay, &[], &big).await.status(), 413);
}

// ---- auth -----------------------------------------------------------------------------------

#[tokio::test]
async fn x_api_key_and_bearer_work_with_client_and_server_keys() {
    let relay = relay().await;
    let url = relay.url("/ofrep/v1/evaluate/flags/bool-flag");
    for (h, v) in [
        ("x-api-key", CLIENT_KEY.to_string()),
        ("x-api-key", SERVER_KEY.to_string()),
        ("authorization", format!("Bearer {CLIENT_KEY}")),
        ("authorization", format!("bearer {SERVER_KEY}")),
    ] {
        assert_eq!(post(&url, &[(h, &v)], ADA).await.status(), 200, "{h}: {v}");
    }
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401_without_a_body() {
    let relay = relay().await;
    for url in [relay.url("/ofrep/v1/evaluate/flags/bool-flag"), relay.url("/ofrep/v1/evaluate/flags")] {
        for headers in [vec![], vec![("x-api-key", "nope")], vec![("authorization", "Bearer nope")]] {
            let r = post(&url, &headers, ADA).await;
            assert_eq!(r.status(), 401, "{url} {headers:?}");
            assert!(within("body", r.bytes()).await.unwrap().is_empty(), "{url} {headers:?}");
        }
    }
}

// ---- bulk -----------------------------------------------------------------------------------

#[tokio::test]
async fn bulk_evaluates_every_flag_of_the_environment() {
    let relay = relay().await;
    let r = bulk(&relay, &[], ADA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = body_json(r).await;
    assert_eq!(v["flags"].as_array().unwrap().len(), 8);
    assert_eq!(by_key(&v, "string-flag"), json!({"key": "string-flag", "value": "internal", "reason": "TARGETING_MATCH", "variant": "internal"}));
    assert_eq!(by_key(&v, "object-flag")["value"], json!({"color": "blue", "sizes": [1, 2]}));
}

#[tokio::test]
async fn bulk_sends_a_strong_etag_and_304_when_it_matches() {
    let relay = relay().await;
    let r = bulk(&relay, &[], ADA).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"), "{etag}");
    let again = bulk(&relay, &[("if-none-match", &etag)], ADA).await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(within("body", again.bytes()).await.unwrap().is_empty());
}

#[tokio::test]
async fn bulk_etag_differs_between_contexts_with_different_results() {
    let relay = relay().await;
    let ada = bulk(&relay, &[], ADA).await.headers()["etag"].clone();
    let bob = bulk(&relay, &[], r#"{"context": {"targetingKey": "user-2", "email": "bob@other.org"}}"#).await;
    assert_ne!(bob.headers()["etag"], ada);
    assert_eq!(bulk(&relay, &[("if-none-match", ada.to_str().unwrap())], r#"{"context": {"targetingKey": "user-2", "email": "bob@other.org"}}"#).await.status(), 200);
}

#[tokio::test]
async fn bulk_etag_stays_when_a_change_does_not_change_this_context() {
    let relay = relay().await;
    let etag = bulk(&relay, &[], ADA).await.headers()["etag"].to_str().unwrap().to_string();
    let mut f = flags();
    f["production"]["pvt-feature"] = role_feature("pvt-feature", &["pvt_user", "beta"]);
    publish(&relay, &f).await;
    assert_eq!(bulk(&relay, &[("if-none-match", &etag)], ADA).await.status(), 304);
}

#[tokio::test]
async fn bulk_answers_200_with_a_new_etag_after_a_change_for_this_context() {
    let relay = relay().await;
    let etag = bulk(&relay, &[], ADA).await.headers()["etag"].to_str().unwrap().to_string();
    let mut f = flags();
    f["production"]["bool-flag"]["enabled"] = json!(false);
    publish(&relay, &f).await;
    let r = bulk(&relay, &[("if-none-match", &etag)], ADA).await;
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(by_key(&body_json(r).await, "bool-flag")["value"], false);
}

#[tokio::test]
async fn bulk_accepts_a_trailing_slash_a_double_slash_and_the_flag_config_query() {
    let relay = relay().await;
    let auth = format!("Bearer {CLIENT_KEY}");
    for path in ["/ofrep/v1/evaluate/flags/", "//ofrep/v1/evaluate/flags", "/ofrep/v1/evaluate/flags?flagConfigEtag=%22abc%22&flagConfigLastModified=1795618261"] {
        let r = post(&relay.url(path), &[("authorization", &auth)], ADA).await;
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn bulk_with_a_malformed_body_is_400_with_error_code_and_details() {
    let relay = relay().await;
    let r = bulk(&relay, &[], r#"{"context": "user-1"}"#).await;
    assert_eq!(r.status(), 400);
    let v = body_json(r).await;
    assert_eq!(v["errorCode"], "INVALID_CONTEXT");
    assert!(v["errorDetails"].is_string());
}

// ---- eventStreams ---------------------------------------------------------------------------

async fn event_stream(relay: &TestRelay) -> SseClient {
    let v = body_json(bulk(relay, &[], ADA).await).await;
    let streams = v["eventStreams"].as_array().expect("eventStreams");
    assert_eq!(streams[0]["type"], "sse");
    assert_eq!(streams[0]["inactivityDelaySec"], 120);
    let uri = streams[0]["endpoint"]["requestUri"].as_str().expect("requestUri");
    assert!(uri.starts_with('/'), "{uri}");
    SseClient::connect(&relay.url(uri), &[]).await
}

#[tokio::test]
async fn bulk_advertises_an_sse_stream_that_sends_refetch_evaluation_on_change() {
    let relay = relay().await;
    let mut sse = event_stream(&relay).await;
    assert_eq!(sse.status, 200);
    let mut f = flags();
    f["production"]["int-flag"]["variants"][0]["value"] = json!(43);
    relay.write_flags(&f);
    let e = sse.expect().await;
    assert_eq!(e.event, "message");
    let data = e.json();
    assert_eq!(data["type"], "refetchEvaluation");
    assert!(data["lastModified"].as_u64().is_some_and(|t| t > 1_700_000_000), "{data}");
    // The etag names the environment's new content: the same as the server-SDK poll's.
    let poll_etag = relay.poll(SERVER_KEY).await.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(data["etag"], poll_etag.as_str());
    let revision = relay.env_status("production").await["revision"].as_u64().unwrap().to_string();
    assert_eq!(e.id.as_deref(), Some(revision.as_str()), "the id is the environment revision");
}

#[tokio::test]
async fn the_event_stream_resumes_with_a_refetch_when_it_missed_a_change() {
    let relay = relay().await;
    let uri = body_json(bulk(&relay, &[], ADA).await).await["eventStreams"][0]["endpoint"]["requestUri"].as_str().unwrap().to_string();
    let mut f = flags();
    f["production"]["bool-flag"]["enabled"] = json!(false);
    publish(&relay, &f).await;
    let mut sse = SseClient::connect(&relay.url(&uri), &[("last-event-id", "1")]).await;
    assert_eq!(sse.expect().await.json()["type"], "refetchEvaluation");
}

#[tokio::test]
async fn the_event_stream_with_an_unknown_key_is_401_without_a_body() {
    let relay = relay().await;
    let r = within("GET", http().get(relay.url("/ofrep/v1/stream/nope")).send()).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(within("body", r.bytes()).await.unwrap().is_empty());
}

// ---- rate limit and CORS --------------------------------------------------------------------

#[tokio::test]
async fn over_the_rate_limit_is_429_with_an_integer_retry_after() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\nofrep_rate_limit = 1").start().await;
    let mut limited = None;
    for _ in 0..5 {
        let r = single(&relay, "bool-flag", ADA).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("a 429 within 5 requests at 1 request/s");
    let retry = r.headers()["retry-after"].to_str().unwrap();
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After {retry:?}");
}

#[tokio::test]
async fn the_rate_limit_is_per_key() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\nofrep_rate_limit = 1").start().await;
    let url = relay.url("/ofrep/v1/evaluate/flags/bool-flag");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(post(&url, &[("x-api-key", CLIENT_KEY)], ADA).await.status());
    }
    assert!(statuses.contains(&reqwest::StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // Another key of the same environment has its own budget.
    assert_eq!(post(&url, &[("x-api-key", SERVER_KEY)], ADA).await.status(), 200);
}

#[tokio::test]
async fn cors_preflight_allows_the_ofrep_headers() {
    let relay = relay().await;
    let r = within("preflight", http()
        .request(reqwest::Method::OPTIONS, relay.url("/ofrep/v1/evaluate/flags"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "if-none-match, x-api-key, content-type")
        .send())
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-headers"], "If-None-Match, Authorization, X-API-Key, Content-Type");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn bulk_responses_expose_the_etag_to_browsers() {
    let relay = relay().await;
    let r = bulk(&relay, &[("origin", "https://app.example")], ADA).await;
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("ETag"));
}

// ---- real providers -------------------------------------------------------------------------

#[tokio::test]
async fn ofrep_server_provider_evaluates_every_type_with_variants_and_reasons() {
    let relay = relay().await;
    let revision = relay.env_status("production").await["revision"].clone();
    let mut node = NodeScript::spawn("ofrep-server.js", &[&relay.base, CLIENT_KEY]);
    let done = node.next().await;
    assert_eq!(done["step"], "done");
    let r = &done["results"];
    let vvr = |name: &str| (r[name]["value"].clone(), r[name]["variant"].clone(), r[name]["reason"].clone());
    assert_eq!(vvr("bool"), (json!(true), json!("on"), json!("STATIC")));
    assert_eq!(vvr("string_targeted"), (json!("internal"), json!("internal"), json!("TARGETING_MATCH")));
    assert_eq!(vvr("string_default"), (json!("external"), json!("external"), json!("DEFAULT")));
    assert_eq!(vvr("float"), (json!(3.5), json!("v"), json!("STATIC")));
    assert_eq!(vvr("int"), (json!(42), json!("v"), json!("STATIC")));
    assert_eq!(vvr("object"), (json!({"color": "blue", "sizes": [1, 2]}), json!("v"), json!("STATIC")));
    assert_eq!(vvr("disabled"), (json!(false), json!("off"), json!("DISABLED")));
    assert_eq!(r["split"]["reason"], "SPLIT");
    assert_eq!(r["split"]["value"], r["split"]["variant"]);
    assert_eq!(vvr("no_context"), (json!(true), json!("on"), json!("STATIC")));
    assert_eq!(r["bool"]["flagMetadata"], json!({"revision": revision}));
    // Errors come back as the caller's default with the OpenFeature code.
    assert_eq!((r["missing"]["value"].clone(), r["missing"]["errorCode"].clone()), (json!(true), json!("FLAG_NOT_FOUND")));
    assert_eq!((r["type_mismatch"]["value"].clone(), r["type_mismatch"]["errorCode"].clone()), (json!("dflt"), json!("TYPE_MISMATCH")));
    assert!(node.wait().await.success());
}

#[tokio::test]
async fn ofrep_web_provider_uses_bulk_etags_context_changes_and_the_event_stream() {
    web_provider_scenario(relay().await).await;
}

/// The same with every bulk answer compressed (Node's fetch asks for gzip): the provider decodes
/// it and still gets its 304 with the coded ETag.
#[tokio::test]
async fn ofrep_web_provider_works_the_same_with_compressed_bulk_answers() {
    let relay = TestRelay::builder().flags(flags()).config("[http]\ncompress_min_bytes = 1\n").start().await;
    // What the provider's fetch gets for its first bulk, seen directly: gzip.
    let r = post(&relay.url("/ofrep/v1/evaluate/flags"), &[("authorization", &format!("Bearer {CLIENT_KEY}")), ("accept-encoding", "gzip, deflate")], ADA).await;
    assert_eq!(r.headers().get("content-encoding").map(|v| v.to_str().unwrap_or("")), Some("gzip"));
    assert!(r.headers()["etag"].to_str().unwrap_or("").ends_with("-gzip\""));
    web_provider_scenario(relay).await;
}

async fn web_provider_scenario(relay: TestRelay) {
    let mut web = NodeScript::spawn("ofrep-web.js", &[&relay.base, CLIENT_KEY]);
    let ready = web.next().await;
    assert_eq!(ready["step"], "ready", "{ready}");
    assert_eq!((ready["bool"]["value"].clone(), ready["bool"]["reason"].clone()), (json!(true), json!("STATIC")));
    assert_eq!((ready["string"]["value"].clone(), ready["string"]["reason"].clone()), (json!("internal"), json!("TARGETING_MATCH")));
    assert_eq!(ready["float"]["value"], 3.5);
    assert_eq!(ready["object"]["value"], json!({"color": "blue", "sizes": [1, 2]}));
    assert_eq!((ready["disabled"]["value"].clone(), ready["disabled"]["reason"].clone()), (json!(false), json!("DISABLED")));
    assert_eq!(ready["missing"]["errorCode"], "FLAG_NOT_FOUND");

    // Same targetingKey, results unchanged: the refresh sends If-None-Match and gets a 304.
    web.send("same-context").await;
    let same = next_step(&mut web, "same-context").await;
    assert_eq!(same["string"]["value"], "internal");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "flagrelay_http_requests_total", &[("route", "/ofrep/v1/evaluate/flags"), ("status", "3xx")]), Some(1.0));

    // Another user: a fresh bulk with that user's results.
    web.send("new-context").await;
    let other = next_step(&mut web, "new-context").await;
    assert_eq!((other["string"]["value"].clone(), other["string"]["reason"].clone()), (json!("external"), json!("DEFAULT")));

    // The provider holds the advertised SSE stream; a flag change makes it re-fetch.
    within("the web provider's SSE connection", async {
        loop {
            let m = relay.metrics().await;
            if metric(&m, "flagrelay_sse_clients", &[("env", "production"), ("protocol", "ofrep")]) == Some(1.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut f = flags();
    f["production"]["string-flag"]["rules"][1]["variantSplits"][0]["variantKey"] = json!("internal");
    relay.write_flags(&f);
    let changed = loop {
        let e = next_step(&mut web, "configuration-changed").await;
        if e["string"]["value"] == "internal" {
            break e;
        }
    };
    assert!(changed["flagsChanged"].as_array().unwrap().contains(&json!("string-flag")), "{changed}");
    assert_eq!(changed["string"]["reason"], "DEFAULT");
    web.send("exit").await;
    assert!(web.wait().await.success());
}

/// The next line of `step`, skipping `configuration-changed` lines (the web SDK may emit them
/// around context changes).
async fn next_step(node: &mut NodeScript, step: &str) -> Value {
    loop {
        let v = node.next().await;
        if v["step"] == step {
            return v;
        }
        assert_eq!(v["step"], "configuration-changed", "expected {step}, got {v}");
    }
}

#[tokio::test]
async fn before_the_first_load_evaluations_answer_503_not_flag_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("later.json");
    let relay = TestRelay::builder()
        .upstream(&format!("[upstream]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 20\n", missing.display().to_string()))
        .start_unready()
        .await;
    let c = http();
    let single = within("single", c.post(relay.url("/ofrep/v1/evaluate/flags/bool-flag")).header("x-api-key", CLIENT_KEY).body("{}").send()).await.unwrap();
    assert_eq!(single.status(), 503);
    let bulk = within("bulk", c.post(relay.url("/ofrep/v1/evaluate/flags")).header("x-api-key", CLIENT_KEY).body("{}").send()).await.unwrap();
    assert_eq!(bulk.status(), 503);
    assert!(bulk.headers().contains_key("retry-after"));
    let user = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, br#"{"id":"u","attributes":{}}"#);
    let thin = within("thin", c.get(relay.url(&format!("/api/js/v1/evaluate/{CLIENT_KEY}/user/{user}"))).send()).await.unwrap();
    assert_eq!(thin.status(), 503);
}

fn dated(key: &str, operator: &str, date: &str) -> Value {
    json!({"key": key, "enabled": true, "offVariantKey": "off", "variants": [{"key": "on"}, {"key": "off"}],
           "rules": [
               {"defaultRule": false, "audience": {"conditions": [{"target": "featureflow.date", "operator": operator, "values": [date]}]},
                "variantSplits": [{"variantKey": "on", "split": 100}]},
               {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]})
}

#[tokio::test]
async fn date_conditions_are_evaluated_against_now_on_the_relay() {
    let mut f = flags();
    f["production"]["launched"] = dated("launched", "after", "2000-01-01");
    f["production"]["not-yet"] = dated("not-yet", "after", "2999-01-01");
    let relay = TestRelay::builder().flags(f).start().await;
    let v = body_json(single(&relay, "launched", ADA).await).await;
    assert_eq!((v["value"].clone(), v["reason"].clone()), (json!(true), json!("TARGETING_MATCH")), "{v}");
    let v = body_json(single(&relay, "not-yet", ADA).await).await;
    assert_eq!(v["value"], json!(false), "{v}");
    let b = body_json(bulk(&relay, &[], ADA).await).await;
    let item = |k: &str| b["flags"].as_array().unwrap().iter().find(|i| i["key"] == k).cloned().unwrap();
    assert_eq!(item("launched")["value"], json!(true));
    assert_eq!(item("not-yet")["value"], json!(false));
    // A context that carries its own date wins over the relay's clock.
    let past = r#"{"context": {"targetingKey": "u", "featureflow.date": "1999-06-01T00:00:00Z"}}"#;
    assert_eq!(body_json(single(&relay, "launched", past).await).await["value"], json!(false));
}

#[tokio::test]
async fn the_advertised_event_stream_url_never_carries_the_key() {
    let relay = relay().await;
    let v = body_json(bulk(&relay, &[], ADA).await).await;
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"].as_str().unwrap().to_string();
    assert!(!uri.contains(CLIENT_KEY), "{uri}");
    let mut sse = SseClient::connect(&relay.url(&uri), &[]).await;
    assert_eq!(sse.status, 200, "the token opens the stream");
    let mut f = flags();
    f["production"]["int-flag"]["variants"][0]["value"] = json!(7);
    relay.write_flags(&f);
    assert_eq!(sse.expect().await.json()["type"], "refetchEvaluation");
    // The raw key is not a stream token.
    let raw = within("GET", http().get(relay.url(&format!("/ofrep/v1/stream/{CLIENT_KEY}"))).send()).await.unwrap();
    assert_eq!(raw.status(), 401);
}
