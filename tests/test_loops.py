"""One AsyncMeter on many event loops (issue 15): a second ``asyncio.run()``, threads with loops of
their own, Django's async test client. An asyncio client belongs to the loop that first used it;
a meter ``from_url`` built keeps one client per loop, closed with its loop. Before, the second
loop failed with ``RuntimeError: Event loop is closed``, not a QuotaError, so neither the outage
policy nor the spool applied.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest
import redis
import redis.asyncio as aredis

from quota import AsyncMeter, ConfigError
from quota.testing import free_ports

from .conftest import Backend

SYS = "system_deepseek"  # 0.001 + 0.002 CNY per 1k tokens in and out: 0.003 per call below


async def every_kind_of_call(meter: AsyncMeter, tag: str) -> None:
    """One single record, one pipelined batch of two, one turn with a record: 4 calls, 0.012 CNY."""
    await meter.ping()
    await meter.update_token_usage("alice", SYS, 1000, 1000, request_id=f"{tag}-one")
    await meter.update_token_usage_many(
        [
            {"user": "alice", "model_id": SYS, "input_tokens": 1000, "output_tokens": 1000, "request_id": f"{tag}-b1"},
            {"user": "bob", "model_id": SYS, "input_tokens": 1000, "output_tokens": 1000, "request_id": f"{tag}-b2"},
        ]
    )
    async with meter.turn("alice", SYS) as turn:
        await turn.record(input_tokens=1000, output_tokens=1000, request_id=f"{tag}-turn")


def connections(url: str) -> int:
    with redis.Redis.from_url(url) as probe:
        return len(probe.client_list()) - 1  # minus the probe


def test_one_async_meter_from_url_across_two_asyncio_runs_and_two_threads(real_backend: Backend):
    meter = AsyncMeter.from_url(real_backend.url, history=None, prefix="loops", monthly_credit=5)
    baseline = None if real_backend.is_cluster else connections(real_backend.url)

    asyncio.run(every_kind_of_call(meter, "run1"))
    asyncio.run(every_kind_of_call(meter, "run2"))  # "Event loop is closed" before

    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(tag: str) -> None:
        async def body() -> None:
            start.wait()  # both loops at once, on the same meter
            for n in range(3):
                await every_kind_of_call(meter, f"{tag}-{n}")

        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"thread{k}",)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    stats = asyncio.run(meter.get_token_stats("alice", exact=True))
    runs = 2 + 2 * 3  # every_kind_of_call ran 8 times: 3 of alice's calls each
    assert stats["models"][SYS]["calls"] == 3 * runs
    assert stats["monthly_used"] == Decimal("0.009") * runs  # exact, to the nano-CNY
    assert asyncio.run(meter.get_token_stats("bob"))["models"][SYS]["calls"] == runs
    if baseline is not None:
        assert connections(real_backend.url) == baseline  # each loop's client closed with its loop


async def test_aclose_closes_the_running_loops_client(redis_server):
    redis_server.client().flushall()
    baseline = connections(redis_server.url)
    meter = AsyncMeter.from_url(redis_server.url, history=None, prefix="loops")
    await every_kind_of_call(meter, "here")
    assert meter.client is meter.client and connections(redis_server.url) > baseline
    await meter.aclose()  # the loop's shutdown closes it again later: harmless
    assert connections(redis_server.url) == baseline


def test_each_loop_gets_its_own_client_and_the_outage_policy_applies_in_each(tmp_path):
    """Redis away: every loop's turn spools its record (StorageUnavailable inside), none raises
    RuntimeError."""
    port = free_ports(1, start=19700)[0]
    meter = AsyncMeter.from_url(
        f"redis://127.0.0.1:{port}/0", history=None, spool=tmp_path / "q" / "quota.spool", socket_connect_timeout=0.2
    )

    async def one_turn() -> tuple[object, str]:
        async with meter.turn("alice", SYS) as turn:
            recorded = await turn.record(input_tokens=10, output_tokens=10)
        return meter.client, recorded.status

    (first, status1), (second, status2) = asyncio.run(one_turn()), asyncio.run(one_turn())
    assert (status1, status2) == ("spooled", "spooled")
    assert first is not second  # the second loop made a client of its own
    assert meter.turn_options.spool.pending_count() == 2


def test_a_meter_on_a_client_you_pass_says_why_it_cannot_follow_a_new_loop(redis_server):
    redis_server.client().flushall()
    meter = AsyncMeter(aredis.Redis.from_url(redis_server.url), prefix="loops")
    assert asyncio.run(meter.update_token_usage("alice", SYS, 1000, 1000)).monthly_used == Decimal("0.003")
    with pytest.raises(ConfigError, match=r"AsyncMeter\.from_url, which keeps one client per event loop"):
        asyncio.run(meter.update_token_usage("alice", SYS, 1000, 1000))

    async def a_turn() -> None:
        async with meter.turn("alice", SYS):
            pass

    with pytest.raises(ConfigError, match="another loop"):  # not swallowed by the turn's outage policy
        asyncio.run(a_turn())
