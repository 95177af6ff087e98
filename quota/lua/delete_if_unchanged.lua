-- delete_if_unchanged.lua: delete archived user-months, unless they changed since they were read.
--
-- KEYS[1..n]  user-month hashes    <prefix>:{<user>}:<YYYY-MM> (on a cluster: all in one slot)
-- ARGV[1..n]  the fingerprint snapshot_month.lua returned for KEYS[i] (the hash's DUMP then)
--
-- Returns one integer per key, in KEYS order: 1 when the hash was deleted; 0 when it changed
-- since it was read (a late write, a credit change, or another dump reading it: it stays for
-- the next run, which archives it again in full); -1 when it no longer exists. Called only
-- after the snapshots are committed to the SQL history, so a deleted hash is always in the
-- archive exactly as it was.
--
-- DUMP serializes the whole value (every field and value), so equal DUMPs are equal contents. It
-- also follows the field order: a hash too big for the compact listpack encoding may come out in
-- another order with the same contents, which merely keeps it for the next run (safe). Comparing
-- DUMPs costs about a fifth of what building a fingerprint in Lua did (docs/BENCHMARKS.md, "Dump").

if #ARGV ~= #KEYS then
  return redis.error_reply('QUOTA_INVALID one fingerprint per key')
end
local out = {}
for k = 1, #KEYS do
  local now = redis.call('DUMP', KEYS[k])
  if not now then
    out[k] = -1
  elseif now ~= ARGV[k] then
    out[k] = 0
  else
    redis.call('DEL', KEYS[k])
    out[k] = 1
  end
end
return out
