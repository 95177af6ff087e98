"""``get_meter()`` and ``get_async_meter()``: the meters built from ``settings.QUOTA``.

- ``get_meter()``: one sync :class:`quota.Meter` per process, shared by every thread (redis-py's
  connection pools are thread-safe; the meter queues callers beyond ``MAX_CONNECTIONS``).
- ``get_async_meter()``: one :class:`quota.AsyncMeter` **per running event loop**. An asyncio
  client's connections belong to the loop that opened them; an ``AsyncMeter.from_url`` now keeps
  one client per loop itself (so one built in asgi.py survives Django's async test client and a
  second ``asyncio.run()``), but a meter also holds what its turns leave running in its loop
  (background spool replays, which its ``aclose()`` waits for). Here each loop gets its own meter,
  made on first use in that loop, and closed when the loop shuts down: the meter registers an
  async generator with the loop, whose ``finally`` closes it when the loop runs
  ``shutdown_asyncgens()``. ``asyncio.run``,
  ``asyncio.Runner``, asgiref's ``async_to_sync`` (which runs each call in a new loop when no
  loop is running: Django's sync test client on an async view) and pytest-asyncio all do. A loop
  closed without it (``loop.close()`` alone) cannot run the close any more: its meter is dropped,
  unclosed, at the next ``get_async_meter()``.

Both are rebuilt after ``override_settings(QUOTA=...)`` (the ``setting_changed`` signal).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from quota import AsyncMeter, ConfigError, InvalidInput, Meter

from .conf import QuotaSettingsError, quota_settings

_lock = threading.Lock()
_meter: Meter | None = None
# loop -> (its meter, the async generator that closes it at the loop's shutdown)
_async_meters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[AsyncMeter, AsyncGenerator[None, None]]] = (
    weakref.WeakKeyDictionary()
)
M = TypeVar("M", Meter, AsyncMeter)  # _from_url builds either


def meter_arguments() -> tuple[str, dict[str, Any]]:
    """``(url, keyword arguments)`` of ``Meter.from_url`` / ``AsyncMeter.from_url`` from QUOTA."""
    conf = quota_settings()
    if not conf.redis_url:
        raise QuotaSettingsError(
            "QUOTA['REDIS_URL'] is not set: quota needs the Redis that holds the live months "
            "(e.g. redis://localhost:6379/0, redis+cluster://host:port)",
            check_id="quota.E004",
        )
    return conf.redis_url, {"settings": conf.settings, **conf.meter_options}


def build_meter(**options: Any) -> Meter:
    """A new sync Meter from QUOTA (the caller closes it); ``options`` go to ``Meter.from_url``."""
    return _from_url(Meter, options)


def _from_url(cls: type[M], options: dict[str, Any]) -> M:
    """``cls.from_url`` on QUOTA; what it refuses (a URL scheme, ON_UNAVAILABLE, a spool directory
    others can write) is a settings error, check ``quota.E005``."""
    url, arguments = meter_arguments()
    try:
        return cls.from_url(url, **arguments, **options)
    except (ConfigError, InvalidInput, OSError) as exc:
        raise QuotaSettingsError(f"quota refuses the options in settings.QUOTA: {exc}", check_id="quota.E005") from exc


def get_meter() -> Meter:
    """The process's sync Meter, built from ``settings.QUOTA`` on first use."""
    global _meter
    meter = _meter
    if meter is None:
        with _lock:
            meter = _meter
            if meter is None:
                meter = _meter = build_meter()
    return meter


def get_async_meter() -> AsyncMeter:
    """The running event loop's AsyncMeter, built from ``settings.QUOTA`` on first use in the loop.

    Call it from async code (``meter = get_async_meter()`` inside a coroutine), each time you
    need the meter: never keep one in a module or class attribute, which would tie it to a loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "get_async_meter() needs a running event loop: call it from async code (use get_meter() in sync code)"
        ) from None
    found = _async_meters.get(loop)
    if found is None:
        with _lock:
            for other in [other for other in list(_async_meters) if other.is_closed()]:
                _async_meters.pop(other, None)  # closed without shutdown_asyncgens(): nothing can close them now
            found = _async_meters.get(loop)
            if found is None:
                meter = _from_url(AsyncMeter, {})
                found = _async_meters[loop] = (meter, _close_at_shutdown(meter))
    return found[0]


def reset() -> None:
    """Forget the meters (after ``override_settings(QUOTA=...)``). The sync one is closed here;
    each async one is closed by its loop's shutdown, as it would have been anyway."""
    global _meter
    with _lock:
        old, _meter = _meter, None
        _async_meters.clear()
    if old is not None:
        old.close()


async def _closer(meter: AsyncMeter) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with _lock:
            loop = asyncio.get_running_loop()
            if _async_meters.get(loop, (None,))[0] is meter:
                del _async_meters[loop]
        await meter.aclose()


def _close_at_shutdown(meter: AsyncMeter) -> AsyncGenerator[None, None]:
    """Start an async generator in the running loop: the loop's first-iteration hook records it,
    and its ``shutdown_asyncgens()`` closes it, running ``meter.aclose()`` in the loop. Kept
    (returned) so that it lives as long as the meter; if it is dropped earlier (``reset``),
    asyncio's finalizer hook closes it, and the meter, in its loop."""
    agen = _closer(meter)
    first = agen.asend(None)  # the hook runs here (sys.get_asyncgen_hooks of the loop's thread)
    try:
        first.send(None)  # runs the body up to its ``yield``: no await before it
    except StopIteration:
        pass
    return agen
