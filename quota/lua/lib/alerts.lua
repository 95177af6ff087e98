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

local LIMB = 1000000000  -- amounts pass 2^53 times 1000: they are compared in two base-1e9 limbs
-- An outbox (and a dead-letter list) expires this long after its last event: a running notifier
-- empties it within a day (delivered, or dead after 24 h of retries), and one that never runs must not
-- let events pile up for ever. The index keeps at most one member per user.
local OUTBOX_TTL_S = 40 * 86400

-- ARGV's thresholds as numbers, ascending; {} when off, nil when malformed.
local function parse_thresholds(s)
  if type(s) ~= 'string' or #s > 64 then return nil end
  local out = {}
  if s == '' then return out end
  for part in string.gmatch(s .. ',', '([^,]*),') do
    local pct = string.match(part, '^%d%d?%d?%d?$') and tonumber(part)
    if not pct or pct < 1 or pct > 1000 or (out[#out] and pct <= out[#out]) then return nil end
    out[#out + 1] = pct
  end
  return out
end

-- A decimal string of up to 18 digits as (high, low) limbs.
local function limbs(s)
  if #s <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, -10)), tonumber(string.sub(s, -9))
end

-- (hi, lo) * m, for m up to 1000: each product stays below 2^53.
local function times(hi, lo, m)
  lo = lo * m
  local carry = math.floor(lo / LIMB)
  return hi * m + carry, lo - carry * LIMB
end

-- Does the spend (hi, lo) reach PCT percent of the credit CREDIT (a string)? used * 100 >= credit * pct
local function reaches(hi, lo, credit, pct)
  local uh, ul = times(hi, lo, 100)
  local ch, cl = limbs(credit)
  ch, cl = times(ch, cl, pct)
  return uh > ch or (uh == ch and ul >= cl)
end

-- The thresholds above ALERTED (the month's alerted_pct: a string, or nil) that the spend USED + COST
-- reaches under CREDIT (all three decimal strings), ascending; and that spend, as a string.
local function newly_reached(thresholds, alerted, used, cost, credit)
  local hi, lo = limbs(used)
  local chi, clo = limbs(cost)
  hi, lo = hi + chi, lo + clo
  if lo >= LIMB then hi, lo = hi + 1, lo - LIMB end
  local above = tonumber(alerted or '0') or 0
  local out = {}
  for _, pct in ipairs(thresholds) do
    if pct > above then
      if not reaches(hi, lo, credit, pct) then break end  -- ascending: the rest are higher
      out[#out + 1] = pct
    end
  end
  if #out == 0 then return out, nil end
  return out, hi > 0 and string.format('%d%09d', hi, lo) or string.format('%d', lo)
end

-- The thresholds at or below ALERTED (a string, or nil) that the spend USED no longer reaches under
-- CREDIT (a raised credit), descending, and the highest threshold still reached (0: none).
local function no_longer_reached(thresholds, alerted, used, credit)
  local hi, lo = limbs(used)
  local above = tonumber(alerted or '0') or 0
  local out = {}
  for i = #thresholds, 1, -1 do
    local pct = thresholds[i]
    if pct <= above then
      if reaches(hi, lo, credit, pct) then return out, pct end  -- the lower ones are reached too
      out[#out + 1] = pct
    end
  end
  return out, 0
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
