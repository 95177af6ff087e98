"""The I/O shells, hand-written for asyncio: ``meter.py`` (AsyncMeter) and ``turn.py`` (AsyncTurn,
the replay driver). ``quota/_sync/`` is generated from them by ``scripts/unasync.py``; what truly
differs between the two is written twice, by hand, in each package's ``_compat.py``."""
