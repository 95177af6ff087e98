-- set_plan.lua: set or clear a user's plan, the standing monthly credit every month uses unless that
-- month has its own credit (lib/grants.lua).
--
-- KEYS[1]  plan          <prefix>:{<user>}:plan
-- ARGV[1]  credit_nano   decimal string below 1e17, or "" to clear the plan (back to the default)
--
-- Returns the plan before, as a string ("" when there was none). Alerts already sent this month stay
-- sent; the next record decides what it crosses under the new credit.

if not (ARGV[1] == '' or (type(ARGV[1]) == 'string' and #ARGV[1] <= 17 and string.match(ARGV[1], '^%d+$'))) then
  return redis.error_reply('QUOTA_INVALID set_plan credit_nano must be an unsigned integer below 1e17 or ""')
end
local before = redis.call('GET', KEYS[1]) or ''
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return before
