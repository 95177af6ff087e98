-- archive_epoch.lua: read the archive epoch, which `quota dump` changes after each commit. Read-only.
--
-- KEYS[1]  archive epoch        <prefix>:archive_epoch (a string: a random value the dump SETs)
--
-- Returns the epoch as a string, or false before the first dump. Sent in one pipeline right
-- after stats.lua (quota._core.MeterCore.archive_epoch): an archived read cached under this
-- epoch is still the archive's state, because the dump deletes a hash from Redis only after it
-- has committed its snapshot and changed the epoch (docs/HISTORY.md).

return redis.call('GET', KEYS[1])
