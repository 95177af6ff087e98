-- set_plan.lua: set or clear a user's plan, the standing monthly credit every month uses unless that
-- month has its own credit (lib/grants.lua), and clear the threshold alerts a raise brings the current
-- month's spend back under (as set_credit.lua does for a month's own credit).
--
-- KEYS[1]  plan              <prefix>:{<user>}:plan
-- KEYS[2]  user-month hash   <prefix>:{<user>}:<YYYY-MM>, the current month (the client's clock)
-- KEYS[3]  alert outbox      <prefix>:{<user>}:outbox
-- KEYS[4]  outbox index      <prefix>:{<slot tag>}:outbox_index   (the user's slot; lib/alerts.lua)
-- ARGV[1]  credit_nano       decimal string below 1e17, or "" to clear the plan (back to the default)
-- ARGV[2]  thresholds        alert thresholds, ascending percents of the credit ("80,100"; "" = off)
-- ARGV[3]  default_nano      the credit of a month without its own and without a plan
--
-- Returns {plan_before ("" when there was none), cleared} as strings. cleared lists the alerted thresholds
-- of the current month the spend no longer reaches under the new credit, highest first (each got a
-- quota.threshold_cleared event and is armed again); "" when the month has its own credit (it wins),
-- for a cut, and mostly. Other months: a later one starts on the new plan; an earlier one is history.

-- @include alerts_clear

-- 1. validate
if not (ARGV[1] == '' or is_uint(ARGV[1], 17)) then
  return redis.error_reply('QUOTA_INVALID set_plan credit_nano must be an unsigned integer below 1e17 or ""')
end
if not (thresholds_ok(ARGV[2]) and is_uint(ARGV[3], 17)) then
  return redis.error_reply('QUOTA_INVALID set_plan needs ascending percents like 80,100 and a default credit')
end

-- 2. read
local before = redis.call('GET', KEYS[1]) or ''
local month = redis.call('HMGET', KEYS[2], 'credit_nano', 'system_used_nano', 'alerted_pct')
local cleared, still, used, credit = {}, 0, month[2] or '0', ARGV[1]
if credit == '' then credit = ARGV[3] end
if not month[1] then  -- the plan is the month's credit: which alerts does it clear?
  cleared, still = no_longer_reached(ARGV[2], month[3], used, credit)
end

-- 3. write
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
emit_cleared(KEYS[2], KEYS[3], KEYS[4], cleared, still, used, credit)
return {before, table.concat(cleared, ',')}
