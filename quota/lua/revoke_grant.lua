-- revoke_grant.lua: take back what is left of a grant. Idempotent.
--
-- KEYS[1]  grants           <prefix>:{<user>}:grants     (lib/grants.lua)
-- KEYS[2]  grant metadata   <prefix>:{<user>}:grant_info (lib/grants.lua)
-- ARGV[1]  grant_id
-- ARGV[2]  now_ms           the meter's clock (ms): when it is revoked
--
-- The grant stays, with nothing remaining (its id keeps its meaning: a repeated grant_credit with it
-- changes nothing); what was spent from it stays spent. Its metadata records when, and how much was
-- taken back (revoked_nano). A second revoke changes nothing.
-- Returns {revoked (1: by this call, 0: before), value, metadata JSON} as strings.
-- An unknown grant id is QUOTA_NOTFOUND; nothing is changed.

-- @include grants

if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and is_uint(ARGV[2], 15)) then
  return redis.error_reply('QUOTA_INVALID revoke_grant arguments must be an id and now_ms')
end
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
  return redis.error_reply('QUOTA_NOTFOUND no grant ' .. ARGV[1])
end
local info = redis.call('HGET', KEYS[2], ARGV[1]) or '{}'
local meta = cjson.decode(info)
if meta.revoked_ms and meta.revoked_ms ~= '0' then
  return {0, value, info}
end
local remaining, amount, expires = parse_grant(value)
if not remaining then
  return redis.error_reply('QUOTA_INVALID grant ' .. ARGV[1] .. ' holds a malformed value')
end
value = string.format('0:%d:%d', amount, expires)
meta.revoked_ms, meta.revoked_nano = ARGV[2], string.format('%d', remaining)
info = cjson.encode(meta)
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('HSET', KEYS[2], ARGV[1], info)
return {1, value, info}
