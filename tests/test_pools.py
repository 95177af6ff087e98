"""Pools that queue: a busy worker waits for a connection, it never loses a record to its own pool.

redis-py 8's pools raise MaxConnectionsError past 100 busy connections. Each "serves" test has a
control beside it: the same load on a plain redis-py client, which must fail, so that the test
shows the fix and not a load too light to matter. Threads only pile up on their connections while
the server is slow, so the thread tests pause the server's writes (CLIENT PAUSE WRITE, which holds
scripts too) for a moment while they start.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

from quota import AsyncMeter, ConfigError, Meter, Settings, StorageUnavailable
from quota._config import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S

from .conftest import Backend

MODEL = "system_deepseek"
CALLS = 1000
THREADS = 200
PAUSE_MS = 400


# --- helpers ---------------------------------------------------------------------------------------


def primaries(backend: Backend) -> list[redis.Redis]:
    """A plain client on each primary, to look at the servers themselves."""
    client = backend.sync_client()
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def named_connections(backend: Backend, name: str) -> list[int]:
    """How many connections named ``name`` each primary has open."""
    return [sum(1 for c in node.client_list() if c.get("name") == name) for node in primaries(backend)]


def pause_writes(backend: Backend, ms: int) -> None:
    for node in primaries(backend):
        node.client_pause(ms, all=False)  # WRITE mode: writes and scripts wait, our reads do not


# The load tests prove that callers queue and totals stay exact, not how fast a hang is detected
# (tests/test_storage.py and tests/faults do that): on a loaded 2-core machine 50 simultaneous
# connects can pass the default 0.5 s connect timeout, which would fail them for the wrong reason.
PATIENT = {"socket_connect_timeout": 5, "socket_timeout": 10, "pool_timeout_s": 30}


def blocked_clients(backend: Backend) -> int:
    return sum(int(node.info("clients")["blocked_clients"]) for node in primaries(backend))


def record_args(i: int) -> tuple[str, int, int]:
    """The i-th record of a load: its user, input and output tokens."""
    return f"u{i % 10}", 1 + i % 5, i % 3


def expected_totals(records: list[tuple[str, int, int]]) -> dict[str, tuple[int, int, int]]:
    totals: dict[str, list[int]] = {}
    for user, tin, tout in records:
        t = totals.setdefault(user, [0, 0, 0])
        t[0] += tin
        t[1] += tout
        t[2] += 1
    return {user: (t[0], t[1], t[2]) for user, t in totals.items()}


def totals_of(stats: dict[str, Any]) -> tuple[int, int, int]:
    model = stats["models"][MODEL]
    return model["input_tokens"], model["output_tokens"], model["calls"]


def pool_errors(results: list[Any]) -> list[BaseException]:
    """The results that failed because a pool had no connection to give."""
    return [r for r in results if isinstance(r, StorageUnavailable) and isinstance(r.__cause__, MaxConnectionsError)]


def in_threads(count: int, body: Callable[[int], None], before: Callable[[], None]) -> list[BaseException]:
    """Run ``body(i)`` in ``count`` threads released together right after ``before()``; the errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(count + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            body(i)
        except Exception as exc:  # noqa: BLE001 - collected, the test asserts on them
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    before()
    start.wait()
    for t in threads:
        t.join(timeout=60)
    return errors


# --- asyncio: one meter, 1,000 concurrent records ----------------------------------------------------


async def test_one_async_meter_serves_1000_concurrent_records_exactly(real_backend: Backend):
    meter = AsyncMeter.from_url(
        real_backend.url, history=None, prefix="pools", client_name="pools-async", auto_pipeline=False, **PATIENT
    )  # each call on its own: 1,000 callers queue for 50 connections
    await meter.check_quota_available("warm", MODEL)  # a running worker's client, as in the control
    records = [record_args(i) for i in range(CALLS)]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            meter.update_token_usage(user, MODEL, tin, tout, request_id=f"a{i}")
            for i, (user, tin, tout) in enumerate(records)
        )
    )
    elapsed = time.perf_counter() - started
    assert all(not r.duplicate for r in results)
    opened = named_connections(real_backend, "pools-async")
    # The callers queued; the pools stayed in bounds. On a cluster redis-py keeps one connection
    # more, apart, on the node named in the URL: the one it learns the topology with.
    assert max(opened) <= DEFAULT_MAX_CONNECTIONS + real_backend.is_cluster, opened
    for user, want in expected_totals(records).items():
        assert totals_of(await meter.get_token_stats(user, months=0)) == want
    await meter.aclose()
    assert elapsed < 20, f"{CALLS} concurrent records took {elapsed:.2f} s"


