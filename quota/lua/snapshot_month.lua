-- snapshot_month.lua: read expired user-months for the archive (quota dump), tagging each.
--
-- KEYS[1..n]  user-month hashes    <prefix>:{<user>}:<YYYY-MM> (on a cluster: all in one slot)
-- ARGV[1..n]  generation for KEYS[i] unless it has an origin (field o): "1", the generation of a
--             month's first hash (decimal string, 1 to 18 digits), kept only if it has none yet
--
-- Returns one entry per key, in KEYS order: {} when the hash does not exist (it is never
-- created here), else {fingerprint, {field1, value1, field2, value2, ...}}, the fingerprint
-- being what delete_if_unchanged.lua compares before deleting (see below).
--
-- Two bookkeeping fields are written, plain integers that stats ignore:
--   dump_gen  identifies this incarnation of the hash: its origin (set by record.lua when a late
--             write created it after its month), else ARGV[k]. A late write after the dump
--             deleted the hash creates a new one with a new origin, archived beside the first one
--             instead of replacing it: nothing is lost. A copy restored from a backup is the
--             generation the archive already holds, not a new one.
--   dump_seq  counts reads. The archive keeps, per generation, the snapshot with the highest
--             dump_seq, so a slow dump never overwrites a newer snapshot with an older one.

-- @include fingerprint

-- 1. validate every argument before the first write (no rollback in Redis)
if #ARGV ~= #KEYS then
  return redis.error_reply('QUOTA_INVALID one generation per key')
end
for i = 1, #ARGV do
  if not (string.match(ARGV[i], '^[1-9]%d*$') and #ARGV[i] <= 18) then
    return redis.error_reply('QUOTA_INVALID generation must be a positive integer below 1e18')
  end
end

-- 2. tag and read
local out = {}
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    out[k] = {}
  else
    -- a hash made after its month has an origin (lib/util.lua): that is its generation; the
    -- month's first hash has none, and is ARGV[k] (the dump sends 1). A copy restored from a backup
    -- is thus the generation the archive holds, never a new one (docs/HISTORY.md, "Restores").
    redis.call('HSETNX', KEYS[k], 'dump_gen', redis.call('HGET', KEYS[k], 'o') or ARGV[k])
    redis.call('HINCRBY', KEYS[k], 'dump_seq', 1)
    local flat = redis.call('HGETALL', KEYS[k])
    out[k] = {fingerprint(flat), flat}
  end
end
return out
