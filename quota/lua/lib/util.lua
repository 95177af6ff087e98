-- lib/util.lua: small helpers every other script needs (included, see quota/_scripts.py; a lib that
-- needs them includes this file itself, and each lib is included once per script).

-- The server's clock in ms (frozen while a script runs; safe before writes since Redis 5).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function is_uint(s, max_digits)
  return type(s) == 'string' and #s >= 1 and #s <= max_digits and string.match(s, '^%d+$') ~= nil
end

-- The origin id of a user-month hash being created (record.lua, adjust.lua: HSETNX origin): the
-- server's clock in microseconds, so one per incarnation of the hash. A copy restored from a backup
-- keeps its origin, and the dump archives it as the generation it already holds (snapshot_month.lua).
local function origin_id()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
