-- turn_begin.lua: admit a new turn on a system model and reserve part of the credit for it.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  holds hash           <prefix>:{<user>}:holds
-- KEYS[3]  plan                 <prefix>:{<user>}:plan   (lib/grants.lua)
-- KEYS[4]  grants               <prefix>:{<user>}:grants (lib/grants.lua)
-- ARGV[1]  turn_id              validated by the client (the hold's field)
-- ARGV[2]  hold_nano            the hold asked for, or "auto": the user's estimate for the model
-- ARGV[3]  estimate_field       "<model_id>:hold_est_nano" in the month hash (read when "auto")
-- ARGV[4]  default_credit_nano  the month's credit when neither the month nor a plan sets one
-- ARGV[5]  hold_ttl_ms          a hold dies this long after its last use
-- ARGV[6]  auto_default_nano    "auto" with no estimate yet
-- ARGV[7]  auto_floor_nano      "auto" never holds less ...
-- ARGV[8]  auto_cap_nano        ... nor more
-- ARGV[9]  now_ms               the meter's clock (ms): which grants are live
--
-- available = max(credit - (used - grants_drawn), 0) + live grants - (live holds of other turns)
-- (lib/grants.lua). Denied when available <= 0; else the
-- turn holds min(hold, available) until turn_end.lua, hold_ttl_ms after its last record, or its
-- expiry. Dead holds are deleted here. A repeated turn_id (a retried call) keeps its hold.
-- Returns {admitted (1/0), system_used_nano, credit_nano, held_nano (others), hold_nano (this turn),
-- grants_nano (live), grants_drawn_nano} as strings. Amounts are exact below 2^53 nano-CNY (9 million CNY); see docs/INTEGRATION.md.

-- @include holds
-- @include grants

-- 1. validate
if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and (ARGV[2] == 'auto' or is_uint(ARGV[2], 17))
        and is_uint(ARGV[4], 17) and is_uint(ARGV[5], 10) and ARGV[5] ~= '0'
        and is_uint(ARGV[6], 17) and is_uint(ARGV[7], 17) and is_uint(ARGV[8], 17)
        and is_uint(ARGV[9], 15)) then
  return redis.error_reply('QUOTA_INVALID turn_begin arguments must be unsigned integers')
end

-- 2. read
local now_ms = server_ms()
local month = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano', ARGV[3], 'grants_drawn_nano')
local credit = month_credit(month[2], KEYS[3], ARGV[4])
local _, grants = live_grants(KEYS[4], tonumber(ARGV[9]))
local held, dead, latest, mine = live_holds(KEYS[2], now_ms, ARGV[1])
local wanted
if ARGV[2] == 'auto' then
  wanted = tonumber(month[3] or ARGV[6])
  wanted = math.min(math.max(wanted, tonumber(ARGV[7])), tonumber(ARGV[8]))
else
  wanted = tonumber(ARGV[2])
end

-- 3. write
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
end
local available = credit_left(credit, month[1], month[4]) + grants - held
local admitted, hold = 0, 0
if mine then                       -- a retry of an admission that went through
  admitted, hold = 1, mine
elseif available > 0 then
  admitted, hold = 1, math.min(wanted, available)
  local expires = now_ms + tonumber(ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%d', hold, expires))
  redis.call('PEXPIRE', KEYS[2], math.max(expires, latest) - now_ms)   -- the hash outlives every hold
end
return {admitted, month[1] or '0', credit, string.format('%d', held), string.format('%d', hold),
        string.format('%d', grants), month[4] or '0'}
