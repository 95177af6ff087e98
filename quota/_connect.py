"""Making Redis clients, and turning redis-py errors into quota errors.

Shared by the sync and async clients. Connection defaults are chosen so that an unreachable
Redis gives a ``StorageUnavailable`` quickly instead of after redis-py 8's ten retries: a worker
on the hot path must learn soon that it should spool or fall back. The worst case is bounded by
``(retries + 1) x (socket_connect_timeout or socket_timeout) + backoff``: about 3.3 s with the
defaults (1 s reads, 0.5 s connects, 2 retries), 0.3 s for a refused connection. Retries are safe
because every record carries a request id that the script deduplicates.

Every client ``from_url`` builds queues for a connection instead of failing: redis-py 8's pools
raise ``MaxConnectionsError`` past 100 busy connections, so a busy worker (an event loop with
hundreds of concurrent records, or hundreds of threads) would lose records to its own pool. Here a
caller beyond ``max_connections`` (per node) waits up to ``pool_timeout_s`` for one, then gets
``StorageUnavailable`` saying so. Queueing adds to the bound above: at worst ``pool_timeout_s`` +
3.3 s (8.3 s with the defaults) when Redis is down under a full pool. See ``open_client``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
from collections.abc import Callable
from dataclasses import fields, replace
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.connection as aconnection
import redis.connection as connection
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from ._config import DEFAULT_POOL_TIMEOUT_S, Settings, did_you_mean
from ._core import translate_script_error
from ._errors import ConfigError, QuotaError, StorageUnavailable
from ._money import cny_to_nano

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SETTING_NAMES = {f.name for f in fields(Settings)}
# The meters' keyword options beside the settings (``Meter(client, ...)`` and ``from_url``).
METER_OPTIONS = {"settings", "clock", "history", "spool", "on_unavailable"}
# What a caller may name: the settings, ``monthly_credit`` (CNY, for ``credit_nano``) and the
# meter's own options. Shown in place of ``credit_nano``, which takes nano-CNY.
OWN_OPTIONS = frozenset(SETTING_NAMES | METER_OPTIONS | {"monthly_credit"})
SHOWN_OPTIONS = sorted(OWN_OPTIONS - {"credit_nano"})


def default_options(*, use_asyncio: bool = False) -> dict[str, Any]:
    """The connection defaults (see the module's doc). An asyncio client gets redis-py's asyncio
    ``Retry``: its connections await ``call_with_retry``, and the sync class would hand them back
    the coroutine unretried (a lost connection then failed at once, without the two resends)."""
    retry_class = AsyncRetry if use_asyncio else Retry
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 0.5,
        "retry": retry_class(ExponentialBackoff(cap=0.25, base=0.02), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def split_url(url: str | None, cluster: bool | None) -> tuple[str, bool]:
    """The URL redis-py understands and whether it names a cluster.

    A cluster is named by ``cluster=True`` or by the scheme ``redis+cluster://`` /
    ``rediss+cluster://``; ``redis://``, ``rediss://`` and ``unix://`` are standalone.
    """
    url = url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError("no Redis URL: pass one or set REDIS_URL (e.g. redis://localhost:6379/0)")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"not a Redis URL: {describe_url(url)!r}")
    if scheme in CLUSTER_SCHEMES:
        return f"{CLUSTER_SCHEMES[scheme]}://{rest}", True
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"unsupported Redis URL scheme {scheme!r}: use redis, rediss, unix or redis+cluster")
    return url, bool(cluster)


def describe_url(url: str) -> str:
    """``host:port`` (or the socket path) of a URL, never its password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "<unparsable url>"


def describe_client(client: Any) -> str:
    """Where a client points, for error messages; never includes a password."""
    nodes = getattr(client, "startup_nodes", None)
    if nodes:
        names = nodes if isinstance(nodes, list) else list(nodes)
        return "cluster " + ",".join(sorted(str(getattr(n, "name", n)) for n in names)[:3])
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def settings_with(settings: Settings | None, overrides: dict[str, Any], *, what: str = "Meter(client)") -> Settings:
    """``settings`` (or the environment's) with keyword overrides applied.

    ``monthly_credit`` is accepted in CNY as a convenience for ``credit_nano``. An option that is
    not a setting is a ``ConfigError`` naming it (``what``: who was given it, for the message).
    """
    unknown = set(overrides) - SETTING_NAMES - {"monthly_credit"}
    if unknown:
        for_redis = sorted(unknown & ANY_REDIS_OPTION)
        raise unknown_options(
            unknown,
            what,
            (
                f"{', '.join(for_redis)}: redis-py's, set on the client you pass, or given to from_url"
                if for_redis
                else ""
            )
            or "redis-py's options (socket_timeout=, ...) belong to the client you pass, or to from_url",
        )
    base = settings or Settings.from_env()
    if "monthly_credit" in overrides:
        try:
            overrides["credit_nano"] = cny_to_nano(overrides.pop("monthly_credit"), what="monthly_credit")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return replace(base, **overrides) if overrides else base


def unknown_options(unknown: set[str], what: str, advice: str, also_known: frozenset[str] = frozenset()) -> ConfigError:
    """The error for keyword options nobody takes: each named, with the closest known name
    (redis-py's names are not suggested to ``Meter(client)``, which takes none)."""
    shown = SHOWN_OPTIONS if also_known else [n for n in SHOWN_OPTIONS if n not in unknown]
    named = ", ".join(
        f"{name!r}{'' if name in ANY_REDIS_OPTION else did_you_mean(name, [*shown, *also_known])}"
        for name in sorted(unknown)
    )
    return ConfigError(
        f"{what} got unknown option(s) {named}; quota's options are {', '.join(SHOWN_OPTIONS)}; {advice}"
    )


# ``from_url``'s default for ``history=``: the store QUOTA_HISTORY_URL names (see quota.history).
HISTORY_FROM_ENV: Any = object()


def history_from_settings(settings: Settings) -> Any:
    """The SQL history store ``settings.history_url`` names (QUOTA_HISTORY_URL, else the default
    SQLite file). Nothing connects before the first read, and reading an SQLite file that does
    not exist yet neither creates it nor fails: a Meter made for a test leaves no file behind."""
    from .history import HistoryStore  # SQLAlchemy is imported only when a store is wanted

    return HistoryStore(settings.history_url, prefix=settings.prefix)


# Options open_client sets itself, or that name what it builds: never taken from a caller.
_NOT_PASSED = frozenset(
    {"self", "kwargs", "connection_kwargs", "connection_pool", "connection_pool_class", "url", "timeout", "queue_class"}
)


def _parameters(*functions: Any) -> set[str]:
    return {name for f in functions for name in inspect.signature(f).parameters}


@lru_cache(maxsize=4)
def redis_option_names(cluster: bool, use_asyncio: bool) -> frozenset[str]:
    """The keyword options redis-py takes for the client ``open_client`` builds, read from the
    signatures of the classes that receive them (so they follow the installed redis-py): a
    standalone client's go to its pool's connection class, a cluster client's to the cluster
    client (and, in the sync one, on to a ``redis.Redis`` per node)."""
    conn = aconnection if use_asyncio else connection
    names = _parameters(
        conn.AbstractConnection.__init__,
        conn.Connection.__init__,
        conn.SSLConnection.__init__,
        conn.UnixDomainSocketConnection.__init__,
    ) | {"single_connection_client", "connection_class"}
    if cluster and use_asyncio:
        names = _parameters(AsyncRedisCluster.__init__)
    elif cluster:
        names = _parameters(RedisCluster.__init__, redis.Redis.__init__)
    return frozenset(names - _NOT_PASSED - OWN_OPTIONS)


ANY_REDIS_OPTION = frozenset().union(*(redis_option_names(c, a) for c in (False, True) for a in (False, True)))


def split_options(
    options: dict[str, Any], *, cluster: bool = False, use_asyncio: bool = False, what: str = "from_url"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate quota's own options from the ones meant for the redis-py client (without the
    defaults: ``build_client`` adds them); an option that is neither is a ``ConfigError`` now,
    where redis-py would raise TypeError at the first call."""
    own = {k: options.pop(k) for k in list(options) if k in OWN_OPTIONS}
    passed = redis_option_names(cluster, use_asyncio)
    unknown = set(options) - passed
    if unknown:
        kind = ("asyncio " if use_asyncio else "") + ("cluster" if cluster else "standalone")
        other = "standalone Redis" if cluster else "cluster (a redis+cluster:// URL)"
        elsewhere = sorted(unknown & redis_option_names(not cluster, use_asyncio))
        raise unknown_options(
            unknown,
            what,
            f"other options go to redis-py's {kind} client, which takes socket_timeout, socket_connect_timeout, "
            "retry, client_name, ssl_ca_certs, ..."
            + (f"; {', '.join(elsewhere)}: for a {other} only" if elsewhere else ""),
            passed,
        )
    return own, options


def open_client(
    url: str | None, cluster: bool | None, options: dict[str, Any], *, use_asyncio: bool, what: str = "from_url"
) -> tuple[Any, Settings, dict[str, Any], Callable[[], Any]]:
    """What ``Meter.from_url`` / ``AsyncMeter.from_url`` (``what``, for messages) need: the
    client, the settings (the pool's size and wait are settings, so they are resolved before the
    client is built), the meter's other keyword arguments (clock, spool, on_unavailable) and a
    ``remake()`` recipe, a new client like this one (an AsyncMeter's for another event loop)."""
    url, is_cluster = split_url(url, cluster)
    own, client_options = split_options(options, cluster=is_cluster, use_asyncio=use_asyncio, what=what)
    overrides = {k: own.pop(k) for k in list(own) if k in SETTING_NAMES or k == "monthly_credit"}
    settings = settings_with(own.pop("settings", None), overrides, what=what)

    def remake() -> Any:
        return build_client(url, is_cluster, settings, client_options, use_asyncio=use_asyncio)

    return remake(), settings, own, remake


def build_client(
    url: str, is_cluster: bool, settings: Settings, client_options: dict[str, Any], *, use_asyncio: bool
) -> Any:
    """A redis-py client on ``url`` whose callers queue for a connection (see the module's doc).
    ``client_options`` (the caller's, over ``default_options()``) is not changed: an ``AsyncMeter``
    builds one client per event loop from it."""
    client_options = {**default_options(use_asyncio=use_asyncio), **client_options}
    limits = {"max_connections": settings.max_connections}
    wait_s = settings.pool_timeout_s
    if use_asyncio and is_cluster:
        client_options.pop("retry_on_error", None)
        client: Any = QueueingAsyncCluster.from_url(url, pool_timeout_s=wait_s, **limits, **client_options)
    elif use_asyncio:
        single = client_options.pop("single_connection_client", False)
        async_pool = AsyncQueueingPool.from_url(url, timeout=wait_s, **limits, **client_options)
        client = aredis.Redis(connection_pool=async_pool, single_connection_client=single)
        client.auto_close_connection_pool = True  # closing the client closes its pool, as from_url does
    elif is_cluster:
        # The sync cluster client builds one pool per node from this class and these options.
        client = RedisCluster.from_url(
            url, connection_pool_class=QueueingPool, timeout=wait_s, **limits, **client_options
        )
    else:
        single = client_options.pop("single_connection_client", False)
        pool = QueueingPool.from_url(url, timeout=wait_s, **limits, **client_options)
        client = redis.Redis(connection_pool=pool, single_connection_client=single)
        client.auto_close_connection_pool = True
    return client


def node_client(host: str, port: int, settings: Settings, **connection_kwargs: Any) -> aredis.Redis:
    """A plain asyncio client on one cluster node (``AsyncMeter`` pipelines batches through it,
    as the cluster pipeline refuses EVALSHA), with a pool that queues like the others."""
    pool = AsyncQueueingPool(
        host=host,
        port=port,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        **connection_kwargs,
    )
    return aredis.Redis.from_pool(pool)


# --- pools that queue ----------------------------------------------------------------------------


class PoolExhausted(MaxConnectionsError):
    """No connection came free within the pool's timeout.

    A ``MaxConnectionsError`` so that both cluster clients treat it as what it is, client-side
    exhaustion: they re-raise it at once, where a plain ``ConnectionError`` (what redis-py's
    blocking pools raise) would make them drop connections, refresh the topology and retry.
    """


def pool_exhausted(max_connections: int, timeout_s: float, per: str = "per node") -> PoolExhausted:
    """The error a caller gets after queueing ``timeout_s`` in vain: what was full, and the knobs."""
    return PoolExhausted(
        f"the connection pool was exhausted for {timeout_s:g} s (max_connections={max_connections} {per}, all busy): "
        "raise QUOTA_MAX_CONNECTIONS (max_connections=) if Redis can take more clients, or QUOTA_POOL_TIMEOUT_S "
        "(pool_timeout_s=) to queue longer, or send fewer concurrent calls per process"
    )


class QueueingPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool (a caller waits ``timeout`` s for a busy connection), raising
    ``PoolExhausted`` when the wait runs out, with a lean path.

    redis-py 8's pool records OpenTelemetry connection metrics on every get and release, and
    when observability is off each of those five calls looks the (absent) collector up again:
    about 8 µs of a sync record's 100 µs of client CPU (bench/targets.py). So when neither
    observability, client-side caching nor maintenance notifications (RESP3 only) are on (checked
    when the pool is made; enable observability before building the meter to get its pool
    metrics), a
    connection is taken and given back the way the blocking pool does it, without the metrics:
    the same LIFO queue and wait, the same freshness check (``can_read``: a connection left with
    unread data is reconnected), the same fork check and reconnect marks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.lean = _lean_pool_possible(self)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.lean and not getattr(self, "_in_maintenance", False):
                return self._lean_get()
            # redis-py leaves get_connection unannotated, and a super() call escapes mypy's
            # untyped_calls_exclude (pyproject.toml), which covers only calls through an object.
            return super().get_connection()  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            # redis-py 8 raises ConnectionError("No connection available.") in its ``except
            # queue.Empty``; a failed connect raises one from an OSError instead.
            if isinstance(exc.__context__, queue.Empty):
                raise pool_exhausted(self.max_connections, self.timeout) from None
            raise

    def _lean_get(self) -> Any:
        self._checkpid()
        try:
            conn = self.pool.get(block=True, timeout=self.timeout)
        except queue.Empty:
            raise pool_exhausted(self.max_connections, self.timeout) from None
        if conn is None:  # a free slot: open a connection for it
            conn = self.make_connection()  # type: ignore[no-untyped-call]
        try:
            conn.connect()
            try:
                if conn.can_read():  # returned with unread data, or closed by the server
                    raise RedisConnectionError("Connection has data")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                conn.disconnect()  # start afresh, once
                conn.connect()
                if conn.can_read():
                    raise RedisConnectionError("Connection not ready") from None
        except BaseException:
            self.release(conn)
            raise
        return conn

    def release(self, connection: Any) -> None:
        if not self.lean or getattr(self, "_in_maintenance", False):
            super().release(connection)  # type: ignore[no-untyped-call]
            return
        self._checkpid()
        if not self.owns_connection(connection):  # made before a fork: not ours to reuse
            connection.disconnect()
            self.pool.put_nowait(None)
            return
        if connection.should_reconnect():
            connection.disconnect()
        try:
            self.pool.put_nowait(connection)
        except queue.Full:
            pass  # the pool was reset (after a fork) while this connection was out


def _lean_pool_possible(pool: Any) -> bool:
    """Whether ``pool`` may skip redis-py's pool metrics: nothing it would skip is in use."""
    if getattr(pool, "cache", None) is not None:
        return False
    enabled = getattr(pool, "maint_notifications_enabled", None)
    resp3 = str(pool.connection_kwargs.get("protocol", 2)) == "3"
    if resp3 and callable(enabled) and enabled():  # maintenance pushes need RESP3; "auto" is on
        return False
    needed = [getattr(pool, name, None) for name in ("_checkpid", "owns_connection", "make_connection")]
    needed.append(getattr(pool.connection_class, "should_reconnect", None))
    if not all(callable(method) for method in needed):  # a redis-py without them: its own path
        return False
    try:
        from redis.observability.providers import get_observability_instance
    except ImportError:  # redis-py before 8: no pool metrics to keep
        return True
    try:
        manager = get_observability_instance().get_provider_manager()
    except Exception:  # noqa: BLE001 - unknown observability state: keep redis-py's own path
        return False
    return manager is None or not manager.config.enabled_telemetry


class AsyncQueueingPool(aredis.BlockingConnectionPool):
    """The asyncio twin of :class:`QueueingPool`, with a fast path.

    redis-py's asyncio blocking pool takes a condition, arms a timer and enters a generator
    context manager for every connection, even a free one: AsyncMeter spent about 10 µs more
    client CPU per record on it (65 against 55 µs with the plain pool, 20 tasks). So while nobody
    is queued and a connection is free (or may be opened), it is taken the plain pool's way (57
    µs); otherwise the caller queues behind the others in the blocking pool's wait. Releasing
    always goes through the blocking pool, which wakes the next one queued.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued = 0  # callers in the blocking wait: while any, newcomers queue behind them
        self.connection_class = hiredis_packing(self.connection_class)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self.queued and self.can_get_connection():
            try:
                return await aredis.ConnectionPool.get_connection(self)
            except MaxConnectionsError:
                pass  # the last one went while this waited for the pool's lock: queue for the next
        self.queued += 1
        try:
            return await super().get_connection()  # type: ignore[no-untyped-call]  # as in QueueingPool
        except RedisConnectionError as exc:
            # redis-py 8 raises ConnectionError("No connection available.") from the
            # asyncio.TimeoutError of its wait; a failed connect is reported differently.
            if isinstance(exc.__cause__, asyncio.TimeoutError) and self.timeout is not None:  # None never times out
                raise pool_exhausted(self.max_connections, self.timeout) from None
            raise
        finally:
            self.queued -= 1


_HIREDIS_PACKER = connection.HiredisRespSerializer() if HIREDIS_AVAILABLE else None
_PACKING: dict[type, type] = {}


def hiredis_packing(connection_class: type) -> type:
    """``connection_class`` (an asyncio connection class: plain, SSL or Unix socket), packing
    commands with hiredis as redis-py's sync client does (``HiredisRespSerializer``), when hiredis
    is installed. redis-py's asyncio connection packs every argument in Python: about a quarter
    of AsyncMeter's client CPU per record, 18 arguments a record (bench/targets.py)."""
    if _HIREDIS_PACKER is None or issubclass(connection_class, _HiredisPacking):
        return connection_class
    made = _PACKING.get(connection_class)
    if made is None:
        made = _PACKING[connection_class] = type(
            f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {}
        )
    return made


class _HiredisPacking:
    """Mixin: ``pack_command`` through hiredis while the encoder is redis-py's default (UTF-8,
    strict), else redis-py's own packing."""

    encoder: Any

    def pack_command(self, *args: Any) -> Any:
        encoder = self.encoder
        if _HIREDIS_PACKER is not None and encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
            return _HIREDIS_PACKER.pack(*args)
        return super().pack_command(*args)  # type: ignore[misc]


class QueueingAsyncCluster(AsyncRedisCluster):
    """An asyncio cluster client whose callers queue for a connection.

    redis-py's asyncio cluster keeps its own connections per node (``ClusterNode``) with no
    blocking pool to plug in: past ``max_connections`` on a node it raises MaxConnectionsError.
    So commands pass a gate, a semaphore of ``max_connections`` permits for the whole client:
    each command holds one connection on one node at a time (a redirect releases the first
    before taking the next), so no node can be asked for more than ``max_connections``. Waiting
    for a permit is bounded by ``pool_timeout_s``. A free permit costs no suspension. (redis-py
    keeps one more connection, on the node named in the URL, to learn the topology with.)
    """

    PER = "commands in flight on this cluster client"

    def __init__(self, *args: Any, pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections: int = self.connection_kwargs["max_connections"]
        self.pool_timeout_s = pool_timeout_s
        self.gate = asyncio.Semaphore(self.max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py 8.1 picks a command's routing before it learns the slots: on a client not yet
        # initialized, all concurrent first commands go to one node, their MOVED replies make it
        # refresh the topology, and that drops connections under other commands (a fresh client
        # lost 2 to 8 of 90 concurrent records so). Learn the slots first; once learnt (or while
        # another task learns them, under redis-py's lock) this returns at once.
        await self.initialize()
        gate = self.gate
        if gate.locked():
            try:
                async with asyncio.timeout(self.pool_timeout_s):
                    await gate.acquire()
            except TimeoutError:
                raise pool_exhausted(self.max_connections, self.pool_timeout_s, self.PER) from None
        else:
            await gate.acquire()  # a free permit: returns without suspending
        try:
            return await self._execute_within_gate(args, kwargs)
        finally:
            gate.release()

    async def _execute_within_gate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One command; if its node is still full, wait for the node rather than fail.

        The gate keeps in-flight commands under the node's limit, but a connection released
        while marked for reconnect (after a topology change) is closed by a background task
        before it is free again, so for a moment a node may have no free connection and no room
        for a new one. MaxConnectionsError is raised before anything is sent: the command can
        be sent again.
        """
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except MaxConnectionsError:
                now = loop.time()
                deadline = deadline or now + self.pool_timeout_s
                if now >= deadline:
                    raise pool_exhausted(self.max_connections, self.pool_timeout_s, self.PER) from None
                await asyncio.sleep(0.002)


# redis-py's cluster client raises RedisClusterException (SlotNotCoveredError, "cannot be
# connected") outside the RedisError tree; both mean the storage is unavailable.
REDIS_ERRORS = (RedisError, RedisClusterException)


def lost_connection(exc: Exception) -> RedisConnectionError:
    """redis-py's asyncio client can fail with AttributeError ("'NoneType' object has no attribute
    'writelines'") when a connection is closed under a command, as the cluster client does to
    every connection while a failover refreshes its topology (tests/faults, scenario 4; see also
    redis/redis-py#3835). It is a lost connection: say so, so that it is retried or reported as
    StorageUnavailable like any other, never leaked to the caller as an AttributeError."""
    return RedisConnectionError(f"connection lost mid-command ({exc})")


# While a cluster slot is being migrated, a script whose keys are split between the two nodes
# gets TRYAGAIN; while a shard changes master it may get CLUSTERDOWN. redis-py follows for about
# 0.4 s and then gives up ("TTL exhausted"). Moving a slot with many keys takes longer, so the
# meter keeps resending, with pauses, for up to SLOT_BUSY_BUDGET_S. The script did not run in
# any of these cases, and the request id would make a resend count once anyway.
SLOT_BUSY_BUDGET_S = 3.0
SLOT_BUSY_PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2)  # then 0.25 s each


def slot_busy_pause(exc: BaseException, attempt: int, elapsed_s: float) -> float | None:
    """How long to wait before resending a call that failed with ``exc`` on a cluster (the
    ``attempt``-th failure, ``elapsed_s`` after the first try); None: do not resend."""
    busy = isinstance(exc, (TryAgainError, ClusterDownError, SlotNotCoveredError)) or (
        type(exc) is ClusterError and "TTL exhausted" in str(exc)
    )
    if not busy or elapsed_s >= SLOT_BUSY_BUDGET_S:
        return None
    return SLOT_BUSY_PAUSES_S[attempt] if attempt < len(SLOT_BUSY_PAUSES_S) else 0.25


class storage_errors:  # noqa: N801 - used like the function it replaced: ``with storage_errors(where):``
    """Translate redis-py errors: script rule errors keep their meaning, the rest is storage.

    A class rather than a ``@contextmanager`` generator because it wraps every call on the hot
    path: entering and leaving a generator-based one cost about 2-3 µs more per call (measured
    by bench/, issue 2), some 7% of a whole ``update_token_usage``.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, QuotaError) or not isinstance(exc, REDIS_ERRORS):
            return False  # nothing to translate: the exception (if any) goes on as it is
        if isinstance(exc, MaxConnectionsError):
            detail = (
                str(exc)
                if isinstance(exc, PoolExhausted)
                else (
                    f"its client's connection pool is full ({exc}); a client from Meter.from_url or "
                    "AsyncMeter.from_url queues for a connection instead"
                )
            )
            raise StorageUnavailable(f"Redis at {self.where}: {detail}") from exc
        if isinstance(exc, ResponseError):
            mapped = translate_script_error(str(exc))
            if mapped is not None:
                raise mapped from None
            raise StorageUnavailable(f"Redis at {self.where} answered with an error: {exc}") from exc
        raise StorageUnavailable(
            f"Redis at {self.where} is unavailable ({type(exc).__name__}: {exc}); "
            "check that it is running and that REDIS_URL is right"
        ) from exc


def error_of(reply: Any, where: str) -> QuotaError | None:
    """The quota error a pipelined reply stands for, or None when it is a value."""
    if not isinstance(reply, Exception):
        return None
    try:
        with storage_errors(where):
            raise reply
    except QuotaError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - not a redis error at all: surface it as storage trouble
        return StorageUnavailable(f"Redis at {where}: {exc}")
