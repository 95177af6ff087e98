"""What the sync client does differently from the asyncio one, written by hand, in one place.

The twin of ``quota/_async/_compat.py`` (same names, same meaning); the generated
``quota/_sync/meter.py`` and ``turn.py`` import these names from ``._compat``. Most are the
identity here: a sync call can not be cancelled half-way, blocks its own thread anyway, and has
no event loop to give work to.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from .._batch import eval_args, evalsha_args, pack_scripts, pipelined
from .._config import Settings
from .._core import ScriptCall

T = TypeVar("T")

USE_ASYNCIO = False  # quota._connect.open_client builds redis clients
ClusterClient = RedisCluster  # the cluster client class

LOST_CONNECTION: tuple[type[Exception], ...] = ()  # the sync client reports a lost connection as such

sleep = time.sleep


def send_script(client: Any, call: ScriptCall[Any], with_source: bool = False) -> Any:
    """Send one script call (``EVALSHA``; ``with_source``: ``EVAL`` with the script's source) and
    return its reply.

    On a plain ``redis.Redis`` (what ``Meter.from_url`` builds) this is redis-py's own
    ``execute_command`` without the layers a script call does not use: per-command option
    handling, the observability hooks, the HIMPORT check, response callbacks (EVALSHA has none).
    It keeps what matters: a connection from the client's pool (which checks that it is fresh),
    the connection's ``Retry`` (the client's retries and backoff on ConnectionError and
    TimeoutError, disconnecting before each resend), its socket timeouts, and the release to the
    pool even on error. About a quarter less client CPU per record than ``client.evalsha``
    (bench/core.py). Any other client (a cluster, a single-connection client, fakeredis, a
    subclass) takes redis-py's whole path.
    """
    if not _thin(client):
        return client.eval(*eval_args(call)) if with_source else client.evalsha(*evalsha_args(call))
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        packed = pack_scripts(conn, (call,), with_source)
        return conn.retry.call_with_retry(lambda: _round_trip(conn, packed), lambda _error: conn.disconnect())
    finally:
        pool.release(conn)  # the pool disconnects it first if redis-py marked it for reconnection


def send_scripts(client: Any, calls: list[ScriptCall[Any]], with_source: bool = False) -> list[Any]:
    """Send ``calls`` pipelined on one of ``client``'s connections (``EVALSHA``; ``with_source``:
    ``EVAL``); one reply per call, an error reply in its place as its exception. A connection
    that fails (after the connection's retries, which resend the whole batch: the request ids
    keep a record from counting twice) raises, as a pipeline does.

    On a plain ``redis.Redis`` (a standalone meter's client, a cluster node's) the batch is
    packed in one buffer (``quota._batch.pack_scripts``) and its replies read in one loop, with
    send_script's connection handling; any other client takes redis-py's pipeline."""
    if not _thin(client):
        pipe = pipelined(client.pipeline(transaction=False), calls, with_source)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        packed = pack_scripts(conn, calls, with_source)
        batch: list[Any] = conn.retry.call_with_retry(
            lambda: _batch_round_trip(conn, packed, len(calls)), lambda _error: conn.disconnect()
        )
        return batch
    finally:
        pool.release(conn)


def _thin(client: Any) -> bool:
    """Whether ``client`` takes the thin send paths: a plain ``redis.Redis`` on a pool."""
    return type(client) is redis.Redis and client.connection is None


def _round_trip(conn: Any, packed: Any) -> Any:
    conn.send_packed_command(packed)
    return conn.read_response()


def _batch_round_trip(conn: Any, packed: Any, count: int) -> list[Any]:
    conn.send_packed_command(packed)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # this call's error; the connection reads on
            replies.append(exc)
    return replies


def shield(result: T) -> T:
    """Nothing to shield: a sync call runs to its end."""
    return result


def to_thread(function: Callable[..., T], *args: Any) -> T:
    """Blocking work runs in the caller's thread."""
    return function(*args)


def shielded_admission(admission: T, abandoned: Callable[[T], Any], options: Any) -> T:
    """A sync admission can not be cancelled half-way: its outcome is the admission's."""
    return admission


def start_task(result: T) -> T:
    """The outcome itself: it was computed when the call was made."""
    return result


def in_background(options: Any, replay: Callable[[Any], None], meter: Any) -> None:
    """A spool replay after a turn runs at once, in the turn's thread (the reply is done)."""
    replay(meter)


def wait_background(options: Any) -> None:
    """Nothing runs in the background."""


def close_source(source: Any) -> None:
    """Close a stream's source (its ``close()``, if it has one)."""
    closer = getattr(source, "close", None)
    if callable(closer):
        closer()


def prefetch(items: Iterator[T]) -> Iterator[T]:
    """``items``, with the next one fetched while the caller works on this one: a thread pulls one
    item ahead, so a month report's next page travels to and from Redis while this page is parsed
    (socket waits release the GIL; 20 to 25 % off a report, bench/report.py). An error in the
    thread is raised in the caller; a caller that stops early stops the thread at its next item."""
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put("error", exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=pump, name="quota-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ahead.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


class LoopClients:
    """The sync client has no event loop: one client, used from every thread (redis-py's pools
    are thread-safe). The asyncio twin keeps one client per event loop."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        remake: Callable[[], Any] | None = None,
        *,
        senders: tuple[Callable[..., Any], Callable[..., Any]] | None = None,
    ) -> None:
        self.remake = remake
        self._one = OnLoop(client, settings)  # ``senders``: nothing to pipeline without an event loop

    def here(self) -> OnLoop:
        return self._one

    def current(self) -> OnLoop:
        return self._one

    def close(self) -> None:
        self._one.close()


class OnLoop:
    """The client and what the meter keeps beside it."""

    __slots__ = ("client", "start", "nodes")
    # The asyncio twin's auto-pipeline: a sync call blocks its thread until its reply, so there is
    # never a second call of the same thread to send with it. Each call is sent alone.
    batcher: Any = None

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.start = ClusterStart(client)
        self.nodes = NodeClients(client, settings)

    def close(self) -> None:
        self.nodes.close()
        self.client.close()


class ClusterStart:
    """The sync cluster client needs no start of the meter's own (see the asyncio twin)."""

    __slots__ = ()
    ready = True

    def __init__(self, client: Any) -> None:
        pass

    def wait(self) -> None:
        pass

    def before_batch(self) -> None:
        pass


class NodeClients:
    """Plain clients on single cluster nodes, for batches: redis-py's cluster pipeline refuses
    EVALSHA. The cluster client keeps one per node already (``get_redis_connection``)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._client = client

    def node_of(self, key: str) -> str:
        """The name of the node that owns ``key``'s slot (batches are grouped by it)."""
        name: str = self._client.get_node_from_key(key).name
        return name

    def get(self, node_name: Any) -> Any:
        """The standalone client itself (``node_name`` None), or the client on that node."""
        if node_name is None:
            return self._client
        return self._client.get_redis_connection(self._client.get_node(node_name=node_name))

    def close(self) -> None:
        pass  # the cluster client owns them
