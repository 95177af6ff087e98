-- stats.lua: read several months of one user, the live turn holds, the plan and the grants, in one
-- atomic snapshot. Read-only.
--
-- KEYS[1]     holds hash          <prefix>:{<user>}:holds (see turn_begin.lua)
-- KEYS[2]     plan                <prefix>:{<user>}:plan       (lib/grants.lua)
-- KEYS[3]     grants              <prefix>:{<user>}:grants     (lib/grants.lua)
-- KEYS[4]     grant metadata      <prefix>:{<user>}:grant_info (lib/grants.lua)
-- KEYS[5..n]  user-month hashes   <prefix>:{<user>}:<YYYY-MM>, newest first (all one hash tag)
--
-- Returns {held_nano, plan_nano or "", HGETALL of KEYS[3], HGETALL of KEYS[4], HGETALL of KEYS[5],
-- ..., HGETALL of KEYS[n]}: held_nano is the sum of the live holds as a string; each hash is a flat
-- {field, value, ...} list (empty when missing). Values stay strings; which grants are live is
-- decided by the client, on the meter's clock.

-- @include holds

local out = {string.format('%d', (live_holds(KEYS[1], server_ms(), nil))), redis.call('GET', KEYS[2]) or ''}
for i = 3, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
