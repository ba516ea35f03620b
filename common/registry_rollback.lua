-- registry_rollback.lua - makes the most recent earlier active version that
-- still exists the active one again (after the prelude).
-- ARGV[3] force.  Returns {from, to}.
if not exists(NAME) then return notfound("unknown model '" .. NAME .. "'") end
local cur = num(hget(NAME, 'active'))
local h = {}
for x in string.gmatch(hget(NAME, 'history') or '', '%d+') do h[#h + 1] = x end
while #h > 0 do
  local v = tonumber(table.remove(h))
  if v ~= cur and has(NAME, v) then
    local err = check_activation(NAME, v, hget(NAME, v .. ':input_dim'), hget(NAME, v .. ':output_dim'), members_of(NAME, v), ARGV[3])
    if err then return refuse('cannot roll back to version ' .. v .. ': ' .. err) end
    redis.call('HSET', mkey(NAME), 'history', table.concat(h, ','), 'active', v)
    announce('rollback', NAME, v)
    return {cur, v}
  end
end
return refuse("model '" .. NAME .. "' has no earlier active version to roll back to")