async def test_control_a_plain_redis_py_async_client_fails_at_that_concurrency(real_backend: Backend):
    client = (
        AsyncRedisCluster.from_url(real_backend.url.replace("redis+cluster", "redis"))
        if real_backend.is_cluster
        else aredis.Redis.from_url(real_backend.url)
    )
    # Without auto-pipelining (with it, 1,000 concurrent calls need only a few connections:
    # test_auto_pipeline_needs_few_connections below).
    meter = AsyncMeter(client, prefix="pools", auto_pipeline=False)
    # Warm, as a running worker's client is. (A cold cluster client lets its first commands through
    # one by one, behind the lock it learns the slots under, and would not show the limit.)
    await meter.check_quota_available("warm", MODEL)
    results = await asyncio.gather(
        *(meter.update_token_usage(user, MODEL, tin, tout) for user, tin, tout in map(record_args, range(CALLS))),
        return_exceptions=True,
    )
    await meter.aclose()
    failed = pool_errors(results)
    assert failed, Counter(type(r).__name__ for r in results)


async def test_auto_pipeline_needs_few_connections(real_backend: Backend):
    """The control above, auto-pipelined (the default): the same plain redis-py client serves
    1,000 concurrent records, sent as a few pipelines per node on a few connections."""
    meter = AsyncMeter.from_url(real_backend.url, history=None, prefix="pools", client_name="pools-auto", **PATIENT)
    await meter.check_quota_available("warm", MODEL)
    records = [record_args(i) for i in range(CALLS)]
    results = await asyncio.gather(
        *(
            meter.update_token_usage(user, MODEL, tin, tout, request_id=f"p{i}")
            for i, (user, tin, tout) in enumerate(records)
        )
    )
    assert all(not r.duplicate for r in results)
    assert max(named_connections(real_backend, "pools-auto")) <= 6, named_connections(real_backend, "pools-auto")
    for user, want in expected_totals(records).items():
        assert totals_of(await meter.get_token_stats(user, months=0)) == want
    await meter.aclose()


async def test_concurrent_batches_queue_for_the_node_pipelines(real_backend: Backend):
    """``update_token_usage_many`` pipelines through a plain client per cluster node (or the
    standalone client): those pools queue too, within ``max_connections``. 300 batches at once
    ask a node for up to 300 connections. (On a cluster a pipeline that fails is resent record
    by record through the cluster client, which hid a full node pool: the connection count shows
    it.)"""
    meter = AsyncMeter.from_url(
        real_backend.url, history=None, prefix="pools", max_connections=5, client_name="pools-batch", **PATIENT
    )
    await meter.check_quota_available("warm", MODEL)
    batches = [
        [
            dict(user=user, model_id=MODEL, input_tokens=tin, output_tokens=tout, request_id=f"b{b}-{k}")
            for k, (user, tin, tout) in enumerate(map(record_args, (b, b + 3, b + 7)))
        ]
        for b in range(300)
    ]
    await asyncio.gather(*(meter.update_token_usage_many(batch) for batch in batches))
    # 5 for the node's pipelines, 5 for commands through the cluster client and 1 to learn the
    # topology with (standalone: 5 in all)
    assert max(named_connections(real_backend, "pools-batch")) <= (11 if real_backend.is_cluster else 5)
    records = [(r["user"], r["input_tokens"], r["output_tokens"]) for batch in batches for r in batch]
    for user, want in expected_totals(records).items():
        assert totals_of(await meter.get_token_stats(user, months=0)) == want
    await meter.aclose()


# --- threads: one meter, 200 threads -----------------------------------------------------------------


def test_one_meter_serves_200_threads_exactly(real_backend: Backend):
    meter = Meter.from_url(real_backend.url, history=None, prefix="pools", client_name="pools-sync", **PATIENT)
    records: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        mine = [("hot", 1 + i % 4, i % 2), record_args(i), record_args(i + 1)]
        for k, (user, tin, tout) in enumerate(mine):
            meter.update_token_usage(user, MODEL, tin, tout, request_id=f"t{i}-{k}")
        batch = [("hot", 2, 1), record_args(i + 5)]
        meter.update_token_usage_many(
            [
                dict(user=u, model_id=MODEL, input_tokens=a, output_tokens=b, request_id=f"t{i}-b{k}")
                for k, (u, a, b) in enumerate(batch)
            ]
        )
        with lock:
            records.extend(mine + batch)

    started = time.perf_counter()
    errors = in_threads(THREADS, work, before=lambda: pause_writes(real_backend, PAUSE_MS))
    elapsed = time.perf_counter() - started
    assert errors == []
    assert max(named_connections(real_backend, "pools-sync")) <= DEFAULT_MAX_CONNECTIONS
    for user, want in expected_totals(records).items():
        assert totals_of(meter.get_token_stats(user, months=0)) == want
    assert sum(want[2] for want in expected_totals(records).values()) == THREADS * 5
    meter.close()
    assert elapsed < 20, f"{THREADS} threads took {elapsed:.2f} s"


