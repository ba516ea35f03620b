-- registry_prelude.lua - the helpers every model registry change script
-- starts with (common/model_registry_admin.c puts this file in front of
-- registry_push.lua, registry_activate.lua, registry_rollback.lua and
-- registry_rm.lua at build time; each runs with EVAL).
--
-- Every script gets ARGV[1] = key prefix, ARGV[2] = model name, and builds
-- the key names itself: which other models' metadata an ensemble check
-- reads is known only inside the script.  (So the registry needs one Redis,
-- not a cluster; kinfer's results and counters do too.)  A refusal is an
-- error reply "REFUSED why" or "NOTFOUND why", returned before any write.
--
-- resolve() is the version a member reference means while root_v pictures
-- itself active (pinned, else the member's active version); walk() goes
-- depth-first over the ensemble graph, a node met again on its path being a
-- cycle, with done[] keeping a shared sub-ensemble from being walked once per
-- path; check_dependents() makes active ensembles that follow n (no version)
-- fit n's new dims.
local P, NAME = ARGV[1], ARGV[2]
local function mkey(n) return P .. 'model-meta:' .. n end
local function bkey(n, v) return P .. 'model:' .. n .. ':' .. v end
local function hget(n, f) return redis.call('HGET', mkey(n), f) end
local function num(x) return tonumber(x) or 0 end
local function exists(n) return redis.call('EXISTS', mkey(n)) == 1 end
local function has(n, v) return redis.call('HEXISTS', mkey(n), v .. ':sha256') == 1 end
local function refuse(m) return redis.error_reply('REFUSED ' .. m) end
local function notfound(m) return redis.error_reply('NOTFOUND ' .. m) end
local function versions(n)
  local t = {}
  for _, f in ipairs(redis.call('HKEYS', mkey(n))) do
    local v = string.match(f, '^(%d+):sha256$')
    if v then t[#t + 1] = tonumber(v) end
  end
  table.sort(t)
  return t
end
local function vlist(n)
  local t = versions(n)
  if #t == 0 then return 'none' end
  return table.concat(t, ', ')
end
local function need_version(n, v)
  if not exists(n) then return notfound("unknown model '" .. n .. "'") end
  if not has(n, v) then return notfound("model '" .. n .. "' has no version " .. v .. ' (versions: ' .. vlist(n) .. ')') end
  return nil
end
local function members_of(n, v)
  if hget(n, v .. ':kind') ~= 'ensemble' then return nil end
  local ok, t = pcall(cjson.decode, hget(n, v .. ':members') or '')
  if ok and type(t) == 'table' then return t end
  return {}
end
local function resolve(root, root_v, m)
  local v = num(m.version)
  if v ~= 0 then return v end
  if m.model == root then return root_v end
  return num(hget(m.model, 'active'))
end
local function check_members(root, root_v, members, din, dout)
  for _, m in ipairs(members) do
    local v = resolve(root, root_v, m)
    if not exists(m.model) then
      return "member '" .. m.model .. "' is not in the registry"
    end
    if v == 0 then
      return "member '" .. m.model .. "' has no active version: pin a version or " .. 'activate one'
    end
    if not has(m.model, v) then
      return "member '" .. m.model .. "' has no version " .. v .. ' (versions: ' .. vlist(m.model) .. ')'
    end
    local mi = hget(m.model, v .. ':input_dim') or '?'
    local mo = hget(m.model, v .. ':output_dim') or '?'
    if mi ~= din or mo ~= dout then
      return "member '" .. m.model .. "' version " .. v .. ' is ' .. mi .. '->' .. mo .. ', the ensemble is ' .. din .. '->' .. dout
    end
    -- the act of a sum cannot be flattened into the sum (model_ensemble.c)
    if m.act and m.act ~= 'identity' and hget(m.model, v .. ':kind') == 'ensemble' then
      return "member '" .. m.model .. "' version " .. v .. ' is an ensemble: act "' .. m.act .. '" applies to an mlp member only'
    end
  end
  return nil
end
local function walk(root, root_v, root_members, n, v, path, done)
  local key = n .. ' v' .. v
  for i = 1, #path do
    if path[i] == key then
      return 'cycle: ' .. table.concat(path, ' -> ') .. ' -> ' .. key
    end
  end
  if done[key] then return nil end
  local members = nil
  if n == root and v == root_v and root_members then members = root_members
  else members = members_of(n, v) end
  if not members then done[key] = true return nil end
  if #path >= 8 then
    return 'ensembles nested more than 8 deep: ' .. table.concat(path, ' -> ') .. ' -> ' .. key
  end
  path[#path + 1] = key
  for _, m in ipairs(members) do
    local mv = resolve(root, root_v, m)
    if mv ~= 0 then
      local err = walk(root, root_v, root_members, m.model, mv, path, done)
      if err then return err end
    end
  end
  path[#path] = nil
  done[key] = true
  return nil
end
local function check_dependents(n, v, din, dout, kind)
  for _, e in ipairs(redis.call('SMEMBERS', P .. 'model-names')) do
    local a = num(hget(e, 'active'))
    local ms = nil
    if e ~= n and a ~= 0 then ms = members_of(e, a) end
    for _, m in ipairs(ms or {}) do
      if m.model == n and num(m.version) == 0 then
        local ei = hget(e, a .. ':input_dim') or '?'
        local eo = hget(e, a .. ':output_dim') or '?'
        if ei ~= din or eo ~= dout then
          return "ensemble '" .. e .. "' version " .. a .. " follows '" .. n .. "' and is " .. ei .. '->' .. eo .. ", but '" .. n .. "' version " .. v .. ' is ' .. din .. '->' .. dout .. ' (--force to activate it anyway)'
        end
        if m.act and m.act ~= 'identity' and kind == 'ensemble' then
          return "ensemble '" .. e .. "' version " .. a .. " follows '" .. n .. "' with act \"" .. m.act .. "\", which applies to an mlp, but '" .. n .. "' version " .. v .. ' is an ensemble (--force to activate it anyway)'
        end
      end
    end
  end
  return nil
end
local function check_activation(n, v, din, dout, members, force)
  local err = nil
  if members then
    err = check_members(n, v, members, din, dout)
    if not err then err = walk(n, v, members, n, v, {}, {}) end
  end
  if not err and force ~= '1' then err = check_dependents(n, v, din, dout, hget(n, v .. ':kind')) end
  return err
end
local function set_active(n, v)
  local cur = num(hget(n, 'active'))
  if cur == v then return cur end
  if cur ~= 0 then
    local h = {}
    for x in string.gmatch(hget(n, 'history') or '', '%d+') do h[#h + 1] = x end
    h[#h + 1] = tostring(cur)
    while #h > 32 do table.remove(h, 1) end
    redis.call('HSET', mkey(n), 'history', table.concat(h, ','))
  end
  redis.call('HSET', mkey(n), 'active', v)
  return cur
end
local function announce(ev, n, v)
  redis.call('HINCRBY', mkey(n), 'seq', 1)
  redis.call('PUBLISH', P .. 'models', ev .. ' ' .. n .. ' ' .. v)
end
