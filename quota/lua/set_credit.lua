-- set_credit.lua: set one user's credit for one month (a top-up or a cut), or add to it, and clear
-- the threshold alerts a raise brings the spend back under.
--
-- KEYS[1]  user-month hash   <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  alert outbox      <prefix>:{<user>}:outbox
-- KEYS[3]  outbox index      <prefix>:{<slot tag>}:outbox_index   (the user's slot; lib/alerts.lua)
-- KEYS[4]  plan              <prefix>:{<user>}:plan (lib/grants.lua): 'add' adds to it while the month
--                            has no credit of its own (optional: without it, to default_nano)
-- ARGV[1]  credit_nano       decimal string, nano-CNY (1e-9 CNY): the new credit, or with 'add' the
--                            amount to add to it
-- ARGV[2]  thresholds        alert thresholds, ascending percents of the credit ("80,100"; "" = off)
-- ARGV[3]  mode              'set' (the default when absent) or 'add'
-- ARGV[4]  default_nano      'add' only: the month's credit while none is set (QUOTA_MONTHLY_CREDIT)
--
-- Returns {system_used_nano, credit_nano, cleared, credit_before} as strings (credit_before: the
-- month's own credit before this call, "" when it had none; for the audit trail). cleared lists the alerted thresholds
-- the spend no longer reaches under the new credit, highest first ("100" or "100,80"; "" mostly):
-- each got one quota.threshold_cleared event and is armed again (the next record that reaches it
-- alerts again). A cut clears nothing and emits nothing: the next record decides what it crosses.
-- Other months are untouched: the next month starts again from the default credit. 'add' is one
-- atomic step (two top-ups at once both count), summed exactly in decimal; a credit that would reach
-- 1e17 nano-CNY (10^8 CNY) is refused and nothing is written.

-- @include alerts_clear
-- @include grants

-- 1. validate
if not is_uint(ARGV[1], 17) then
  return redis.error_reply('QUOTA_INVALID credit_nano must be an unsigned integer below 1e17')
end
if not thresholds_ok(ARGV[2]) then
  return redis.error_reply('QUOTA_INVALID set_credit thresholds must be ascending percents like 80,100')
end
-- The exact sum of two decimal strings below 1e17, in two base-1e9 limbs (each sum below 2^53).
local function add_uint(a, b)
  local function limbs(x)
    if #x <= 9 then return 0, tonumber(x) end
    return tonumber(string.sub(x, 1, -10)), tonumber(string.sub(x, -9))
  end
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local low = al + bl
  local carry = math.floor(low / 1e9)
  local high = ah + bh + carry
  low = low - carry * 1e9
  if high == 0 then return string.format('%d', low) end
  return string.format('%d%09d', high, low)
end

local credit = ARGV[1]
local mode = ARGV[3] or 'set'
local before = redis.call('HGET', KEYS[1], 'credit_nano')
if mode == 'add' then
  if not is_uint(ARGV[4], 17) then
    return redis.error_reply('QUOTA_INVALID set_credit default_nano must be an unsigned integer below 1e17')
  end
  local current = before
  if not current and KEYS[4] then current = month_credit(nil, KEYS[4], ARGV[4]) end
  if current and not is_uint(current, 17) then
    return redis.error_reply('QUOTA_INVALID the month holds a credit_nano that is not an integer')
  end
  credit = add_uint(current or ARGV[4], ARGV[1])
  if #credit > 17 then
    return redis.error_reply('QUOTA_INVALID the credit would reach 100,000,000 CNY')
  end
elseif mode ~= 'set' then
  return redis.error_reply('QUOTA_INVALID set_credit mode must be set or add')
end

-- 2. read: which alerted thresholds the spend no longer reaches under the new credit
local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'alerted_pct')
local late = born_late(KEYS[1])  -- a new hash after its month: restore-safe dump (lib/util.lua)
local used = now[1] or '0'
local cleared, still = no_longer_reached(ARGV[2], now[2], used, credit)

-- 3. write
redis.call('HSET', KEYS[1], 'credit_nano', credit)
if late then redis.call('HSET', KEYS[1], 'o', origin_id()) end
emit_cleared(KEYS[1], KEYS[2], KEYS[3], cleared, still, used, credit)
return {used, credit, table.concat(cleared, ','), before or ''}
