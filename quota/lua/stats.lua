-- stats.lua: read several months of one user, and the live turn holds, in one atomic snapshot.
-- Read-only.
--
-- KEYS[1]     holds hash          <prefix>:{<user>}:holds (see turn_begin.lua)
-- KEYS[2..n]  user-month hashes   <prefix>:{<user>}:<YYYY-MM>, newest first (all one hash tag)
--
-- Returns {held_nano, HGETALL of KEYS[2], ..., HGETALL of KEYS[n]}: held_nano is the sum of the
-- live holds as a string; each month is a flat {field, value, ...} list (empty when missing).
-- Values stay strings.

-- @include holds

local out = {string.format('%d', (live_holds(KEYS[1], server_ms(), nil)))}
for i = 2, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
