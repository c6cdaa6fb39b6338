//! Issue 10 item 1: what the relay holds, measured with the allocator (bytes this thread
//! allocated and has not freed), not with its own accounting: a context at the default
//! `http.max_context_bytes` costs an open evaluation stream at most 64 KiB, and the relay's count
//! (`ContextGroup::held_bytes`) is within a small margin of the truth; a feature version kept in
//! the replay ring holds a bounded multiple of the encoded bytes the ring's budget counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use flagrelay::eval::Context;
use flagrelay::fanout::eval_stream::{ContextGroups, EvalRenderer};
use flagrelay::fanout::Renderer;
use flagrelay::metrics::Metrics;
use flagrelay::model::Feature;
use flagrelay::store::weight::feature_bytes;
use flagrelay::store::Update;
use flagrelay::store::{EnvStore, FeatureMap, StoreLimits};
use serde_json::json;

/// Counts the bytes the current thread holds.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(n as i64 - l.size() as i64);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// The default of `http.max_context_bytes`.
const MAX_CONTEXT_BYTES: usize = 32 * 1024;

/// The probe's shape (attributes of 256 numbers), as many as fit under the default cap.
fn maximal() -> Context {
    let mut ctx = Context::new("u");
    let mut i = 0;
    while ctx.encoded_len() + 600 <= MAX_CONTEXT_BYTES {
        ctx.attributes.insert(format!("a{i:02}"), vec![json!(i); 256]);
        i += 1;
    }
    ctx
}

fn environment() -> (Arc<Metrics>, EnvStore) {
    let m = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
    let env = EnvStore::new("e", StoreLimits::default(), m.clone());
    let map: FeatureMap = (0..20)
        .map(|i| {
            let key = format!("feature-{i:02}");
            let v = json!({"key": key, "enabled": true, "rules": [
                {"audience": {"conditions": [{"target": "a01", "operator": "in", "values": [1]}]}, "variantSplits": [{"variantKey": "on", "split": 100}]},
                {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]});
            (key.clone(), Feature::from_value(&key, v).expect("valid"))
        })
        .collect();
    env.replace(map, None, None);
    (m, env)
}

#[test]
fn an_open_stream_of_a_maximal_context_holds_at_most_64_kib_and_the_relay_counts_it() {
    let (m, env) = environment();
    let groups = ContextGroups::new(&m);
    // Once first, so that the metric series and the registry's table exist before measuring.
    let warm = groups.get(&env, Context::new("warm-up"));
    let _ = EvalRenderer::new(warm.clone()).start(&env, &env.snapshot(), None, &m);
    drop(warm);

    let before = live();
    let ctx = maximal();
    let parsed = live() - before;
    let group = groups.get(&env, ctx);
    let mut renderer = EvalRenderer::new(group.clone());
    let frames = renderer.start(&env, &env.snapshot(), None, &m);
    drop(frames);
    let held = live() - before;
    let counted = group.held_bytes() as i64;
    println!("parsed context {parsed} B; held by its open stream {held} B; counted {counted} B");
    assert!(parsed > 64 * 1024, "the parsed form is what must not be held ({parsed} B)");
    assert!(held <= 64 * 1024, "held {held} B");
    assert!((held - counted).abs() <= held / 10 + 1024, "counted {counted} B of {held} B held");
    drop((renderer, group));
}

#[test]
fn a_feature_version_holds_a_bounded_multiple_of_its_encoded_size() {
    // A big feature as they come: one targeting rule over 50,000 user ids.
    let ids: Vec<String> = (0..50_000).map(|i| format!("user-{i:06}")).collect();
    let v = json!({"key": "big", "enabled": true, "rules": [
        {"audience": {"conditions": [{"target": "featureflow.user.id", "operator": "in", "values": ids}]}, "variantSplits": [{"variantKey": "on", "split": 100}]},
        {"defaultRule": true, "variantSplits": [{"variantKey": "off", "split": 100}]}]});
    let text = v.to_string();
    drop(v);
    let (m, env) = environment();
    let before = live();
    let f = Feature::from_slice("big", text.as_bytes()).expect("valid");
    let encoded = f.json.len() as f64;
    let held = (live() - before) as f64;
    // In the ring a superseded version is the feature and its change's cached frame (about its
    // encoded size again); its compiled form went with the snapshot that replaced it.
    let estimated = feature_bytes(&f) as f64;
    let change = env.apply(Update { upserts: vec![f], ..Default::default() }).expect("a change");
    println!("a {encoded} B feature holds {held} B ({:.1}x); the ring counts {estimated} B for it and {} B for its change", held / encoded, change.weight());
    assert!((estimated - held).abs() <= held * 0.2, "estimated {estimated} B of {held} B held");
    assert!(change.weight() as f64 >= held, "the change weighs at least what its feature holds");
    drop((m, env));
}
