-- registry_push.lua - stores a new version of a model (after the prelude).
-- ARGV[3] blob, [4] sha256, [5] kind, [6] input_dim, [7] output_dim,
-- [8] layers, [9] members JSON ("" for an mlp), [10] activate, [11] force.
-- Returns the new version.
local mk = mkey(NAME)
local v = num(hget(NAME, 'next')) + 1
if #versions(NAME) >= 4096 then
  return refuse("model '" .. NAME .. "' has 4096 versions: rm some first")
end
local members = nil
if ARGV[5] == 'ensemble' then members = cjson.decode(ARGV[9]) end
local err = nil
if members then
  err = check_members(NAME, v, members, ARGV[6], ARGV[7])
  if not err then err = walk(NAME, v, members, NAME, v, {}, {}) end
end
if not err and ARGV[10] == '1' and ARGV[11] ~= '1' then
  err = check_dependents(NAME, v, ARGV[6], ARGV[7], ARGV[5])
end
if err then return refuse(err) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', bkey(NAME, v), ARGV[3])
redis.call('HSET', mk, 'next', v, v .. ':size', string.len(ARGV[3]), v .. ':sha256', ARGV[4], v .. ':kind', ARGV[5], v .. ':input_dim', ARGV[6], v .. ':output_dim', ARGV[7], v .. ':created', now)
if members then redis.call('HSET', mk, v .. ':members', ARGV[9])
else redis.call('HSET', mk, v .. ':layers', ARGV[8]) end
if redis.call('HEXISTS', mk, 'active') == 0 then redis.call('HSET', mk, 'active', 0) end
redis.call('SADD', P .. 'model-names', NAME)
announce('push', NAME, v)
if ARGV[10] == '1' then
  set_active(NAME, v)
  announce('activate', NAME, v)
end
return v
