-- lib/outbox.lua: the notifier's side of the alert outbox (lib/alerts.lua writes it), shared by
-- outbox_claim.lua, outbox_settle.lua and outbox_redeliver.lua; included, see quota/_scripts.py.
--
-- An event is one field of <prefix>:{<user>}:outbox, its value JSON (cjson: amounts are strings there,
-- other numbers stay below 2^53). Its delivery state is in it:
--   attempts   deliveries started (a claim counts one, even if its notifier then died)
--   due_ms     when it may be sent (again): now, or after a backoff
--   lease_ms   a notifier's claim runs until then (0: none); past it, any notifier may claim it again
--   owner      the claiming notifier's token; since_ms: the start of its 24 h of retries
-- The user's member in the slot's outbox index is scored by the earliest time any of its events may be
-- sent (due, or the end of its lease), or +inf when only dead letters are left.

-- @include alerts

-- The events of the outbox KEY_OUTBOX: a list of {field, event table}.
local function outbox_events(key_outbox)
  local flat = redis.call('HGETALL', key_outbox)
  local out = {}
  for i = 1, #flat, 2 do out[#out + 1] = {flat[i], cjson.decode(flat[i + 1])} end
  return out
end

-- When EVENT may be claimed next (ms).
local function ready_at(event)
  return math.max(tonumber(event.due_ms) or 0, tonumber(event.lease_ms) or 0)
end

-- Keep KEY (an outbox, or a dead-letter list) for OUTBOX_TTL_S after this write.
local function keep_outbox(key)
  redis.call('EXPIRE', key, OUTBOX_TTL_S)
end

-- Score USER in KEY_INDEX by its outbox: the earliest event, +inf with dead letters only, else removed.
local function reindex(key_outbox, key_index, key_dead, user)
  local next_ms
  for _, pair in ipairs(outbox_events(key_outbox)) do
    local at = ready_at(pair[2])
    if not next_ms or at < next_ms then next_ms = at end
  end
  if next_ms then
    redis.call('ZADD', key_index, string.format('%d', next_ms), user)
  elseif redis.call('EXISTS', key_dead) == 1 then
    redis.call('ZADD', key_index, '+inf', user)
  else
    redis.call('ZREM', key_index, user)
  end
end
