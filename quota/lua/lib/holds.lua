-- lib/holds.lua: turn holds, shared by the scripts that read or write them (included, see
-- quota/_scripts.py: a line "-- @include holds" is replaced by this file).
--
-- A hold is one field of the user's holds hash  <prefix>:{<user>}:holds
--   field  <turn_id>
--   value  "<remaining_nano>:<expires_at_ms>"    (the server's clock, milliseconds)
-- A hold past its expiry is dead: it counts for nothing, and the next admission deletes it, so a
-- worker that dies mid-turn can never lock its user out for longer than hold_ttl_s.

-- @include util

-- One hold's value parsed: remaining_nano, expires_at_ms (nil, nil when malformed).
local function parse_hold(value)
  local remaining, expires = string.match(value or '', '^(%d+):(%d+)$')
  if not remaining then return nil, nil end
  return tonumber(remaining), tonumber(expires)
end

-- The sum of the live holds in KEY but the field MINE, the fields that are dead, the latest
-- expiry among the live ones, and MINE's remaining amount when it is live.
local function live_holds(key, now_ms, mine)
  local flat = redis.call('HGETALL', key)
  local held, dead, latest, own = 0, {}, 0, nil
  for i = 1, #flat, 2 do
    local remaining, expires = parse_hold(flat[i + 1])
    if remaining and expires > now_ms then
      if flat[i] == mine then own = remaining else held = held + remaining end
      if expires > latest then latest = expires end
    else
      dead[#dead + 1] = flat[i]
    end
  end
  return held, dead, latest, own
end

-- Make sure the holds hash outlives a hold expiring at EXPIRES_MS (then the hash vanishes once
-- every hold in it is dead, and an abandoned user leaves nothing behind).
local function keep_hash_until(key, expires_ms, now_ms)
  if redis.call('PTTL', key) < expires_ms - now_ms then
    redis.call('PEXPIRE', key, expires_ms - now_ms)
  end
end
