-- wrk script for bench/load.py (python -m bench load): a mix of usage records and reads, every record with a unique id.
--
-- args (after `--`): duration_s, users, service_token, quiet_s
-- Mix per request: 60% POST /v1/usage with one record, 20% POST /v1/usage with a batch of 10,
-- 10% GET token-stats, 10% GET quota. Every record: model system_deepseek, 100 input and 10 output
-- tokens (120,000 nano-CNY), request id "<thread>-<n>" (unique across the run).
-- In the last quiet_s seconds only GETs are sent, so that when wrk stops, every POST has had its
-- answer: the records acknowledged (counted from the answers, below) are then all there is.
-- Counts per thread are read by done() through thread:get().

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  duration_s = tonumber(args[1])
  users = tonumber(args[2])
  token = args[3]
  quiet_s = tonumber(args[4])
  posts_until = os.time() + duration_s - quiet_s
  n = 0
  acked = 0            -- records in 2xx answers
  fresh = 0            -- of which "duplicate": false
  singles = 0
  batches = 0
  reads = 0
  bad = 0              -- non-2xx answers
  math.randomseed(os.time() * 1000 + tid)
  headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
  read_headers = {["Authorization"] = "Bearer " .. token}
end

local function record()
  n = n + 1
  local user = "u" .. ((tid * 7919 + n) % users)
  return string.format('{"user":"%s","model_id":"system_deepseek","input_tokens":100,"output_tokens":10,'
                       .. '"request_id":"L%d-%d"}', user, tid, n)
end

function request()
  local roll = math.random(100)
  if os.time() >= posts_until then
    roll = 81 + (roll % 20)            -- the quiet end: reads only
  end
  if roll <= 60 then
    return wrk.format("POST", "/v1/usage", headers, record())
  elseif roll <= 80 then
    local parts = {}
    for i = 1, 10 do parts[i] = record() end
    return wrk.format("POST", "/v1/usage", headers, "[" .. table.concat(parts, ",") .. "]")
  elseif roll <= 90 then
    return wrk.format("GET", "/v1/users/u" .. math.random(0, users - 1) .. "/token-stats", read_headers)
  else
    return wrk.format("GET", "/v1/users/u" .. math.random(0, users - 1) .. "/quota?model_id=system_deepseek",
                      read_headers)
  end
end

local function count(body, needle)
  local found, from = 0, 1
  while true do
    local at = string.find(body, needle, from, true)
    if not at then return found end
    found = found + 1
    from = at + #needle
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    return
  end
  if string.sub(body, 1, 11) == '{"results":' then
    batches = batches + 1
    acked = acked + count(body, '"request_id":')
    fresh = fresh + count(body, '"duplicate":false')
  elseif string.find(body, '"current_month"', 1, true) or string.find(body, '"allowed"', 1, true) then
    reads = reads + 1
  else
    singles = singles + 1
    acked = acked + 1
    fresh = fresh + count(body, '"duplicate":false')
  end
end

function done(summary, latency, requests)
  local t = {acked = 0, fresh = 0, singles = 0, batches = 0, reads = 0, bad = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    'LOADRESULT {"requests":%d,"duration_us":%d,"acked":%d,"fresh":%d,"singles":%d,"batches":%d,"reads":%d,'
    .. '"non_2xx":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
    .. '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, t.acked, t.fresh, t.singles, t.batches, t.reads, t.bad, e.status,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
