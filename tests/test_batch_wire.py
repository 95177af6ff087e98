"""The thin batch path (``_compat.send_scripts``: a batch packed in one buffer, its replies read
in one loop) on a real Redis: each call of a batch gets exactly its own reply or error, NOSCRIPT
is resent with EVAL for those calls only, and a connection cut in the middle of a batch's
replies counts every record once (the connection's retry resends the batch; the request ids
dedupe it)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from quota import AsyncMeter, Meter, RequestConflict, StorageUnavailable
from quota._core import ScriptCall
from quota._scripts import LuaScript
from quota.testing import RedisServer

MODEL = "system_deepseek"


def fresh_script(body: str) -> LuaScript:
    """A script no server has cached yet (its source carries a new id): EVALSHA of it is NOSCRIPT."""
    source = f"-- {uuid.uuid4()}\n{body}\n"
    return LuaScript("test_fresh", source, hashlib.sha1(source.encode()).hexdigest())


def noscript_count(server: RedisServer) -> int:
    return int(server.client().info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))


def mixed_calls(meter: Any) -> tuple[list[ScriptCall[Any]], dict[str, list[int]]]:
    """Records (successes), calls of a script the server lacks (NOSCRIPT, then EVAL), a record
    that reuses a request id for another record (QUOTA_CONFLICT) and a script failing at run
    time, interleaved; and the indexes of each kind."""
    doubler = fresh_script("return tonumber(ARGV[1]) * 2")
    failing = fresh_script("return redis.error_reply('BOOM from the test script')")
    calls: list[ScriptCall[Any]] = []
    kinds: dict[str, list[int]] = {"record": [], "doubled": [], "conflict": [], "failing": []}
    for i in range(40):
        if i == 11:
            kind, call = "conflict", meter.core.record("mix", MODEL, 2, 2, request_id="taken")
        elif i == 23:
            kind, call = "failing", ScriptCall(failing, ("wire:{mix}:f",), (), lambda r: r)
        elif i % 2:
            kind, call = "doubled", ScriptCall(doubler, ("wire:{mix}:d",), (str(i),), lambda r: r)
        else:
            kind, call = "record", meter.core.record(f"m{i % 3}", MODEL, 100 + i, 0, request_id=f"rec-{i}")
        kinds[kind].append(i)
        calls.append(call)
    return calls, kinds


async def test_a_batch_mixing_noscript_a_script_error_and_successes(redis_server, clock):
    """Through the auto-pipeline: 40 concurrent calls go out as one batch; each caller gets its
    own outcome, and only the calls whose script was missing were resent (with EVAL)."""
    meter = AsyncMeter.from_url(redis_server.url, clock=clock, prefix="wire", history=None)
    try:
        first = await meter.update_token_usage("mix", MODEL, 1, 1, request_id="taken")
        calls, kinds = mixed_calls(meter)
        before = noscript_count(redis_server)
        batcher = meter._clients.here().batcher  # noqa: SLF001 - the test looks at what was sent
        batched = batcher.batched
        # One call first, alone on the wire, so that the 40 queue behind it as one batch.
        outcomes = await asyncio.gather(
            meter.update_token_usage("mix", MODEL, 1, 1, request_id="lone"),
            *(meter.run(call) for call in calls),
            return_exceptions=True,
        )
        assert batcher.batched - batched == len(calls)
        outcomes = outcomes[1:]
        assert noscript_count(redis_server) - before == len(kinds["doubled"]) + len(kinds["failing"])
        for i in kinds["doubled"]:
            assert outcomes[i] == 2 * i
        for i in kinds["record"]:
            assert outcomes[i].input_tokens == 100 + i and not outcomes[i].duplicate
        (conflict,) = (outcomes[i] for i in kinds["conflict"])
        assert isinstance(conflict, RequestConflict)
        (failing,) = (outcomes[i] for i in kinds["failing"])
        assert isinstance(failing, StorageUnavailable) and "BOOM from the test script" in str(failing)
        stats = await meter.get_token_stats("mix")
        assert stats["models"][MODEL]["input_tokens"] == first.input_tokens + 1  # the conflict counted nothing
    finally:
        await meter.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_run_many_mixing_noscript_a_script_error_and_successes(kind, redis_server, clock):
    """The same mix through ``run_many`` (the batch plan) of both meters: raw replies in order, an
    error reply as its exception."""
    opened = Meter if kind == "sync" else AsyncMeter
    meter: Any = opened.from_url(redis_server.url, clock=clock, prefix=f"wire{kind}", history=None)
    try:
        if kind == "sync":
            meter.update_token_usage("mix", MODEL, 1, 1, request_id="taken")
        else:
            await meter.update_token_usage("mix", MODEL, 1, 1, request_id="taken")
        calls, kinds = mixed_calls(meter)
        before = noscript_count(redis_server)
        replies = meter.run_many(calls) if kind == "sync" else await meter.run_many(calls)
        assert noscript_count(redis_server) - before == len(kinds["doubled"]) + len(kinds["failing"])
        assert [replies[i] for i in kinds["doubled"]] == [2 * i for i in kinds["doubled"]]
        for i in kinds["record"]:
            assert calls[i].parse(replies[i]).input_tokens == 100 + i
        (conflict,) = (replies[i] for i in kinds["conflict"])
        assert isinstance(conflict, ResponseError) and "QUOTA_CONFLICT" in str(conflict)
        (failing,) = (replies[i] for i in kinds["failing"])
        assert type(failing) is ResponseError and "BOOM from the test script" in str(failing)
        assert not any(isinstance(r, NoScriptError) for r in replies)
    finally:
        if kind == "sync":
            meter.close()
        else:
            await meter.aclose()


class CuttingProxy:
    """A loopback TCP proxy to a Redis server that cuts the first connection carrying a batch
    (over ``batch_bytes`` sent by the client) once part of the batch's replies has reached the
    client: some replies read, the rest lost, the scripts run or not."""

    def __init__(self, port: int, batch_bytes: int = 4000) -> None:
        self.port = port
        self.batch_bytes = batch_bytes
        self.connections = 0
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        sent = [0]
        armed = self.cuts == 0

        async def upstream() -> None:
            while data := await client_r.read(65536):
                sent[0] += len(data)
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if armed and self.cuts == 0 and sent[0] > self.batch_bytes and len(data) > 200:
                    self.cuts += 1
                    client_w.write(data[: len(data) // 2])  # half of these replies, then the cut
                    await client_w.drain()
                    break
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


@pytest.mark.parametrize("retry", ["default", "no resend"])
async def test_a_connection_cut_mid_batch_counts_each_record_once(retry, redis_server, clock):
    """The batch's connection is cut after part of its replies arrived, as a pipeline's would be.

    With the default options (redis-py's asyncio ``Retry``, two resends) the connection resends
    the whole batch on a new connection and every caller gets its reply. With no resend every
    caller of the batch gets ``StorageUnavailable`` and resends with the same request id. Either
    way the scripts that ran dedupe by request id: every record is counted exactly once."""
    proxy = CuttingProxy(redis_server.port)
    url = await proxy.start()
    options: dict[str, Any] = {}
    if retry != "default":
        options["retry"] = AsyncRetry(NoBackoff(), 0)
    meter = AsyncMeter.from_url(url, clock=clock, prefix=f"wirecut{len(options)}", history=None, **options)
    try:
        await meter.update_token_usage("cut0", MODEL, 1, 0)  # connected, the script cached
        connections = proxy.connections

        def send(i: int) -> Any:
            return meter.update_token_usage(f"cut{i % 4}", MODEL, 1000 + i, 0, request_id=f"a{i}")

        results = await asyncio.gather(*(send(i) for i in range(120)), return_exceptions=True)
        assert proxy.cuts == 1, "the batch's connection should have been cut"
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        if retry == "default":
            assert not failed, results
            assert proxy.connections > connections
            assert any(r.duplicate for r in results), "some scripts ran before the cut: their resend is a duplicate"
        else:
            assert len(failed) >= 100 and all(isinstance(results[i], StorageUnavailable) for i in failed)
            again = await asyncio.gather(*(send(i) for i in failed))
            assert any(r.duplicate for r in again), "some scripts ran before the cut: their resend is a duplicate"
        total = 0
        for user in range(4):
            stats = await meter.get_token_stats(f"cut{user}")
            total += stats["models"][MODEL]["input_tokens"]
        assert total == 1 + sum(1000 + i for i in range(120))
    finally:
        await meter.aclose()
        await proxy.close()


async def test_the_sync_batch_cut_mid_batch_counts_each_record_once(redis_server, clock):
    """The same cut under the sync ``Meter.update_token_usage_many`` (run in a thread, the proxy
    on this loop): counted once, the resent records that had run reported as duplicates."""
    proxy = CuttingProxy(redis_server.port)
    url = await proxy.start()
    meter = Meter.from_url(url, clock=clock, prefix="wirecuts", history=None)
    try:
        await asyncio.to_thread(meter.update_token_usage, "cut0", MODEL, 1, 0)
        records = [
            {"user": f"cut{i % 4}", "model_id": MODEL, "input_tokens": 1000 + i, "output_tokens": 0}
            | {"request_id": f"s{i}"}
            for i in range(120)
        ]
        results = await asyncio.to_thread(meter.update_token_usage_many, records)
        assert proxy.cuts == 1
        assert [r.request_id for r in results] == [f"s{i}" for i in range(120)]
        assert any(r.duplicate for r in results), "some scripts ran before the cut: their resend is a duplicate"
        total = 0
        for user in range(4):
            stats = await asyncio.to_thread(meter.get_token_stats, f"cut{user}")
            total += stats["models"][MODEL]["input_tokens"]
        assert total == 1 + sum(1000 + i for i in range(120))
    finally:
        await asyncio.to_thread(meter.close)
        await proxy.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_batches_of_a_from_url_meter_bypass_the_redis_py_pipeline(kind, redis_server, clock, monkeypatch):
    """The tests above pass on either path; this one says which is taken: a meter's own client
    sends batches packed by hand, never through redis-py's pipeline (whose ``execute`` fails here)."""
    import redis.asyncio.client
    import redis.client

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a batch went through redis-py's pipeline")

    monkeypatch.setattr(redis.client.Pipeline, "execute", refuse)
    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", refuse)
    records = [{"user": f"bp{i % 3}", "model_id": MODEL, "input_tokens": 10 + i, "output_tokens": 0} for i in range(50)]
    if kind == "sync":
        meter = Meter.from_url(redis_server.url, clock=clock, prefix="bypass", history=None)
        try:
            results = meter.update_token_usage_many(records)
        finally:
            meter.close()
    else:
        ameter = AsyncMeter.from_url(redis_server.url, clock=clock, prefix="bypassa", history=None)
        try:
            results = await ameter.update_token_usage_many(records)
            burst = await asyncio.gather(*(ameter.update_token_usage("bp", MODEL, 1, 0) for _ in range(50)))
            assert ameter._clients.here().batcher.batches >= 1  # noqa: SLF001 - the burst went out batched
            assert all(r.input_tokens == 1 for r in burst)
        finally:
            await ameter.aclose()
    assert [r.input_tokens for r in results] == [10 + i for i in range(50)]
