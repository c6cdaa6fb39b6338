-- flagrelay-write.lua: the one atomic writer of flagrelay's upstream contract.
--
-- Every change to an environment goes through this script (docs/upstream.md explains the
-- contract). One call is atomic: it validates every document first, then for each change does
-- INCR rev, HSET/HDEL the feature (stamping "version" = the new revision) and PUBLISHes one
-- change message per revision. Nobody ever lowers rev.
--
-- KEYS[1] {<p>:<env>}:rev        KEYS[2] {<p>:<env>}:features
-- KEYS[3] {<p>:<env>}:meta       KEYS[4] {<p>:<env>}:changes (the channel, declared so that
--                                 Cluster routes it with the other keys)
-- ARGV[1] env id
-- ARGV[2] mode: "ops" (upserts and deletes) or "import" (replace the whole environment),
--         optionally followed by "+spublish": Redis Cluster, publish with SPUBLISH (sharded
--         pub/sub, on the slot's shard only) instead of PUBLISH (broadcast to every node)
-- ARGV[3] inline limit in bytes: a feature document longer than this is published without
--         "feature" (the relay then reads it with HGET)
-- ARGV[4] "import": the new epoch (an opaque id; it must differ from the current one)
--         "ops": unused, pass ""
-- ARGV[5..] "ops": triples  op ("upsert"|"delete"), feature key, document ("" for delete)
--           "import": pairs feature key, document
--
-- A document is the feature's JSON object WITHOUT a "version" field: the script appends
-- "version": <revision> itself. A delete of a key that does not exist writes nothing.
--
-- Returns { revision after the call, revisions written, 1 if meta.inited is set else 0 }.

local rev_key, features_key, meta_key, channel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local env, mode, inline_max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local publish = 'PUBLISH'
if string.sub(mode, -9) == '+spublish' then
  mode = string.sub(mode, 1, -10)
  publish = 'SPUBLISH'
end

if inline_max == nil then
  return redis.error_reply('ERR flagrelay-write: ARGV[3] (inline limit) must be a number')
end

local function int(n) return string.format('%d', n) end

local function stamp(doc, rev)
  local body = string.match(doc, '^%s*{(.*)}%s*$')
  if string.match(body, '^%s*$') then
    return '{"version":' .. int(rev) .. '}'
  end
  return '{' .. body .. ',"version":' .. int(rev) .. '}'
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A document must be one JSON object (checked with cjson, not only its outline), without its
-- own "version" (the script stamps it), and with no "key" other than the feature's key.
local function valid_doc(key, doc)
  if type(doc) ~= 'string' or string.match(doc, '^%s*{.*}%s*$') == nil then
    return false
  end
  local ok, t = pcall(cjson.decode, doc)
  if not ok or type(t) ~= 'table' then
    return false
  end
  if t['version'] ~= nil then
    return false
  end
  return t['key'] == nil or t['key'] == key
end

if mode == 'import' then
  local epoch = ARGV[4]
  if epoch == nil or epoch == '' then
    return redis.error_reply('ERR flagrelay-write: import needs a new epoch in ARGV[4]')
  end
  if (#ARGV - 4) % 2 ~= 0 then
    return redis.error_reply('ERR flagrelay-write: import takes (key, document) pairs')
  end
  for i = 5, #ARGV, 2 do
    if ARGV[i] == '' or not valid_doc(ARGV[i], ARGV[i + 1]) then
      return redis.error_reply('ERR flagrelay-write: feature ' .. i .. ' is not a key and a JSON object')
    end
  end
  local rev = redis.call('INCR', rev_key)
  redis.call('DEL', features_key)
  for i = 5, #ARGV, 2 do
    redis.call('HSET', features_key, ARGV[i], stamp(ARGV[i + 1], rev))
  end
  redis.call('HSET', meta_key, 'inited', '1', 'epoch', epoch, 'schema', '1')
  local msg = '{"v":1,"env":' .. cjson.encode(env) .. ',"epoch":' .. cjson.encode(epoch) ..
    ',"rev":' .. int(rev) .. ',"op":"reset","ts":' .. int(now_ms()) .. '}'
  redis.call(publish, channel, msg)
  return { rev, 1, 1 }
end

if mode ~= 'ops' then
  return redis.error_reply('ERR flagrelay-write: mode must be "ops" or "import"')
end
if (#ARGV - 4) % 3 ~= 0 then
  return redis.error_reply('ERR flagrelay-write: ops are (op, key, document) triples')
end
for i = 5, #ARGV, 3 do
  local op, key, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if key == '' then
    return redis.error_reply('ERR flagrelay-write: empty feature key')
  end
  if op == 'upsert' then
    if not valid_doc(key, doc) then
      return redis.error_reply('ERR flagrelay-write: the document of ' .. key .. ' is not a JSON object')
    end
  elseif op ~= 'delete' then
    return redis.error_reply('ERR flagrelay-write: unknown op ' .. op)
  end
end

local epoch = redis.call('HGET', meta_key, 'epoch')
if not epoch then epoch = '' end
local head = '{"v":1,"env":' .. cjson.encode(env) .. ',"epoch":' .. cjson.encode(epoch) .. ',"rev":'
local written = 0
for i = 5, #ARGV, 3 do
  local op, key, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'upsert' then
    local rev = redis.call('INCR', rev_key)
    local stamped = stamp(doc, rev)
    redis.call('HSET', features_key, key, stamped)
    local body = ''
    if #stamped <= inline_max then body = ',"feature":' .. stamped end
    redis.call(publish, channel, head .. int(rev) .. ',"op":"upsert","key":' .. cjson.encode(key) ..
      body .. ',"ts":' .. int(now_ms()) .. '}')
    written = written + 1
  elseif redis.call('HDEL', features_key, key) == 1 then
    local rev = redis.call('INCR', rev_key)
    redis.call(publish, channel, head .. int(rev) .. ',"op":"delete","key":' .. cjson.encode(key) ..
      ',"ts":' .. int(now_ms()) .. '}')
    written = written + 1
  end
end
local inited = 0
if redis.call('HGET', meta_key, 'inited') == '1' then inited = 1 end
return { tonumber(redis.call('GET', rev_key) or '0'), written, inited }
