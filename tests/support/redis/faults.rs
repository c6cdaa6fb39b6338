//! Hand-made upstream faults that the writer script would never produce, done **atomically** in
//! one script so that no snapshot or probe can fall between their steps (a snapshot between a
//! bare `INCR rev` and the `HSET` would see the new revision without the change, and nothing
//! would ever tell the relay again): [`hand_made_change`].

use redis::aio::MultiplexedConnection;

const SCRIPT: &str = r#"
local rev = redis.call('INCRBY', KEYS[1], ARGV[1])
local doc = string.gsub(ARGV[2], '"__REV__"', tostring(rev))
redis.call('HSET', KEYS[2], ARGV[4], doc)
if ARGV[3] ~= '' then
  local epoch = redis.call('HGET', KEYS[3], 'epoch') or ''
  local msg = '{"v":1,"env":' .. cjson.encode(ARGV[5]) .. ',"epoch":' .. cjson.encode(epoch) .. ',"rev":' .. rev ..
    ',"op":"upsert","key":' .. cjson.encode(ARGV[4]) .. ',"feature":' .. doc .. ',"ts":1}'
  redis.call(ARGV[3], KEYS[4], msg)
end
return rev
"#;

/// Raises `env`'s revision by `by` and writes `feature` (under its `key`, `version` stamped with
/// the new revision), atomically; with `publish` (`PUBLISH` or `SPUBLISH`) also publishes the
/// change message of that one revision. `by = 1` without publishing is a trailing loss;
/// `by = 2` with publishing is a gap. Returns the new revision.
pub async fn hand_made_change(con: &mut MultiplexedConnection, env: &str, mut feature: serde_json::Value, by: u64, publish: Option<&str>) -> u64 {
    let key = feature["key"].as_str().expect("the feature has a key").to_string();
    feature["version"] = serde_json::json!("__REV__");
    let tag = format!("{{flagrelay:{env}}}");
    let script = redis::Script::new(SCRIPT);
    let mut inv = script.prepare_invoke();
    inv.key(format!("{tag}:rev"))
        .key(format!("{tag}:features"))
        .key(format!("{tag}:meta"))
        .key(format!("{tag}:changes"))
        .arg(by)
        .arg(feature.to_string())
        .arg(publish.unwrap_or(""))
        .arg(&key)
        .arg(env);
    crate::within("a hand-made change", inv.invoke_async(con)).await.expect("the hand-made change")
}