def test_control_a_plain_redis_py_client_fails_with_200_threads(real_backend: Backend):
    client = (
        RedisCluster.from_url(real_backend.url.replace("redis+cluster", "redis"))
        if real_backend.is_cluster
        else redis.Redis.from_url(real_backend.url)
    )
    meter = Meter(client, prefix="pools")
    errors = in_threads(
        THREADS,
        lambda i: meter.update_token_usage("hot", MODEL, 1, 1),
        before=lambda: pause_writes(real_backend, PAUSE_MS),
    )
    meter.close()
    assert pool_errors(errors), Counter(type(e).__name__ for e in errors)


# --- a pool that can not serve in time -------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_exhausted_pool_fails_within_its_bound_and_says_why(real_backend: Backend, flavour: str):
    """One connection, held by a BLPOP through the meter's own client until the test releases it
    (10 s at most); a record waits 0.2 s for it, then fails saying what was full and which
    settings to raise. Releasing the BLPOP by hand, not by its timeout, keeps the test exact on a
    loaded machine: the connection is busy for as long as the test needs it to be."""
    options = dict(history=None, prefix="pools", max_connections=1, pool_timeout_s=0.2, socket_timeout=15)
    hold_key = "pools:{alice}:hold"  # alice's hash tag: on a cluster, the node alice's records go to
    releaser = real_backend.sync_client()

    def release() -> None:
        releaser.lpush(hold_key, "go")

    if flavour == "sync":
        meter = Meter.from_url(real_backend.url, **options)
        holder = threading.Thread(target=meter.client.blpop, args=([hold_key],), kwargs={"timeout": 10})
        holder.start()
        wait_until(lambda: blocked_clients(real_backend) == 1)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            meter.update_token_usage("alice", MODEL, 1, 1)
        elapsed = time.monotonic() - started
        release()
        holder.join()
        after = meter.update_token_usage("alice", MODEL, 1, 1)  # the connection is back: served
        meter.close()
    else:

        async def scenario() -> tuple[Any, float, Any]:
            ameter = AsyncMeter.from_url(real_backend.url, **options)
            holder = asyncio.create_task(ameter.client.blpop([hold_key], timeout=10))
            deadline = time.monotonic() + 5
            while blocked_clients(real_backend) != 1:
                assert time.monotonic() < deadline, "the BLPOP never blocked"
                await asyncio.sleep(0.01)
            began = time.monotonic()
            with pytest.raises(StorageUnavailable) as caught:
                await ameter.update_token_usage("alice", MODEL, 1, 1)
            took = time.monotonic() - began
            release()
            await holder
            served = await ameter.update_token_usage("alice", MODEL, 1, 1)
            await ameter.aclose()
            return caught, took, served

        info, elapsed, after = asyncio.run(scenario())
    releaser.delete(hold_key)
    releaser.close()
    message = str(info.value)
    assert 0.18 <= elapsed < 2.0, elapsed  # the pool's bound, not the BLPOP's 10 s
    assert "exhausted for 0.2 s" in message and "max_connections=1" in message, message
    assert "QUOTA_MAX_CONNECTIONS" in message and "QUOTA_POOL_TIMEOUT_S" in message
    assert after.input_tokens == 1 and not after.duplicate


def wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def test_a_caller_that_loses_the_race_for_the_last_connection_queues(redis_server):
    """The asyncio pool's fast path takes a free connection without queueing; a caller that finds
    one free but loses it while it waits for the pool's lock must queue, not fail."""
    meter = AsyncMeter.from_url(redis_server.url, history=None, max_connections=1, pool_timeout_s=2)
    pool = meter.client.connection_pool
    await pool._lock.acquire()  # hold the pool's lock: both callers stop inside the fast path
    first = asyncio.create_task(pool.get_connection())
    second = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0.01)
    pool._lock.release()  # the first takes the only connection; the second finds none left
    connection = await first
    await asyncio.sleep(0.05)
    assert not second.done() and pool.queued == 1  # waiting in the queue, not failed
    await pool.release(connection)
    assert await asyncio.wait_for(second, 1) is connection
    await pool.release(connection)
    await meter.aclose()


