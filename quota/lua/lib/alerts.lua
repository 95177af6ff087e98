-- lib/alerts.lua: threshold alerts (docs/ALERTS.md), shared by record.lua (crossing) and
-- set_credit.lua (clearing); included, see quota/_scripts.py.
--
-- Thresholds are whole percents of the month's credit, ascending ('80,100' in ARGV; '' = off). The
-- user-month hash keeps alerted_pct, the highest threshold alerted this month: the thresholds the
-- spend reaches are always the lowest few (those at or below used / credit), so every threshold at or
-- below alerted_pct counts as alerted, and one integer field is all a record reads.
-- An event is written where the notifier (quota notify) finds it, by the script that decided it:
--   <prefix>:{<user>}:outbox            hash: field <month>:<pct>:<kind>:<seq>, value the event (JSON)
--   <prefix>:{<slot tag>}:outbox_index  sorted set: member <user>, score the ms its next event is due
-- The index key is in the user's hash slot (quota/_keys.py, slot_tag), so the write is atomic on a
-- cluster too.

-- @include util

-- An outbox (and a dead-letter list) expires this long after its last event: a running notifier
-- empties it within a day (delivered, or dead after 24 h of retries), and one that never runs must not
-- let events pile up for ever. The index keeps at most one member per user.
local OUTBOX_TTL_S = 40 * 86400

-- Is used + cost >= credit * pct / 100, exactly? The arguments are decimal strings (pct a number).
-- Below 2^53 / 1000 nano-CNY (9,007 CNY) every product is exact in a double, the common case; above
-- it the sides are compared in two base-1e9 limbs.
local function reaches(used, cost, credit, pct)
  local u, c = tonumber(used) + tonumber(cost), tonumber(credit)
  if u < 9007199254740 and c < 9007199254740 then return u * 100 >= c * pct end
  local function limbs(s, m)  -- (hi, lo) of the decimal string s times m, each below 2^53
    local hi, lo = 0, tonumber(s)
    if #s > 9 then hi, lo = tonumber(string.sub(s, 1, -10)), tonumber(string.sub(s, -9)) end
    lo = lo * m
    local carry = math.floor(lo / 1e9)
    return hi * m + carry, lo - carry * 1e9
  end
  local uh, ul = limbs(used, 100)
  local kh, kl = limbs(cost, 100)
  uh, ul = uh + kh, ul + kl
  if ul >= 1e9 then uh, ul = uh + 1, ul - 1e9 end
  local ch, cl = limbs(credit, pct)
  return uh > ch or (uh == ch and ul >= cl)
end

-- The thresholds of LIST ('80,100': ascending, validated by the caller) above ALERTED (the month's
-- alerted_pct: a string, or nil) that USED + COST reaches under CREDIT, ascending.
local function newly_reached(list, alerted, used, cost, credit)
  local above = tonumber(alerted or '0') or 0
  local out = {}
  for p in string.gmatch(list, '%d+') do
    local pct = tonumber(p)
    if pct > above then
      if not reaches(used, cost, credit, pct) then break end  -- ascending: the rest are higher
      out[#out + 1] = pct
    end
  end
  return out
end

-- A thresholds argument: '' (off) or whole percents joined by commas, at most 64 characters.
local function thresholds_ok(s)
  return type(s) == 'string' and #s <= 64 and (s == '' or (string.find(s, '^%d[%d,]*$') ~= nil
    and string.find(s, ',,') == nil and string.sub(s, -1) ~= ','))
end

-- Write one event for the user of KEY_MONTH (<prefix>:{<user>}:<YYYY-MM>) and put the user in the
-- outbox index, due at once. KIND is 'crossed' or 'cleared'.
local function emit(key_month, key_outbox, key_index, kind, pct, used, credit, now_ms)
  local user, month = string.match(key_month, '{([^}]*)}:(%d%d%d%d%-%d%d)$')
  local seq = redis.call('HINCRBY', key_month, 'alert_seq', 1)
  local id = string.format('%s:%d:%s:%d', month, pct, kind, seq)
  redis.call('HSET', key_outbox, id, cjson.encode({
    kind = kind, user = user, month = month, threshold = pct, seq = seq,
    used_nano = used, credit_nano = credit, at_ms = now_ms, since_ms = now_ms,
    attempts = 0, due_ms = now_ms, lease_ms = 0, owner = '', error = '',
  }))
  redis.call('EXPIRE', key_outbox, OUTBOX_TTL_S)
  redis.call('ZADD', key_index, 'LT', now_ms, user)  -- LT: an earlier due time stays
end
