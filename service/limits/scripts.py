"""The Redis backend's Lua scripts: each one is atomic on the server, so a limit holds for the cluster.

Layout shared by the scripts: 5 keys per scope, in this order, all under the tenant's hash tag::

    requests bucket (hash l=level, t=ms)   tokens bucket (hash)   in flight (zset ticket -> lease end, ms)
    tokens used today (string)             tokens used this month (string)

Time is Redis's own (``TIME``), in milliseconds, so gateways whose clocks differ share one clock. A bucket
holds up to its limit and refills at limit/60000 per ms; a full bucket's key expires (absent = full).
A ticket's lease is renewed while it lives; a crashed gateway's slots come back when theirs end.
"""

from __future__ import annotations

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  local l = tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60000
  if l > cap then l = cap end
  return l
end

local function store(key, l, cap)
  redis.call('HSET', key, 'l', string.format('%.17g', l), 't', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil((cap - l) * 60000 / cap) + 1000)
end
"""

# ARGV: estimate, ticket, lease_ms, day_expire_at, month_expire_at, then per scope: rpm, tpm, concurrent,
# day budget, month budget (0 = no such limit).
# Returns {admitted (1|0), rpm limit, level*1000, tpm limit, level*1000, then per refusal: reason, scope
# (1-based), limit, wait_ms, left}. Reasons: 1 requests, 2 tokens, 3 too large, 4 concurrent, 5 day, 6 month.
# The levels are those of the tightest buckets, after this request when admitted, as they are when not.
ADMIT = (
    _COMMON
    + """
local est = tonumber(ARGV[1])
local n = #KEYS / 5
local out = {0, 0, 0, 0, 0}
local refused = false
local rl, tl = {}, {}
local rmin, tmin = nil, nil

for i = 0, n - 1 do
  local k, a = i * 5, 5 + i * 5
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local day, month = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local function refuse(reason, limit, wait, left)
    refused = true
    for _, v in ipairs({reason, i + 1, limit, math.ceil(wait), left}) do out[#out + 1] = v end
  end
  if rpm > 0 then
    local l = level(KEYS[k + 1], rpm)
    rl[i] = l
    if l < 1 then refuse(1, rpm, (1 - l) * 60000 / rpm, 0) end
    if rmin == nil or l - 1 < rmin then rmin = l - 1; out[2] = rpm end
  end
  if tpm > 0 then
    local l = level(KEYS[k + 2], tpm)
    tl[i] = l
    if est > tpm then refuse(3, tpm, 60000, 0)
    elseif l < est then refuse(2, tpm, (est - l) * 60000 / tpm, 0) end
    if tmin == nil or l - est < tmin then tmin = l - est; out[4] = tpm end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then refuse(4, conc, 1000, 0) end
  end
  if day > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 4]) or '0')
    if used + est > day then refuse(5, day, 0, day - used) end
  end
  if month > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 5]) or '0')
    if used + est > month then refuse(6, month, 0, month - used) end
  end
end

if refused then
  if rmin ~= nil then out[3] = math.floor((rmin + 1) * 1000) end
  if tmin ~= nil then out[5] = math.floor((tmin + est) * 1000) end
  return out
end

local ticket, lease = ARGV[2], tonumber(ARGV[3])
for i = 0, n - 1 do
  local k, a = i * 5, 5 + i * 5
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm > 0 then store(KEYS[k + 1], rl[i] - 1, rpm) end
  if tpm > 0 then store(KEYS[k + 2], tl[i] - est, tpm) end
  if conc > 0 then
    redis.call('ZADD', KEYS[k + 3], now + lease, ticket)
    redis.call('PEXPIRE', KEYS[k + 3], lease)
  end
  if tonumber(ARGV[a + 4]) > 0 then
    redis.call('INCRBY', KEYS[k + 4], est)
    redis.call('EXPIREAT', KEYS[k + 4], ARGV[4])
  end
  if tonumber(ARGV[a + 5]) > 0 then
    redis.call('INCRBY', KEYS[k + 5], est)
    redis.call('EXPIREAT', KEYS[k + 5], ARGV[5])
  end
end
out[1] = 1
if rmin ~= nil then out[3] = math.floor(rmin * 1000) end
if tmin ~= nil then out[5] = math.floor(tmin * 1000) end
return out
"""
)

# ARGV: unused tokens (estimate - actual; below 0 when the request used more), ticket, then per scope:
# tpm, concurrent, day budget, month budget (0 = none). Gives the unused tokens back (or takes the excess),
# frees the ticket's slots. A budget counter whose period has expired is left alone.
SETTLE = (
    _COMMON
    + """
local unused, ticket = tonumber(ARGV[1]), ARGV[2]
for i = 0, #KEYS / 5 - 1 do
  local k, a = i * 5, 2 + i * 4
  local tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if tpm > 0 and unused ~= 0 then
    local l = level(KEYS[k + 2], tpm) + unused
    if l > tpm then l = tpm end
    store(KEYS[k + 2], l, tpm)
  end
  if conc > 0 then redis.call('ZREM', KEYS[k + 3], ticket) end
  for j = 3, 4 do
    if tonumber(ARGV[a + j]) > 0 and unused ~= 0 and redis.call('EXISTS', KEYS[k + j + 1]) == 1 then
      redis.call('DECRBY', KEYS[k + j + 1], unused)
    end
  end
end
return 1
"""
)

# KEYS: in-flight zsets; ARGV: lease_ms, then the ticket of each key. Renews the leases of live tickets
# (a ticket whose lease has already ended is not added back).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], lease)
  end
end
return 1
"""

# KEYS: the 5 keys of one scope; ARGV: rpm, tpm (0 = none). Returns {requests left, tokens left,
# in flight, used today, used this month}; reads only.
USAGE = (
    _COMMON
    + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local r, tk = -1, -1
if rpm > 0 then r = math.floor(level(KEYS[1], rpm)) end
if tpm > 0 then tk = math.floor(level(KEYS[2], tpm)) end
return {r, tk, redis.call('ZCOUNT', KEYS[3], '(' .. string.format('%d', now), '+inf'),
        tonumber(redis.call('GET', KEYS[4]) or '0'), tonumber(redis.call('GET', KEYS[5]) or '0')}
"""
)
