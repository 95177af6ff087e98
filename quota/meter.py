"""``Meter``: the synchronous client. Only I/O lives in it; the rules are in ``quota.core``.

Its code is generated (``quota/_sync/meter.py``, from the asyncio source ``quota/_async/meter.py``
by ``scripts/unasync.py``); this module keeps the import path ``quota.meter``.
"""

from ._sync.meter import Meter

__all__ = ["Meter"]
