-- registry_rm.lua - deletes one version (after the prelude).
-- ARGV[3] version, [4] force.  Returns 1 if it was the active version.
local v = num(ARGV[3])
local nf = need_version(NAME, v)
if nf then return nf end
local mk = mkey(NAME)
local cur = num(hget(NAME, 'active'))
if ARGV[4] ~= '1' then
  if v == cur then
    return refuse('version ' .. v .. " is the active version of '" .. NAME .. "': " .. 'activate another first, or --force')
  end
  for _, e in ipairs(redis.call('SMEMBERS', P .. 'model-names')) do
    for _, u in ipairs(versions(e)) do
      for _, m in ipairs(members_of(e, u) or {}) do
        if m.model == NAME and num(m.version) == v then
          return refuse('version ' .. v .. " of '" .. NAME .. "' is a pinned member of '" .. e .. "' version " .. u .. ' (--force to remove it anyway)')
        end
      end
    end
  end
end
redis.call('DEL', bkey(NAME, v))
local pre = v .. ':'
for _, f in ipairs(redis.call('HKEYS', mk)) do
  if string.sub(f, 1, string.len(pre)) == pre then redis.call('HDEL', mk, f) end
end
local h = {}
for x in string.gmatch(hget(NAME, 'history') or '', '%d+') do
  if tonumber(x) ~= v then h[#h + 1] = x end
end
redis.call('HSET', mk, 'history', table.concat(h, ','))
if v == cur then redis.call('HSET', mk, 'active', 0) end
announce('rm', NAME, v)
if v == cur then return 1 end
return 0
