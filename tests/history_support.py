"""Helpers for the history and dump tests (no tests here): a ``store`` on SQLite and on a real
PostgreSQL, and the Redis side of the dump tests (user-months filled, read back, compared).

PostgreSQL is ``QUOTA_TEST_PG_URL`` or 127.0.0.1:5432 (trust auth, user postgres, then root);
the tests use their own database ``quota_test_history`` and, inside it, a schema of their own
per test process (``search_path`` in the URL), so two suites running at once never drop each
other's tables. Emptied before each test, dropped at exit. When no PostgreSQL answers, the
PostgreSQL cases are skipped with the reason (CI starts one).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster
from sqlalchemy import create_engine, text

from quota import Meter
from quota._config import Settings
from quota._keys import KeySchema, add_months, month_of
from quota._stats import MonthUsage
from quota.history import HistoryStore

PG_DB = "quota_test_history"
SETTINGS = Settings(prefix="quota")
USERS = 4000  # users per expired month in populate()
ROOT = Path(__file__).resolve().parent.parent
_pg_cache: dict[str, str | None] = {}


def pg_url() -> str | None:
    """A URL of the test database on a reachable PostgreSQL, created if needed; None if none."""
    if "url" in _pg_cache:
        return _pg_cache["url"]
    candidates = (
        [os.environ["QUOTA_TEST_PG_URL"]]
        if os.environ.get("QUOTA_TEST_PG_URL")
        else [f"postgresql+psycopg://{user}@127.0.0.1:5432/{PG_DB}" for user in ("postgres", "root")]
    )
    found = None
    for url in candidates:
        admin = create_engine(
            url.rsplit("/", 1)[0] + "/postgres", connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                name = url.rsplit("/", 1)[1]
                if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            found = url
            break
        except Exception:  # noqa: BLE001 - try the next candidate
            continue
        finally:
            admin.dispose()
    if found is not None:
        schema = f"t_{os.getpid()}"
        engine = create_engine(found)
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
        atexit.register(_drop_schema, found, schema)
        found = f"{found}?options=-csearch_path%3D{schema}"
    _pg_cache["url"] = found
    return found


def _drop_schema(url: str, schema: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        engine.dispose()


def reset_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP VIEW IF EXISTS quota_month, quota_month_model"))
        conn.execute(
            text(
                "DROP TABLE IF EXISTS quota_model_snapshot, quota_month_snapshot, quota_schema_version, "
                "quota_credit_audit"
            )
        )
    engine.dispose()


def store_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    url = pg_url()
    if url is None:
        pytest.skip(
            "no PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres or root) and "
            "QUOTA_TEST_PG_URL unset: the PostgreSQL history cases need one"
        )
    reset_pg(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty history database URL; the test id names the database."""
    return store_url(request.param, tmp_path)


@pytest.fixture
def store(history_url: str):
    s = HistoryStore(history_url)
    yield s
    s.close()


# --- the Redis side of the dump tests ----------------------------------------------------------------


def _month_keys(client: Any, prefix: str) -> Iterator[tuple[Any, bytes, str, str]]:
    """``(node, key, user, month)`` of every user-month hash (all masters of a cluster)."""
    schema = KeySchema(prefix)
    nodes = (
        [client.get_redis_connection(n) for n in client.get_primaries()]
        if isinstance(client, RedisCluster)
        else [client]
    )
    for node in nodes:
        for raw in node.scan_iter(match=schema.month_pattern(), count=1000, _type="hash"):
            user, month = schema.parse_month_key(raw.decode())
            yield node, raw, user, month


def month_hashes(client: Any, prefix: str = "quota") -> dict[tuple[str, str], MonthUsage]:
    """Every user-month hash in Redis (all masters of a cluster), parsed."""
    return {
        (user, month): MonthUsage.from_hash(month, node.hgetall(raw))
        for node, raw, user, month in _month_keys(client, prefix)
    }


def plain(u: MonthUsage) -> tuple:
    """What must survive the archive: every counter and the credit (not the bookkeeping, nor the
    per-purpose split, which the archive does not keep: docs/HISTORY.md)."""
    counters = ("input_tokens", "output_tokens", "cost_nano", "calls", "estimated_calls")
    models = sorted((k, {name: getattr(v, name) for name in counters}) for k, v in u.models.items())
    return (u.credit_nano, u.system_used_nano, models)


def expired_months() -> list[str]:
    """Three months before the real current one: the CLI dump runs on the real clock."""
    current = month_of(datetime.now(UTC))
    return [add_months(current, -i) for i in (3, 2, 1)]


def fixed(month: str):  # noqa: ANN201 - a clock
    year, mon = (int(p) for p in month.split("-"))
    moment = datetime(year, mon, 12, 8, 0, tzinfo=UTC)
    return lambda: moment


def populate(client: Any, months: list[str]) -> None:
    """USERS x len(months) user-months through the real meter; a third also use a custom model."""
    for month in months:
        meter = Meter(client, clock=fixed(month), settings=SETTINGS)
        records = []
        for u in range(USERS):
            records.append(
                {"user": f"u{u}", "model_id": "system_deepseek", "input_tokens": 100 + u, "output_tokens": 7 * u % 1000}
            )
            if u % 3 == 0:
                records.append({"user": f"u{u}", "model_id": "custom_x", "input_tokens": u, "output_tokens": 1})
        for i in range(0, len(records), 2000):
            meter.update_token_usage_many(records[i : i + 2000])


def archive_from_views(store: HistoryStore) -> dict[tuple[str, str], tuple]:
    """Every archived user-month, summed over generations, read through the SQL views."""
    with store.engine.connect() as conn:
        months = conn.execute(
            text("SELECT user_id, month, credit_nano, system_used_nano FROM quota_month WHERE prefix = 'quota'")
        ).all()
        models = conn.execute(
            text(
                "SELECT user_id, month, model_id, input_tokens, output_tokens, cost_nano, "
                "calls, estimated_calls FROM quota_month_model WHERE prefix = 'quota'"
            )
        ).all()
    per: dict[tuple[str, str], list] = {}
    for user, month, model_id, *counts in models:
        per.setdefault((user, month), []).append(
            (
                model_id,
                dict(
                    zip(
                        ("input_tokens", "output_tokens", "cost_nano", "calls", "estimated_calls"),
                        (int(c) for c in counts),
                    )
                ),
            )
        )
    return {
        (user, month): (None if credit is None else int(credit), int(used), sorted(per.get((user, month), [])))
        for user, month, credit, used in months
    }


def expired_keys_left(client: Any, months: list[str]) -> int:
    """How many user-month hashes of ``months`` are left (keys only: a scenario counts often)."""
    return len({(user, month) for _, _, user, month in _month_keys(client, "quota") if month in months})


def total_keys(client: Any) -> int:
    if isinstance(client, RedisCluster):
        return sum(client.get_redis_connection(n).dbsize() for n in client.get_primaries())
    return client.dbsize()


def run_dump(env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "quota.cli", "dump", "--no-progress", *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
