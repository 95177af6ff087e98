-- check.lua: read what the quota check needs from a user's month. Read-only.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  holds hash           <prefix>:{<user>}:holds (turn holds, see turn_begin.lua)
-- KEYS[3]  plan                 <prefix>:{<user>}:plan   (lib/grants.lua)
-- KEYS[4]  grants               <prefix>:{<user>}:grants (lib/grants.lua)
-- ARGV[1]  default_credit_nano  the credit when neither the month nor a plan sets one
-- ARGV[2]  now_ms               the meter's clock (ms): which grants are live
--
-- Returns {system_used_nano, credit_nano, held_nano, grants_nano, grants_drawn_nano} as strings (they
-- may pass 2^53), held_nano being the sum of the live holds and grants_nano the sum of the live grants.
-- The decision (lib/grants.lua: available > 0 on a system model) is made by the client, which knows
-- the model.

-- @include holds
-- @include grants

if not is_uint(ARGV[2], 15) then
  return redis.error_reply('QUOTA_INVALID check now_ms must be an unsigned integer')
end
local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano', 'grants_drawn_nano')
local held = live_holds(KEYS[2], server_ms(), nil)
local _, grants = live_grants(KEYS[4], tonumber(ARGV[2]))
return {now[1] or '0', month_credit(now[2], KEYS[3], ARGV[1]), string.format('%d', held),
        string.format('%d', grants), now[3] or '0'}
