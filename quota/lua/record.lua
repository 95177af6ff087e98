-- record.lua: count one LLM call in a user's month, exactly once per request id, and decide the
-- threshold alerts it crosses.
--
-- KEYS[1]  user-month hash      <prefix>:{<user>}:<YYYY-MM>
-- KEYS[2]  idempotency record   <prefix>:{<user>}:req:<request_id>
-- KEYS[3]  alert outbox         <prefix>:{<user>}:outbox
-- KEYS[4]  outbox index         <prefix>:{<slot tag>}:outbox_index   (the user's slot; lib/alerts.lua)
-- KEYS[5]  plan                 <prefix>:{<user>}:plan     (lib/grants.lua: the standing monthly credit)
-- KEYS[6]  grants               <prefix>:{<user>}:grants   (lib/grants.lua)
-- KEYS[7]  has_grants marker    <prefix>:{<user>}:has_grants   (lib/grants.lua: no marker, no grants read)
-- ARGV[1]  model_id             validated by the client (no spaces, no braces, <= 48 chars)
-- ARGV[2]  input_tokens         decimal string
-- ARGV[3]  output_tokens        decimal string
-- ARGV[4]  cost_nano            decimal string, this call's cost in nano-CNY (1e-9 CNY)
-- ARGV[5]  is_system            "1": the cost draws on the credit (system_used_nano); "0": counted only
-- ARGV[6]  default_credit_nano  the month's credit when neither the month nor a plan sets one (never
--                               written: only its length is checked here)
-- ARGV[7]  dedupe_ttl_s         seconds the request id is remembered
-- ARGV[8]  estimated            "1" when the tokens are an estimate (a stream cut short), else "0"
-- ARGV[9]  thresholds           alert thresholds, ascending percents of the credit ("80,100"; "" = off);
--                               checked where used: once the spend nears the lowest
-- ARGV[10] purpose              "" (none) or 1 to 10 of [a-z0-9_-]: also counted in <model>:n@<purpose>
--                               (calls) and <model>:c@<purpose> (cost_nano); see quota/_keys.py
-- ARGV[11] now_ms               the meter's clock (ms): which grants are live (lib/grants.lua); checked
--                               where it is used, past the credit
-- With a turn hold (quota.Turn), also:
-- KEYS[8]  holds hash           <prefix>:{<user>}:holds
-- ARGV[12] turn_id              the hold this call draws its system cost from (never below 0)
-- ARGV[13] hold_ttl_ms          the hold lives this long after this call
-- With cache tokens (only when either is non-zero; the hold's ARGV are "" without a hold), last:
-- ARGV[14] cached_input_tokens  decimal string, the part of input_tokens that were cache hits
-- ARGV[15] cache_write_tokens   decimal string, the part of input_tokens that wrote the cache
--                               counted in <model>:cached_input and <model>:cache_write; the cost
--                               (ARGV[4]) already prices them (quota/_prices.py)
--
-- Grants: the part of a system call's cost beyond the month's credit (month override, else plan, else
-- default) is drawn from live grants in the same step (lib/grants.lua), and counted in
-- grants_drawn_nano; the part that fits under the credit is not. The grants hash is read only when the
-- call goes past the credit and the has_grants marker (read in the same MGET as the request id and
-- the plan) is there, so a user under the credit, or one who never had a grant, pays no grants read.
-- A draw that leaves no grant with anything remaining removes the marker (lib/grants.lua).
--
-- Purposes are bounded: <model>:purposes counts the model's distinct named purposes this month; once
-- it is MAX_PURPOSES, a purpose not seen yet is counted under "other" (which is never counted there).
-- Without a purpose the script reads and writes exactly what it did before purposes existed.
--
-- Returns one string, "<recorded> <system_used_nano> <credit_nano> <hold_remaining_nano> <crossed>
-- <purpose> <drawn>" (fields split on single spaces; some are empty): a Lua table reply costs Redis
-- about as much as two commands (measured, docs/BENCHMARKS.md). recorded is 1 when
-- this call was counted: then system_used_nano is the value *before* it (the client adds the cost for a
-- system model, exactly, in Python). recorded is 0 for a request id seen before with the same content:
-- then system_used_nano is the current value. hold_remaining_nano is "" without a live hold (or for a
-- repeated id). crossed lists the thresholds this call's system spend reached first this month ("80" or
-- "80,100"; "" mostly): each got one quota.threshold_crossed event in the outbox, in this same step. A
-- repeated id crosses nothing. purpose is the one the call was counted under ("other" past the bound;
-- for a repeated id, the one given; "" for none). drawn is what this call drew from grants (0 mostly,
-- and for a repeated id), below 10^15 (grant.lua's bound). Amounts are decimal strings: they may pass
-- 2^53, where Lua numbers lose digits (and formatting a Lua number costs more than a command).
-- Never refuses for being over the credit: the reply in progress is always counted.
-- Errors start with QUOTA_INVALID, QUOTA_CONFLICT or QUOTA_OVERFLOW and change nothing (a default
-- credit that is not a number, which the client never sends, fails in Lua before any write or comes back).

local MAX_PURPOSES = 8  -- quota/_keys.py MAX_PURPOSES
local KEYS, ARGV = KEYS, ARGV  -- locals: each read of a global is a table lookup (3 % of a record)

-- The libs, made only for a record that needs one (a model's first record in the month, a turn hold,
-- cache tokens, an alert threshold within reach, a draw on grants): every `local function` of a lib
-- included at a script's top level is a new closure on each call.
local function libs()
-- @include holds
-- @include alerts
-- @include grants
  return {born_late = born_late, is_uint = is_uint, server_ms = server_ms, parse_hold = parse_hold,
          keep_hash_until = keep_hash_until, thresholds_ok = thresholds_ok, newly_reached = newly_reached,
          emit = emit, grants_lib = grants_lib}
end
local lib  -- libs(), once made

-- 1. validate (Redis has no rollback: nothing may fail after the first write). Checked here: what a
-- write takes (the amounts and the TTL, lib/util.lua's is_uint for four values in one match; the
-- flags); the default credit is never written (its length is checked; lib/alerts.lua compares it).
local model, tokens_in, tokens_out, cost = ARGV[1], ARGV[2] or '', ARGV[3] or '', ARGV[4] or ''
if not (#ARGV >= 11 and #tokens_in <= 10 and #tokens_out <= 10 and #cost <= 17 and #ARGV[6] <= 17
        and #ARGV[7] <= 9 and (ARGV[5] == '0' or ARGV[5] == '1') and (ARGV[8] == '0' or ARGV[8] == '1')
        and string.find(tokens_in .. ' ' .. tokens_out .. ' ' .. cost .. ' ' .. ARGV[7], '^%d+ %d+ %d+ [1-9]%d*$')) then
  return redis.error_reply('QUOTA_INVALID record arguments must be unsigned integers and 0/1 flags')
end
local system, purpose = ARGV[5] == '1', ARGV[10]
if purpose ~= '' then
  if not (type(purpose) == 'string' and #purpose <= 10 and string.find(purpose, '^[a-z0-9_%-]+$')) then
    return redis.error_reply('QUOTA_INVALID record purpose must be 1 to 10 characters of a-z 0-9 _ -')
  end
end
local with_hold = #KEYS == 8
if with_hold then
  lib = lib or libs()
  if not (type(ARGV[12]) == 'string' and #ARGV[12] >= 1 and lib.is_uint(ARGV[13], 10)) then
    return redis.error_reply('QUOTA_INVALID record with a hold needs a turn id and hold_ttl_ms')
  end
end
local cache = #ARGV >= 15  -- quota/_core.py RECORD_CACHE_ARG (14): the cache counts come last
if cache then
  lib = lib or libs()
  if not (lib.is_uint(ARGV[14], 10) and lib.is_uint(ARGV[15], 10)
          and tonumber(ARGV[14]) + tonumber(ARGV[15]) <= tonumber(tokens_in)) then
    return redis.error_reply('QUOTA_INVALID record cache tokens must be unsigned integers within input_tokens')
  end
end
local content = model .. '|' .. tokens_in .. '|' .. tokens_out .. '|' .. cost .. '|' .. ARGV[8]
if purpose ~= '' then content = content .. '|' .. purpose end  -- ids stored before purposes still match
if cache then content = content .. '|k' .. ARGV[14] .. ':' .. ARGV[15] end  -- ':' is never in a purpose

-- 2. read (the plan and the has_grants marker ride on the request id's read: one MGET, the keys share
-- the user's slot)
local seen_plan = redis.call('MGET', KEYS[2], KEYS[5], KEYS[7])
local seen, plan, has_grants = seen_plan[1], seen_plan[2], seen_plan[3]
if seen then
  if seen ~= content then
    return redis.error_reply('QUOTA_CONFLICT request_id was already used for a different record')
  end
  local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
  return '0 ' .. (now[1] or '0') .. ' ' .. (now[2] or plan or ARGV[6]) .. '   ' .. purpose .. ' 0'
end
local f_in, f_out, f_cost, f_calls = model .. ':input', model .. ':output', model .. ':cost_nano', model .. ':calls'
local current, drawn_at
if purpose == '' and not has_grants then  -- the common record: no table to build
  current = redis.call('HMGET', KEYS[1], f_in, f_out, f_cost, f_calls, 'system_used_nano', 'credit_nano',
                       'alerted_pct')
else  -- a purpose: is it known, how many are there; a user with grants: what they paid this month
  local fields = {f_in, f_out, f_cost, f_calls, 'system_used_nano', 'credit_nano', 'alerted_pct'}
  if purpose ~= '' then fields[8], fields[9] = model .. ':n@' .. purpose, model .. ':purposes' end
  if has_grants then drawn_at = #fields + 1; fields[drawn_at] = 'grants_drawn_nano' end
  current = redis.call('HMGET', KEYS[1], unpack(fields))
end
local big = #(current[1] or '') >= 18 and f_in or #(current[2] or '') >= 18 and f_out
  or #(current[3] or '') >= 18 and f_cost or #(current[4] or '') >= 18 and f_calls
  or #(current[5] or '') >= 18 and 'system_used_nano'
if big then return redis.error_reply('QUOTA_OVERFLOW field ' .. big .. ' is too large to add to') end
local new_purpose = false
if purpose ~= '' and purpose ~= 'other' and not current[8] then
  if (tonumber(current[9] or '0') or 0) >= MAX_PURPOSES then purpose = 'other' else new_purpose = true end
end
local late = false
if not current[4] then  -- a model's first record in the month: a new hash after its month gets its origin
  lib = lib or libs()
  late = lib.born_late(KEYS[1])
end
local used, credit = current[5] or '0', current[6] or plan or ARGV[6]  -- the month's, else the plan, else the default
local crossed
if system and ARGV[9] ~= '' then  -- system spend alerts, nothing else (turn holds never do)
  -- Below the lowest threshold (they ascend) no threshold is reached, and once the highest is
  -- alerted none is left: then no lib is made. Doubles here: the margin of 1e-9 is far beyond their
  -- rounding, and near the threshold lib/alerts.lua decides exactly.
  local first = string.match(ARGV[9], '^%d+')
  local near = not first or (used + cost) * 100 >= tonumber(credit) * first * 0.999999999
  if near and current[7] and current[7] == string.match(ARGV[9], '%d+$') then near = false end
  if near then
    lib = lib or libs()
    if not lib.thresholds_ok(ARGV[9]) then
      return redis.error_reply('QUOTA_INVALID record thresholds must be ascending percents like 80,100')
    end
    crossed = lib.newly_reached(ARGV[9], current[7], used, cost, credit)
    if #crossed == 0 then crossed = nil end
  end
end
local draw, live, unspent, draw_grants = 0, nil, 0, nil
if system and has_grants then  -- the part of the cost beyond the credit, if any, draws on live grants
  local room = tonumber(credit) - tonumber(used)  -- what the month's credit covers: + what grants paid
  if current[drawn_at] then room = room + tonumber(current[drawn_at]) end
  local beyond = tonumber(cost) - math.max(room, 0)  -- (lib/grants.lua credit_left, inlined: the hot path)
  if beyond > 0 then  -- only now is the grants hash read: under the credit, a record never reads it
    lib = lib or libs()
    if not lib.is_uint(ARGV[11], 15) then  -- validated where it is used (still before any write)
      return redis.error_reply('QUOTA_INVALID record now_ms must be an unsigned integer')
    end
    local _, live_grants, total
    _, live_grants, draw_grants = lib.grants_lib()  -- (lib/grants.lua: made only here, to draw)
    live, total, unspent = live_grants(KEYS[6], tonumber(ARGV[11]))
    draw = math.min(beyond, total)
  end
end
local now_ms, remaining, expires
if with_hold or crossed then now_ms = lib.server_ms() end
if with_hold then
  remaining, expires = lib.parse_hold(redis.call('HGET', KEYS[8], ARGV[12]))
  if remaining and expires <= now_ms then remaining = nil end  -- dead: nothing to draw from
end

-- 3. write (ARGV strings go to HINCRBY as they came: no tonumber round trip)
redis.call('HINCRBY', KEYS[1], f_in, ARGV[2])
redis.call('HINCRBY', KEYS[1], f_out, ARGV[3])
redis.call('HINCRBY', KEYS[1], f_cost, ARGV[4])
redis.call('HINCRBY', KEYS[1], f_calls, 1)
if system then
  redis.call('HINCRBY', KEYS[1], 'system_used_nano', ARGV[4])
end
if ARGV[8] == '1' then
  redis.call('HINCRBY', KEYS[1], model .. ':estimated_calls', 1)
end
if cache then  -- never above <model>:input (checked for overflow above): each is a part of it
  if ARGV[14] ~= '0' then redis.call('HINCRBY', KEYS[1], model .. ':cached_input', ARGV[14]) end
  if ARGV[15] ~= '0' then redis.call('HINCRBY', KEYS[1], model .. ':cache_write', ARGV[15]) end
end
if purpose ~= '' then
  redis.call('HINCRBY', KEYS[1], model .. ':n@' .. purpose, 1)
  redis.call('HINCRBY', KEYS[1], model .. ':c@' .. purpose, ARGV[4])
  if new_purpose then redis.call('HINCRBY', KEYS[1], model .. ':purposes', 1) end
end
redis.call('SET', KEYS[2], content, 'EX', ARGV[7])
if draw > 0 then
  unspent = unspent - draw_grants(KEYS[6], live, draw)
  redis.call('HINCRBY', KEYS[1], 'grants_drawn_nano', string.format('%d', draw))
end
if live and unspent == 0 then redis.call('DEL', KEYS[7]) end  -- no grant has anything left (read past the credit)
if late then redis.call('HSET', KEYS[1], 'o', late) end  -- restore-safe dump (lib/util.lua)
local hold = ''
if remaining then  -- draw the system cost down from the turn's hold, and keep the hold alive
  local left = remaining
  if system then left = math.max(remaining - tonumber(cost), 0) end
  -- The expiry moves forward once less than half of hold_ttl_ms is left: a live turn never loses
  -- its hold, and most records pay one HSET (or none) instead of HSET + PTTL.
  local ttl_ms = tonumber(ARGV[13])
  local renew = expires - now_ms < ttl_ms / 2
  if renew then expires = now_ms + ttl_ms end
  if renew or left ~= remaining then
    redis.call('HSET', KEYS[8], ARGV[12], string.format('%d:%d', left, expires))
  end
  if renew then lib.keep_hash_until(KEYS[8], expires, now_ms) end
  hold = string.format('%d', left)
end
local drawn = draw == 0 and '0' or string.format('%d', draw)  -- draw < 10^15: exact
if not crossed then return '1 ' .. used .. ' ' .. credit .. ' ' .. hold .. '  ' .. purpose .. ' ' .. drawn end
-- one event per threshold, in the outbox with the count (a dead worker loses none)
local after = redis.call('HGET', KEYS[1], 'system_used_nano')  -- the exact sum, past 2^53 too
for _, pct in ipairs(crossed) do lib.emit(KEYS[1], KEYS[3], KEYS[4], 'crossed', pct, after, credit, now_ms) end
redis.call('HSET', KEYS[1], 'alerted_pct', crossed[#crossed])
return '1 ' .. used .. ' ' .. credit .. ' ' .. hold .. ' ' .. table.concat(crossed, ',') .. ' ' .. purpose .. ' ' .. drawn
