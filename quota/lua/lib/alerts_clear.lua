-- lib/alerts_clear.lua: clearing threshold alerts when the month's credit rises (docs/ALERTS.md), shared
-- by set_credit.lua (a month's credit) and set_plan.lua (the plan, for a month without its own); apart
-- from lib/alerts.lua so that record.lua, which never clears, does not define these on every call.

-- @include alerts

-- The alerted thresholds of LIST (ascending, validated) that USED no longer reaches under CREDIT, highest
-- first (from the top: the lower ones are reached whenever a higher one is), and the highest one it
-- still reaches (0: none). ALERTED is the month's alerted_pct (a string, or nil). Reads nothing.
local function no_longer_reached(list, alerted, used, credit)
  local thresholds = {}
  for p in string.gmatch(list, '%d+') do thresholds[#thresholds + 1] = tonumber(p) end
  local top = tonumber(alerted or '0') or 0
  local cleared, still = {}, 0
  for i = #thresholds, 1, -1 do
    local pct = thresholds[i]
    if pct <= top then
      if reaches(used, '0', credit, pct) then still = pct break end
      cleared[#cleared + 1] = pct
    end
  end
  return cleared, still
end

-- Write the events of no_longer_reached's CLEARED, and arm them again (alerted_pct = STILL). Writes.
local function emit_cleared(key_month, key_outbox, key_index, cleared, still, used, credit)
  if #cleared == 0 then return end
  local now_ms = server_ms()
  for _, pct in ipairs(cleared) do emit(key_month, key_outbox, key_index, 'cleared', pct, used, credit, now_ms) end
  redis.call('HSET', key_month, 'alerted_pct', still)
end
