-- turn_begin.lua: admit a new turn on a system model and reserve part of the credit for it.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  holds hash           <prefix>:{<user>}:holds
-- ARGV[1]  turn_id              validated by the client (the hold's field)
-- ARGV[2]  hold_nano            the hold asked for, or "auto": the user's estimate for the model
-- ARGV[3]  estimate_field       "<model_id>:hold_est_nano" in the month hash (read when "auto")
-- ARGV[4]  default_credit_nano  the month's credit when none is set
-- ARGV[5]  hold_ttl_ms          a hold dies this long after its last use
-- ARGV[6]  auto_default_nano    "auto" with no estimate yet
-- ARGV[7]  auto_floor_nano      "auto" never holds less ...
-- ARGV[8]  auto_cap_nano        ... nor more
--
-- available = credit - used - (live holds of other turns). Denied when available <= 0; else the
-- turn holds min(hold, available) until turn_end.lua, hold_ttl_ms after its last record, or its
-- expiry. Dead holds are deleted here. A repeated turn_id (a retried call) keeps its hold while
-- it is live; one whose hold died meanwhile is a new admission.
-- Returns {admitted (1/0), system_used_nano, credit_nano, held_nano (others), hold_nano (this turn)}
-- as strings. Amounts are exact below 2^53 nano-CNY (9 million CNY); see docs/INTEGRATION.md.

-- @include holds

-- 1. validate
if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and (ARGV[2] == 'auto' or is_uint(ARGV[2], 17))
        and is_uint(ARGV[4], 17) and is_uint(ARGV[5], 10) and ARGV[5] ~= '0'
        and is_uint(ARGV[6], 17) and is_uint(ARGV[7], 17) and is_uint(ARGV[8], 17)) then
  return redis.error_reply('QUOTA_INVALID turn_begin arguments must be unsigned integers')
end

-- 2. read
local now_ms = server_ms()
local month = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano', ARGV[3])
local used, credit = tonumber(month[1] or '0'), tonumber(month[2] or ARGV[4])
local held, dead = live_holds(KEYS[2], now_ms, ARGV[1])
local mine, mine_expires = parse_hold(redis.call('HGET', KEYS[2], ARGV[1]))
if mine and mine_expires <= now_ms then mine = nil end  -- dead (deleted below): admitted anew or not
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
local available = credit - used - held
local admitted, hold = 0, 0
if mine then                       -- a retry of an admission that went through
  admitted, hold = 1, mine
elseif available > 0 then
  admitted, hold = 1, math.min(wanted, available)
  put_hold(KEYS[2], ARGV[1], hold, now_ms, tonumber(ARGV[5]))
end
return {admitted, month[1] or '0', month[2] or ARGV[4], string.format('%d', held), string.format('%d', hold)}
