"""``quota dump``: move expired user-months from Redis into the SQL history, exactly.

Per batch of keys on one Redis primary (a cluster is walked master by master):

1. ``SCAN MATCH <prefix>:{*}:????-?? COUNT 1000 TYPE hash``, keeping months before ``before``
   (default: the current UTC month, which is never touched).
2. ``snapshot_month.lua`` on up to GROUP_KEYS keys per call (one slot per call on a cluster), all
   calls of the batch sent as one packed buffer: it bumps ``dump_seq`` and returns the whole hash,
   its fingerprint (the hash's ``DUMP``) and the user's plan (``<prefix>:{<user>}:plan``). The
   generation is read, not written: ``dump_gen`` if an older release set one, else the origin
   ``o`` of a hash a late write made after its month, else 1 (``MonthUsage.from_hash``). A month
   without its own credit is archived with the plan (the credit in force, as the check has it),
   so that archived reports use it; no plan: NULL, the default.
3. One SQL transaction writes every snapshot of the batch, replacing the stored snapshot of
   the same generation (never adding to it; an older ``seq`` never replaces a newer one).
4. Only after the commit, ``delete_if_unchanged.lua``, sent the same way: the hash is deleted
   only if its ``DUMP`` is still the one step 2 read (equal serializations: equal contents).

Why that is exact (docs/HISTORY.md has the long form):

- Killed anywhere, nothing is lost: a hash is deleted only after its snapshot is committed.
  Nothing is counted twice: a rerun reads the same generation again and replaces its row.
- A late write between steps 2 and 4 changes the hash, so step 4 keeps it; the next run
  archives it again in full (same generation: a replace). A late write after step 4 creates a
  new hash, which gets a new generation (its origin) and is archived beside the first one. A copy
  of an archived hash restored from a backup is the generation the archive holds: its older
  snapshot does not replace the archived one (docs/HISTORY.md, "Restores").
- ``get_token_stats`` reads Redis, then SQL, and counts each generation once
  (``stats.merge_month``): the live hash supersedes the archived snapshot of its generation.

Memory stays flat: keys are streamed batch by batch; nothing collects all keys.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from .. import _scripts as scripts
from .._batch import REROUTE
from .._connect import describe_client, storage_errors
from .._core import ScriptCall
from .._errors import InvalidInput, StorageUnavailable
from .._keys import KeySchema, month_of, validate_month
from .._stats import MonthUsage
from .._sync._compat import prefetch
from .store import HistoryStore, Snapshot

if TYPE_CHECKING:
    from .._config import Settings
    from .._core import MeterCore


SCAN_COUNT = 1000
DEFAULT_BATCH = 5000  # user-months per SQL transaction
GROUP_KEYS = 100  # user-months per script call (one slot on a cluster)
DELETED, CHANGED, GONE = 1, 0, -1

log = logging.getLogger("quota.dump")


@dataclass
class DumpReport:
    """What one run did. ``archived`` user-months are in SQL and gone from Redis; ``changed``
    ones were written to SQL but changed while the dump ran, so they stay in Redis for the next
    run; ``unreadable`` hashes (a field that is not an integer) are left alone and logged."""

    before: str
    dry_run: bool = False
    archived: int = 0
    models: int = 0
    changed: int = 0
    unreadable: int = 0
    seen: int = 0  # expired user-months read so far
    estimate: int = 0  # keys in Redis when the run started (DBSIZE): a progress bound
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.changed + self.unreadable

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"dry run: would archive {self.archived} user-months ({self.models} models) "
                f"before {self.before}, skipped {self.skipped}, in {self.seconds:.1f} s"
            )
        return (
            f"archived {self.archived} user-months ({self.models} models), "
            f"skipped {self.skipped}, in {self.seconds:.1f} s"
        )


class DumpMeter(Protocol):
    """What the dump needs of a meter (:class:`quota.Meter` is one): its settings and clock
    (``core``), its client (SCAN, DBSIZE and the dump's script calls go to each primary), where it
    points, and its batch path, which resends the calls a cluster redirected (quota._batch:
    redirected calls resent through the cluster client; see ``_run_on_node``)."""

    core: MeterCore
    where: str

    @property
    def client(self) -> Any: ...

    @property
    def settings(self) -> Settings: ...

    def run_many(self, calls: list[ScriptCall[Any]]) -> list[Any]: ...


def dump_expired_months(
    meter: DumpMeter,
    store: HistoryStore,
    *,
    before: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[DumpReport], None] | None = None,
) -> DumpReport:
    """Archive every user-month older than ``before`` (default: the current UTC month, by the
    meter's clock) from the meter's Redis (``redis.Redis`` or ``RedisCluster``) into ``store``,
    then remove it from Redis. The key prefix and the system models are the meter's settings.

    Idempotent and safe to kill at any point and run again. ``dry_run`` reads and counts, and
    writes nothing anywhere. Raises ``StorageUnavailable`` when Redis or the database is away,
    ``InvalidInput`` for a bad ``before``.
    """
    settings = meter.settings
    now = meter.core.clock()
    current = month_of(now)
    before = current if before is None else validate_month(before)
    if before > current:
        raise InvalidInput(
            f"before must not be after the current month {current}: the live month is still being written"
        )
    if not 1 <= batch_size <= 100_000:
        raise InvalidInput("batch_size must be from 1 to 100000")
    schema = KeySchema(settings.prefix)
    report = DumpReport(before=before, dry_run=dry_run)
    started = time.perf_counter()

    if dry_run:
        store.ping()
    else:
        store.ensure_schema()
    client = meter.client
    nodes = _primaries(client)
    for where, node in nodes:
        with storage_errors(where):
            report.estimate += int(node.dbsize())

    slot_of = _slot_of(client)

    def reads() -> Iterator[tuple[str, Any, int, list[tuple[str, Snapshot]], int]]:
        for where, node in nodes:
            for batch in _expired_keys(node, where, schema, before, batch_size):
                yield where, node, len(batch), *_read(meter, node, where, batch, slot_of, dry_run, schema)

    # Reading batch k+1 from Redis overlaps writing batch k to SQL (a thread; the batch is
    # still deleted only after its own commit). It nearly doubled the throughput on 2 cores.
    for where, node, seen, read, unreadable in prefetch(reads()):  # read the next batch while this one commits
        report.seen += seen
        report.unreadable += unreadable
        if dry_run:
            report.archived += len(read)
            report.models += sum(len(snap.usage.models) for _, snap in read)
        elif read:
            store.write_snapshots(
                [snap for _, snap in read], is_system=settings.prices.is_system, prefix=settings.prefix, now=now
            )
            # After the commit, before any delete: a cached archived read (quota._stats.ArchiveCache)
            # is read again once the epoch changed; until then the hashes are still in Redis. A
            # fresh random value, not a count: a Redis restored from a backup must not bring back
            # a value that a later dump reaches again.
            with storage_errors(meter.where):
                client.set(schema.archive_epoch_key(), secrets.token_hex(8))
            _delete_unchanged(meter, node, where, read, slot_of, report)
        report.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(report)
    report.seconds = time.perf_counter() - started
    log.info("quota dump: %s", report.summary())
    return report


# --- Redis side -----------------------------------------------------------------------------------

Key = tuple[str, str, str]  # (key, user, month)


def _primaries(client: Any) -> list[tuple[str, Any]]:
    """``(name, plain client)`` for every master: SCAN on a cluster must visit each one."""
    if isinstance(client, RedisCluster):
        with storage_errors(describe_client(client)):
            return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    return [(describe_client(client), client)]


def _slot_of(client: Any) -> Callable[[str], int] | None:
    """How keys may be grouped into one script call: by hash slot on a cluster (a script's keys
    must share one), freely on a standalone server (None)."""
    if isinstance(client, RedisCluster):
        return client.keyslot
    return None


def _groups(items: list[Any], key_of: Callable[[Any], str], slot_of: Callable[[str], int] | None) -> list[list[Any]]:
    """``items`` cut into groups of at most GROUP_KEYS that one script call may take together.

    Many keys per EVALSHA is what makes the dump fast: redis-py's per-command cost, not the
    server, was the limit at one key per call. GROUP_KEYS bounds how long one call holds the
    server (about 1 ms)."""
    if slot_of is None:
        return [items[i : i + GROUP_KEYS] for i in range(0, len(items), GROUP_KEYS)]
    by_slot: dict[int, list[Any]] = {}
    for item in items:
        by_slot.setdefault(slot_of(key_of(item)), []).append(item)
    return [group[i : i + GROUP_KEYS] for group in by_slot.values() for i in range(0, len(group), GROUP_KEYS)]


def _expired_keys(node: Any, where: str, schema: KeySchema, before: str, batch_size: int) -> Iterator[list[Key]]:
    """Batches of ``(key, user, month)`` for user-months before ``before`` on one node."""
    batch: list[Key] = []
    with storage_errors(where):
        for raw in node.scan_iter(match=schema.month_pattern(), count=SCAN_COUNT, _type="hash"):
            key = raw.decode() if isinstance(raw, bytes) else raw
            parsed = schema.parse_month_key(key)
            if parsed is None or parsed[1] >= before:
                continue
            batch.append((key, parsed[0], parsed[1]))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _identity(reply: Any) -> Any:
    return reply


def _pair(groups: list[list[Any]], replies: list[Any], where: str) -> list[tuple[Any, Any]]:
    """``(item, its reply)`` for each item of ``groups`` given one reply (a list) per group; a
    group whose call failed gives its error to each item (e.g. WRONGTYPE: a key name reused for
    another type). A redirect that the batch path could not follow fails the run."""
    out: list[tuple[Any, Any]] = []
    for group, reply in zip(groups, replies):
        if isinstance(reply, REROUTE):
            with storage_errors(where):
                raise reply
        if isinstance(reply, Exception):
            out.extend((item, reply) for item in group)
        else:
            out.extend(zip(group, reply))
    return out


def _snapshot_calls(groups: list[list[Key]], schema: KeySchema) -> list[ScriptCall[Any]]:
    """One snapshot_month.lua call per group: its user-months, then each one's plan key."""
    return [
        ScriptCall(
            scripts.SNAPSHOT_MONTH,
            (*(key for key, _, _ in group), *(schema.plan_key(user) for _, user, _ in group)),
            (),
            _identity,
        )
        for group in groups
    ]


def _run_on_node(meter: DumpMeter, node: Any, where: str, calls: list[ScriptCall[Any]]) -> list[Any]:
    """Run ``calls`` on ``node`` (where SCAN found their keys), sent as one packed buffer of
    ``EVAL``s and read undecoded; one raw reply (or its error) per call.

    Why not the batch path (``meter.run_many``) for all of it: the snapshot's fingerprint is binary
    (a DUMP), which a client made with ``decode_responses`` could not decode, and redis-py's
    pipeline (packing each argument, queueing each command) cost more client CPU than the rest of
    the Redis side of the dump. EVAL with the source, not EVALSHA: no NOSCRIPT to handle (the server
    hashes the 2 kB source once per call of up to GROUP_KEYS keys). Only the calls a cluster
    redirected (a slot moving, a failover) go through the batch path, which follows redirects."""
    with storage_errors(where):
        replies = _round_trip(
            node, [("EVAL", call.script.source, len(call.keys), *call.keys, *call.args) for call in calls]
        )
    moved = [i for i, reply in enumerate(replies) if isinstance(reply, REROUTE)]
    if moved:
        for i, reply in zip(moved, meter.run_many([calls[i] for i in moved])):
            replies[i] = reply
    return replies


def _round_trip(node: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` as one packed buffer on one of ``node``'s pooled connections and read one
    raw (undecoded) reply per command, an error reply as its exception in its place. The
    connection's ``Retry`` resends the whole buffer after a lost connection, as a redis-py
    pipeline would (a snapshot read twice only counts one read more)."""
    pool = node.connection_pool
    conn = pool.get_connection()
    try:
        packed = conn.pack_commands(commands)

        def send_and_read() -> list[Any]:
            conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        result: list[Any] = conn.retry.call_with_retry(send_and_read, lambda _error: conn.disconnect())
        return result
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this connection out again
        raise
    finally:
        pool.release(conn)


def _read(
    meter: DumpMeter,
    node: Any,
    where: str,
    batch: list[Key],
    slot_of: Callable[[str], int] | None,
    dry_run: bool,
    schema: KeySchema,
) -> tuple[list[tuple[str, Snapshot]], int]:
    """``(key, snapshot)`` for each hash of ``batch`` that still exists and parses, and how
    many could not be read (left in Redis, logged)."""
    if dry_run:
        with storage_errors(where):
            pipe = node.pipeline(transaction=False)
            for key, _, _ in batch:
                pipe.hgetall(key)
            replies = list(zip(batch, (_dry_reply(r) for r in pipe.execute(raise_on_error=False))))
    else:
        groups = _groups(batch, _first, slot_of)
        replies = _pair(groups, _run_on_node(meter, node, where, _snapshot_calls(groups, schema)), where)
    snapshots: list[tuple[str, Snapshot]] = []
    unreadable = 0
    for (key, user, month), reply in replies:
        if isinstance(reply, Exception):
            unreadable += 1
            log.warning("quota dump: cannot read %s: %s", key, reply)
            continue
        if not reply:
            continue  # deleted since SCAN returned it (another dump, or ops)
        fingerprint, seq, flat, plan = reply
        fields = iter(flat)
        try:
            usage = MonthUsage.from_hash(month, dict(zip(fields, fields)))
        except ValueError as exc:
            unreadable += 1
            log.warning("quota dump: %s has a field that is not an integer (%s); left in Redis", key, exc)
            continue
        if usage.credit_nano is None and plan is not None:
            _credit_in_force(usage, user, month, plan)
        snapshots.append((key, Snapshot(user, month, usage.archive_gen or 0, int(seq), usage, fingerprint)))
    return snapshots, unreadable


def _credit_in_force(usage: MonthUsage, user: str, month: str, plan: Any) -> None:
    """Give a month without its own credit the user's plan (read by snapshot_month.lua in the same
    step: the credit in force, as the check has it). A plan that can not be read (not an integer,
    not a string) leaves the credit NULL (the default), logged: the archive is still exact in what
    was spent."""
    try:
        usage.credit_nano = int(plan)
    except ValueError:
        log.warning("quota dump: %s's plan can not be read (%r); %s archived with the default", user, plan, month)


def _first(item: Key | tuple[str, Snapshot]) -> str:
    """The Redis key of an item of the dump: a ``Key``, or a ``(key, snapshot)`` pair."""
    return item[0]


def _dry_reply(reply: Any) -> Any:
    """Shape an HGETALL reply like snapshot_month.lua's: ``[fingerprint, dump_seq, [f1, v1, ...],
    plan]`` (a dry run writes nothing: no fingerprint, no count, no credit needed)."""
    if isinstance(reply, Exception) or not reply:
        return reply
    return [None, 0, [x for pair in reply.items() for x in pair], None]


def _delete_unchanged(
    meter: DumpMeter,
    node: Any,
    where: str,
    written: list[tuple[str, Snapshot]],
    slot_of: Callable[[str], int] | None,
    report: DumpReport,
) -> None:
    """Step 4, after the commit: delete each hash that is still exactly what was archived."""
    groups = _groups(written, _first, slot_of)
    calls = [
        ScriptCall(
            scripts.DELETE_IF_UNCHANGED,
            tuple(key for key, _ in group),
            tuple(snap.fingerprint for _, snap in group),
            _identity,
        )
        for group in groups
    ]
    for (key, snap), reply in _pair(groups, _run_on_node(meter, node, where, calls), where):
        if isinstance(reply, Exception):
            raise StorageUnavailable(f"Redis: cannot delete the archived month {key}: {reply}")
        if int(reply) == CHANGED:
            report.changed += 1
        else:  # DELETED, or GONE: removed by someone else after our commit; archived either way
            report.archived += 1
            report.models += len(snap.usage.models)
