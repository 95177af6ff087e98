"""``dump_expired_months`` on fakeredis, a real Redis and a real cluster, into SQLite and a real
PostgreSQL: exact, idempotent, safe against late writes and against a second dump."""

from __future__ import annotations

from typing import Any

import pytest
from redis.cluster import RedisCluster

from quota import Meter, StorageUnavailable
from quota._errors import InvalidInput
from quota.history import HistoryStore, dump_expired_months

from .history_support import SETTINGS, history_url, month_hashes, plain, store  # noqa: F401 - fixtures


def record(
    meter: Meter,
    clock: Any,
    month: str,
    user: str,
    model: str = "system_deepseek",
    tokens: int = 1000,
    n: int = 1,
    rid: str | None = None,
) -> None:
    year, mon = (int(p) for p in month.split("-"))
    clock.set(year, mon, 10, 12, 0, 0)
    for i in range(n):
        meter.update_token_usage(user, model, tokens + i, 2 * tokens, request_id=None if rid is None else f"{rid}-{i}")


def archive(store: HistoryStore, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    out = {}
    for user, month in keys:
        for m, total in store.load_totals(user, [month]).items():
            out[(user, m)] = plain(total)
    return out


@pytest.fixture
def world(backend, clock):
    client = backend.sync_client()
    meter = Meter(client, clock=clock, settings=SETTINGS)
    yield client, meter
    client.close()


def fill(meter: Meter, clock: Any) -> dict[tuple[str, str], tuple]:
    record(meter, clock, "2025-11", "ann", n=2)
    record(meter, clock, "2025-11", "ann", model="custom_x", tokens=5)
    record(meter, clock, "2025-12", "ann", tokens=7)
    meter.set_monthly_credit("ann", "7.5", "2025-12")
    for u in range(40):  # spread over every master of the cluster
        record(meter, clock, "2025-12", f"user{u}", tokens=u + 1)
    record(meter, clock, "2026-01", "ann", tokens=3)  # the current month: never archived
    return {k: plain(v) for k, v in month_hashes(meter.client).items() if k[1] < "2026-01"}


def test_dump_moves_expired_months_exactly_and_keeps_the_current_one(world, store, clock) -> None:
    client, meter = world
    expected = fill(meter, clock)
    stats_before = meter.get_token_stats("ann")
    report = dump_expired_months(meter, store)
    assert (report.archived, report.skipped, report.models) == (len(expected), 0, len(expected) + 1)
    assert set(month_hashes(client)) == {("ann", "2026-01")}
    assert archive(store, list(expected)) == expected
    meter.history = store
    assert meter.get_token_stats("ann") == stats_before
    assert list(stats_before["history"]) == ["2025-12", "2025-11"]


def test_running_twice_leaves_the_same_history(world, store, clock) -> None:
    client, meter = world
    expected = fill(meter, clock)
    dump_expired_months(meter, store)
    again = dump_expired_months(meter, store)
    assert (again.archived, again.skipped) == (0, 0)
    assert archive(store, list(expected)) == expected
    assert store.count_months() == len(expected)


def test_before_limits_what_is_archived(world, store, clock) -> None:
    client, meter = world
    expected = fill(meter, clock)
    report = dump_expired_months(meter, store, before="2025-12")
    assert report.archived == 1
    assert archive(store, list(expected)) == {("ann", "2025-11"): expected[("ann", "2025-11")]}
    assert ("ann", "2025-12") in month_hashes(client)
    with pytest.raises(InvalidInput, match="current month 2026-01"):
        dump_expired_months(meter, store, before="2026-02")
    with pytest.raises(InvalidInput, match="YYYY-MM"):
        dump_expired_months(meter, store, before="2025-1")


def test_dry_run_reads_and_changes_nothing(world, store, clock) -> None:
    client, meter = world
    expected = fill(meter, clock)
    before = month_hashes(client)
    report = dump_expired_months(meter, store, dry_run=True)
    assert (report.archived, report.dry_run) == (len(expected), True)
    assert report.summary().startswith(f"dry run: would archive {len(expected)} user-months")
    assert month_hashes(client) == before  # not even the bookkeeping fields were written
    assert store.count_months() == 0


def test_a_late_write_between_read_and_delete_is_never_lost(world, store, clock) -> None:
    """The record lands after the snapshot was read: the hash must stay, and the next run
    archives it with the record; stats count it once all along."""
    client, meter = world
    fill(meter, clock)

    class LateWriter:
        def __init__(self, inner: HistoryStore):
            self.inner, self.fired = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def write_snapshots(self, snapshots, **kwargs):  # noqa: ANN001, ANN201
            written = self.inner.write_snapshots(snapshots, **kwargs)
            if not self.fired:  # committed, not yet deleted: now a late record arrives
                self.fired = True
                record(meter, clock, "2025-11", "ann", tokens=1_000_000, rid="late")
                clock.set(2026, 1, 15, 12)
            return written

    report = dump_expired_months(meter, LateWriter(store))  # reads the meter's clock once, at the start
    assert report.changed == 1 and ("ann", "2025-11") in month_hashes(client)
    expected = {("ann", "2025-11"): plain(month_hashes(client)[("ann", "2025-11")])}
    meter.history = store
    clock.set(2026, 1, 15, 12)
    assert meter.get_token_stats("ann")["history"]["2025-11"]["system_deepseek"]["input"] == 1000 + 1001 + 1_000_000
    follow_up = dump_expired_months(meter, store)
    assert (follow_up.archived, follow_up.changed) == (1, 0)
    assert archive(store, [("ann", "2025-11")]) == expected
    assert meter.get_token_stats("ann")["history"]["2025-11"]["system_deepseek"]["input"] == 1000 + 1001 + 1_000_000


def test_a_late_write_after_the_delete_is_archived_beside_the_first(world, store, clock) -> None:
    client, meter = world
    fill(meter, clock)
    dump_expired_months(meter, store)
    first = store.load_totals("ann", ["2025-12"])["2025-12"]
    record(meter, clock, "2025-12", "ann", tokens=100_000, rid="very-late")  # re-creates the hash
    clock.set(2026, 1, 15, 12)
    meter.history = store
    stats = meter.get_token_stats("ann")["history"]["2025-12"]["system_deepseek"]
    assert (stats["input"], stats["calls"]) == (first.models["system_deepseek"].input_tokens + 100_000, 2)
    dump_expired_months(meter, store)
    assert len(store.load_months("ann", ["2025-12"])) == 2  # two generations
    total = store.load_totals("ann", ["2025-12"])["2025-12"]
    assert total.models["system_deepseek"].input_tokens == first.models["system_deepseek"].input_tokens + 100_000
    assert total.credit_nano == 7_500_000_000  # the first generation's credit is kept
    assert meter.get_token_stats("ann")["history"]["2025-12"]["system_deepseek"] == stats


def test_a_second_dump_racing_the_first_never_loses_or_doubles(world, store, clock) -> None:
    """Dump B runs entirely between dump A's read and A's write; A's older snapshots must not
    overwrite B's, and A must not delete what B left."""
    client, meter = world
    expected = fill(meter, clock)

    class Interleaved:
        def __init__(self, inner: HistoryStore):
            self.inner, self.fired = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def write_snapshots(self, snapshots, **kwargs):  # noqa: ANN001, ANN201
            if not self.fired:
                self.fired = True
                record(meter, clock, "2025-11", "ann", tokens=50, rid="between")
                clock.set(2026, 1, 15, 12)
                expected[("ann", "2025-11")] = plain(month_hashes(client)[("ann", "2025-11")])
                b = dump_expired_months(meter, self.inner)
                assert b.archived == len(expected)
            return self.inner.write_snapshots(snapshots, **kwargs)

    dump_expired_months(meter, Interleaved(store))
    assert month_hashes(client).keys() == {("ann", "2026-01")}
    assert archive(store, list(expected)) == expected


def test_unreadable_hashes_are_left_and_reported(world, store, clock) -> None:
    client, meter = world
    fill(meter, clock)
    client.hset("quota:{odd}:2025-10", mapping={"system_deepseek:input": "not-a-number"})
    report = dump_expired_months(meter, store)
    assert report.unreadable == 1 and report.skipped == 1
    assert client.hget("quota:{odd}:2025-10", "system_deepseek:input") == b"not-a-number"


def test_a_plan_that_can_not_be_read_archives_the_default(world, store, clock, caplog) -> None:
    """snapshot_month.lua reads each user's plan in the same step; a plan that is not an integer, or
    a key of another type there, leaves the archived credit NULL (the default), logged, and the
    month is archived all the same."""
    client, meter = world
    record(meter, clock, "2025-12", "pia")
    record(meter, clock, "2025-12", "pat")
    record(meter, clock, "2025-12", "pam")
    meter.set_plan_credit("pam", "12")
    client.set("quota:{pia}:plan", "lots")
    client.rpush("quota:{pat}:plan", "1")
    clock.set(2026, 1, 15)
    with caplog.at_level("WARNING", logger="quota.dump"):
        report = dump_expired_months(meter, store)
    assert (report.archived, report.skipped) == (3, 0) and month_hashes(client) == {}
    credits = {u: store.load_months(u, ["2025-12"])[0].credit_nano for u in ("pia", "pat", "pam")}
    assert credits == {"pia": None, "pat": None, "pam": 12_000_000_000}
    assert "pia's plan can not be read" in caplog.text and "pat's plan can not be read" in caplog.text


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_a_client_that_decodes_responses_dumps_too(kind, request, store, clock) -> None:
    """The fingerprint is binary (the hash's DUMP): the dump reads it undecoded, so a meter made
    with decode_responses=True archives and deletes like any other."""
    backend = request.getfixturevalue("redis_cluster" if kind == "cluster" else "redis_server")
    plain_client = RedisCluster(*backend.startup) if kind == "cluster" else backend.client()
    plain_client.flushall()
    meter = Meter.from_url(backend.url, decode_responses=True, prefix="quota", clock=clock, history=None)
    try:
        for u in range(20):
            record(meter, clock, "2025-12", f"d{u}", tokens=u + 1)
        meter.set_plan_credit("d3", "9")
        clock.set(2026, 1, 15)
        report = dump_expired_months(meter, store)
        assert (report.archived, report.skipped) == (20, 0) and month_hashes(plain_client) == {}
        [month] = store.load_months("d19", ["2025-12"])
        assert month.models["system_deepseek"].input_tokens == 20
        assert store.load_months("d3", ["2025-12"])[0].credit_nano == 9_000_000_000
    finally:
        meter.close()
        plain_client.close()


def test_unreachable_redis_is_a_storage_error(store, clock) -> None:
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(StorageUnavailable, match="127.0.0.1:1"):
        dump_expired_months(Meter(dead, settings=SETTINGS, clock=clock), store)


def test_unreachable_database_is_a_storage_error_and_redis_is_untouched(world, clock) -> None:
    client, meter = world
    fill(meter, clock)
    before = month_hashes(client)
    with pytest.raises(StorageUnavailable, match="127.0.0.1:1"):
        dump_expired_months(meter, HistoryStore("postgresql://x@127.0.0.1:1/q"))
    assert month_hashes(client) == before


def test_every_master_of_the_cluster_is_walked(redis_cluster, store, clock) -> None:
    redis_cluster.flushall()
    client = RedisCluster(host=redis_cluster.startup[0], port=redis_cluster.startup[1])
    meter = Meter(client, clock=clock, settings=SETTINGS)
    for u in range(60):
        record(meter, clock, "2025-12", f"c{u}", tokens=u + 1)
    clock.set(2026, 1, 15)
    owners = {client.get_node_from_key(f"quota:{{c{u}}}:2025-12").name for u in range(60)}
    assert len(owners) == 3  # the data really is on every master
    report = dump_expired_months(meter, store)
    assert report.archived == 60 and month_hashes(client) == {}
    assert store.load_totals("c59", ["2025-12"])["2025-12"].models["system_deepseek"].input_tokens == 60
    client.close()


async def test_async_meter_merges_the_archive_too(real_backend, store, clock) -> None:
    from quota import AsyncMeter

    client = real_backend.sync_client()
    meter = Meter(client, clock=clock, settings=SETTINGS)
    record(meter, clock, "2025-12", "amy", tokens=42)
    clock.set(2026, 1, 15)
    dump_expired_months(meter, store)
    record(meter, clock, "2025-12", "amy", tokens=8, rid="late")  # a new generation, live in Redis
    clock.set(2026, 1, 15)
    ameter = AsyncMeter(real_backend.async_client(), clock=clock, settings=SETTINGS, history=store)
    stats = await ameter.get_token_stats("amy")
    await ameter.aclose()
    assert stats["history"]["2025-12"]["system_deepseek"]["input"] == 50
    assert stats["history"]["2025-12"]["system_deepseek"]["calls"] == 2
    client.close()


def test_cached_archived_months_follow_every_dump(world, store, clock) -> None:
    """get_token_stats keeps archived months per archive epoch (quota._stats.ArchiveCache): a
    repeat read does no SQL; a dump that archives (and deletes) a re-created hash between two
    reads bumps the epoch, so the next read sees the new generation: nothing is missed."""
    client, meter = world
    fill(meter, clock)
    dump_expired_months(meter, store)
    clock.set(2026, 1, 15, 12)
    meter.history = store
    first = meter.get_token_stats("ann")
    cache = meter._archives  # noqa: SLF001 - the test looks at what was read
    hits = cache.hits
    assert meter.get_token_stats("ann") == first and cache.hits == hits + 1  # no SQL the second time
    # A late write re-creates December, a dump archives and deletes it: all between two reads.
    record(meter, clock, "2025-12", "ann", tokens=100_000, rid="very-late-cached")
    clock.set(2026, 1, 15, 12)
    dump_expired_months(meter, store)
    assert ("ann", "2025-12") not in month_hashes(client)
    after = meter.get_token_stats("ann")["history"]["2025-12"]["system_deepseek"]
    before = first["history"]["2025-12"]["system_deepseek"]
    assert (after["input"], after["calls"]) == (before["input"] + 100_000, before["calls"] + 1)
