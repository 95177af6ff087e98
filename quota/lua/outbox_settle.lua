-- outbox_settle.lua: what became of one claimed alert event: delivered, to retry, dead, or released.
--
-- KEYS[1]  alert outbox    <prefix>:{<user>}:outbox
-- KEYS[2]  outbox index    <prefix>:{<slot tag>}:outbox_index   (the user's slot)
-- KEYS[3]  dead letters    <prefix>:{<user>}:outbox_dead
-- ARGV[1]  user
-- ARGV[2]  field           the event's field in the outbox
-- ARGV[3]  owner           the token it was claimed with
-- ARGV[4]  outcome         delivered | retry | dead | release (the endpoint is disabled: not an attempt)
-- ARGV[5]  delay_ms        retry: wait this long before the next attempt
-- ARGV[6]  window_ms       retry: an event whose next attempt would come later than this after since_ms is dead
-- ARGV[7]  error           what went wrong (kept in the event, shown by `quota notify --status` and the API)
--
-- Returns the outcome applied: delivered, retry, dead, released; or gone (no such event: delivered or
-- redelivered meanwhile) or taken (another notifier claimed it after this one's lease ended: its call).
-- A delivered event is removed whoever holds it (it arrived; the receiver dedupes on webhook-id).

-- @include outbox

local DEAD_KEPT = 1000  -- dead letters kept per user (newest first)
local outcome = ARGV[4]
if not (type(ARGV[2]) == 'string' and #ARGV[2] >= 1 and is_uint(ARGV[5], 12) and is_uint(ARGV[6], 12)
        and (outcome == 'delivered' or outcome == 'retry' or outcome == 'dead' or outcome == 'release')) then
  return redis.error_reply('QUOTA_INVALID outbox_settle needs a field, an outcome and delays')
end
local text = redis.call('HGET', KEYS[1], ARGV[2])
if not text then return 'gone' end
local event = cjson.decode(text)
local now_ms = server_ms()
local applied = outcome
if outcome == 'delivered' then
  redis.call('HDEL', KEYS[1], ARGV[2])
elseif event.owner ~= ARGV[3] then
  return 'taken'
else
  event.owner, event.lease_ms, event.error = '', 0, string.sub(ARGV[7] or '', 1, 200)
  local since = tonumber(event.since_ms) or tonumber(event.at_ms) or now_ms
  if outcome == 'release' then
    event.attempts = math.max((tonumber(event.attempts) or 1) - 1, 0)
    applied = 'released'
  elseif outcome == 'retry' and now_ms + tonumber(ARGV[5]) - since > tonumber(ARGV[6]) then
    applied = 'dead'
  end
  if applied == 'dead' then
    event.field, event.dead_ms = ARGV[2], now_ms
    redis.call('HDEL', KEYS[1], ARGV[2])
    redis.call('LPUSH', KEYS[3], cjson.encode(event))
    redis.call('LTRIM', KEYS[3], 0, DEAD_KEPT - 1)
    keep_outbox(KEYS[3])
  else
    if applied == 'retry' then event.due_ms = now_ms + tonumber(ARGV[5]) end
    redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(event))
  end
end
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return applied
