-- turn_end.lua: release what is left of a turn's hold, and learn the turn's real cost.
--
-- KEYS[1]  holds hash           <prefix>:{<user>}:holds
-- KEYS[2]  user-month hash      <prefix>:{<user>}:<YYYY-MM> (the month the turn ends in)
-- ARGV[1]  turn_id
-- ARGV[2]  estimate_field       "<model_id>:hold_est_nano"
-- ARGV[3]  turn_cost_nano       the system cost this turn recorded
-- ARGV[4]  auto_default_nano    the estimate before the user's first turn on the model
-- ARGV[5]  learn                "1": update the estimate; "0": a turn that never ran (cancelled
--                               while it was being admitted) teaches nothing
--
-- Idempotent: only the call that deletes the hold updates the estimate, so a retry changes
-- nothing. The estimate rises fast (halfway to a bigger turn) and falls slowly (an eighth of the
-- way to a smaller one): bursts of big turns get big holds at once; one cheap turn does not
-- make the next big one start with too small a hold.
-- Returns 1 when this call released the hold, 0 when there was none (released before, or dead).

-- @include holds

if not (type(ARGV[1]) == 'string' and #ARGV[1] >= 1 and is_uint(ARGV[3], 17) and is_uint(ARGV[4], 17)
        and (ARGV[5] == '0' or ARGV[5] == '1')) then
  return redis.error_reply('QUOTA_INVALID turn_end arguments must be a turn id and an unsigned integer')
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local cost = tonumber(ARGV[3])
local known = redis.call('HGET', KEYS[2], ARGV[2])
if ARGV[5] == '1' and (known or cost > 0) then  -- a turn that spent nothing creates no month hash
  local old, estimate = tonumber(known or ARGV[4]), nil
  if cost > old then estimate = old + math.floor((cost - old) / 2)
  else estimate = old - math.floor((old - cost) / 8) end
  redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', estimate))
end
return 1
