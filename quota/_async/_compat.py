"""What the asyncio client does differently from the sync one, written by hand, in one place.

``quota/_async/meter.py`` and ``turn.py`` import these names from ``._compat``; the generated
``quota/_sync/`` modules import the same names from ``quota/_sync/_compat.py``, the sync twin of
this module. Keep the two in step: same names, same meaning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster

from .._config import Settings
from .._connect import node_client

T = TypeVar("T")

USE_ASYNCIO = True  # quota._connect.open_client builds redis.asyncio clients
ClusterClient = RedisCluster  # the cluster client class

# redis-py's asyncio client can fail with AttributeError when a connection is closed under a
# command: a lost connection (see quota._connect.lost_connection).
LOST_CONNECTION: tuple[type[Exception], ...] = (AttributeError,)

shield = asyncio.shield  # a record, a hold taken or given back completes even if the task is cancelled
sleep = asyncio.sleep
to_thread = asyncio.to_thread  # blocking file and SQL work runs off the event loop


async def shielded_admission(
    admission: Coroutine[Any, Any, T], abandoned: Callable[[T], Coroutine[Any, Any, Any]], options: Any
) -> T:
    """Await ``admission`` shielded from cancellation. If the awaiting task is cancelled first,
    the admission still completes, and ``abandoned(reply)`` then runs in the background (tracked
    by ``options`` like a replay): a hold taken for a turn that never started is given back at
    once instead of at its expiry (10 minutes by default)."""
    task = asyncio.ensure_future(admission)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def after(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                options.track(asyncio.ensure_future(abandoned(done.result())))

        task.add_done_callback(after)
        raise


def start_task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coroutine`` as a task of its own; whoever awaits the task later gets its outcome."""
    return asyncio.ensure_future(coroutine)


def in_background(options: Any, replay: Callable[[Any], Coroutine[Any, Any, None]], meter: Any) -> None:
    """Start a spool replay after a turn, without making the reply wait for it (``options`` keeps
    the task until it is done: ``AsyncMeter.aclose`` waits for it)."""
    options.track(asyncio.ensure_future(replay(meter)))


async def wait_background(options: Any) -> None:
    """Let background replays started by turns finish."""
    await options.wait_background()


async def close_source(source: Any) -> None:
    """Close a stream's source: its ``close()`` (plain or a coroutine, as openai's AsyncStream
    has) or its ``aclose()`` (an async generator)."""
    closer = getattr(source, "close", None) or getattr(source, "aclose", None)
    if callable(closer):
        result = closer()
        if asyncio.iscoroutine(result):
            await result


async def prefetch(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, with the next one fetched while the caller works on this one: a task pulls one
    item ahead, so a month report's next page travels to and from Redis while this page is parsed."""
    ahead: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for item in items:
                await ahead.put((True, item))
            await ahead.put((False, None))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            await ahead.put((False, exc))

    task = asyncio.ensure_future(pump())
    try:
        while True:
            more, item = await ahead.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class ClusterStart:
    """The one-time start of redis-py's asyncio cluster client.

    Used first by many tasks at once, it initializes once per task and closes connections other
    tasks are writing on ('NoneType' object has no attribute 'writelines': 10 of 30 tasks failed
    in a test). So the meter initializes it once, up front, whoever comes first; the others wait.
    ``ready`` is all a call checks on the hot path.
    """

    __slots__ = ("ready", "_client", "_lock")

    def __init__(self, client: Any) -> None:
        self.ready = not isinstance(client, RedisCluster)
        self._client = client
        self._lock: asyncio.Lock | None = None

    async def wait(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.ready:
                await self._client.initialize()
                self.ready = True

    async def before_batch(self) -> None:
        """Before a batch's pipelines are grouped by node: started, and the slots fresh (cheap once
        done; after a failover, the client refreshes its slot map here)."""
        await self.wait()
        await self._client.initialize()


class NodeClients:
    """Plain clients on single cluster nodes, for batches: the async cluster pipeline refuses
    EVALSHA. One client per node, made on first use (with a pool that queues like the others),
    closed with the meter."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._made: dict[str, aredis.Redis] = {}

    def node_of(self, key: str) -> str:
        """The name of the node that owns ``key``'s slot (batches are grouped by it)."""
        name: str = self._client.get_node_from_key(key).name
        return name

    def get(self, node_name: Any) -> Any:
        """The standalone client itself (``node_name`` None), or a client on that node."""
        if node_name is None:
            return self._client
        found = self._made.get(node_name)
        if found is None:
            node = self._client.get_node(node_name=node_name)
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k in _NODE_KWARGS}
            found = self._made[node_name] = node_client(node.host, node.port, self._settings, **kwargs)
        return found

    async def aclose(self) -> None:
        for made in self._made.values():
            await made.aclose()


_NODE_KWARGS = {
    "username",
    "password",
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "ssl",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_check_hostname",
    "decode_responses",
    "encoding",
    "encoding_errors",
    "client_name",
    "protocol",
    "retry",
}
