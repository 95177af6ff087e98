"""``AsyncMeter``: the asyncio client. The same methods as ``Meter``; only the I/O differs.

Its code is in ``quota/_async/meter.py`` (the source ``Meter`` is generated from); this module
keeps the import path ``quota.aio``.
"""

from ._async.meter import AsyncMeter
from .connect import lost_connection

__all__ = ["AsyncMeter", "lost_connection"]
