"""What the asyncio client does differently from the sync one, written by hand, in one place.

``quota/_async/meter.py`` and ``turn.py`` import these names from ``._compat``; the generated
``quota/_sync/`` modules import the same names from ``quota/_sync/_compat.py``, the sync twin of
this module. Keep the two in step: same names, same meaning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._batch import eval_args, evalsha_args, pack_scripts, pipelined
from .._config import Settings
from .._connect import node_client
from .._core import ScriptCall
from .._errors import ConfigError
from ._pipeline import AutoPipeline

_AsyncHiredisParser: Any = None  # redis-py's hiredis parser, read directly by _read_replies
_NOT_ENOUGH_DATA: Any = object()  # what its reader returns while a reply is incomplete
try:
    from redis._parsers import hiredis as _hiredis_parsers

    _AsyncHiredisParser, _NOT_ENOUGH_DATA = _hiredis_parsers._AsyncHiredisParser, _hiredis_parsers.NOT_ENOUGH_DATA
except (ImportError, AttributeError):  # pragma: no cover - another redis-py: read_response, reply by reply
    pass

log = logging.getLogger("quota")

T = TypeVar("T")

USE_ASYNCIO = True  # quota._connect.open_client builds redis.asyncio clients
ClusterClient = RedisCluster  # the cluster client class

# redis-py's asyncio client can fail with AttributeError when a connection is closed under a
# command: a lost connection (see quota._connect.lost_connection).
LOST_CONNECTION: tuple[type[Exception], ...] = (AttributeError,)

shield = asyncio.shield  # a record, a hold taken or given back completes even if the task is cancelled
sleep = asyncio.sleep
to_thread = asyncio.to_thread  # blocking file and SQL work runs off the event loop


async def send_script(client: Any, call: ScriptCall[Any], with_source: bool = False) -> Any:
    """Send one script call (``EVALSHA``; ``with_source``: ``EVAL`` with the script's source) and
    return its reply: on a plain client, :func:`send_scripts` of the one call (its error reply
    raised); on any other, redis-py's whole path."""
    if not _thin(client):
        if with_source:
            return await client.eval(*eval_args(call))
        return await client.evalsha(*evalsha_args(call))
    reply = (await send_scripts(client, [call], with_source))[0]
    if isinstance(reply, ResponseError):
        raise reply
    return reply


async def send_scripts(client: Any, calls: list[ScriptCall[Any]], with_source: bool = False) -> list[Any]:
    """Send ``calls`` pipelined on one of ``client``'s connections (``EVALSHA``; ``with_source``:
    ``EVAL``); one reply per call, an error reply in its place as its exception. A connection
    that fails (after the connection's retries, which resend the whole batch: the request ids
    keep a record from counting twice) raises, as a pipeline does.

    Why not redis-py's pipeline: one process with 200 tasks was bound by the client's CPU, and
    the pipeline spent it per command (queueing it, packing each argument in Python, a timeout
    armed and a response callback looked up for each reply, each error annotated). On a plain
    ``redis.asyncio.Redis`` (a standalone meter's client, a cluster node's) the batch is packed
    in one buffer (``quota._batch.pack_scripts``, hiredis) and its replies read in one loop
    (:func:`_read_replies`). What is kept is the sync ``send_script``'s: a connection from the
    client's pool, the connection's ``Retry`` (disconnecting before each resend), its socket
    timeouts, the health check, and the release to the pool even on error. Any other client
    (fakeredis, a subclass, a single-connection client) takes redis-py's pipeline.
    """
    if not _thin(client):
        pipe = pipelined(client.pipeline(transaction=False), calls, with_source)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        packed = pack_scripts(conn, calls, with_source)

        async def round_trip() -> list[Any]:
            await conn.send_packed_command(packed)
            return await _read_replies(conn, len(calls))

        async def failed(_error: Exception) -> None:
            await conn.disconnect()

        replies = await conn.retry.call_with_retry(round_trip, failed)
        return replies
    finally:
        await pool.release(conn)


def _thin(client: Any) -> bool:
    """Whether ``client`` takes the thin send paths: a plain ``redis.asyncio.Redis`` on a pool."""
    return type(client) is aredis.Redis and client.connection is None


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``, an error reply as its exception (not raised).

    With redis-py's hiredis parser (the default when hiredis is installed), straight from the
    parser's reader, as the parser's ``read_response`` does it: every reply already received is
    taken in one loop, and only a wait for more bytes arms the socket timeout (``read_response``
    arms one per reply: a timer handle each, about a tenth of the batch path's CPU). A RESP3
    push message goes to the parser's push handler, as there. The errors are
    ``read_response``'s: a timeout is redis-py's ``TimeoutError``, a socket error its
    ``ConnectionError``, and any failure (a cancellation too) disconnects the connection, whose
    replies may be left unread. Any other parser reads reply by reply through ``read_response``.
    """
    parser = conn._parser  # noqa: SLF001 - redis-py's parser of this connection (see _fast_reader)
    found = _fast_reader(conn, parser)
    replies: list[Any] = []
    if found is None:
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # this call's error; the connection reads on
                replies.append(exc)
        return replies
    reader, push_type = found
    timeout_s = conn.socket_timeout
    try:
        while len(replies) < count:
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA:
                if timeout_s is None:
                    await parser.read_from_socket()
                else:
                    async with asyncio.timeout(timeout_s):
                        await parser.read_from_socket()
            elif isinstance(reply, RedisConnectionError):  # e.g. LOADING: raised, as read_response does
                raise reply
            elif type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
                raise reply[0]
            elif push_type is not None and isinstance(reply, push_type):
                await parser.handle_push_response(reply)  # not a reply to a call: read on
            else:
                replies.append(reply)
    except TimeoutError:  # asyncio.timeout's (before OSError, of which it is a subclass)
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout reading from {_where(conn)}") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while reading from {_where(conn)} : {exc.args}") from exc
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    return replies


def _fast_reader(conn: Any, parser: Any) -> tuple[Any, Any] | None:
    """``(reader, push type)`` of ``conn``'s parser when :func:`_read_replies` may read from it:
    redis-py's ``_AsyncHiredisParser``, connected, with the members redis-py 8 gives it (its
    hiredis ``_reader``, ``read_from_socket``, the ``PushNotification`` type on RESP3); else None."""
    if type(parser) is not _AsyncHiredisParser or not getattr(parser, "_connected", False):
        return None  # (_AsyncHiredisParser None: never a parser's type)
    reader = getattr(parser, "_reader", None)
    push_type = getattr(parser, "_hiredis_PushNotificationType", _UNKNOWN)
    if reader is None or push_type is _UNKNOWN:
        return None
    return reader, push_type


_UNKNOWN = object()


def _where(conn: Any) -> str:
    describe = getattr(conn, "_host_error", None)
    return str(describe()) if callable(describe) else "Redis"


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


class LoopClients:
    """The meter's client on the running event loop.

    A ``redis.asyncio`` client belongs to the event loop that first used it: its connections and
    its locks are that loop's, and from another loop it fails with "Event loop is closed" or
    "attached to a different loop" (a second ``asyncio.run()``, Django's async test client, a
    thread with a loop of its own). So a meter built by ``from_url`` (``remake`` given) keeps one
    client per loop: the first loop that uses it gets the client ``from_url`` built, every other
    loop a new one from the same URL and options, made on its first call there. Each is closed
    with its loop: an async generator registered with the loop closes it when the loop runs
    ``shutdown_asyncgens()``, as ``asyncio.run``, ``asyncio.Runner``, asgiref's ``async_to_sync``,
    daphne and uvicorn do; a loop closed without that (a bare ``loop.close()``) leaves its client
    to the garbage collector. A meter on a client the caller passed cannot make another: from a
    second loop it raises ``ConfigError`` saying so.

    The hot path pays one ``get_running_loop()`` and an identity check (the last loop seen and its
    client, kept as one tuple so that threads never see a loop paired with another's client):
    about 0.25 µs per call, measured, against some 55 µs of client CPU per record.
    """

    def __init__(
        self,
        client: Any,
        settings: Settings,
        remake: Callable[[], Any] | None = None,
        *,
        senders: tuple[Callable[..., Any], Callable[..., Any]] | None = None,
    ) -> None:
        self.remake = remake  # set by from_url: a new client on the same URL, with the same options
        self._settings = settings
        self._senders = senders  # the meter's (send one, send a batch): see OnLoop
        self._first = OnLoop(client, settings, senders)
        self._first_taken = False  # the first client is bound to the first loop that used the meter
        self._last: tuple[asyncio.AbstractEventLoop | None, OnLoop] = (None, self._first)
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OnLoop] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def here(self) -> OnLoop:
        """The running loop's client (made on first use in that loop)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last[0] is loop:
            return last[1]
        return self._bind(loop)

    def current(self) -> OnLoop:
        """The running loop's client; outside any loop, the first one (to look at, not to use)."""
        try:
            return self.here()
        except RuntimeError:
            return self._first

    def _bind(self, loop: asyncio.AbstractEventLoop) -> OnLoop:
        with self._lock:
            found = self._by_loop.get(loop)
            if found is None:
                for gone in [other for other in list(self._by_loop) if other.is_closed()]:
                    self._by_loop.pop(gone, None)  # closed without shutdown_asyncgens(): left to the GC
                if not self._first_taken:
                    self._first_taken, found = True, self._first
                elif self.remake is None:
                    raise ConfigError(
                        "this AsyncMeter was made on a client you passed (AsyncMeter(client)), and an asyncio "
                        "client belongs to the event loop that first used it; it is used here from another "
                        "loop (a second asyncio.run(), another thread, Django's async test client). Build it "
                        "with AsyncMeter.from_url, which keeps one client per event loop, or make one "
                        "AsyncMeter per loop"
                    )
                else:
                    found = OnLoop(self.remake(), self._settings, self._senders)
                self._by_loop[loop] = found
                if self.remake is not None:
                    found.closer = _close_at_shutdown(self._closer(found))
            self._last = (loop, found)
        return found

    async def _closer(self, on_loop: OnLoop) -> AsyncIterator[None]:
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            with self._lock:
                if self._by_loop.get(loop) is on_loop:
                    del self._by_loop[loop]
                if self._last[0] is loop:
                    self._last = (None, self._first)
            try:
                await on_loop.aclose()
            except Exception:  # noqa: BLE001 - the loop is shutting down; a failed close is noise
                log.debug("closing a loop's Redis client failed", exc_info=True)

    async def aclose(self) -> None:
        """Close the running loop's client (each other loop's closes with that loop). A meter never
        used yet closes the client it was made with."""
        loop = asyncio.get_running_loop()
        on_loop = self._by_loop.get(loop)
        if on_loop is None and not self._first_taken:
            on_loop = self._first
        if on_loop is not None:
            await on_loop.aclose()


class OnLoop:
    """A client and what the meter keeps beside it, all bound to one event loop.

    ``batcher``: the loop's auto-pipeline (``quota/_async/_pipeline.py``), when the setting
    ``auto_pipeline`` is on and the meter gave its ``senders``: ``evalsha(client, call)``, its
    plain one-call path, and ``run_plan(on_loop, calls)``, its batch plan."""

    __slots__ = ("client", "start", "nodes", "closer", "batcher")

    def __init__(
        self,
        client: Any,
        settings: Settings,
        senders: tuple[Callable[..., Any], Callable[..., Any]] | None = None,
    ) -> None:
        self.client = client
        self.start = ClusterStart(client)
        self.nodes = NodeClients(client, settings)
        self.closer: Any = None  # the async generator that closes this at its loop's shutdown
        self.batcher: AutoPipeline | None = None
        if senders is not None and settings.auto_pipeline:
            evalsha, run_plan = senders
            node_of = None
            if isinstance(client, RedisCluster):
                nodes = self.nodes

                def node_of(call: Any) -> Any:
                    return nodes.node_of(call.keys[0])

            self.batcher = AutoPipeline(functools.partial(evalsha, client), functools.partial(run_plan, self), node_of)

    async def aclose(self) -> None:
        """Close the client (again: harmless), after the batches on the wire."""
        if self.batcher is not None:
            await self.batcher.aclose()
        await self.nodes.aclose()
        await self.client.aclose()


def _close_at_shutdown(agen: Any) -> Any:
    """Start ``agen`` in the running loop up to its ``yield``: the loop's first-iteration hook
    records it, and its ``shutdown_asyncgens()`` closes it, running its ``finally`` in the loop.
    Returned to be kept as long as what it closes: if it is dropped earlier, asyncio's finalizer
    hook closes it in its loop (unless the loop is closed)."""
    first = agen.asend(None)  # the hook runs here (sys.get_asyncgen_hooks of the loop's thread)
    try:
        first.send(None)  # runs the body up to its ``yield``: no await before it
    except StopIteration:
        pass
    return agen


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
