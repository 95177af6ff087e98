-- lib/grants.lua: credit grants and per-user plans (issue 12), shared by record.lua (the draw-down),
-- check.lua and turn_begin.lua (admission) and grant.lua; included, see quota/_scripts.py.
--
-- A grant is one field of the user's grants hash  <prefix>:{<user>}:grants  (no TTL)
--   field  <grant_id>
--   value  "<remaining_nano>:<amount_nano>:<expires_at_ms>"   (0 = never expires; the meter's clock)
-- Its metadata (reason, created, revoked) is JSON in <prefix>:{<user>}:grant_info, same field: read
-- only by grant.lua, revoke_grant.lua and the stats, never on the record path.
-- A grant is live while remaining > 0 and (expires_at_ms = 0 or now_ms < expires_at_ms), now_ms being
-- the meter's clock passed in ARGV (tests pin it). Amounts are exact below 2^53 nano-CNY: grant.lua
-- keeps the sum of a user's live grants below 10^15 (1,000,000 CNY).
--
-- The plan is <prefix>:{<user>}:plan, a string: the user's standing monthly credit in nano-CNY. The
-- month's credit is the month's own credit_nano when set, else the plan, else the default.
--
-- Spend and grants: system spend beyond the month's credit draws on live grants, earliest expiry
-- first (no expiry last; equal expiries by grant id). The month hash counts what it drew in
-- grants_drawn_nano, so system_used_nano - grants_drawn_nano is what the month's own credit paid
-- (it may pass the credit: the reply in progress is always counted, and spend beyond the credit
-- with no live grant to draw on is simply over). A new message on a system model has
--   available = max(credit - (system_used_nano - grants_drawn_nano), 0) + live grants - held.

-- @include util

-- One grant's value parsed: remaining_nano, amount_nano, expires_at_ms (nil when malformed).
local function parse_grant(value)
  local remaining, amount, expires = string.match(value or '', '^(%d+):(%d+):(%d+)$')
  if not remaining then return nil, nil, nil end
  return tonumber(remaining), tonumber(amount), tonumber(expires)
end

-- The live grants of KEY at NOW_MS in draw-down order (a list of {id, remaining, amount, expires}),
-- and the sum of their remaining amounts.
local function live_grants(key, now_ms)
  local flat = redis.call('HGETALL', key)
  local live, total = {}, 0
  if #flat == 0 then return live, total end  -- no grants (a record past the credit, mostly): no sort
  for i = 1, #flat, 2 do
    local remaining, amount, expires = parse_grant(flat[i + 1])
    if remaining and remaining > 0 and (expires == 0 or expires > now_ms) then
      live[#live + 1] = {flat[i], remaining, amount, expires}
      total = total + remaining
    end
  end
  table.sort(live, function(a, b)
    local ea, eb = a[4], b[4]
    if ea == eb then return a[1] < b[1] end
    if ea == 0 then return false end   -- no expiry: last
    if eb == 0 then return true end
    return ea < eb
  end)
  return live, total
end

-- Draw AMOUNT (at most the sum of LIVE) from the grants of KEY, in LIVE's order. Writes.
local function draw_grants(key, live, amount)
  local left = amount
  for _, g in ipairs(live) do
    if left <= 0 then break end
    local take = math.min(left, g[2])
    redis.call('HSET', key, g[1], string.format('%d:%d:%d', g[2] - take, g[3], g[4]))
    left = left - take
  end
end

-- The month's credit: the month's own (MONTH_CREDIT, a string or nil), else the plan in KEY_PLAN,
-- else DEFAULT (strings). One GET, only when the month has no credit of its own.
local function month_credit(month_credit, key_plan, default)
  if month_credit then return month_credit end
  return redis.call('GET', key_plan) or default
end

-- What the month's own credit still covers (never below 0): credit - (used - drawn).
local function credit_left(credit, used, drawn)
  return math.max(tonumber(credit) - (tonumber(used or '0') - tonumber(drawn or '0')), 0)
end
