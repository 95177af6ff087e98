-- outbox_redeliver.lua: put one dead alert event back in the user's outbox, due at once, with a new
-- 24 h of retries (an operator's call, after the receiver was fixed).
--
-- KEYS[1]  alert outbox    <prefix>:{<user>}:outbox
-- KEYS[2]  outbox index    <prefix>:{<slot tag>}:outbox_index   (the user's slot)
-- KEYS[3]  dead letters    <prefix>:{<user>}:outbox_dead
-- ARGV[1]  user
-- ARGV[2]  field           the event's field (as it was in the outbox)
--
-- Returns the event (JSON) as it is now pending, or false when no dead letter has that field.

-- @include outbox

if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and type(ARGV[2]) == 'string' and #ARGV[2] >= 1) then
  return redis.error_reply('QUOTA_INVALID outbox_redeliver needs a user and a field')
end
local letters = redis.call('LRANGE', KEYS[3], 0, -1)
for _, text in ipairs(letters) do
  local event = cjson.decode(text)
  if event.field == ARGV[2] then
    local now_ms = server_ms()
    redis.call('LREM', KEYS[3], 1, text)
    event.field, event.dead_ms = nil, nil
    event.attempts, event.due_ms, event.lease_ms, event.owner, event.error = 0, now_ms, 0, '', ''
    event.since_ms = now_ms
    local pending = cjson.encode(event)
    redis.call('HSET', KEYS[1], ARGV[2], pending)
    keep_outbox(KEYS[1])
    reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
    return pending
  end
end
return false
