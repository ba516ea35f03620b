-- step.lua - the atomic Redis step for a group of jobs of one user (protocol
-- v2, docs/protocol.md): duplicate detection, quota decisions, results,
-- charge records, counters and inbox pushes.  Compiled into kinfer-worker
-- (commit.c sends it, step_args.c builds its arguments), loaded with SCRIPT
-- LOAD on every connection, run with EVALSHA.
--
-- One call covers up to a few hundred jobs of the same user from one batch:
-- the fixed costs (the call, the quota, the clock, the counters, the charge
-- record, the inbox pushes) are paid once per group; per job there is one
-- write, the result's SET NX EX.  The whole group is atomic.
--
-- Every key is the user's: KEYS are declared, and the keys whose names depend
-- on the clock or the quota (the window's counters, the charge records) or on
-- a job (its inbox) are built here from ARGV[5], the user's key base
-- "{prefix}{USER}:", so they share the declared keys' hash tag and slot.
--
-- KEYS[1] usage hash   KEYS[2] quota hash   KEYS[3] per-model usage hash
-- KEYS[3 + i] job i's result key
-- ARGV[1] default max jobs per window (-1 = unlimited)
-- ARGV[2] default max rows per window (-1 = unlimited)
-- ARGV[3] default window length (s)
-- ARGV[4] charge horizon H (s): records live H to 2H
-- ARGV[5] the user's key base "{prefix}{USER}:"
-- ARGV[6] the number of jobs
-- then 5 entries per job, in order:
--   meta: struct '<BI4I4dI4B' (little-endian): kind (1 "ok" computed,
--         2 "error" an error result, 3 "over": the worker's pre-check found
--         the user over quota and did not compute, 4 "unauthorized": the
--         signature check failed), ttl (s), rows, flops,
--         clen, ncommon (see value).  Binary, so one argument per job
--         carries what would be six strings for Lua to intern.
--   id, model ("" = unknown), inbox ("" = none),
--   value: the result as a msgpack map: a map16 header (3 bytes), then
--         ncommon "common" pairs (clen bytes), then the kind's own pairs;
--         for kind ok the header counts one more pair, `window`, which is
--         appended here
---- kind + 128: the job asked for the result topic only (`results: "stream"`):
-- decided, recorded and charged as usual, but no result value is SET.
-- ARGV[7 + 5 * njobs], optional: '1' asks for the result values too (the
-- worker has a result topic, results_topic.h): then after the codes come
-- njobs values, each the result as decided (the value written, or for a
-- duplicate the value Redis holds, else the job's own as computed now; nil
-- for code 4, and for a duplicate pre-checked over quota without a result).
--
-- Returns {warning, code_1, ..., code_n}; the codes (CODE_* below) are
-- kw_step_code_t in commit.c: 0 duplicate (nothing written or charged; the id is announced
-- again), 1 ok result written and charged, 2 quota_exceeded result written,
-- 3 error result written, 4 kind "over" but within quota now (the window
-- rolled over): nothing written, compute the job and run it again,
-- 5 internal error result written because the user's counters are damaged
-- (nothing charged), 6 unauthorized result written: neither recorded as
-- charged nor counted, since nobody proved the job is the user's (so it
-- does not take the id from the user either: a later, authorized job with
-- the same id replaces that result and is decided as usual).  warning names settings that were invalid and replaced
-- by defaults, and damaged keys.
--
-- Every check comes before the first write: Redis does not roll back a
-- script's earlier writes when a later command fails, but it refuses (OOM)
-- only a script's first write, so once the first SET succeeded every later
-- write does too, given that the reads below proved each key has the right
-- type and each counter can take its increment.

local warning = ''
local COUNTERS = {'jobs', 'rows', 'flops', 'errors'}
-- What the step answers per job (kw_step_code_t in commit.c), and the meta
-- record's kinds (kw_step_kind_t in step_args.h).
local CODE_DUPLICATE, CODE_OK, CODE_QUOTA, CODE_ERROR, CODE_RECOMPUTE, CODE_DAMAGED, CODE_UNAUTH =
      0, 1, 2, 3, 4, 5, 6
