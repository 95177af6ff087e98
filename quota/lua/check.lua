-- check.lua: read what the quota check needs from a user's month. Read-only.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  holds hash           <prefix>:{<user>}:holds (turn holds, see turn_begin.lua)
-- ARGV[1]  default_credit_nano  the credit when the month has none set yet
--
-- Returns {system_used_nano, credit_nano, held_nano} as strings (they may pass 2^53), held_nano
-- being the sum of the live holds. The decision (used + held >= credit on a system model) is made
-- by the client, which knows the model.

-- @include holds

local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
local held = live_holds(KEYS[2], server_ms(), nil)
return {now[1] or '0', now[2] or ARGV[1], string.format('%d', held)}
