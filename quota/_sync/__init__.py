"""The sync I/O shells: ``meter.py`` and ``turn.py`` are generated from ``quota/_async/`` by
``scripts/unasync.py`` (do not edit them); ``_compat.py`` is written by hand, the twin of
``quota/_async/_compat.py``."""
