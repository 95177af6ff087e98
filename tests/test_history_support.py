"""Fixtures for the history tests: a ``store`` on SQLite and on a real PostgreSQL.

PostgreSQL is ``QUOTA_TEST_PG_URL`` or 127.0.0.1:5432 (trust auth, user postgres, then root);
the tests use their own database ``quota_test_history`` and, inside it, a schema of their own
per test process (``search_path`` in the URL), so two suites running at once never drop each
other's tables. Emptied before each test, dropped at exit. When no PostgreSQL answers, the
PostgreSQL cases are skipped with the reason (CI starts one).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from quota.history import HistoryStore

PG_DB = "quota_test_history"
_pg_cache: dict[str, str | None] = {}


def pg_url() -> str | None:
    """A URL of the test database on a reachable PostgreSQL, created if needed; None if none."""
    if "url" in _pg_cache:
        return _pg_cache["url"]
    candidates = [os.environ["QUOTA_TEST_PG_URL"]] if os.environ.get("QUOTA_TEST_PG_URL") else [
        f"postgresql+psycopg://{user}@127.0.0.1:5432/{PG_DB}" for user in ("postgres", "root")]
    found = None
    for url in candidates:
        admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", connect_args={"connect_timeout": 3},
                              isolation_level="AUTOCOMMIT")
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
        conn.execute(text("DROP TABLE IF EXISTS quota_model_snapshot, quota_month_snapshot, quota_schema_version"))
    engine.dispose()


def store_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    url = pg_url()
    if url is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres or root) and "
                    "QUOTA_TEST_PG_URL unset: the PostgreSQL history cases need one")
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


def test_postgres_is_reachable_when_ci_says_so() -> None:
    """CI sets QUOTA_REQUIRE_PG=1: there a missing PostgreSQL is a failure, not a skip."""
    if os.environ.get("QUOTA_REQUIRE_PG") == "1":
        assert pg_url() is not None, "QUOTA_REQUIRE_PG=1 but no PostgreSQL answers on 127.0.0.1:5432"
