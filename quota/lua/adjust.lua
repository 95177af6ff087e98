-- adjust.lua: an audited correction of one user's month for one model (quota adjust), exactly once
-- per adjustment id, never taking a counter below zero.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  adjustments hash     <prefix>:{<user>}:adj:<YYYY-MM>   (field: adjustment id; value: the
--                               record, "<content>\n<details>", see quota/_adjust.py)
-- ARGV[1]  model_id             validated by the client (no spaces, no braces, <= 48 chars)
-- ARGV[2]  input_tokens         signed decimal string: what to add (negative: take away)
-- ARGV[3]  output_tokens        signed decimal string
-- ARGV[4]  cost_nano            signed decimal string, nano-CNY (1e-9 CNY)
-- ARGV[5]  calls                signed decimal string
-- ARGV[6]  is_system            "1": the cost also moves system_used_nano (the credit's use); "0": not
-- ARGV[7]  adjustment_id        the adjustment's own id (unique per user and month)
-- ARGV[8]  content              what two adjustments with one id must share to be the same one
--                               (model, amounts, reason: canonical JSON, no newline)
-- ARGV[9]  details              the rest of the record (instant, actor: JSON), kept, not compared
--
-- Returns {applied, system_used_nano, record, model_cost_nano}: applied is 1 when this call made the
-- correction, 0 when the id was already used for the same content (nothing changed; record is the
-- one stored then). system_used_nano and the model's cost_nano are the values after it, as strings
-- (the audit trail's after; before is after minus the adjustment's cost when applied).
-- The month hash also counts, per model, the adjustments (<model>:adjustments) and their signed cost
-- (<model>:adj_cost_nano), which stats and the archive show. A hash this creates after its month
-- gets its origin (lib/util.lua), like one record.lua creates.
-- Errors start with QUOTA_INVALID (bad argument, or a counter that would go below zero),
-- QUOTA_CONFLICT (the id was used for a different adjustment) or QUOTA_OVERFLOW; all change nothing.

-- @include util

-- A signed decimal without leading zeros ("0", "12", "-12"), at most max_digits digits.
local function is_int(s, max_digits)
  if type(s) ~= 'string' then return false end
  if s == '0' then return true end
  local digits = string.match(s, '^%-?([1-9]%d*)$')
  return digits ~= nil and #digits <= max_digits
end

-- a >= b for two unsigned decimal strings without leading zeros: exact at any size (no Lua number).
local function uint_ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- 1. validate (Redis has no rollback: nothing may fail after the first write)
if not (is_int(ARGV[2], 10) and is_int(ARGV[3], 10) and is_int(ARGV[4], 17) and is_int(ARGV[5], 9)
        and (ARGV[6] == '0' or ARGV[6] == '1')) then
  return redis.error_reply('QUOTA_INVALID adjust amounts must be signed integers and is_system 0/1')
end
if not (type(ARGV[7]) == 'string' and #ARGV[7] >= 1 and #ARGV[7] <= 128
        and type(ARGV[8]) == 'string' and #ARGV[8] >= 2 and not string.find(ARGV[8], '\n', 1, true)
        and type(ARGV[9]) == 'string') then
  return redis.error_reply('QUOTA_INVALID adjust needs an id, a content without newlines and details')
end
local model = ARGV[1]

-- 2. read
local seen = redis.call('HGET', KEYS[2], ARGV[7])
if seen then
  if string.sub(seen, 1, #ARGV[8] + 1) ~= ARGV[8] .. '\n' then
    return redis.error_reply('QUOTA_CONFLICT adjustment_id was already used for a different adjustment')
  end
  return {0, redis.call('HGET', KEYS[1], 'system_used_nano') or '0', seen,
          redis.call('HGET', KEYS[1], model .. ':cost_nano') or '0'}
end
local fields = {model .. ':input', model .. ':output', model .. ':cost_nano', model .. ':calls', 'system_used_nano'}
local deltas = {ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1' and ARGV[4] or '0'}
local current = redis.call('HMGET', KEYS[1], unpack(fields))
for i = 1, 5 do
  local now, delta = current[i] or '0', deltas[i]
  if not string.match(now, '^%d+$') or (#now > 1 and string.sub(now, 1, 1) == '0') then
    return redis.error_reply('QUOTA_INVALID field ' .. fields[i] .. ' holds ' .. now .. ', not a count')
  end
  if string.sub(delta, 1, 1) == '-' then
    if not uint_ge(now, string.sub(delta, 2)) then
      return redis.error_reply('QUOTA_INVALID the adjustment would take ' .. fields[i] .. ' below zero (it is '
                               .. now .. ', the adjustment ' .. delta .. ')')
    end
  elseif delta ~= '0' and #now >= 18 then
    return redis.error_reply('QUOTA_OVERFLOW field ' .. fields[i] .. ' is too large to add to')
  end
end
local late = not current[4] and born_late(KEYS[1])  -- a new hash after its month: its origin (lib/util.lua)

-- 3. write (ARGV strings go to HINCRBY as they came: no tonumber round trip)
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], fields[1], ARGV[2]) end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], fields[2], ARGV[3]) end
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], fields[3], ARGV[4]) end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], fields[4], ARGV[5]) end
if ARGV[6] == '1' and ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], 'system_used_nano', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], model .. ':adjustments', 1)
redis.call('HINCRBY', KEYS[1], model .. ':adj_cost_nano', ARGV[4])
if late then redis.call('HSET', KEYS[1], 'o', late) end  -- restore-safe dump (lib/util.lua)
local record = ARGV[8] .. '\n' .. ARGV[9]
redis.call('HSET', KEYS[2], ARGV[7], record)
return {1, redis.call('HGET', KEYS[1], 'system_used_nano') or '0', record,
        redis.call('HGET', KEYS[1], model .. ':cost_nano') or '0'}
