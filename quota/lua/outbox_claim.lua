-- outbox_claim.lua: a notifier claims the due alert events of one user, under a lease.
--
-- KEYS[1]  alert outbox    <prefix>:{<user>}:outbox
-- KEYS[2]  outbox index    <prefix>:{<slot tag>}:outbox_index   (the user's slot)
-- KEYS[3]  dead letters    <prefix>:{<user>}:outbox_dead
-- ARGV[1]  user
-- ARGV[2]  owner           the notifier's token (its claims are its own)
-- ARGV[3]  lease_ms        the claim runs this long; then another notifier may take the event over
-- ARGV[4]  max_events      claim at most this many
--
-- Returns {now_ms, field1, event1, field2, event2, ...}: the claimed events as JSON, each with one more
-- attempt, its lease and owner set. An event is due when its due_ms and its lease have passed, so two
-- notifiers never hold one event at once (a notifier that died holds it until the lease ends).

-- @include outbox

if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and type(ARGV[2]) == 'string' and #ARGV[2] >= 1
        and is_uint(ARGV[3], 9) and is_uint(ARGV[4], 6)) then
  return redis.error_reply('QUOTA_INVALID outbox_claim needs a user, an owner, lease_ms and max_events')
end
local now_ms = server_ms()
local lease_until = now_ms + tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local out = {string.format('%d', now_ms)}
for _, pair in ipairs(outbox_events(KEYS[1])) do
  local field, event = pair[1], pair[2]
  if #out <= 2 * limit and ready_at(event) <= now_ms then
    event.attempts = (tonumber(event.attempts) or 0) + 1
    event.lease_ms = lease_until
    event.owner = ARGV[2]
    local text = cjson.encode(event)
    redis.call('HSET', KEYS[1], field, text)
    out[#out + 1] = field
    out[#out + 1] = text
  end
end
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return out
