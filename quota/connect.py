"""Making Redis clients, and turning redis-py errors into quota errors.

Shared by the sync and async clients. Connection defaults are chosen so that an unreachable
Redis gives a ``StorageUnavailable`` quickly instead of after redis-py 8's ten retries: a worker
on the hot path must learn soon that it should spool or fall back. The worst case is bounded by
``(retries + 1) x (socket_connect_timeout or socket_timeout) + backoff``: about 3.3 s with the
defaults (1 s reads, 0.5 s connects, 2 retries), 0.3 s for a refused connection. Retries are safe
because every record carries a request id that the script deduplicates.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any
from urllib.parse import urlsplit

from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (ClusterDownError, ClusterError, RedisClusterException, RedisError, ResponseError,
                              SlotNotCoveredError, TryAgainError)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .config import Settings
from .core import translate_script_error
from .errors import ConfigError, QuotaError, StorageUnavailable
from .money import cny_to_nano

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SETTING_NAMES = {f.name for f in fields(Settings)}


def default_options() -> dict[str, Any]:
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 0.5,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.02), 2),
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


def settings_with(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """``settings`` (or the environment's) with keyword overrides applied.

    ``monthly_credit`` is accepted in CNY as a convenience for ``credit_nano``.
    """
    base = settings or Settings.from_env()
    if "monthly_credit" in overrides:
        try:
            overrides["credit_nano"] = cny_to_nano(overrides.pop("monthly_credit"), what="monthly_credit")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    unknown = set(overrides) - SETTING_NAMES
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    return replace(base, **overrides) if overrides else base


# ``from_url``'s default for ``history=``: the store QUOTA_HISTORY_URL names (see quota.history).
HISTORY_FROM_ENV: Any = object()


def history_from_settings(settings: Settings) -> Any:
    """The SQL history store ``settings.history_url`` names (QUOTA_HISTORY_URL, else the default
    SQLite file). Nothing connects before the first read, and reading an SQLite file that does
    not exist yet neither creates it nor fails: a Meter made for a test leaves no file behind."""
    from .history import HistoryStore  # SQLAlchemy is imported only when a store is wanted

    return HistoryStore(settings.history_url, prefix=settings.prefix)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate quota's own options from the ones meant for the redis-py client."""
    own = {k: options.pop(k) for k in list(options) if k in SETTING_NAMES | {"monthly_credit", "settings", "clock", "spool", "on_unavailable"}}
    return own, {**default_options(), **options}


# redis-py's cluster client raises RedisClusterException (SlotNotCoveredError, "cannot be
# connected") outside the RedisError tree; both mean the storage is unavailable.
REDIS_ERRORS = (RedisError, RedisClusterException)

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
        type(exc) is ClusterError and "TTL exhausted" in str(exc))
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

    def __init__(self, where: str):
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, QuotaError) or not isinstance(exc, REDIS_ERRORS):
            return False  # nothing to translate: the exception (if any) goes on as it is
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
    except Exception as exc:  # not a redis error at all: surface it as storage trouble
        return StorageUnavailable(f"Redis at {where}: {exc}")
