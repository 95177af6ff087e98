-- stats.lua: read several months of one user in one atomic snapshot. Read-only.
--
-- KEYS[1..n]  user-month hashes   <prefix>:{<user>}:<YYYY-MM>, newest first (all one hash tag)
--
-- Returns one flat HGETALL reply {field, value, ...} per key, in KEYS order; a missing month
-- gives an empty list. Values stay strings.

local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
