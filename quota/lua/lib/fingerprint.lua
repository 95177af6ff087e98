-- lib/fingerprint.lua: what the dump compares before it deletes an archived month, shared by
-- snapshot_month.lua (which returns it) and delete_if_unchanged.lua (which checks it); included,
-- see quota/_scripts.py: a line "-- @include fingerprint" is replaced by this file.
--
-- The fingerprint is the whole hash in HGETALL order, each field and value length-prefixed
-- (so no two different hashes share one). It is order-sensitive on purpose: sorting cost a
-- quarter of the dump's server time, and an order change without a content change (possible
-- only for a hash too big for the compact listpack encoding) merely keeps the hash for the
-- next run, which is safe; equal fingerprints always mean equal contents.
local function fingerprint(flat)
  local parts = {}
  for i = 1, #flat do
    parts[i] = #flat[i] .. ':' .. flat[i]
  end
  return table.concat(parts, ',')
end
