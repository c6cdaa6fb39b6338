//! The context groups' accounting and sharing: what an open stream holds of a maximal and a typical
//! context, the held-bytes gauge, and that a group evaluates the context it encodes.

use serde_json::json;

use super::*;
use crate::model::Feature;
use crate::store::{FeatureMap, StoreLimits};

/// The default of `http.max_context_bytes`.
const MAX_CONTEXT_BYTES: usize = 32 * 1024;

fn setup(features: usize) -> (Arc<Metrics>, EnvStore, ContextGroups) {
    let m = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
    let env = EnvStore::new("e", StoreLimits::default(), m.clone());
    let map: FeatureMap = (0..features)
        .map(|i| {
            let key = format!("feature-{i:02}");
            let v = json!({"key": key, "enabled": true, "rules": [
                {"audience": {"conditions": [{"target": "tier", "operator": "equals", "values": ["gold"]}]}, "variantSplits": [{"variantKey": "on", "split": 100}]},
                {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]});
            (key.clone(), Feature::from_value(&key, v).expect("valid"))
        })
        .collect();
    env.replace(map, None, None);
    let groups = ContextGroups::new(&m);
    (m, env, groups)
}

/// The largest context under the default cap: attributes of 256 small numbers (the probe's
/// shape), filled up to `MAX_CONTEXT_BYTES` encoded.
fn maximal() -> Context {
    let mut ctx = Context::new("u");
    let mut i = 0;
    while ctx.encoded_len() + 600 <= MAX_CONTEXT_BYTES {
        ctx.attributes.insert(format!("a{i:02}"), vec![json!(0); 256]);
        i += 1;
    }
    let room = MAX_CONTEXT_BYTES.saturating_sub(ctx.encoded_len() + 8) / 2;
    ctx.attributes.insert(format!("a{i:02}"), vec![json!(0); room]);
    ctx
}

fn typical() -> Context {
    Context::new("user-4711")
        .with("email", "ada.lovelace@example.com")
        .with("country", "AU")
        .with("plan", "premium")
        .with("tier", "gold")
        .with("roles", "admin")
        .with("roles", "beta")
        .with("age", 36)
        .with("signup", "2025-01-01T10:00:00Z")
        .with("app_version", "4.2.1")
        .with("locale", "en-AU")
}

fn open(env: &EnvStore, groups: &ContextGroups, ctx: Context, m: &Metrics) -> Arc<ContextGroup> {
    let group = groups.get(env, ctx);
    let mut r = EvalRenderer::new(group.clone());
    assert_eq!(r.start(env, &env.snapshot(), None, m).len(), 1, "features.evaluated");
    group
}

#[test]
fn an_open_stream_of_a_maximal_context_holds_at_most_64_kib_and_a_typical_one_at_most_4_kib() {
    let ctx = maximal();
    let size = ctx.encoded_len();
    assert!((MAX_CONTEXT_BYTES - 16..=MAX_CONTEXT_BYTES).contains(&size), "{size}");
    for features in [0, 20] {
        let (m, env, groups) = setup(features);
        let max = open(&env, &groups, ctx.clone(), &m).held_bytes();
        let typ = open(&env, &groups, typical(), &m).held_bytes();
        println!("held with {features} features: maximal context {max} B, typical context {typ} B");
        assert!(max <= 64 * 1024, "maximal: {max}");
        assert!(typ <= 4 * 1024, "typical: {typ}");
    }
}

#[test]
fn the_held_bytes_gauge_follows_the_groups_and_returns_to_zero_when_they_die() {
    let (m, env, groups) = setup(5);
    let a = open(&env, &groups, typical(), &m);
    let b = open(&env, &groups, Context::new("other"), &m);
    let mut reordered = Context::new("user-4711");
    let mut attrs: Vec<_> = typical().attributes.into_iter().collect();
    attrs.sort_by(|a, b| b.0.cmp(&a.0));
    for (k, vs) in attrs {
        for v in vs {
            reordered = reordered.with(k.clone(), v);
        }
    }
    let same = groups.get(&env, reordered);
    assert!(Arc::ptr_eq(&a, &same), "identical contexts share a group");
    assert_eq!(m.context_groups.get(), 2);
    assert_eq!(m.context_group_bytes.get() as usize, a.held_bytes() + b.held_bytes());
    drop((a, same));
    assert_eq!(m.context_group_bytes.get() as usize, b.held_bytes());
    drop(b);
    assert_eq!((m.context_groups.get(), m.context_group_bytes.get()), (0, 0));
}

#[test]
fn a_group_evaluates_the_context_it_encodes() {
    let (m, env, groups) = setup(2);
    let g = open(&env, &groups, typical(), &m);
    let st = lock(&g.state);
    assert_eq!(st.results.get("feature-00").map(|b| &b[..]), Some(&b"\"on\""[..]), "tier gold targeted");
}
