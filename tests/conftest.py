"""Fixtures: one ``backend`` parametrized over fakeredis, a real Redis and a real Redis Cluster.

The real servers are started once per test session on their own loopback ports (see
``servers.py``). A failure names its backend in the test id: ``test_x[redis]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import fakeredis
import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from quota import AsyncMeter, Meter

from .servers import RedisClusterProc, RedisServer, free_ports

BACKENDS = ["fake", "redis", "cluster"]


class Clock:
    """A settable clock: ``clock.set(2026, 1, 31, 23, 59, 59)``."""

    def __init__(self, moment: datetime | None = None):
        self.now = moment or datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)

    def set(self, *parts: int, microsecond: int = 0) -> None:
        self.now = datetime(*parts, microsecond=microsecond, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer(free_ports(1, start=16000)[0]).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster():
    cluster = RedisClusterProc(masters=3).start()
    yield cluster
    cluster.cleanup()


@dataclass
class Backend:
    name: str
    sync_client: Callable[[], Any]
    async_client: Callable[[], Any]
    flush: Callable[[], None]
    url: str | None = None

    @property
    def is_cluster(self) -> bool:
        return self.name == "cluster"


def make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    if name == "fake":
        server = fakeredis.FakeServer()
        return Backend(
            name,
            lambda: fakeredis.FakeRedis(server=server),
            lambda: fakeredis.FakeAsyncRedis(server=server),
            lambda: fakeredis.FakeRedis(server=server).flushall(),
        )
    if name == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        return Backend(
            name,
            lambda: redis.Redis(host="127.0.0.1", port=srv.port),
            lambda: aredis.Redis(host="127.0.0.1", port=srv.port),
            lambda: srv.client().flushall(),
            srv.url,
        )
    cluster: RedisClusterProc = request.getfixturevalue("redis_cluster")
    host, port = cluster.startup
    return Backend(
        name,
        lambda: RedisCluster(host=host, port=port),
        lambda: AsyncRedisCluster(host=host, port=port),
        cluster.flushall,
        cluster.url,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    b = make_backend(request.param, request)
    b.flush()
    return b


@pytest.fixture(params=["redis", "cluster"])
def real_backend(request: pytest.FixtureRequest) -> Backend:
    b = make_backend(request.param, request)
    b.flush()
    return b


@pytest.fixture
def meter(backend: Backend, clock: Clock):
    m = Meter(backend.sync_client(), clock=clock, prefix="quota", monthly_credit=5)
    yield m
    m.close()


@pytest.fixture
async def ameter(backend: Backend, clock: Clock):
    m = AsyncMeter(backend.async_client(), clock=clock, prefix="quota", monthly_credit=5)
    yield m
    await m.aclose()


class AsyncAsSync:
    """Drives an AsyncMeter from sync test code on a private event loop, so that one test body
    checks both clients: the behaviour must be the same, only the I/O differs."""

    def __init__(self, make_client: Callable[[], Any], **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._meter = self._loop.run_until_complete(self._make(make_client, kwargs))

    @staticmethod
    async def _make(make_client: Callable[[], Any], kwargs: dict[str, Any]) -> AsyncMeter:
        return AsyncMeter(make_client(), **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._meter, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._meter.aclose())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def any_meter(request: pytest.FixtureRequest, backend: Backend, clock: Clock):
    """A Meter or an AsyncMeter (driven synchronously) on every backend: 6 combinations."""
    kwargs = dict(clock=clock, prefix="quota", monthly_credit=5)
    m = Meter(backend.sync_client(), **kwargs) if request.param == "sync" else AsyncAsSync(backend.async_client, **kwargs)
    yield m
    m.close()


@pytest.fixture
def raw(backend: Backend):
    """A plain sync client on the backend, to look at keys the way ops do."""
    client = backend.sync_client()
    yield client
    client.close()
