"""AsyncMeter's auto-pipelining (quota/_async/_pipeline.py): concurrent calls on one event loop
go out together, one pipeline per node, and each caller gets its own result or error, exactly as
it would alone, on fakeredis, a real Redis and the real cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from quota import AsyncMeter, InvalidInput, Meter, RequestConflict, Settings, StorageUnavailable
from quota._config import ConfigError
from quota.testing import RedisClusterProc, free_port

MODEL = "system_deepseek"


def batcher_of(meter: AsyncMeter) -> Any:
    return meter._clients.here().batcher  # noqa: SLF001 - the test looks at what was sent


async def burst(meter: AsyncMeter, count: int, *, tag: str = "r", user_of=lambda i: f"u{i % 7}") -> list[Any]:
    """``count`` records at once, each from its own task; results or exceptions, in order."""
    return await asyncio.gather(
        *(meter.update_token_usage(user_of(i), MODEL, 100 + i, 10, request_id=f"{tag}{i}") for i in range(count)),
        return_exceptions=True,
    )


def test_the_switch():
    assert Settings().auto_pipeline is True
    assert Settings.from_env({"QUOTA_AUTO_PIPELINE": "off"}).auto_pipeline is False
    assert Settings.from_env({"QUOTA_AUTO_PIPELINE": "1"}).auto_pipeline is True
    with pytest.raises(ConfigError, match="QUOTA_AUTO_PIPELINE"):
        Settings.from_env({"QUOTA_AUTO_PIPELINE": "sometimes"})
    with pytest.raises(ConfigError, match="auto_pipeline"):
        Settings(auto_pipeline="yes")  # type: ignore[arg-type]


async def test_concurrent_calls_each_get_their_own_result_and_error(backend, clock):
    """200 tasks at once, one of them reusing a request id for another record (RequestConflict)
    and one a true duplicate: every other task gets its own result, sent in a few pipelines."""
    meter = AsyncMeter(backend.async_client(), clock=clock, prefix="ap")
    try:
        first = await meter.update_token_usage("u0", MODEL, 5, 5, request_id="taken")
        assert batcher_of(meter).sent_alone == 1  # a lone call goes at once, alone
        calls = [meter.update_token_usage(f"u{i % 7}", MODEL, 100 + i, 10, request_id=f"r{i}") for i in range(198)]
        calls.insert(50, meter.update_token_usage("u0", MODEL, 6, 6, request_id="taken"))  # conflict
        calls.insert(120, meter.update_token_usage("u0", MODEL, 5, 5, request_id="taken"))  # duplicate
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[50], RequestConflict)
        assert results[120].duplicate and results[120].cost_nano == first.cost_nano
        rest = [r for i, r in enumerate(results) if i not in (50, 120)]
        assert all(not isinstance(r, BaseException) and not r.duplicate for r in rest)
        assert [r.input_tokens for r in rest] == [100 + i for i in range(198)]  # each its own reply
        assert [r.user for r in rest] == [f"u{i % 7}" for i in range(198)]
        batcher = batcher_of(meter)
        assert batcher.batched >= 150, "most of the burst should have gone out pipelined"
        assert batcher.batches <= 10 * (3 if backend.is_cluster else 1)
        # The totals are what was sent, each record once.
        stats = await meter.get_token_stats("u0")
        sent = sum(100 + i for i in range(198) if i % 7 == 0) + 5
        assert stats["models"][MODEL]["input_tokens"] == sent
    finally:
        await meter.aclose()


async def test_off_sends_each_call_alone(backend, clock):
    meter = AsyncMeter(backend.async_client(), clock=clock, prefix="ap", auto_pipeline=False)
    try:
        results = await burst(meter, 20)
        assert all(not isinstance(r, BaseException) for r in results)
        assert batcher_of(meter) is None
    finally:
        await meter.aclose()


def test_the_sync_meter_has_no_batcher(backend, clock):
    meter = Meter(backend.sync_client(), clock=clock, prefix="ap")
    try:
        assert meter.update_token_usage("u1", MODEL, 1, 1).input_tokens == 1
        assert meter._clients.here().batcher is None  # noqa: SLF001
    finally:
        meter.close()


async def test_cancelling_one_waiter_loses_no_other(backend, clock):
    meter = AsyncMeter(backend.async_client(), clock=clock, prefix="ap")
    try:
        await meter.update_token_usage("w", MODEL, 1, 0, request_id="warm")
        tasks = [
            asyncio.ensure_future(meter.update_token_usage("w", MODEL, 1000, 0, request_id=f"c{i}")) for i in range(60)
        ]
        await asyncio.sleep(0)  # every task has queued its call
        tasks[7].cancel()  # queued, not sent yet: left out of the batch
        await asyncio.sleep(0)
        tasks[30].cancel()  # the batch is on its way: its reply is dropped, the others' are not
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[7], asyncio.CancelledError) and isinstance(done[30], asyncio.CancelledError)
        others = [r for i, r in enumerate(done) if i not in (7, 30)]
        assert all(not isinstance(r, BaseException) for r in others)
        stats = await meter.get_token_stats("w")
        counted = stats["models"][MODEL]["input_tokens"]
        assert counted in (1 + 58_000, 1 + 59_000)  # task 30's call may have run (as unpipelined)
        # A call cancelled before its batch left is not sent: sending it again counts it.
        again = await meter.update_token_usage("w", MODEL, 1000, 0, request_id="c7")
        assert not again.duplicate
    finally:
        await meter.aclose()


async def test_a_pipeline_that_fails_whole_fails_every_waiter(clock):
    meter = AsyncMeter.from_url(f"redis://127.0.0.1:{free_port()}", clock=clock, prefix="ap", history=None)
    try:
        results = await burst(meter, 30)
        assert all(isinstance(r, StorageUnavailable) for r in results)
        # ... and invalid input is refused before anything is queued.
        with pytest.raises(InvalidInput):
            await meter.update_token_usage("", MODEL, 1, 1)
    finally:
        await meter.aclose()


@pytest.mark.parametrize("which", ["redis", "cluster"])
async def test_script_flush_in_the_middle_of_bursts(which, request, clock):
    """SCRIPT FLUSH while bursts are in flight: the pipelined calls meet NOSCRIPT and are resent
    with EVAL (quota._batch); every record counts once."""
    if which == "redis":
        server = request.getfixturevalue("redis_server")
        url, flushers = server.url, [server.client()]
    else:
        cluster = request.getfixturevalue("redis_cluster")
        url, flushers = cluster.url, cluster.master_clients()
    for client in flushers:
        client.flushall()
        client.config_resetstat()
    meter = AsyncMeter.from_url(url, clock=clock, prefix="apf", history=None)
    try:
        sent = 0
        for wave in range(6):
            tasks = [meter.update_token_usage(f"f{i % 5}", MODEL, 10, 0, request_id=f"w{wave}-{i}") for i in range(100)]
            if wave % 2 == 0:
                for client in flushers:
                    client.script_flush()
            flush_mid = asyncio.get_running_loop().run_in_executor(None, lambda: [c.script_flush() for c in flushers])
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await flush_mid
            assert all(not isinstance(r, BaseException) and not r.duplicate for r in results), results
            sent += 100
        total = 0
        for user in range(5):
            stats = await meter.get_token_stats(f"f{user}")
            total += stats["models"][MODEL]["input_tokens"]
        assert total == sent * 10
        noscript = sum(int(c.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)) for c in flushers)
        assert noscript >= 1, "the bursts should have met the flushed script cache"
    finally:
        await meter.aclose()


def _nodes(client: redis.Redis) -> dict[int, str]:
    """port -> node id of every node, as ``client`` sees the cluster."""
    out = {}
    for line in client.execute_command("CLUSTER", "NODES").decode().splitlines():
        parts = line.split()
        out[int(parts[1].split(":")[1].split("@")[0])] = parts[0]
    return out


def _move_empty_slot(cluster: RedisClusterProc, slot: int, dst: int, src: int) -> None:
    """Hand an empty ``slot`` from ``src`` to ``dst`` as redis-cli's reshard does, and wait until
    every node agrees."""
    clients = {n.port: n.client() for n in cluster.nodes}
    ids = _nodes(clients[src])
    clients[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    clients[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    for port in [dst, src] + [p for p in clients if p not in (src, dst)]:
        clients[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        owners = set()
        for client in clients.values():
            for low, high, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    owners.add(master[1])
        if owners == {dst}:
            return
        time.sleep(0.05)
    raise AssertionError(f"slot {slot} did not move to {dst}")


@pytest.mark.cluster
async def test_moved_after_a_slot_migration(redis_cluster, clock):
    """The meter learnt the slots; then one user's slot moves to another master. That user's
    calls in the next burst are pipelined to the old owner, answered MOVED, and resent through the
    cluster client; the others are not disturbed. Every record counts once."""
    redis_cluster.flushall()
    meter = AsyncMeter.from_url(redis_cluster.url, clock=clock, prefix="apm", history=None)
    moving = "mover"
    slot = key_slot(f"apm:{{{moving}}}".encode())
    first = redis_cluster.nodes[0].client()
    owner = next(
        master[1] for low, high, master, *_ in first.execute_command("CLUSTER", "SLOTS") if low <= slot <= high
    )
    other = next(n.port for n in redis_cluster.nodes[: redis_cluster.masters] if n.port != owner)
    try:
        await burst(meter, 20, tag="warm")  # the client knows the slots now
        _move_empty_slot(redis_cluster, slot, other, owner)
        results = await burst(meter, 120, user_of=lambda i: moving if i % 3 == 0 else f"u{i % 7}")
        assert all(not isinstance(r, BaseException) and not r.duplicate for r in results), results
        assert batcher_of(meter).batches >= 2
        stats = await meter.get_token_stats(moving)
        assert stats["models"][MODEL]["input_tokens"] == sum(100 + i for i in range(0, 120, 3))
        moved = sum(
            int(node.client().info("errorstats").get("errorstat_MOVED", {}).get("count", 0))
            for node in redis_cluster.nodes[: redis_cluster.masters]
        )
        assert moved >= 1, "the burst should have met the moved slot"
    finally:
        await meter.aclose()
        redis_cluster.flushall()
        _move_empty_slot(redis_cluster, slot, owner, other)
