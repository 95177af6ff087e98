"""The SQL history: archived user-months, the nightly dump that fills it, and its scheduler.

The only part of quota that uses SQLAlchemy (and a database driver); the meters reach it only
through ``HistoryStore.load_months`` (``Meter(history=...)``, ``QUOTA_HISTORY_URL``).

- :mod:`.store`: :class:`HistoryStore`, the schema and the idempotent upsert (SQLite, PostgreSQL);
- :mod:`.dump`: :func:`dump_expired_months`, ``quota dump``: Redis -> SQL, exactly;
- :mod:`.scheduler`: :class:`Scheduler`, ``quota scheduler``: the dump every day at a UTC time.
"""

from .dump import DEFAULT_BATCH, DumpMeter, DumpReport, dump_expired_months
from .scheduler import Scheduler, next_run, parse_at
from .store import SCHEMA_VERSION, HistoryStore, Snapshot, describe_db, normalize_url

__all__ = [
    "DEFAULT_BATCH",
    "DumpMeter",
    "DumpReport",
    "HistoryStore",
    "SCHEMA_VERSION",
    "Scheduler",
    "Snapshot",
    "describe_db",
    "dump_expired_months",
    "next_run",
    "normalize_url",
    "parse_at",
]
