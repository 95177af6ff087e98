-- lib/holds.lua: turn holds, shared by the scripts that read or write them (included, see
-- quota/scripts.py: a line "-- @include holds" is replaced by this file).
--
-- A hold is one field of the user's holds hash  <prefix>:{<user>}:holds
--   field  <turn_id>
--   value  "<remaining_nano>:<expires_at_ms>"    (the server's clock, milliseconds)
-- A hold past its expiry is dead: it counts for nothing, and the next admission deletes it, so a
-- worker that dies mid-turn can never lock its user out for longer than hold_ttl_s.

-- The server's clock in ms (frozen while a script runs; safe before writes since Redis 5).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One hold's value parsed: remaining_nano, expires_at_ms (nil, nil when malformed).
local function parse_hold(value)
  local remaining, expires = string.match(value or '', '^(%d+):(%d+)$')
  if not remaining then return nil, nil end
  return tonumber(remaining), tonumber(expires)
end

-- The sum of the live holds in KEY (all but the field SKIP), and the fields that are dead.
local function live_holds(key, now_ms, skip)
  local flat = redis.call('HGETALL', key)
  local held, dead = 0, {}
  for i = 1, #flat, 2 do
    local remaining, expires = parse_hold(flat[i + 1])
    if remaining and expires > now_ms then
      if flat[i] ~= skip then held = held + remaining end
    else
      dead[#dead + 1] = flat[i]
    end
  end
  return held, dead
end

-- Store a hold and make sure the whole hash outlives it (then it vanishes once all are dead).
local function put_hold(key, turn_id, remaining, now_ms, ttl_ms)
  redis.call('HSET', key, turn_id, string.format('%d:%d', remaining, now_ms + ttl_ms))
  if redis.call('PTTL', key) < ttl_ms then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end

local function is_uint(s, max_digits)
  return type(s) == 'string' and #s >= 1 and #s <= max_digits and string.match(s, '^%d+$') ~= nil
end
