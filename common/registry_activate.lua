-- registry_activate.lua - makes a version the active one (after the prelude).
-- ARGV[3] version, [4] force.  Returns the version that was active.
local v = num(ARGV[3])
local nf = need_version(NAME, v)
if nf then return nf end
local err = check_activation(NAME, v, hget(NAME, v .. ':input_dim'), hget(NAME, v .. ':output_dim'), members_of(NAME, v), ARGV[4])
if err then return refuse(err) end
local prev = set_active(NAME, v)
if prev ~= v then announce('activate', NAME, v) end
return prev
