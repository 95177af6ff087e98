"""The restore drill: Redis restored from a backup older than the last dump must not double the
archive (docs/HISTORY.md, "Restores"), on fakeredis, a real Redis and a real cluster, into SQLite
and PostgreSQL.

The backup is taken with DUMP (the serialized value RESTORE and an RDB file both carry), so the
restored hash is byte for byte what the backup held: no ``dump_gen`` (no dump had read it yet) and
fewer calls than the archive. Before the fix this archived it as a new generation beside the first
(``calls 3`` for a true 2); replacing the archived snapshot with it instead would lose the second
call (``calls 1``).
"""

from __future__ import annotations

from typing import Any

from quota import Meter
from quota.history import dump_expired_months

from .history_support import SETTINGS, history_url, month_hashes, plain, store  # noqa: F401 - fixtures


def test_a_restored_older_copy_neither_doubles_nor_shrinks_the_archive(backend, clock, store) -> None:
    client = backend.sync_client()
    try:
        meter = Meter(client, clock=clock, settings=SETTINGS)
        key = meter.core.keys.month_key("ann", "2025-11")
        clock.set(2025, 11, 10, 12, 0, 0)
        meter.update_token_usage("ann", "system_deepseek", 1000, 2000, request_id="r1")
        backup: Any = client.dump(key)  # the backup: one call, never read by a dump
        meter.update_token_usage("ann", "system_deepseek", 1000, 2000, request_id="r2")
        meter.update_token_usage("ann", "custom_x", 5, 5, request_id="r3")
        truth = plain(month_hashes(client)[("ann", "2025-11")])
        clock.set(2025, 12, 2, 0, 0, 0)
        assert dump_expired_months(meter, store).archived == 1
        assert client.exists(key) == 0

        client.restore(key, 0, backup)  # the operator restores the old backup
        restored = month_hashes(client)[("ann", "2025-11")]
        assert restored.models["system_deepseek"].calls == 1 and restored.archive_gen is not None
        report = dump_expired_months(meter, store)
        assert (report.archived, report.changed) == (1, 0)  # read, recognised, removed from Redis
        assert client.exists(key) == 0
        assert plain(store.load_totals("ann", ["2025-11"])["2025-11"]) == truth

        # A genuinely new month after the restore is archived as usual, and a late write to the
        # archived month (a new incarnation, with its own origin) is added beside it.
        clock.set(2025, 12, 20, 0, 0, 0)
        meter.update_token_usage("ann", "system_deepseek", 10, 20, request_id="r4")
        late = meter.core.record("ann", "system_deepseek", 1, 1, request_id="r5", at=_moment(2025, 11))
        meter.run(late)
        clock.set(2026, 1, 2, 0, 0, 0)
        assert dump_expired_months(meter, store).archived == 2
        totals = store.load_totals("ann", ["2025-11", "2025-12"])
        assert totals["2025-12"].models["system_deepseek"].calls == 1
        assert totals["2025-11"].models["system_deepseek"].calls == 3
        assert month_hashes(client) == {}
    finally:
        client.close()


def test_without_an_origin_the_dump_still_makes_a_generation(backend, clock, store) -> None:
    """A hash written before origins existed (or by hand) gets a random generation, as before."""
    client = backend.sync_client()
    try:
        meter = Meter(client, clock=clock, settings=SETTINGS)
        key = meter.core.keys.month_key("bo", "2025-10")
        client.hset(key, mapping={"system_deepseek:calls": 2, "system_deepseek:cost_nano": 40, "system_used_nano": 40})
        clock.set(2025, 12, 2, 0, 0, 0)
        assert dump_expired_months(meter, store).archived == 1
        [part] = store.load_months("bo", ["2025-10"])
        assert part.archive_gen and part.models["system_deepseek"].calls == 2
    finally:
        client.close()


def _moment(year: int, month: int):  # noqa: ANN202 - an aware datetime
    from datetime import UTC, datetime

    return datetime(year, month, 15, tzinfo=UTC)


def test_only_a_hash_made_after_its_month_carries_an_origin(backend, clock) -> None:
    """The month's own hash (the server's clock in that month) has no extra field (a one-model hash
    stays in its allocation); one a late write makes after the month has its origin, and a model
    added to an existing hash after the month adds none."""
    from datetime import UTC, datetime

    from quota._keys import add_months, month_of

    client = backend.sync_client()
    try:
        now = datetime.now(UTC)
        this_month = month_of(now)
        clock.now = now
        meter = Meter(client, clock=clock, settings=SETTINGS)
        meter.update_token_usage("ann", "system_deepseek", 10, 10)
        meter.update_token_usage("ann", "custom_x", 10, 10)
        assert b"o" not in client.hgetall(meter.core.keys.month_key("ann", this_month))

        last = add_months(this_month, -1)
        late = meter.core.record("ann", "system_deepseek", 1, 1, at=_moment(*map(int, last.split("-"))))
        meter.run(late)
        key = meter.core.keys.month_key("ann", last)
        origin = client.hget(key, "o")
        assert origin is not None and abs(int(origin) / 1e6 - now.timestamp()) < 600
        meter.run(meter.core.record("ann", "custom_x", 1, 1, at=_moment(*map(int, last.split("-")))))
        assert client.hget(key, "o") == origin  # an existing hash: nothing more
        meter.set_monthly_credit("bo", "7", last)  # a credit set after the month makes a late hash too
        assert client.hget(meter.core.keys.month_key("bo", last), "o") is not None
    finally:
        client.close()


def test_a_restored_copy_of_a_months_own_hash_is_recognised(backend, clock, store) -> None:
    """The usual case: the month's own hash (no origin, generation 1), backed up during the month,
    archived after it, then restored from the backup."""
    from datetime import UTC, datetime, timedelta

    from quota._keys import month_of

    client = backend.sync_client()
    try:
        now = datetime.now(UTC)
        month = month_of(now)
        clock.now = now
        meter = Meter(client, clock=clock, settings=SETTINGS)
        key = meter.core.keys.month_key("cy", month)
        meter.update_token_usage("cy", "system_deepseek", 1000, 2000, request_id="c1")
        backup: Any = client.dump(key)
        meter.update_token_usage("cy", "system_deepseek", 1000, 2000, request_id="c2")
        clock.now = now + timedelta(days=40)  # the dump's clock in a later month (Redis's is not)
        assert dump_expired_months(meter, store).archived == 1
        [part] = store.load_months("cy", [month])
        assert part.archive_gen == 1 and part.models["system_deepseek"].calls == 2
        client.restore(key, 0, backup)
        meter.history = store
        stats = meter.get_token_stats("cy", months=3)  # the restored copy supersedes, never adds
        assert stats["history"][month]["system_deepseek"]["calls"] == 1
        assert dump_expired_months(meter, store).archived == 1
        assert store.load_totals("cy", [month])[month].models["system_deepseek"].calls == 2
        assert meter.get_token_stats("cy", months=3)["history"][month]["system_deepseek"]["calls"] == 2
    finally:
        client.close()
