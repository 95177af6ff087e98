-- set_credit.lua: set one user's credit for one month (a top-up or a cut), or add to it.
--
-- KEYS[1]  user-month hash   <prefix>:{<user>}:<YYYY-MM>
-- ARGV[1]  credit_nano       decimal string, nano-CNY (1e-9 CNY): the new credit, or with 'add'
--                            the amount to add to it
-- ARGV[2]  mode              'set' (the default when absent) or 'add'
-- ARGV[3]  default_nano      'add' only: the month's credit while none is set (QUOTA_MONTHLY_CREDIT)
--
-- Returns {system_used_nano, credit_nano} as strings. Other months are untouched: the next
-- month starts again from the default credit. 'add' is one atomic step (two top-ups at once
-- both count); it refuses, writing nothing, a credit that would reach 1e17 nano-CNY (10^8 CNY;
-- the sum is compared as a double, exact to 16 nano-CNY at that size).

local function digits(value)
  return type(value) == 'string' and #value >= 1 and #value <= 17 and string.match(value, '^%d+$') ~= nil
end

if not digits(ARGV[1]) then
  return redis.error_reply('QUOTA_INVALID credit_nano must be an unsigned integer below 1e17')
end
local mode = ARGV[2] or 'set'
if mode == 'set' then
  redis.call('HSET', KEYS[1], 'credit_nano', ARGV[1])
elseif mode == 'add' then
  if not digits(ARGV[3]) then
    return redis.error_reply('QUOTA_INVALID default_nano must be an unsigned integer below 1e17')
  end
  local current = redis.call('HGET', KEYS[1], 'credit_nano')
  if current and not digits(current) then
    return redis.error_reply('QUOTA_INVALID the month holds a credit_nano that is not an integer')
  end
  local base = current or ARGV[3]
  if tonumber(base) + tonumber(ARGV[1]) >= 1e17 then
    return redis.error_reply('QUOTA_INVALID the credit would reach 100,000,000 CNY')
  end
  if not current then
    redis.call('HSET', KEYS[1], 'credit_nano', base)
  end
  redis.call('HINCRBY', KEYS[1], 'credit_nano', ARGV[1])
else
  return redis.error_reply('QUOTA_INVALID mode must be set or add')
end
local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
return {now[1] or '0', now[2]}
