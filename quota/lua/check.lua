-- check.lua: read what the quota check needs from a user's month. Read-only.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- ARGV[1]  default_credit_nano  the credit when the month has none set yet
--
-- Returns {system_used_nano, credit_nano} as strings (they may pass 2^53).
-- The decision (used >= credit on a system model) is made by the client, which knows the model.

local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
return {now[1] or '0', now[2] or ARGV[1]}
