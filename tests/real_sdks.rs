//! The real Featureflow server SDK from npm (featureflow-node-sdk@0.6.7) against the relay.

use flagrelay_testkit as support;

use serde_json::json;
use support::node::NodeScript;
use support::*;

#[tokio::test]
async fn featureflow_node_sdk_gets_flags_evaluates_roles_and_sees_changes() {
    let flags = json!({"production": {"pvt-feature": role_feature("pvt-feature", &["pvt_user"])}, "staging": {}});
    let relay = TestRelay::builder().flags(flags).start().await;
    let mut sdk = NodeScript::spawn("featureflow-node-sdk.js", &[&relay.base, SERVER_KEY, "pvt-feature"]);
    let ready = sdk.next().await;
    assert_eq!(ready["step"], "ready");
    assert_eq!(ready["pvt_user"], "on", "{ready}");
    assert_eq!(ready["plain"], "off", "{ready}");
    assert_eq!(ready["anonymous"], "off", "{ready}");

    // Turn the feature off for everyone; the SDK sees it on a later poll.
    let mut f = json!({"production": {"pvt-feature": role_feature("pvt-feature", &["pvt_user"])}, "staging": {}});
    f["production"]["pvt-feature"]["enabled"] = json!(false);
    relay.write_flags(&f);
    sdk.send("changed off").await;
    let changed = sdk.next().await;
    assert_eq!(changed["pvt_user"], "off");
    assert!(sdk.wait().await.success());
    // It registered and polled with ETags: the relay saw its requests.
    let m = relay.metrics().await;
    assert!(metric(&m, "flagrelay_http_requests_total", &[("route", "/api/sdk/v1/features"), ("status", "2xx")]).unwrap() >= 2.0);
}