class RefusingNodes:
    """``ClusterNode.acquire_connection`` that refuses ``times`` times (None: always) as a full
    node does, then hands out connections as usual."""

    def __init__(self, times: int | None):
        self.left = times
        self.refused = 0
        self.real = ClusterNode.acquire_connection

    @property
    def acquire(self) -> Callable[[ClusterNode], Any]:
        return lambda node: self.refuse_or_acquire(node)  # a function, so that it binds as a method

    def refuse_or_acquire(self, node: ClusterNode) -> Any:
        if self.left is None or self.left > 0:
            self.left = None if self.left is None else self.left - 1
            self.refused += 1
            raise MaxConnectionsError()
        return self.real(node)


async def test_async_cluster_waits_out_a_node_that_is_full_for_a_moment(redis_cluster, monkeypatch):
    """The gate keeps commands under each node's limit, yet a node can be full for a moment (a
    connection closing in the background after a topology change): the record waits for it."""
    meter = AsyncMeter.from_url(redis_cluster.url, history=None, prefix="pools", pool_timeout_s=0.2)
    await meter.client.initialize()
    refusing = RefusingNodes(3)
    monkeypatch.setattr(ClusterNode, "acquire_connection", refusing.acquire)
    result = await meter.update_token_usage("alice", MODEL, 4, 2)
    assert refusing.refused == 3 and result.input_tokens == 4

    monkeypatch.setattr(ClusterNode, "acquire_connection", RefusingNodes(None).acquire)  # full for good
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="exhausted for 0.2 s .max_connections=50 commands in flight"):
        await meter.update_token_usage("alice", MODEL, 4, 2)
    assert 0.18 <= time.monotonic() - started < 1.0
    monkeypatch.undo()
    await meter.aclose()


class FullPoolClient:
    """A client of one's own whose (non-blocking) pool is full."""

    def evalsha(self, *args: Any) -> Any:
        raise MaxConnectionsError("Too many connections")

    def close(self) -> None:
        pass


def test_a_full_pool_in_a_client_of_ones_own_is_reported_as_such():
    with pytest.raises(StorageUnavailable, match="connection pool is full .*from_url .*queues") as info:
        Meter(FullPoolClient()).update_token_usage("alice", MODEL, 1, 1)
    assert "check that it is running" not in str(info.value)  # not the message for a Redis away


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S)),
        ({"QUOTA_MAX_CONNECTIONS": "", "QUOTA_POOL_TIMEOUT_S": ""}, (50, 5.0)),
        ({"QUOTA_MAX_CONNECTIONS": "8", "QUOTA_POOL_TIMEOUT_S": "0.25"}, (8, 0.25)),
        ({"QUOTA_MAX_CONNECTIONS": "10000", "QUOTA_POOL_TIMEOUT_S": "600"}, (10_000, 600.0)),
    ],
)
def test_pool_settings_from_the_environment(env, expected):
    settings = Settings.from_env(env)
    assert (settings.max_connections, settings.pool_timeout_s) == expected


@pytest.mark.parametrize(
    "name, raw, says",
    [
        ("QUOTA_MAX_CONNECTIONS", "many", "QUOTA_MAX_CONNECTIONS must be a whole number, got 'many'"),
        ("QUOTA_MAX_CONNECTIONS", "2.5", "must be a whole number"),
        ("QUOTA_MAX_CONNECTIONS", "0", "QUOTA_MAX_CONNECTIONS must be between 1 and 10000, got 0"),
        ("QUOTA_MAX_CONNECTIONS", "-3", "between 1 and 10000"),
        ("QUOTA_MAX_CONNECTIONS", "10001", "between 1 and 10000"),
        ("QUOTA_POOL_TIMEOUT_S", "soon", "QUOTA_POOL_TIMEOUT_S must be a number, got 'soon'"),
        ("QUOTA_POOL_TIMEOUT_S", "0", "QUOTA_POOL_TIMEOUT_S must be between 0.01 and 600, got '0'"),
        ("QUOTA_POOL_TIMEOUT_S", "-1", "between 0.01 and 600"),
        ("QUOTA_POOL_TIMEOUT_S", "601", "between 0.01 and 600"),
        ("QUOTA_POOL_TIMEOUT_S", "nan", "between 0.01 and 600, got 'nan'"),
        ("QUOTA_POOL_TIMEOUT_S", "inf", "between 0.01 and 600, got 'inf'"),
    ],
)
def test_bad_pool_settings_in_the_environment_are_config_errors(name, raw, says):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: raw})
    assert says in str(info.value)


