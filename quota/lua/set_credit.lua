-- set_credit.lua: set one user's credit for one month (a top-up or a cut).
--
-- KEYS[1]  user-month hash   <prefix>:{<user>}:<YYYY-MM>
-- ARGV[1]  credit_nano       decimal string, the new credit in nano-CNY (1e-9 CNY)
--
-- Returns {system_used_nano, credit_nano} as strings. Other months are untouched: the next
-- month starts again from the default credit.

if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and #ARGV[1] <= 17
        and string.match(ARGV[1], '^%d+$')) then
  return redis.error_reply('QUOTA_INVALID credit_nano must be an unsigned integer below 1e17')
end
redis.call('HSET', KEYS[1], 'credit_nano', ARGV[1])
local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
return {now[1] or '0', now[2]}
