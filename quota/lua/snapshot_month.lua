-- snapshot_month.lua: read expired user-months for the archive (quota dump), counting the read.
--
-- KEYS[1..n]     user-month hashes   <prefix>:{<user>}:<YYYY-MM>
-- KEYS[n+1..2n]  KEYS[i]'s user's plan   <prefix>:{<user>}:plan (the same slot: on a cluster, all
--                2n keys of one call are in one slot)
-- ARGV           none
--
-- Returns one entry per user-month, in KEYS order: false (a nil reply) when the hash does not
-- exist (it is never created here), else {fingerprint, dump_seq, {field1, value1, ...}, plan}:
--   fingerprint  the hash's DUMP serialization after this read (binary; what
--                delete_if_unchanged.lua compares before deleting: equal DUMPs are equal contents);
--   dump_seq     the hash's read count after this read (an integer);
--   plan         the plan key's value, false (a nil reply) when there is none, or the error text
--                when it is not a string (the dump then archives the default credit, logged).
--
-- One bookkeeping field is written, a plain integer that stats ignore: dump_seq counts reads. The
-- archive keeps, per generation, the snapshot with the highest dump_seq, so a slow dump never
-- overwrites a newer snapshot with an older one. The generation itself is read, not written: the
-- hash's dump_gen if an older release set one, else its origin o (set by record.lua when a late write
-- created it after its month), else 1 (quota._stats.MonthUsage.from_hash).
--
-- Cost: about 12 µs of server time per key (EXISTS, HINCRBY, DUMP, HGETALL, GET); the dump sends at
-- most 100 keys per call (quota/history/dump.py, GROUP_KEYS), about 1 ms of the server per call.

-- 1. validate (there is nothing else to validate: keys only)
local n = #KEYS / 2
if n ~= math.floor(n) then
  return redis.error_reply('QUOTA_INVALID one plan key per user-month')
end

-- 2. read, counting the read
local out = {}
for k = 1, n do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    out[k] = false
  else
    local seq = redis.call('HINCRBY', KEYS[k], 'dump_seq', 1)
    local plan = redis.pcall('GET', KEYS[n + k])
    if type(plan) == 'table' then plan = plan.err end  -- e.g. WRONGTYPE: reported, not fatal
    out[k] = {redis.call('DUMP', KEYS[k]), seq, redis.call('HGETALL', KEYS[k]), plan}
  end
end
return out
