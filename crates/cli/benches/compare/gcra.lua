-- GCRA rate-limit check: the Redis peer of the daemon's rate limit in
-- benches/compare (issue 6). One call decides one request for one key, atomically
-- (Redis runs a script alone), and stores what the next call needs.
--
--   EVALSHA <sha> 1 <key> <emission interval, microseconds> <burst> [<cost>]
--
-- KEYS[1]  the key being limited (one agent, one service, ...).
-- ARGV[1]  emission interval T = per / rate, in microseconds; a decimal is fine
--          ("0.01" for 100,000,000 per second).
-- ARGV[2]  burst: how many cells may be taken at once from a full bucket.
-- ARGV[3]  cost: cells this request takes (default 1).
--
-- Returns {allowed, retry_after_us, remaining, reset_after_us}, all integers:
--   allowed         1 or 0.
--   retry_after_us  0 when allowed; when denied, how long until the same request
--                   would be allowed (rounded up), or -1 if it never can be
--                   (cost > burst).
--   remaining       cells that could still be taken right now.
--   reset_after_us  how long until the bucket is full again (rounded up).
--
-- The algorithm (GCRA, the generic cell rate algorithm, as in the governor crate
-- that the daemon uses). A key keeps one number, its theoretical arrival time
-- TAT: the moment at which its bucket is full again; a missing key is a full
-- bucket. With tolerance tau = T * burst, a request of `cost` cells at `now`:
--
--   new_tat = max(TAT, now) + cost * T
--   allowed   iff  new_tat - now <= tau
--   denied:   retry after (new_tat - now) - tau; nothing is stored, so a denied
--             request costs its caller nothing;
--   allowed:  TAT := new_tat, stored with an expiry of new_tat - now: after that
--             the bucket is full, which is what a missing key means, so expiring
--             it changes no decision and keeps memory to the keys in use.
--
-- governor states the same test on the old TAT with tau' = T * (burst - 1):
-- allowed iff now >= TAT + (cost - 1) * T - tau', and rejects cost > burst up
-- front. Substituting shows the two agree for every TAT, now and cost.
--
-- The clock is Redis's own TIME, so every client of one Redis agrees on it.
-- Redis 7 replicates a script's effects, not the script, so reading the clock in
-- a script that writes is allowed. Lua numbers are doubles: time is counted in
-- microseconds since 2024-01-01 UTC rather than 1970, which keeps it below 2^48
-- (until 2032), i.e. exact to 1/32 microsecond; an emission interval below that
-- is rounded. Redis formats a number passed to redis.call so that it reads back
-- exactly (tostring would keep only 14 digits), so the stored TAT loses nothing.

local EPOCH = 1704067200 -- 2024-01-01T00:00:00Z, in Unix seconds

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')
if not interval or interval <= 0 then
  return redis.error_reply('gcra: ARGV[1] (emission interval, us) must be a positive number')
end
if not burst or burst < 1 then
  return redis.error_reply('gcra: ARGV[2] (burst) must be at least 1')
end
if not cost or cost < 1 then
  return redis.error_reply('gcra: ARGV[3] (cost) must be at least 1')
end

local time = redis.call('TIME')
local now = (tonumber(time[1]) - EPOCH) * 1000000 + tonumber(time[2])
local tau = interval * burst

local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = tonumber(stored)
  if not tat then
    return redis.error_reply('gcra: the key holds no TAT: ' .. KEYS[1])
  end
  if tat < now then
    tat = now
  end
end
local new_tat = tat + cost * interval

if new_tat - now > tau then
  local retry_after = -1
  if cost <= burst then
    retry_after = math.ceil(new_tat - now - tau)
  end
  local remaining = math.max(0, math.floor((tau - (tat - now)) / interval))
  return {0, retry_after, remaining, math.ceil(tat - now)}
end

local reset_after = new_tat - now
-- PX is whole milliseconds and must be positive: round up, so the key never
-- expires before its bucket is full.
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(reset_after / 1000)))
local remaining = math.floor((tau - reset_after) / interval)
return {1, 0, remaining, math.ceil(reset_after)}
