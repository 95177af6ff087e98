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

-- The server's current UTC month, 'YYYY-MM' (days to civil date: H. Hinnant's algorithm).
local function server_month()
  local z = math.floor(tonumber(redis.call('TIME')[1]) / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  return string.format('%04d-%02d', yoe + era * 400 + (month <= 2 and 1 or 0), month)
end

-- Restore-safe dumps (docs/HISTORY.md, "Restores"). A user-month hash made during its month is the
-- month's one first incarnation: the dump archives it as generation 1. A hash made *after* its
-- month (a late record re-creating a month the dump archived and deleted) is another incarnation:
-- it gets its origin, field "o", the server's clock in microseconds, which the dump takes as its
-- generation. Either way a copy restored from a backup is the generation the archive holds.
-- born_late(key) says whether a write is about to create such a hash (read it before any write).
local function born_late(key)
  return string.sub(key, -7) < server_month() and redis.call('EXISTS', key) == 0
end

local function origin_id()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
