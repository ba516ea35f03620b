-- step.lua - the one atomic Redis step of a job: quota decision, charge,
-- result, done-notification.  Compiled into kinfer-worker (commit.c) and
-- loaded once with SCRIPT LOAD, then run with EVALSHA.
--
-- KEYS[1] result hash   KEYS[2] done list   KEYS[3] lifetime usage hash
-- KEYS[4] quota hash
-- ARGV[1] result ttl (s)
-- ARGV[2] kind: "ok" (computed), "error" (an error result), "over" (the
--         worker's pre-check found the user over quota and did not compute)
-- ARGV[3] rows   ARGV[4] flops
-- ARGV[5] default max jobs per window (-1 = unlimited)
-- ARGV[6] default max rows per window (-1 = unlimited)
-- ARGV[7] default window length (s)
-- ARGV[8] per-model usage key ("" = none)
-- ARGV[9] window usage key prefix ("" = no per-user counters: unknown user)
-- ARGV[10] n, the number of ARGV entries that follow and are field/value
--          pairs for every result; the entries after them are pairs for an
--          ok result (kind ok) or an error result (kind error)
--
-- Returns {code, warning}: code 0 = the result already existed (a
-- redelivery: nothing changed, nothing charged), 1 = ok result written and
-- charged, 2 = quota_exceeded result written, 3 = error result written,
-- 4 = kind "over" but the user is within quota now (the window rolled over):
-- nothing written, compute the job and run the step again.  warning names
-- quota settings that were invalid and replaced by the defaults.
--
-- Every read and check comes before the first write: Redis does not roll
-- back a script's earlier writes when a later command fails (OOM), so the
-- first write either fails the whole step or the step completes.
-- The window key is built here, not passed in KEYS, because its name depends
-- on the quota read here: kinfer needs a non-cluster Redis.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, ''}
end

local ttl, kind = tonumber(ARGV[1]), ARGV[2]
local rows, flops = tonumber(ARGV[3]), tonumber(ARGV[4])
local model_key, window_prefix = ARGV[8], ARGV[9]
local ncommon = tonumber(ARGV[10])
local warning = ''

local function setting(value, default, lo, hi, name)
  if not value then
    return default
  end
  local n = tonumber(value)
  if not n or n ~= math.floor(n) or n < lo or n > hi then
    warning = warning .. name .. '="' .. value .. '" is not in ' ..
              string.format('%d..%d', lo, hi) .. ', using the default ' ..
              string.format('%d', default) .. '; '
    return default
  end
  return n
end

local q = redis.call('HMGET', KEYS[4], 'jobs', 'rows', 'window')
local max_jobs = setting(q[1], tonumber(ARGV[5]), 0, 1e15, 'jobs')
local max_rows = setting(q[2], tonumber(ARGV[6]), 0, 1e15, 'rows')
local window = setting(q[3], tonumber(ARGV[7]), 1, 31622400, 'window')

local now = tonumber(redis.call('TIME')[1])
local wstart = now - now % window
local wend = wstart + window
local wkey = window_prefix .. wstart

local function write_result(status, first, last, extra)
  local args = {KEYS[1], 'status', status}
  for i = 11, 10 + ncommon do
    args[#args + 1] = ARGV[i]
  end
  for i = first, last do
    args[#args + 1] = ARGV[i]
  end
  for _, v in ipairs(extra) do
    args[#args + 1] = v
  end
  redis.call('HSET', unpack(args))
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('RPUSH', KEYS[2], status)
  redis.call('EXPIRE', KEYS[2], ttl)
end

local function count(field, by)
  redis.call('HINCRBY', KEYS[3], field, by)
  if window_prefix ~= '' then
    redis.call('HINCRBY', wkey, field, by)
  end
  if model_key ~= '' then
    redis.call('HINCRBY', model_key, field, by)
  end
end

local function touch_window()
  if window_prefix ~= '' then
    -- kept one more window after it ends, so the last one stays readable
    redis.call('EXPIRE', wkey, wend - now + window)
    redis.call('HSET', KEYS[3], 'window_start', wstart, 'window_s', window)
  end
end

if kind == 'error' then
  count('errors', 1)
  touch_window()
  write_result('error', 11 + ncommon, #ARGV, {})
  return {3, warning}
end

-- kind ok or over: the quota decides
local used = {0, 0}
if window_prefix ~= '' then
  local u = redis.call('HMGET', wkey, 'jobs', 'rows')
  used = {tonumber(u[1]) or 0, tonumber(u[2]) or 0}
end
local over
if max_jobs >= 0 and used[1] + 1 > max_jobs then
  over = 'used ' .. used[1] .. ' of ' .. max_jobs .. ' jobs'
elseif max_rows >= 0 and used[2] + rows > max_rows then
  over = 'used ' .. used[2] .. ' of ' .. max_rows .. ' rows and this job has ' .. rows
end

if not over then
  if kind == 'over' then
    return {4, warning}
  end
  count('jobs', 1)
  count('rows', rows)
  count('flops', flops)
  touch_window()
  write_result('ok', 11 + ncommon, #ARGV, {'window', wstart})
  return {1, warning}
end

count('errors', 1)
touch_window()
write_result('error', 1, 0, {
  'error', 'quota_exceeded',
  'message', 'quota exceeded: ' .. over .. ' in the ' .. window .. ' s window starting at ' ..
             wstart .. '; it resets at ' .. wend .. ' (in ' .. (wend - now) .. ' s)',
  'retry_after', wend - now,
  'window', wstart})
return {2, warning}
