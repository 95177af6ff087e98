"""Fixtures: one ``backend`` parametrized over fakeredis, a real Redis and a real Redis Cluster.

The real servers are started once per test session on their own loopback ports (see
``quota.testing``). A failure names its backend in the test id: ``test_x[redis]``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from quota import AsyncMeter, Meter
from quota.testing import RedisClusterProc, RedisServer, free_ports

BACKENDS = ["fake", "redis", "cluster"]
ROOT = Path(__file__).resolve().parent.parent


def _this_checkouts_app() -> None:
    """Tests import the app under its installed name, ``quota_server``, and must get this
    checkout's ``api/`` folder, as ``python -m pytest`` gets this checkout's ``quota`` (the current
    directory comes first on the path): an editable install maps ``quota_server`` to the folder it
    was made from, which may be another checkout, or (made before the rename) none. So a private
    directory holding one symbolic link, ``quota_server -> api``, goes first on the path, for this
    process and, through PYTHONPATH, for the servers the tests start. What an installation holds
    is tested by tests/test_packaging.py, from a wheel built here."""
    where = tempfile.mkdtemp(prefix="quota-tests-app-")
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    os.symlink(ROOT / "api", os.path.join(where, "quota_server"))
    sys.path.insert(0, where)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (where, os.environ.get("PYTHONPATH")) if p)


_this_checkouts_app()


def _private_default_history() -> None:
    """Credit changes through ``Meter.from_url`` are audited to ``QUOTA_HISTORY_URL``, whose default is
    ``quota-history.db`` in the working directory: tests that do not choose a store get a private one
    instead of writing a database into the checkout. Tests of the default itself pass their own
    environment (``Settings.from_env({...})``) or ``monkeypatch.delenv``."""
    if "QUOTA_HISTORY_URL" not in os.environ:
        where = tempfile.mkdtemp(prefix="quota-tests-history-")
        atexit.register(shutil.rmtree, where, ignore_errors=True)
        os.environ["QUOTA_HISTORY_URL"] = f"sqlite:///{where}/quota-history.db"


_private_default_history()


class Clock:
    """A settable clock: ``clock.set(2026, 1, 31, 23, 59, 59)``."""

    def __init__(self, moment: datetime | None = None):
        self.now = moment or datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

    def set(self, *parts: int, microsecond: int = 0) -> None:
        self.now = datetime(*parts, microsecond=microsecond, tzinfo=UTC)

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
    """Drives an asyncio object from sync test code on a private event loop, so that one test body
    checks both clients: the behaviour must be the same, only the I/O differs.

    Wraps an AsyncMeter and what it hands out: coroutine methods run to their end; a turn
    (``async with``) is entered with ``with`` (and, as a sync turn does, its exit finishes the
    spool replay it started, here in the background); a metered stream (``async for``) is
    iterated with ``for`` and closed with ``close()``, its source given as a plain iterable.
    """

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop):
        self.target = target
        self._loop = loop

    @classmethod
    def meter(
        cls, make_client: Callable[[], Any] | None = None, *, url: str | None = None, **kwargs: Any
    ) -> AsyncAsSync:
        """An AsyncMeter on the client ``make_client`` makes (inside the loop), or on ``url``."""
        loop = asyncio.new_event_loop()

        async def make() -> AsyncMeter:
            if url is not None:
                return AsyncMeter.from_url(url, **kwargs)
            return AsyncMeter(make_client(), **kwargs)  # type: ignore[misc]

        return cls(loop.run_until_complete(make()), loop)

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if name == "turn":
            return lambda *args, **kwargs: AsyncAsSync(attr(*args, **kwargs), self._loop)
        if name == "stream":
            return lambda source, **kwargs: AsyncAsSync(attr(AsyncSource(source), **kwargs), self._loop)
        if not asyncio.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self._run(attr(*args, **kwargs))

    def __enter__(self) -> AsyncAsSync:
        self._run(self.target.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._run(self.target.__aexit__(*exc))
        options = getattr(getattr(self.target, "meter", None), "turn_options", None)
        if options is not None:
            self._run(options.wait_background())

    def __iter__(self) -> AsyncAsSync:
        return self

    def __next__(self) -> Any:
        try:
            return self._run(self.target.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if self._loop.is_closed():  # a meter closed by the test, then by its fixture
            return
        self._run(self.target.aclose())
        if isinstance(self.target, AsyncMeter):
            self._loop.close()


class AsyncSource:
    """A plain iterable as an async stream source (for ``AsyncAsSync`` streams); ``close()`` is
    passed on."""

    def __init__(self, source: Any):
        self.source = source
        self._iter = iter(source)

    def __aiter__(self) -> AsyncSource:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._iter)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        closer = getattr(self.source, "close", None)
        if callable(closer):
            closer()


SIDES = ["sync", "async"]


@pytest.fixture(params=SIDES)
def side(request: pytest.FixtureRequest) -> str:
    """The client a test runs on: ``sync`` (Meter) or ``async`` (AsyncMeter, driven by AsyncAsSync)."""
    return request.param


@pytest.fixture
def make_meter(side: str, clock: Clock):
    """``make_meter(backend, **options)`` or ``make_meter(url=..., **options)``: a meter of the
    test's side (``clock`` defaults to the test's clock); all are closed after the test."""
    made: list[Any] = []

    def make(backend: Backend | None = None, *, url: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("clock", clock)
        if side == "sync":
            meter = Meter.from_url(url, **kwargs) if url is not None else Meter(backend.sync_client(), **kwargs)
        else:
            meter = AsyncAsSync.meter(backend.async_client if backend is not None else None, url=url, **kwargs)
        made.append(meter)
        return meter

    yield make
    for meter in made:
        meter.close()


@pytest.fixture
def any_meter(backend: Backend, make_meter: Callable[..., Any]):
    """A Meter or an AsyncMeter (driven synchronously) on every backend: 6 combinations."""
    return make_meter(backend, prefix="quota", monthly_credit=5)


@pytest.fixture
def any_turn(any_meter: Any):
    """A meter for turn tests, as ``any_meter`` (sync and async x three backends): its turns run in
    sync test code, ``with any_turn.turn(user, model) as turn: turn.record(...)``, whichever the side."""
    return any_meter


@pytest.fixture
def raw(backend: Backend):
    """A plain sync client on the backend, to look at keys the way ops do."""
    client = backend.sync_client()
    yield client
    client.close()
