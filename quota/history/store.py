"""The SQL history store: archived user-months, in SQLite (the default) or PostgreSQL.

Why SQLAlchemy Core and not the drivers directly: the store needs one schema and one
idempotent upsert (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``) on two databases whose
drivers differ in parameter style, type handling and connection setup. Core gives one table
definition, a dialect-specific ``insert().on_conflict_do_update()`` for each, a connection pool
and error classes that are the same for both, while the dump still sends plain ``executemany``
batches (no ORM, no per-row objects). psycopg 3 is the PostgreSQL driver.

The layout (docs/HISTORY.md has the details and the SQL):

- ``quota_month_snapshot``: per (prefix, user, month, generation) the credit, the system-model
  spend, the dump read counter ``seq`` and when it was archived;
- ``quota_model_snapshot``: per (prefix, user, month, generation, model) the input and output
  tokens, the exact cost in nano-CNY, the calls, the estimated calls, ``is_system``, and the
  cached-input and cache-write tokens (parts of the input; schema version 4);
- views ``quota_month`` and ``quota_month_model``: the same summed over generations, for ops;
- ``quota_schema_version``: one row with the schema version, so a later release can migrate;
- ``quota_credit_audit``: the audit trail of credit changes (issue 12; quota/_audit.py), append-only.

A *generation* is one incarnation of a Redis hash (its ``dump_gen`` field). Each generation is
stored as a full snapshot and is only ever replaced by a newer snapshot of itself (higher
``seq``); generations are never added into one another in SQL. That makes every write an
idempotent replace, which is what makes the dump safe to kill and rerun.
"""

from __future__ import annotations

import errno
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.sql import Select

from .._config import DEFAULT_HISTORY_URL, Settings

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.dialects import postgresql, sqlite
from .._audit import PENDING, AuditEntry
from .._errors import ConfigError, StorageUnavailable
from .._keys import validate_month, validate_prefix, validate_user
from .._money import nano_to_json
from .._stats import ArchiveRow, ModelUsage, MonthUsage, merge_month, parts_from_rows

SCHEMA_VERSION = 6
# Reads work on a database at least this old: version 2 only added an index, version 3 two
# columns (corrections) and version 4 two more (cache tokens) that a read of an older database takes
# as 0, so a version-1 database stays readable (more slowly) until the next `quota dump` migrates it.
# Version 5 added grants_drawn_nano and the audit table (issue 12): an older database reads as 0 drawn
# and no audit rows until its first write (a dump, an audited credit change) migrates it.
# Version 6 added the audit table's columns of corrections (model_id, adjustment_id, details) and
# widened its actor to 128 characters (an adjustment's actor): an older one reads them as NULL.
READABLE_FROM = 1
_LOCK_KEY = 0x71756F7461  # "quota": the PostgreSQL advisory lock taken while creating/migrating

metadata = MetaData()

