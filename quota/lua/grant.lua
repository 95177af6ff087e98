-- grant.lua: give a user credit beyond the monthly credit (a grant), idempotent by grant id.
--
-- KEYS[1]  grants           <prefix>:{<user>}:grants     (lib/grants.lua)
-- KEYS[2]  grant metadata   <prefix>:{<user>}:grant_info (lib/grants.lua)
-- ARGV[1]  grant_id         validated by the client
-- ARGV[2]  amount_nano      decimal string, 1 to 10^15 - 1 nano-CNY
-- ARGV[3]  expires_at_ms    the meter's clock (ms); "0": never expires
-- ARGV[4]  reason           free text ("" for none), validated by the client
-- ARGV[5]  now_ms           the meter's clock (ms): when the grant is made, and which grants are live
--
-- A repeat with the same id and the same amount, expiry and reason changes nothing and returns the
-- grant as it is now (partly spent, or revoked, maybe); a different content is QUOTA_CONFLICT. A user
-- has at most MAX_GRANTS grants (spent, expired and revoked ones included: they keep their ids), and
-- the sum of the live ones stays below 10^15 nano-CNY (exact in Lua's doubles).
-- Returns {created (1/0), value, metadata JSON} as strings.
-- Errors start with QUOTA_INVALID or QUOTA_CONFLICT and change nothing.

-- @include grants

local MAX_GRANTS = 1000  -- quota/_keys.py MAX_GRANTS

-- 1. validate
if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and is_uint(ARGV[2], 15) and ARGV[2] ~= '0'
        and is_uint(ARGV[3], 15) and type(ARGV[4]) == 'string' and is_uint(ARGV[5], 15)) then
  return redis.error_reply('QUOTA_INVALID grant arguments must be an id, unsigned integers and a reason')
end

-- 2. read
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  local info = redis.call('HGET', KEYS[2], ARGV[1]) or '{}'
  local meta = cjson.decode(info)
  if meta.amount_nano ~= ARGV[2] or meta.expires_ms ~= ARGV[3] or meta.reason ~= ARGV[4] then
    return redis.error_reply('QUOTA_CONFLICT grant_id ' .. ARGV[1] .. ' was already used for a different grant')
  end
  return {0, value, info}
end
if redis.call('HLEN', KEYS[1]) >= MAX_GRANTS then
  return redis.error_reply('QUOTA_INVALID the user already has ' .. MAX_GRANTS .. ' grants')
end
local _, total = live_grants(KEYS[1], tonumber(ARGV[5]))
if total + tonumber(ARGV[2]) >= 1e15 then
  return redis.error_reply('QUOTA_INVALID the live grants of a user must stay below 1,000,000 CNY')
end

-- 3. write
value = ARGV[2] .. ':' .. ARGV[2] .. ':' .. ARGV[3]
local info = cjson.encode({amount_nano = ARGV[2], expires_ms = ARGV[3], reason = ARGV[4], created_ms = ARGV[5],
                           revoked_ms = '0', revoked_nano = '0'})
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('HSET', KEYS[2], ARGV[1], info)
return {1, value, info}
