-- step.lua - the atomic Redis step for a group of jobs of one user: quota
-- decisions, charges, results, done-notifications.  Compiled into
-- kinfer-worker (commit.c), loaded once with SCRIPT LOAD, run with EVALSHA.
--
-- One call covers up to a few hundred jobs of the same user from one batch:
-- the fixed costs (the call itself, reading the quota, the clock and the
-- window's usage, updating the counters) are paid once per group instead of
-- once per job.  The whole group is atomic, so each job's effects are too.
--
-- KEYS[1] the user's lifetime usage hash    KEYS[2] the user's quota hash
-- KEYS[1 + 2i] job i's result hash          KEYS[2 + 2i] job i's done list
-- ARGV[1] default max jobs per window (-1 = unlimited)
-- ARGV[2] default max rows per window (-1 = unlimited)
-- ARGV[3] default window length (s)
-- ARGV[4] window usage key prefix ("" = no per-user counters: unknown user)
-- ARGV[5] per-model usage key prefix ("" = none)
-- ARGV[6] the number of jobs
-- then per job, in order:
--   kind: "ok" (computed), "error" (an error result), or "over" (the
--         worker's pre-check found the user over quota and did not compute)
--   ttl (s), rows, flops, model name ("" = unknown),
--   ncommon and nown, then ncommon field/value entries written into every
--   result, then nown entries written only into an ok result (kind ok) or
--   an error result (kind error)
--
-- Returns {warning, code_1, ..., code_n}: code 0 = the result already
-- existed (a redelivery: nothing changed, nothing charged), 1 = ok result
-- written and charged, 2 = quota_exceeded result written, 3 = error result
-- written, 4 = kind "over" but within quota now (the window rolled over):
-- nothing written; compute the job and run it again.  warning names quota
-- settings that were invalid and replaced by the defaults.
--
-- Every read and check comes before the first write: Redis does not roll
-- back a script's earlier writes when a later command fails (OOM), so the
-- first write fails the whole step or the step completes.  The window key
-- is built here, not passed in KEYS, because its name depends on the quota
-- read here: kinfer needs a non-cluster Redis.

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

local window_prefix, model_prefix = ARGV[4], ARGV[5]
local njobs = tonumber(ARGV[6])

-- Reads: the quota, the clock, the window's usage, which results exist.
local q = redis.call('HMGET', KEYS[2], 'jobs', 'rows', 'window')
local max_jobs = setting(q[1], tonumber(ARGV[1]), 0, 1e15, 'jobs')
local max_rows = setting(q[2], tonumber(ARGV[2]), 0, 1e15, 'rows')
local window = setting(q[3], tonumber(ARGV[3]), 1, 31622400, 'window')
local now = tonumber(redis.call('TIME')[1])
local wstart = now - now % window
local wend = wstart + window
local wkey = window_prefix .. wstart
local used_jobs, used_rows = 0, 0
if window_prefix ~= '' then
  local u = redis.call('HMGET', wkey, 'jobs', 'rows')
  used_jobs, used_rows = tonumber(u[1]) or 0, tonumber(u[2]) or 0
end

-- Decisions, in job order, against the running usage.
local codes = {warning}
local plan = {}
local pos = 7
local total = {jobs = 0, rows = 0, flops = 0, errors = 0}
local per_model = {}
local seen = {}
local function charge(model, field, by)
  total[field] = total[field] + by
  if model ~= '' and model_prefix ~= '' then
    per_model[model] = per_model[model] or {jobs = 0, rows = 0, flops = 0, errors = 0}
    per_model[model][field] = per_model[model][field] + by
  end
end

for i = 1, njobs do
  local kind, ttl, rows, flops, model = ARGV[pos], tonumber(ARGV[pos + 1]),
      tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), ARGV[pos + 4]
  local ncommon, nown = tonumber(ARGV[pos + 5]), tonumber(ARGV[pos + 6])
  local first = pos + 7
  local job = {kind = kind, ttl = ttl, first = first, ncommon = ncommon, nown = nown,
               result = KEYS[1 + 2 * i], done = KEYS[2 + 2 * i]}
  pos = first + ncommon + nown
  if seen[job.result] or redis.call('EXISTS', job.result) == 1 then
    -- a redelivery; or the same job twice in this call, whose first copy
    -- will be written below
    codes[i + 1] = 0
  elseif kind == 'error' then
    codes[i + 1] = 3
    charge(model, 'errors', 1)
  else
    local over
    if max_jobs >= 0 and used_jobs + 1 > max_jobs then
      over = 'used ' .. used_jobs .. ' of ' .. max_jobs .. ' jobs'
    elseif max_rows >= 0 and used_rows + rows > max_rows then
      over = 'used ' .. used_rows .. ' of ' .. max_rows .. ' rows and this job has ' .. rows
    end
    if over then
      codes[i + 1] = 2
      job.over = over
      charge(model, 'errors', 1)
    elseif kind == 'over' then
      codes[i + 1] = 4
    else
      codes[i + 1] = 1
      used_jobs, used_rows = used_jobs + 1, used_rows + rows
      charge(model, 'jobs', 1)
      charge(model, 'rows', rows)
      charge(model, 'flops', flops)
    end
  end
  plan[i] = job
  seen[job.result] = true
end

-- Writes.  One HSET per result, its arguments unpacked straight from ARGV
-- (a job's common and own entries are contiguous there): no copying into
-- Lua tables, which costs more than the commands themselves.
local function finish(job, status)
  redis.call('EXPIRE', job.result, job.ttl)
  redis.call('RPUSH', job.done, status)
  redis.call('EXPIRE', job.done, job.ttl)
end

for i = 1, njobs do
  local job, code = plan[i], codes[i + 1]
  if code == 1 then
    redis.call('HSET', job.result, 'status', 'ok', 'window', wstart,
               unpack(ARGV, job.first, job.first + job.ncommon + job.nown - 1))
    finish(job, 'ok')
  elseif code == 2 then
    redis.call('HSET', job.result, 'status', 'error', 'error', 'quota_exceeded',
               'message', 'quota exceeded: ' .. job.over .. ' in the ' .. window ..
                          ' s window starting at ' .. wstart .. '; it resets at ' .. wend ..
                          ' (in ' .. (wend - now) .. ' s)',
               'retry_after', wend - now, 'window', wstart,
               unpack(ARGV, job.first, job.first + job.ncommon - 1))
    finish(job, 'error')
  elseif code == 3 then
    redis.call('HSET', job.result, 'status', 'error',
               unpack(ARGV, job.first, job.first + job.ncommon + job.nown - 1))
    finish(job, 'error')
  end
end

local touched = false
for _, field in ipairs({'jobs', 'rows', 'flops', 'errors'}) do
  if total[field] ~= 0 then
    touched = true
    redis.call('HINCRBY', KEYS[1], field, total[field])
    if window_prefix ~= '' then
      redis.call('HINCRBY', wkey, field, total[field])
    end
  end
end
for model, c in pairs(per_model) do
  for field, by in pairs(c) do
    if by ~= 0 then
      redis.call('HINCRBY', model_prefix .. model, field, by)
    end
  end
end
if touched and window_prefix ~= '' then
  -- kept one more window after it ends, so the last one stays readable
  redis.call('EXPIRE', wkey, wend - now + window)
  redis.call('HSET', KEYS[1], 'window_start', wstart, 'window_s', window)
end
return codes