schema_version = Table(
    "quota_schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: a single row
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

month_snapshot = Table(
    "quota_month_snapshot",
    metadata,
    Column("prefix", String(32), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column("month", String(7), primary_key=True),  # YYYY-MM, UTC
    Column("generation", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),  # dump_seq of this snapshot
    Column("credit_nano", BigInteger, nullable=True),  # NULL: the default credit applied
    Column("system_used_nano", BigInteger, nullable=False),
    Column("first_archived_at", DateTime(timezone=True), nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=False),
    # what the month's system spend drew from grants (issue 12, schema 5; lua/lib/grants.lua)
    Column("grants_drawn_nano", BigInteger, nullable=False, server_default="0"),
)

model_snapshot = Table(
    "quota_model_snapshot",
    metadata,
    Column("prefix", String(32), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column("month", String(7), primary_key=True),
    Column("generation", BigInteger, primary_key=True, autoincrement=False),
    Column("model_id", String(48), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_nano", BigInteger, nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("estimated_calls", BigInteger, nullable=False),
    Column("is_system", Boolean, nullable=False),
    # corrections (quota adjust, schema version 3): how many, and their signed cost; the counters above include them
    Column("adjustments", BigInteger, nullable=False, server_default="0"),
    Column("adjusted_cost_nano", BigInteger, nullable=False, server_default="0"),
    # issue 12, schema version 4: parts of input_tokens priced at the cache rates
    Column("cached_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
)

# The audit trail of credit changes (issue 12, schema 5; quota/_audit.py). Append-only: a row is
# inserted (status pending) before the change and given its outcome once after it; never deleted.
credit_audit = Table(
    "quota_credit_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("prefix", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),  # the meter's clock when asked
    Column("actor", String(128), nullable=False),  # library, cli, api:<role>; an adjustment's own (version 6)
    # set_monthly_credit, set_plan_credit, grant, revoke_grant, adjust (the model's cost before and after)
    Column("action", String(32), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("month", String(7), nullable=True),  # set_monthly_credit and adjust only
    Column("grant_id", String(64), nullable=True),  # grant and revoke_grant only
    Column("requested_nano", BigInteger, nullable=True),  # the credit or amount asked for
    Column("before_nano", BigInteger, nullable=True),  # NULL: none (no month credit, no plan, no grant)
    Column("after_nano", BigInteger, nullable=True),
    Column("reason", String(200), nullable=True),
    Column("status", String(16), nullable=False),  # pending, done, unchanged, failed
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # adjust only (version 6): the model, the adjustment's id, its signed token and call counts (JSON)
    Column("model_id", String(64), nullable=True),
    Column("adjustment_id", String(128), nullable=True),
    Column("details", Text, nullable=True),
)
_ADJUST_AUDIT_COLUMNS = ("model_id", "adjustment_id", "details")
audit_index = Index("quota_credit_audit_by_user", credit_audit.c.prefix, credit_audit.c.user_id, credit_audit.c.id)

# One month of every user, in user order: the month report (``iter_month``). Without it a report
# read the whole table (every month) through the primary key, which starts with the user id.
month_index = Index(
    "quota_month_snapshot_by_month", month_snapshot.c.prefix, month_snapshot.c.month, month_snapshot.c.user_id
)

# Totals per user-month over generations: what ops query. Plain SQL that both dialects accept.
VIEWS = {
    "quota_month": """
        CREATE VIEW quota_month AS
        SELECT s.prefix, s.user_id, s.month,
               (SELECT c.credit_nano FROM quota_month_snapshot c
                 WHERE c.prefix = s.prefix AND c.user_id = s.user_id AND c.month = s.month
                   AND c.credit_nano IS NOT NULL
                 ORDER BY c.first_archived_at DESC, c.generation DESC LIMIT 1) AS credit_nano,
               CAST(SUM(s.system_used_nano) AS BIGINT) AS system_used_nano,
               COUNT(*) AS generations,
               MAX(s.archived_at) AS archived_at
        FROM quota_month_snapshot s
        GROUP BY s.prefix, s.user_id, s.month""",
    "quota_month_model": """
        CREATE VIEW quota_month_model AS
        SELECT prefix, user_id, month, model_id,
               CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens,
               CAST(SUM(cost_nano) AS BIGINT) AS cost_nano, CAST(SUM(calls) AS BIGINT) AS calls,
               CAST(SUM(estimated_calls) AS BIGINT) AS estimated_calls,
               MAX(CASE WHEN is_system THEN 1 ELSE 0 END) = 1 AS is_system,
               CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens,
               CAST(SUM(cache_write_tokens) AS BIGINT) AS cache_write_tokens
        FROM quota_model_snapshot
        GROUP BY prefix, user_id, month, model_id""",
}


def _add_month_index(conn: Connection) -> None:
    month_index.create(conn, checkfirst=True)


def _add_adjustment_columns(conn: Connection) -> None:
    present = {c["name"] for c in inspect(conn).get_columns(model_snapshot.name)}
    for column in ("adjustments", "adjusted_cost_nano"):
        if column not in present:
            conn.execute(text(f"ALTER TABLE quota_model_snapshot ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"))


def _add_cache_columns(conn: Connection) -> None:
    """Version 4 (issue 12): the cache-token columns, 0 for what was archived before, and the
    ``quota_month_model`` view that sums them."""
    present = {c["name"] for c in inspect(conn).get_columns(model_snapshot.name)}
    for column in ("cached_input_tokens", "cache_write_tokens"):
        if column not in present:  # a database created by this release at an older version has them
            conn.execute(text(f"ALTER TABLE quota_model_snapshot ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"))
    conn.execute(text("DROP VIEW IF EXISTS quota_month_model"))
    conn.execute(text(VIEWS["quota_month_model"]))


def _add_grants_and_audit(conn: Connection) -> None:
    """Version 5 (issue 12): what each archived month drew from grants (0 before), and the audit trail."""
    if "grants_drawn_nano" not in {c["name"] for c in inspect(conn).get_columns(month_snapshot.name)}:
        conn.execute(text("ALTER TABLE quota_month_snapshot ADD COLUMN grants_drawn_nano BIGINT NOT NULL DEFAULT 0"))
    credit_audit.create(conn, checkfirst=True)
    audit_index.create(conn, checkfirst=True)


def _add_adjustment_audit(conn: Connection) -> None:
    """Version 6: the audit trail of corrections (``adjust``) in the audit table."""
    present = {c["name"] for c in inspect(conn).get_columns(credit_audit.name)}
    for column in _ADJUST_AUDIT_COLUMNS:
        if column not in present:
            kind = {"model_id": "VARCHAR(64)", "adjustment_id": "VARCHAR(128)", "details": "TEXT"}[column]
            conn.execute(text(f"ALTER TABLE quota_credit_audit ADD COLUMN {column} {kind}"))
    if conn.dialect.name == "postgresql":  # SQLite does not enforce a VARCHAR's length
        conn.execute(text("ALTER TABLE quota_credit_audit ALTER COLUMN actor TYPE VARCHAR(128)"))


# MIGRATIONS[v] upgrades a database at version v to v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_month_index,
    2: _add_adjustment_columns,
    3: _add_cache_columns,
    4: _add_grants_and_audit,
    5: _add_adjustment_audit,
}


def url_secrets(url: str) -> set[str]:
    """The password a database URL carries, and its pieces: what a message must never show.

    The password is taken between the first ``:`` of the user info and the *last* ``@``, even when
    the rest of the URL does not parse; SQLAlchemy stops at the *first* ``@`` instead, so with an
    unescaped ``@`` in a password (``u:pa@ss@host``) it reads ``ss@host`` as the host and echoes
    the tail in every message: each ``@``-separated piece is a secret too.
    """
    rest = url.partition("://")[2] or url
    password = rest.rpartition("@")[0].partition(":")[2]
    pieces = {password} | {p for p in password.split("@") if len(p) >= 3}  # "***" for every "a" helps no one
    return {s for piece in pieces for s in (piece, unquote(piece)) if s}


def redact(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` (see :func:`url_secrets`) replaced by ``***``.

    Every message that may quote a database URL or a driver's error about it goes through this:
    SQLAlchemy's and the drivers' messages echo what they could not parse, and a malformed URL
    (a port that is not a number, no scheme) is exactly the one whose password they echo.
    """
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (SQLAlchemy would pick psycopg2)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(redact(f"not a database URL: {url!r} (use sqlite:///file.db or postgresql://...)", url))
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme.split("+")[0] not in ("sqlite", "postgresql"):
        raise ConfigError(redact(f"unsupported history database {scheme!r}: use sqlite:/// or postgresql://", url))
    return url


def describe_db(url: str) -> str:
    """Where a database URL points, for messages: the file, or host:port/db, never the password."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - make_url parses the port lazily: int("notaport") is a ValueError here
    except (ArgumentError, ValueError):
        return "<unparsable url>"
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite file {parsed.database}" if parsed.database else "sqlite in memory"
    return redact(f"postgresql {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}", url)


class Snapshot:
    """One user-month as a dump read it from Redis: the unit the store writes."""

    __slots__ = ("user", "month", "generation", "seq", "usage", "fingerprint")

    def __init__(
        self, user: str, month: str, generation: int, seq: int, usage: MonthUsage, fingerprint: Any = None
    ) -> None:
        self.user, self.month, self.generation, self.seq = user, month, generation, seq
        self.usage, self.fingerprint = usage, fingerprint


class HistoryStore:
    """Archived user-months in SQL. Cheap to construct: nothing connects until first use.

    Reads never create anything (an SQLite file that does not exist yet reads as empty); the
    first write creates the schema. ``prefix`` is the Redis key prefix the months came from, so
    several prefixes (a demo and production) can share one database without mixing.
    """

    def __init__(self, url: str = DEFAULT_HISTORY_URL, *, prefix: str = "quota", **engine_options: Any) -> None:
        self.url = normalize_url(url)
        self.prefix = validate_prefix(prefix)
        self.where = describe_db(self.url)
        try:
            parsed = make_url(self.url)
            parsed.port  # noqa: B018 - a port that is not a number raises here (ValueError)
        except (ArgumentError, ValueError) as exc:
            raise ConfigError(
                redact(
                    f"invalid history database URL ({exc}): use sqlite:///file.db or "
                    "postgresql://user:password@host:port/db",
                    url,
                )
            ) from None
        self.dialect = parsed.get_backend_name()
        self._sqlite_file = (
            parsed.database if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:") else None
        )
        if self._sqlite_file is not None and not parsed.query.get("uri") and not os.path.isabs(self._sqlite_file):
            # A relative file (the default, sqlite:///quota-history.db) is resolved once, here:
            # left relative, it would follow every later chdir of the process to another file.
            self._sqlite_file = os.path.abspath(self._sqlite_file)
            parsed = parsed.set(database=self._sqlite_file)
            self.url = parsed.render_as_string(hide_password=False)
            self.where = describe_db(self.url)
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            options = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        options.update(engine_options)
        try:
            self.engine: Engine = create_engine(self.url, **options)
        except (ArgumentError, ImportError, ValueError, TypeError) as exc:
            raise ConfigError(redact(f"cannot use history database {self.where}: {exc}", url)) from None
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, self._sqlite_file if not parsed.query.get("uri") else None)
        self._schema_ready = False
        self._has_adjustments = True  # False while reading a database older than schema version 3
        self._version: int | None = None  # the version read by _readable (None: not read yet)
        self._month_upsert = self._upsert(month_snapshot, keep=("first_archived_at",))
        self._model_upsert = self._upsert(model_snapshot)

    @classmethod
    def from_url(cls, url: str | None = None, *, prefix: str | None = None, **engine_options: Any) -> HistoryStore:
        """A store on ``url`` (default: ``QUOTA_HISTORY_URL``, else ``sqlite:///quota-history.db``)."""
        if url is None or prefix is None:
            settings = Settings.from_env()
            url, prefix = url or settings.history_url, prefix or settings.prefix
        return cls(url, prefix=prefix, **engine_options)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HistoryStore:
        settings = Settings.from_env(env)
        return cls(settings.history_url, prefix=settings.prefix)

    def __repr__(self) -> str:
        return f"HistoryStore({self.where}, prefix={self.prefix!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ----------------------------------------------------------------------------------

    def ensure_schema(self) -> int:
        """Create the schema on first use, migrate an older one; the version now in place."""
        if self._schema_ready:
            return SCHEMA_VERSION
        with self.errors():
            for attempt in range(3):
                try:
                    with self.engine.begin() as conn:
                        if self.dialect == "postgresql":  # DDL is transactional there; serialise it
                            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
                        self._create_or_migrate(conn)
                    break
                except (IntegrityError, ProgrammingError, OperationalError):
                    # another process created the schema at the same moment: look again
                    if attempt == 2:
                        raise
        self._schema_ready = self._has_adjustments = True
        self._version = SCHEMA_VERSION
        return SCHEMA_VERSION

    def _create_or_migrate(self, conn: Connection) -> None:
        version = _read_version(conn)
        now = datetime.now(UTC)
        if version is None:
            metadata.create_all(conn)
            for ddl in VIEWS.values():
                conn.execute(text(ddl))
            conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=now))
            return
        _refuse_newer(version, self.where)
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](conn)
        if version != SCHEMA_VERSION:
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION, updated_at=now))

    def _readable(self) -> bool:
        """Is there an archive to read? Never creates a file or a table."""
        if self._schema_ready:
            return True
        if self._sqlite_file is not None and not Path(self._sqlite_file).exists():
            return False
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(schema_version.name):
                return False
            version = _read_version(conn)
        if version is None:
            return False
        _refuse_newer(version, self.where)
        if version < READABLE_FROM:
            raise ConfigError(
                f"the history database at {self.where} has schema version {version}; "
                f"run `quota dump` once to migrate it to {SCHEMA_VERSION}"
            )
        # an older, still readable version is looked up again next time: the first write migrates it
        self._schema_ready = version == SCHEMA_VERSION
        self._has_adjustments = version >= 3
        self._version = version
        return True

    def _has_cache_columns(self) -> bool:
        """Whether the database has the cache-token columns (schema version 4). Call after _readable()."""
        return self._schema_ready or (self._version or 0) >= 4

    def _grants_ready(self) -> bool:
        """Has the database grants_drawn_nano and the audit table (version 5)? Call after _readable()."""
        return self._schema_ready or (self._version or 0) >= 5

    def _cache_columns(self, table: Table) -> tuple[Any, Any]:
        """The cache-token columns of ``table``, or 0 in their place on a database from before
        version 4 (it has none; the next `quota dump` adds them). Call after _readable()."""
        return _cache_columns(table, self._has_cache_columns())

    # --- writes ----------------------------------------------------------------------------------

    def write_snapshots(
        self,
        snapshots: Sequence[Snapshot],
        *,
        is_system: Callable[[str], bool],
        prefix: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Write ``snapshots`` in one transaction; the number of model rows written.

        Each snapshot replaces the stored one of the same generation when its ``seq`` is not
        lower (an older read never overwrites a newer one); nothing is ever added to.
        """
        if not snapshots:
            return 0
        self.ensure_schema()
        prefix = validate_prefix(prefix or self.prefix)
        at = self._month_upsert.bind_value("archived_at", now or datetime.now(UTC))
        months: list[tuple[Any, ...]] = []
        models: list[tuple[Any, ...]] = []
        system: dict[str, bool] = {}
        # One snapshot per generation, the newest read (SCAN may return a key twice; one
        # PostgreSQL statement may not upsert a row twice), in a stable order: two concurrent
        # dumps then never deadlock on PostgreSQL row locks.
        newest: dict[tuple[str, str, int], Snapshot] = {}
        for snap in snapshots:
            key = (snap.user, snap.month, snap.generation)
            seen = newest.get(key)
            if seen is None or snap.seq >= seen.seq:
                newest[key] = snap
        for _, snap in sorted(newest.items()):
            usage, user, month, gen, seq = snap.usage, snap.user, snap.month, snap.generation, snap.seq
            # tuples in table column order (see month_snapshot / model_snapshot above)
            months.append(
                (
                    prefix,
                    user,
                    month,
                    gen,
                    seq,
                    usage.credit_nano,
                    usage.system_used_nano,
                    at,
                    at,
                    usage.grants_drawn_nano,
                )
            )
            for model_id in sorted(usage.models):
                m = usage.models[model_id]
                flag = system.get(model_id)
                if flag is None:
                    flag = system[model_id] = bool(is_system(model_id))
                models.append(
                    (
                        prefix,
                        user,
                        month,
                        gen,
                        model_id,
                        seq,
                        m.input_tokens,
                        m.output_tokens,
                        m.cost_nano,
                        m.calls,
                        m.estimated_calls,
                        flag,
                        m.adjustments,
                        m.adjusted_cost_nano,
                        m.cached_input_tokens,
                        m.cache_write_tokens,
                    )
                )
        with self.errors(), self.engine.begin() as conn:
            self._month_upsert.execute(conn, months)
            if models:
                self._model_upsert.execute(conn, models)
        return len(models)

    def _upsert(self, table: Table, keep: tuple[str, ...] = ()) -> _BulkUpsert:
        stmt: postgresql.Insert | sqlite.Insert
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            stmt = postgresql_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
        keys = [c.name for c in table.primary_key.columns]
        changes = {c.name: stmt.excluded[c.name] for c in table.columns if not c.primary_key and c.name not in keep}
        # Strictly newer: every read of one incarnation has its own dump_seq, so an equal seq is either
        # the same snapshot again (nothing to change) or a copy restored from a backup whose counter
        # went back (older content, which must not replace what the archive holds: docs/HISTORY.md).
        upsert = stmt.on_conflict_do_update(index_elements=keys, set_=changes, where=stmt.excluded.seq > table.c.seq)
        return _BulkUpsert(upsert, table, self.engine)

    # --- reads -----------------------------------------------------------------------------------

    def load_months(self, user: str, months: Sequence[str]) -> list[MonthUsage]:
        """The archived generations of ``user``'s ``months``: one ``MonthUsage`` per generation
        (``archive_gen`` set), grouped by month, oldest archive first within a month.

        This is what ``Meter.get_token_stats`` merges with Redis (``stats.merge_month``); use
        :meth:`load_totals` for one summed ``MonthUsage`` per month.
        """
        user = validate_user(user)
        wanted = sorted({validate_month(m) for m in months})
        if not wanted:
            return []
        with self.errors():
            if not self._readable():
                return []

            months_query, models_query = _archive_reads(
                self._has_adjustments, self._has_cache_columns(), self._grants_ready()
            )
            params = {"p_prefix": self.prefix, "p_user": user, "p_months": wanted}
            with self.engine.connect() as conn:
                rows = conn.execute(months_query, params).all()
                model_rows = conn.execute(models_query, params).all()
        parts: dict[tuple[str, int], MonthUsage] = {}
        for month, gen, credit, used, drawn in rows:
            parts[(month, gen)] = MonthUsage(
                month, credit_nano=credit, system_used_nano=used, archive_gen=gen, grants_drawn_nano=drawn
            )
        for (
            month,
            gen,
            model_id,
            tokens_in,
            tokens_out,
            cost,
            calls,
            estimated,
            adjs,
            adj_cost,
            cached,
            write,
        ) in model_rows:
            part = parts.get((month, gen))
            if part is not None:
                part.models[model_id] = ModelUsage(
                    tokens_in,
                    tokens_out,
                    cost,
                    calls,
                    estimated,
                    adjustments=adjs,
                    adjusted_cost_nano=adj_cost,
                    cached_input_tokens=cached,
                    cache_write_tokens=write,
                )
        return list(parts.values())

    def load_totals(self, user: str, months: Sequence[str]) -> dict[str, MonthUsage]:
        """``{month: MonthUsage}`` summed over generations: the archive alone, as ops see it."""
        grouped: dict[str, list[MonthUsage]] = {}
        for part in self.load_months(user, months):
            grouped.setdefault(part.month, []).append(part)
        return {month: merge_month(month, None, parts) for month, parts in grouped.items()}

    def iter_month(self, month: str, *, chunk_users: int = 2000) -> Iterator[list[tuple[str, list[MonthUsage]]]]:
        """Every archived user of ``month``, in user order, in chunks of about ``chunk_users``:
        ``(user, generations)``, each generation a ``MonthUsage`` (``archive_gen`` set, oldest
        archive first), ready for ``stats.merge_month``. Streamed (see ``iter_month_rows``)."""
        for rows in self.iter_month_rows(month, chunk_rows=chunk_users):
            chunk: list[tuple[str, list[MonthUsage]]] = []
            start = 0
            for end in range(1, len(rows) + 1):
                if end == len(rows) or rows[end][0] != rows[start][0]:
                    chunk.append((rows[start][0], parts_from_rows(month, rows[start:end])))
                    start = end
            yield chunk

    def iter_month_rows(self, month: str, *, chunk_rows: int = 5000) -> Iterator[list[ArchiveRow]]:
        """Every archived user of ``month`` as raw rows (``stats.ArchiveRow``: one per user,
        generation and model), in user order then archive order, in lists of about ``chunk_rows``
        rows that never split a user. One query, streamed (a server-side cursor on PostgreSQL):
        memory holds one list, whatever the month's size. The month report reads these rows
        without making an object per row (100,000 users in well under a second)."""
        month = validate_month(month)
        with self.errors():
            if not self._readable():
                return
            s, m = month_snapshot, model_snapshot
            query = (
                select(
                    s.c.user_id,
                    s.c.generation,
                    s.c.credit_nano,
                    s.c.system_used_nano,
                    m.c.model_id,
                    m.c.input_tokens,
                    m.c.output_tokens,
                    m.c.cost_nano,
                    m.c.calls,
                    m.c.estimated_calls,
                    *self._cache_columns(m),
                )
                .select_from(
                    s.outerjoin(
                        m,
                        and_(
                            m.c.prefix == s.c.prefix,
                            m.c.user_id == s.c.user_id,
                            m.c.month == s.c.month,
                            m.c.generation == s.c.generation,
                        ),
                    )
                )
                .where(s.c.prefix == self.prefix, s.c.month == month)
                .order_by(s.c.user_id, s.c.first_archived_at, s.c.generation, m.c.model_id)
            )
            compiled = query.compile(dialect=self.engine.dialect)
            sql = str(compiled)
            params: Any = (
                tuple(compiled.params[name] for name in compiled.positiontup or ())
                if compiled.positional
                else compiled.params
            )
            with self.engine.connect() as conn:
                # The driver's own cursor (a named, server-side one on PostgreSQL, so rows stream):
                # SQLAlchemy's row objects cost more than the query itself at 100,000 users.
                raw = conn.connection.dbapi_connection
                assert raw is not None
                cursor = raw.cursor(name="quota_iter_month") if self.dialect == "postgresql" else raw.cursor()
                try:
                    cursor.execute(sql, params)
                    held: list[ArchiveRow] = []
                    while rows := cursor.fetchmany(chunk_rows):
                        held.extend(rows)
                        last = held[-1][0]
                        cut = len(held)
                        while cut > 0 and held[cut - 1][0] == last:
                            cut -= 1  # the last user may go on in the next fetch: keep it back
                        if cut:
                            yield held[:cut]
                            held = held[cut:]
                    if held:
                        yield held
                finally:
                    cursor.close()

    def count_months(self) -> int:
        """How many user-months (any generation) the archive holds for this prefix."""
        with self.errors():
            if not self._readable():
                return 0
            with self.engine.connect() as conn:
                return conn.execute(
                    select(func.count()).select_from(month_snapshot).where(month_snapshot.c.prefix == self.prefix)
                ).scalar_one()

    # --- the audit trail of credit changes (quota/_audit.py) ----------------------------------------

    def audit_begin(self, entry: AuditEntry) -> int:
        """Insert and commit ``entry`` as a pending row (creating the schema on first use); its id."""
        self.ensure_schema()
        with self.errors(), self.engine.begin() as conn:
            inserted = conn.execute(
                credit_audit.insert().values(
                    prefix=self.prefix,
                    at=entry.at,
                    actor=entry.actor,
                    action=entry.action,
                    user_id=entry.user,
                    month=entry.month,
                    grant_id=entry.grant_id,
                    requested_nano=entry.requested_nano,
                    reason=entry.reason,
                    status=PENDING,
                    model_id=entry.model_id,
                    adjustment_id=entry.adjustment_id,
                    details=None if entry.details is None else json.dumps(entry.details, sort_keys=True),
                )
            )
            key = inserted.inserted_primary_key
            assert key is not None
            return int(key[0])

    def audit_finish(self, audit_id: int, status: str, before_nano: int | None, after_nano: int | None) -> None:
        """Give the pending row ``audit_id`` its outcome (a row that is not pending is left as it is)."""
        with self.errors(), self.engine.begin() as conn:
            conn.execute(
                credit_audit.update()
                .where(credit_audit.c.id == audit_id, credit_audit.c.status == PENDING)
                .values(status=status, before_nano=before_nano, after_nano=after_nano, finished_at=datetime.now(UTC))
            )

    def read_audit(self, user: str, limit: int = 100) -> list[dict[str, Any]]:
        """``user``'s audit rows, newest first, JSON-ready (amounts in CNY as JSON numbers, and in
        nano-CNY as ints beside them)."""
        user = validate_user(user)
        with self.errors():
            if not self._readable() or not self._grants_ready():
                return []
            a = credit_audit
            columns: list[Any] = list(a.c)
            if not (self._schema_ready or (self._version or 0) >= 6):  # no corrections before version 6
                columns = [c for c in columns if c.name not in _ADJUST_AUDIT_COLUMNS]
                columns += [literal_column("NULL").label(name) for name in _ADJUST_AUDIT_COLUMNS]
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(*columns)
                    .where(a.c.prefix == self.prefix, a.c.user_id == user)
                    .order_by(a.c.id.desc())
                    .limit(limit)
                ).all()
        out = []
        for row in rows:
            item: dict[str, Any] = {
                "id": row.id,
                "at": _iso(row.at),
                "actor": row.actor,
                "action": row.action,
                "user": row.user_id,
                "month": row.month,
                "grant_id": row.grant_id,
                "status": row.status,
                "reason": row.reason,
                "finished_at": _iso(row.finished_at),
                "model_id": row.model_id,
                "adjustment_id": row.adjustment_id,
                "details": None if row.details is None else json.loads(row.details),
            }
            for name in ("requested", "before", "after"):
                nano = getattr(row, f"{name}_nano")
                item[name] = None if nano is None else nano_to_json(nano)
                item[f"{name}_nano"] = nano
            out.append(item)
        return out

    def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database answers (an SQLite file is not created)."""
        if self._sqlite_file is not None and not Path(self._sqlite_file).exists():
            parent = Path(self._sqlite_file).resolve().parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise StorageUnavailable(f"history database {self.where}: directory {parent} is not writable")
            return
        with self.errors(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Database errors become ``StorageUnavailable`` naming the database (never a password)."""
        try:
            yield
        except (DBAPIError, SQLAlchemyError) as exc:
            detail = redact(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], self.url)
            raise StorageUnavailable(
                f"history database {self.where} is unavailable or refused the operation ({detail}); "
                "check that it is running and that QUOTA_HISTORY_URL is right"
            ) from exc


class _BulkUpsert:
    """One upsert compiled once for the engine's dialect and sent with the driver's own
    ``executemany``: SQLAlchemy's per-row parameter processing cost more than the database
    itself (it halved the dump's throughput). Rows are tuples in table column order; the only
    value that needs a type conversion (the archive time) is converted once per batch.

    On PostgreSQL the whole batch is one statement, ``INSERT ... SELECT * FROM unnest(%(col)s
    ::type[], ...) ON CONFLICT ...``: one array per column, so one round trip and one plan for
    thousands of rows, where ``executemany`` runs the statement once per row (bench/dump.py).
    It is built from the table's columns, so a column added to the table is carried along.
    """

    def __init__(self, statement: Any, table: Table, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.table = table
        self.dialect = engine.dialect
        columns = [c.name for c in table.columns]
        names = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
        if sorted(names) != sorted(columns):
            raise RuntimeError(f"unexpected parameters in the {table.name} upsert: {names}")
        self.columns = columns
        # Positional parameters (e.g. SQLite's qmark): each row's values in the statement's order.
        self.positions = [columns.index(n) for n in names] if compiled.positional else None
        self.identity = self.positions == list(range(len(columns)))
        self.unnest_sql = _unnest_form(self.sql, table, engine) if engine.dialect.name == "postgresql" else None

    def bind_value(self, column: str, value: Any) -> Any:
        process = self.table.c[column].type.dialect_impl(self.dialect).bind_processor(self.dialect)
        return process(value) if process else value

    def execute(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        if self.unnest_sql is not None:
            arrays = {name: list(values) for name, values in zip(self.columns, zip(*rows))}
            conn.exec_driver_sql(self.unnest_sql, arrays)
            return
        positions = self.positions
        if positions is not None:
            params: list[Any] = rows if self.identity else [tuple(r[i] for i in positions) for r in rows]
        else:
            params = [dict(zip(self.columns, r)) for r in rows]
        conn.exec_driver_sql(self.sql, params)


def _unnest_form(sql: str, table: Table, engine: Engine) -> str:
    """``sql`` (an ``INSERT ... VALUES (%(a)s, ...) ON CONFLICT ...`` for psycopg) with its
    VALUES row replaced by ``SELECT * FROM unnest(%(a)s::type[], ...)``, one array per column
    in the statement's column order."""
    head, values, tail = sql.partition(" VALUES (")
    if not values or ") ON CONFLICT" not in tail:
        raise RuntimeError(f"unexpected form of the {table.name} upsert: {sql}")
    _, _, conflict = tail.partition(") ON CONFLICT")
    names = [c.strip() for c in head[head.index("(") + 1 : head.rindex(")")].split(",")]
    arrays = ", ".join(
        f"%({name})b::{table.c[name].type.compile(dialect=engine.dialect)}[]" for name in (n.strip('"') for n in names)
    )
    return f"{head} SELECT * FROM unnest({arrays}) ON CONFLICT{conflict}"


def _cache_columns(table: Table, present: bool) -> tuple[Any, Any]:
    if present:
        return table.c.cached_input_tokens, table.c.cache_write_tokens
    return literal_column("0").label("cached_input_tokens"), literal_column("0").label("cache_write_tokens")


@functools.cache
def _archive_reads(has_adjustments: bool, has_cache: bool, has_grants: bool) -> tuple[Select[Any], Select[Any]]:
    """The two queries of ``load_months`` for a database with (or without: an older schema) the
    corrections, cache-token and grants columns, built once with bound parameters (``p_prefix``,
    ``p_user``, ``p_months``): building them per call, with the months as literals, cost more
    than running them (about half of a token-stats request with a history store, profiled)."""

    def where(t: Table) -> ColumnElement[bool]:
        return (
            (t.c.prefix == bindparam("p_prefix"))
            & (t.c.user_id == bindparam("p_user"))
            & t.c.month.in_(bindparam("p_months", expanding=True))
        )

    months_query = (
        select(
            month_snapshot.c.month,
            month_snapshot.c.generation,
            month_snapshot.c.credit_nano,
            month_snapshot.c.system_used_nano,
            # schema 5 (issue 12); 0 in an older archive, read before its migration
            month_snapshot.c.grants_drawn_nano if has_grants else literal(0),
        )
        .where(where(month_snapshot))
        .order_by(month_snapshot.c.month, month_snapshot.c.first_archived_at, month_snapshot.c.generation)
    )
    m = model_snapshot.c
    corrections = (m.adjustments, m.adjusted_cost_nano) if has_adjustments else (literal(0), literal(0))
    models_query = select(
        m.month,
        m.generation,
        m.model_id,
        m.input_tokens,
        m.output_tokens,
        m.cost_nano,
        m.calls,
        m.estimated_calls,
        *corrections,
        *_cache_columns(model_snapshot, has_cache),
    ).where(where(model_snapshot))
    return months_query, models_query


def _iso(moment: datetime | None) -> str | None:
    """An instant as ISO 8601 UTC with ``Z`` (SQLite gives naive datetimes back: they are UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(schema_version.name):
        return None
    return conn.execute(select(schema_version.c.version).where(schema_version.c.id == 1)).scalar_one_or_none()


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the history database at {where} has schema version {version}, newer than this "
            f"quota ({SCHEMA_VERSION}): upgrade quota"
        )


def create_private_file(path: str, what: str) -> None:
    """Create ``path`` with mode 0600 unless it exists; refuse a symbolic link (ConfigError).

    Why: SQLite creates a database as 0644 (less the umask), readable by every local user, and
    its ``-wal`` and ``-shm`` files copy the database file's mode; it also follows a symbolic
    link, so a link planted where the file will be would send the history elsewhere. Opening it
    first with O_NOFOLLOW and 0600 settles both. A file that exists keeps its mode (an operator
    may have opened it to a reader on purpose): ``chmod 600`` it to close it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{what} {path} is a symbolic link: give the real path") from None
        raise StorageUnavailable(f"{what} {path} cannot be opened: {exc.strerror}") from None
    os.close(fd)


def _sqlite_setup(engine: Engine, path: str | None) -> None:
    """WAL (readers never wait for the dump), a busy timeout, full fsync at commit (the dump
    deletes from Redis right after a commit, so a commit must survive a power cut), and real
    transactions: pysqlite's own BEGIN handling is switched off and BEGIN is sent by us, the
    recipe from SQLAlchemy's SQLite documentation. Before each connection the file is made
    private (:func:`create_private_file`); reads never get here for a file that does not exist."""

    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _private_file(*_args: Any) -> None:
            create_private_file(path, "history database")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")