@pytest.mark.parametrize(
    "option, says",
    [
        (dict(max_connections=0), "max_connections must be a whole number between 1 and 10000, got 0"),
        (dict(max_connections=True), "got True"),
        (dict(max_connections=2.0), "got 2.0"),
        (dict(pool_timeout_s=None), "pool_timeout_s must be a number of seconds between 0.01 and 600, got None"),
        (dict(pool_timeout_s=0), "got 0"),
        (dict(pool_timeout_s=float("inf")), "got inf"),
    ],
)
def test_bad_pool_options_are_config_errors(option, says):
    with pytest.raises(ConfigError) as info:
        Meter.from_url("redis://127.0.0.1:1/0", history=None, **option)
    assert says in str(info.value)


async def test_pool_settings_reach_the_pools(monkeypatch):
    """From the environment and from options, sync and asyncio (no server needed: pools connect
    lazily). The cluster clients' pools are shown by the exhausted-pool test above."""
    url = "redis://127.0.0.1:1/0"
    monkeypatch.setenv("QUOTA_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("QUOTA_POOL_TIMEOUT_S", "0.3")
    from_env = Meter.from_url(url, history=None)
    assert (from_env.client.connection_pool.max_connections, from_env.client.connection_pool.timeout) == (7, 0.3)
    assert isinstance(from_env.client.connection_pool, redis.BlockingConnectionPool)
    from_env.close()
    given = AsyncMeter.from_url(url, history=None, max_connections=3, pool_timeout_s=1.5)
    assert (given.client.connection_pool.max_connections, given.client.connection_pool.timeout) == (3, 1.5)
    assert isinstance(given.client.connection_pool, aredis.BlockingConnectionPool)
    assert given.settings.max_connections == 3
    await given.aclose()


# --- the sync pool's lean path -------------------------------------------------------------------


def test_the_sync_pool_skips_redis_pys_pool_metrics_only_when_they_are_off(redis_server, monkeypatch):
    from quota import _connect

    assert _connect.QueueingPool.from_url(redis_server.url).lean  # the default: no metrics, RESP2

    class Config:
        enabled_telemetry = ["connection_basic"]

    class Manager:
        config = Config()

    class Observability:
        def get_provider_manager(self) -> Manager:
            return Manager()

    import redis.observability.providers as providers

    monkeypatch.setattr(providers, "get_observability_instance", Observability)
    assert not _connect.QueueingPool.from_url(redis_server.url).lean  # metrics on: redis-py's own path
    monkeypatch.undo()
    # RESP3 with maintenance notifications ("auto", redis-py's default) needs redis-py's path too.
    assert not _connect.QueueingPool.from_url(redis_server.url, protocol=3).lean


def test_a_connection_given_back_with_an_unread_reply_is_renewed(redis_server):
    """The lean path keeps the pool's freshness check: a connection released with a reply still
    unread (a caller interrupted between send and read) must not hand that reply to the next
    caller. The control shows the check is what prevents it."""
    meter = Meter.from_url(redis_server.url, history=None, max_connections=1)
    pool = meter.client.connection_pool
    assert pool.lean
    for check in (True, False):
        user = f"lean-fresh-{check}-{time.time_ns()}"
        connection = pool.get_connection()
        connection.send_command("ECHO", "stale")  # its reply is left unread
        deadline = time.monotonic() + 5
        while not connection.can_read() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not check:
            connection.can_read = lambda timeout=0: False  # the control: no freshness check
        pool.release(connection)
        try:
            result = meter.update_token_usage(user, MODEL, 1000, 1000)
            truthful = (result.monthly_used_nano, result.monthly_credit_nano) == (result.cost_nano, 5 * 10**9)
        except ValueError:  # the ECHO read as record.lua's one-string reply: not its fields
            truthful = False
        assert truthful is check  # without the check the record is answered by the ECHO
    pool.disconnect()  # the control's connection still holds the record's own reply
    meter.close()


def test_a_forked_child_opens_its_own_connections(redis_server):
    """After a fork the lean path, as redis-py's, gives the child new connections: parent and child
    never share a socket, and every record of both is counted once."""
    import os

    meter = Meter.from_url(redis_server.url, history=None)
    user = f"lean-fork-{time.time_ns()}"
    meter.update_token_usage(user, MODEL, 1000, 0)  # the parent holds a pooled connection
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            for _ in range(50):
                meter.update_token_usage(user, MODEL, 1000, 0)
            code = 0
        finally:
            os._exit(code)
    for _ in range(50):
        meter.update_token_usage(user, MODEL, 1000, 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert meter.get_token_stats(user)["models"][MODEL]["input_tokens"] == 101 * 1000
    meter.close()