local KIND_ERROR, KIND_OVER, KIND_UNAUTH = 2, 3, 4

-- Quota settings: decimal integers, digits only (kf_quota.c has the same rule).
local function setting(value, default, lo, hi, name)
  if not value then
    return default
  end
  local n = nil
  if #value <= 16 and string.match(value, '^%d+$') then
    n = tonumber(value)
  end
  if not n or n < lo or n > hi then
    warning = warning .. 'quota ' .. name .. '="' .. string.sub(value, 1, 40) ..
              '" is not a decimal integer in ' .. string.format('%d..%d', lo, hi) ..
              ', using the default ' .. string.format('%d', default) .. '; '
    return default
  end
  return n
end

local damaged = nil
local function damage(what)
  if not damaged then
    damaged = what
    warning = warning .. what .. '; '
  end
end

-- A counter the step will increment: missing, or a decimal integer far from
-- overflow (increments of one step stay below 10^18 too).
local function counter(key, field, v)
  if v and not (#v <= 18 and string.match(v, '^%-?%d+$')) then
    damage('counter ' .. key .. ' field ' .. field .. ' holds "' .. string.sub(v, 1, 40) ..
           '", not a decimal integer below 10^18')
    return 0
  end
  return tonumber(v) or 0
end

-- HMGET that reports a key of the wrong type instead of failing the step.
local function hmget(key, fields)
  local ok, r = pcall(redis.call, 'HMGET', key, unpack(fields))
  if not ok then
    damage('key ' .. key .. ' is not a hash')
    return {}
  end
  return r
end

local qjobs_def, qrows_def, qwin_def = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon, base, njobs = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local want_values = ARGV[7 + 5 * njobs] == '1'

-- ---- Reads -----------------------------------------------------------------
local q = hmget(KEYS[2], {'jobs', 'rows', 'window'})
if damaged then -- a quota that is not a hash: the defaults, and say so
  damaged = nil
  q = {}
end
local max_jobs = setting(q[1], qjobs_def, 0, 1e15, 'jobs')
local max_rows = setting(q[2], qrows_def, 0, 1e15, 'rows')
local window = setting(q[3], qwin_def, 1, 31622400, 'window')
local now = tonumber(redis.call('TIME')[1])
local wstart = now - now % window
local wend = wstart + window
local wkey = base .. 'usage:window:' .. wstart
local bstart = now - now % horizon
local ckey, cprev = base .. 'charged:' .. bstart, base .. 'charged:' .. (bstart - horizon)

local u = hmget(KEYS[1], COUNTERS)
for i, f in ipairs(COUNTERS) do counter(KEYS[1], f, u[i]) end
u = hmget(wkey, COUNTERS)
local used_jobs = counter(wkey, 'jobs', u[1])
local used_rows = counter(wkey, 'rows', u[2])
counter(wkey, 'flops', u[3])
counter(wkey, 'errors', u[4])

-- Per job: ARGV[p] meta, p+1 id, p+2 model, p+3 inbox, p+4 value, with
-- p = 7 + 5 (i - 1).  Read where needed, never copied into per-job tables:
-- at a hundred jobs a call, Lua's own work is most of the step's cost.
local ids, mfields, models, inbox_ok = {}, {}, {}, {}
for i = 1, njobs do
  local p = 2 + 5 * i
  ids[i] = ARGV[p + 1]
  local model, inbox = ARGV[p + 2], ARGV[p + 3]
  if model ~= '' and not models[model] then
    models[model] = {0, 0, 0, 0}
    for _, f in ipairs(COUNTERS) do mfields[#mfields + 1] = f .. ':' .. model end
  end
  if inbox ~= '' and inbox_ok[inbox] == nil then
    local key = base .. 'inbox:' .. inbox
    local t = redis.call('TYPE', key)['ok']
    inbox_ok[inbox] = (t == 'none' or t == 'list')
    if not inbox_ok[inbox] then
      warning = warning .. 'inbox ' .. key .. ' is a ' .. t .. ', not a list: not announced; '
    end
  end
end
if #mfields > 0 then
  local m = hmget(KEYS[3], mfields)
  for i, f in ipairs(mfields) do counter(KEYS[3], f, m[i]) end
end
local seen_cur = hmget(ckey, ids)
local seen_prev = hmget(cprev, ids)

-- ---- Decisions and results, in job order ------------------------------------
local pack, unpackmeta, sub = cmsgpack.pack, struct.unpack, string.sub
local wtail = pack('window') .. pack(wstart)
local function value_with(p, clen, ncommon, npairs, tail)
  return struct.pack('>BI2', 0xde, ncommon + npairs) .. sub(ARGV[p + 4], 4, 3 + clen) .. tail
end

-- 1 if KEY holds an unauthorized result (kind 4): a plain search for the
-- msgpack string first (cheap, and false for nearly every result), then
-- the decoded map decides.
local function unauthorized_result(key)
  local v = redis.call('GET', key)
  if not v or not string.find(v, '\172unauthorized', 1, true) then
    return false
  end
  local ok, m = pcall(cmsgpack.unpack, v)
  return ok and type(m) == 'table' and m['error'] == 'unauthorized'
end

local codes = {warning}
local total = {0, 0, 0, 0} -- COUNTERS order: jobs rows flops errors
local written, nwritten = {}, 0
local decided = {}
local pushes, order = {}, {}

for i = 1, njobs do
  local p = 2 + 5 * i
  local kind, ttl, rows, flops, clen, ncommon = unpackmeta('<BI4I4dI4B', ARGV[p])
  local stream_only = kind >= 128
  if stream_only then kind = kind - 128 end
  local id, model = ids[i], ARGV[p + 2]
  local code, value
  if decided[id] or seen_cur[i] or seen_prev[i] then
    code = CODE_DUPLICATE -- a redelivery, a reused id, or the same job twice in this call
  elseif damaged then
    code = CODE_DAMAGED
    value = value_with(p, clen, ncommon, 3, pack('status') .. pack('error') .. pack('error') ..
                       pack('internal') .. pack('message') ..
                       pack('the user\'s usage records are damaged (' .. damaged ..
                            '); an operator must repair them; not charged'))
  elseif kind == KIND_UNAUTH then
    code, value = CODE_UNAUTH, ARGV[p + 4]
  elseif kind == KIND_ERROR then
    code, value = CODE_ERROR, ARGV[p + 4]
  else
    local over, never
    -- no window will ever take these: say so, and no retry_after
    if max_jobs == 0 then
      never = 'the quota allows 0 jobs per window: no job of this user can run ' ..
              'until the quota is raised'
    elseif max_rows >= 0 and rows > max_rows then
      never = 'this job has ' .. rows .. ' rows, more than the ' .. max_rows ..
              ' rows the quota allows per window: it cannot run until the quota is raised'
    elseif max_jobs >= 0 and used_jobs + 1 > max_jobs then
      over = 'used ' .. used_jobs .. ' of ' .. max_jobs .. ' jobs'
    elseif max_rows >= 0 and used_rows + rows > max_rows then
      over = 'used ' .. used_rows .. ' of ' .. max_rows .. ' rows and this job has ' .. rows
    end
    if never then
      code = CODE_QUOTA
      value = value_with(p, clen, ncommon, 4, pack('status') .. pack('error') ..
          pack('error') .. pack('quota_exceeded') .. pack('message') ..
          pack('quota exceeded: ' .. never) .. wtail)
    elseif over then
      code = CODE_QUOTA
      value = value_with(p, clen, ncommon, 5, pack('status') .. pack('error') ..
          pack('error') .. pack('quota_exceeded') .. pack('message') ..
          pack('quota exceeded: ' .. over .. ' in the ' .. window .. ' s window starting at ' ..
               wstart .. '; it resets at ' .. wend .. ' (in ' .. (wend - now) .. ' s)') ..
          pack('retry_after') .. pack(wend - now) .. wtail)
    elseif kind == KIND_OVER then
      code = CODE_RECOMPUTE
    else
      code, value = CODE_OK, ARGV[p + 4] .. wtail
    end
  end
  if value then
    -- NX: a result outlives its charge record when its ttl is longer than
    -- the horizon; the result is then the proof of the earlier decision.
    local set = stream_only -- no Redis value: decided, charged and streamed only
    if not set then
      set = redis.call('SET', KEYS[3 + i], value, 'NX', 'EX', ttl)
      if not set and code ~= CODE_UNAUTH and unauthorized_result(KEYS[3 + i]) then
        set = redis.call('SET', KEYS[3 + i], value, 'EX', ttl)
      end
    end
    if set and code == CODE_UNAUTH then
      -- not recorded as charged, not counted, not even decided within this
      -- call: the user's own job with this id, later in the call, replaces it
    elseif set then
      decided[id] = true
      written[nwritten + 1] = id
      written[nwritten + 2] = code == CODE_OK and 'ok' or 'error'
      nwritten = nwritten + 2
      local m = model ~= '' and models[model]
      if code == CODE_OK then
        used_jobs, used_rows = used_jobs + 1, used_rows + rows
        total[1], total[2], total[3] = total[1] + 1, total[2] + rows, total[3] + flops
        if m then m[1], m[2], m[3] = m[1] + 1, m[2] + rows, m[3] + flops end
      elseif code ~= CODE_DAMAGED then
        total[4] = total[4] + 1
        if m then m[4] = m[4] + 1 end
      end
    else
      code, value = CODE_DUPLICATE, nil
    end
  end
  codes[i + 1] = code
  if want_values then
    local v = value or false
    if code == CODE_DUPLICATE then
      local ok, cur = pcall(redis.call, 'GET', KEYS[3 + i])
      if ok and cur then
        v = cur
      elseif kind == KIND_ERROR or kind == KIND_UNAUTH then
        v = ARGV[p + 4]
      elseif kind ~= KIND_OVER then
        v = ARGV[p + 4] .. wtail
      end
    end
    codes[njobs + 1 + i] = v
  end
  local inbox = ARGV[p + 3]
  if inbox ~= '' and inbox_ok[inbox] and code ~= CODE_RECOMPUTE then
    local q = pushes[inbox]
    if not q then
      q = {n = 0, ttl = 0}
      pushes[inbox] = q
      order[#order + 1] = inbox
    end
    q.n = q.n + 1
    q[q.n] = id
    if ttl > q.ttl then q.ttl = ttl end
  end
end

-- ---- Group writes: charge record, inboxes, counters -------------------------
if nwritten > 0 then
  local ok = pcall(redis.call, 'HSET', ckey, unpack(written))
  if ok then
    redis.call('EXPIREAT', ckey, bstart + 2 * horizon)
  else
    warning = warning .. 'charge record ' .. ckey .. ' is not a hash: not recorded; '
  end
end

for _, name in ipairs(order) do
  local q, key = pushes[name], base .. 'inbox:' .. name
  if redis.call('RPUSH', key, unpack(q, 1, q.n)) == q.n then
    redis.call('EXPIRE', key, q.ttl) -- a new list
  else
    redis.call('EXPIRE', key, q.ttl, 'GT') -- never shorten a waiting client's inbox
  end
end

if not damaged then
  local touched = false
  for k, field in ipairs(COUNTERS) do
    if total[k] ~= 0 then
      touched = true
      redis.call('HINCRBY', KEYS[1], field, total[k])
      redis.call('HINCRBY', wkey, field, total[k])
    end
  end
  for model, c in pairs(models) do
    for k, field in ipairs(COUNTERS) do
      if c[k] ~= 0 then
        redis.call('HINCRBY', KEYS[3], field .. ':' .. model, c[k])
      end
    end
  end
  if touched then
    -- kept one more window after it ends, so the last one stays readable
    redis.call('EXPIRE', wkey, wend - now + window)
    redis.call('HSET', KEYS[1], 'window_start', wstart, 'window_s', window)
  end
end
codes[1] = warning
return codes
