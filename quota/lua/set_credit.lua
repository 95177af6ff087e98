-- set_credit.lua: set one user's credit for one month (a top-up or a cut), and clear the threshold
-- alerts a raise brings the spend back under.
--
-- KEYS[1]  user-month hash   <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  alert outbox      <prefix>:{<user>}:outbox
-- KEYS[3]  outbox index      <prefix>:{<slot tag>}:outbox_index   (the user's slot; lib/alerts.lua)
-- ARGV[1]  credit_nano       decimal string, the new credit in nano-CNY (1e-9 CNY)
-- ARGV[2]  thresholds        alert thresholds, ascending percents of the credit ("80,100"; "" = off)
--
-- Returns {system_used_nano, credit_nano, cleared} as strings. cleared lists the alerted thresholds
-- the spend no longer reaches under the new credit, highest first ("100" or "100,80"; "" mostly):
-- each got one quota.threshold_cleared event and is armed again (the next record that reaches it
-- alerts again). A cut clears nothing and emits nothing: the next record decides what it crosses.
-- Other months are untouched: the next month starts again from the default credit.

-- @include alerts

-- 1. validate
if not is_uint(ARGV[1], 17) then
  return redis.error_reply('QUOTA_INVALID credit_nano must be an unsigned integer below 1e17')
end
if not thresholds_ok(ARGV[2]) then
  return redis.error_reply('QUOTA_INVALID set_credit thresholds must be ascending percents like 80,100')
end
local thresholds = {}
for p in string.gmatch(ARGV[2], '%d+') do thresholds[#thresholds + 1] = tonumber(p) end

-- 2. read: which alerted thresholds the spend no longer reaches under the new credit (from the top;
-- the lower ones are reached whenever a higher one is), and the highest one it still reaches
local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'alerted_pct')
local used = now[1] or '0'
local alerted = tonumber(now[2] or '0') or 0
local cleared, still = {}, 0
for i = #thresholds, 1, -1 do
  local pct = thresholds[i]
  if pct <= alerted then
    if reaches(used, '0', ARGV[1], pct) then still = pct break end
    cleared[#cleared + 1] = pct
  end
end

-- 3. write
redis.call('HSET', KEYS[1], 'credit_nano', ARGV[1])
if #cleared > 0 then
  local now_ms = server_ms()
  for _, pct in ipairs(cleared) do emit(KEYS[1], KEYS[2], KEYS[3], 'cleared', pct, used, ARGV[1], now_ms) end
  redis.call('HSET', KEYS[1], 'alerted_pct', still)
end
return {used, ARGV[1], table.concat(cleared, ',')}
