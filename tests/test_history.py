"""The SQL history store on SQLite and a real PostgreSQL: schema, versioning, replace-only
writes, reads that create nothing, and the generation merge that get_token_stats relies on."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text

from quota import AsyncMeter, ConfigError, Meter, StorageUnavailable
from quota._errors import InvalidInput
from quota._stats import ModelUsage, MonthUsage, merge_month
from quota.history import SCHEMA_VERSION, HistoryStore, Snapshot, describe_db, normalize_url

from .history_support import history_url, pg_url, store  # noqa: F401 - fixtures

SYSTEM = "system_deepseek"


def is_system(model_id: str) -> bool:
    return model_id.startswith("system_")


def usage(
    month: str,
    *,
    tokens: int = 10,
    cost: int = 1_000,
    calls: int = 1,
    credit: int | None = None,
    gen: int | None = None,
    models: tuple[str, ...] = (SYSTEM,),
) -> MonthUsage:
    u = MonthUsage(month, credit_nano=credit, archive_gen=gen)
    for model_id in models:
        u.models[model_id] = ModelUsage(tokens, 2 * tokens, cost, calls, 0)
        if is_system(model_id):
            u.system_used_nano += cost
    return u


def snap(user: str, month: str, gen: int, seq: int, u: MonthUsage) -> Snapshot:
    return Snapshot(user, month, gen, seq, u, fingerprint=b"fp")


# --- schema -----------------------------------------------------------------------------------------


def test_schema_is_created_on_first_write_and_versioned(store: HistoryStore) -> None:
    assert store.load_months("ann", ["2025-12"]) == []  # nothing yet, and nothing created
    assert store.write_snapshots([snap("ann", "2025-12", 7, 1, usage("2025-12"))], is_system=is_system) == 1
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == SCHEMA_VERSION
    # a second store on the same database finds the schema and does not recreate it
    again = HistoryStore(store.url)
    assert again.ensure_schema() == SCHEMA_VERSION
    assert [p.archive_gen for p in again.load_months("ann", ["2025-12"])] == [7]
    again.close()


def test_a_newer_schema_is_refused_with_a_clear_message(store: HistoryStore) -> None:
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE quota_schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    fresh = HistoryStore(store.url)
    with pytest.raises(ConfigError, match="newer than this quota"):
        fresh.load_months("ann", ["2025-12"])
    with pytest.raises(ConfigError, match="upgrade quota"):
        fresh.ensure_schema()
    fresh.close()


def test_reading_never_creates_an_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    s = HistoryStore(f"sqlite:///{path}")
    assert s.load_months("ann", ["2025-12", "2025-11"]) == []
    assert s.count_months() == 0
    assert not path.exists()


# --- writes: replace, never add ----------------------------------------------------------------------


def test_writing_the_same_snapshot_twice_changes_nothing(store: HistoryStore) -> None:
    s1 = snap("bo", "2025-11", 5, 1, usage("2025-11", tokens=100, cost=7, credit=9_000))
    store.write_snapshots([s1], is_system=is_system)
    store.write_snapshots([s1], is_system=is_system)
    assert store.load_totals("bo", ["2025-11"]) == {
        "2025-11": MonthUsage(
            "2025-11", credit_nano=9_000, system_used_nano=7, models={SYSTEM: ModelUsage(100, 200, 7, 1, 0)}
        )
    }
    assert store.count_months() == 1


def test_one_batch_with_a_generation_read_twice_keeps_the_newest(store: HistoryStore) -> None:
    """SCAN may return a key twice, so one batch can hold two reads of one generation (one
    PostgreSQL statement may not upsert a row twice): the newest read is written, in any order."""
    old = snap("dee", "2025-11", 5, 1, usage("2025-11", tokens=1, calls=1))
    new = snap("dee", "2025-11", 5, 2, usage("2025-11", tokens=3, calls=2, models=(SYSTEM, "custom_x")))
    other = snap("eve", "2025-11", 6, 1, usage("2025-11", tokens=4))
    assert store.write_snapshots([new, other, old], is_system=is_system) == 3
    total = store.load_totals("dee", ["2025-11"])["2025-11"]
    assert total.models == {SYSTEM: ModelUsage(3, 6, 1_000, 2, 0), "custom_x": ModelUsage(3, 6, 1_000, 2, 0)}
    assert store.load_totals("eve", ["2025-11"])["2025-11"].models[SYSTEM].input_tokens == 4
    assert store.count_months() == 2


def test_a_newer_snapshot_replaces_and_an_older_one_never_does(store: HistoryStore) -> None:
    old = snap("cy", "2025-11", 5, 1, usage("2025-11", tokens=1, calls=1))
    new = snap("cy", "2025-11", 5, 2, usage("2025-11", tokens=3, calls=2, models=(SYSTEM, "custom_x")))
    store.write_snapshots([old], is_system=is_system)
    store.write_snapshots([new], is_system=is_system)
    store.write_snapshots([old], is_system=is_system)  # a slow dump arriving late
    total = store.load_totals("cy", ["2025-11"])["2025-11"]
    assert total.models == {SYSTEM: ModelUsage(3, 6, 1_000, 2, 0), "custom_x": ModelUsage(3, 6, 1_000, 2, 0)}


def test_generations_are_kept_apart_and_summed_in_totals_and_views(store: HistoryStore) -> None:
    first = snap("di", "2025-10", 11, 1, usage("2025-10", tokens=5, cost=50, credit=8_000))
    late = snap("di", "2025-10", 22, 1, usage("2025-10", tokens=1, cost=10))
    store.write_snapshots([first], is_system=is_system, now=datetime(2025, 11, 1, tzinfo=UTC))
    store.write_snapshots([late], is_system=is_system, now=datetime(2025, 11, 2, tzinfo=UTC))
    parts = store.load_months("di", ["2025-10"])
    assert [p.archive_gen for p in parts] == [11, 22]  # oldest archive first
    total = store.load_totals("di", ["2025-10"])["2025-10"]
    assert total.models[SYSTEM] == ModelUsage(6, 12, 60, 2, 0)
    assert total.system_used_nano == 60 and total.credit_nano == 8_000
    with store.engine.connect() as conn:
        row = conn.execute(
            text("SELECT input_tokens, cost_nano, calls, is_system FROM quota_month_model WHERE user_id = 'di'")
        ).one()
        month = conn.execute(
            text("SELECT credit_nano, system_used_nano, generations FROM quota_month WHERE user_id = 'di'")
        ).one()
    assert (int(row[0]), int(row[1]), int(row[2]), bool(row[3])) == (6, 60, 2, True)
    assert (int(month[0]), int(month[1]), int(month[2])) == (8_000, 60, 2)


def test_large_exact_integers_survive(store: HistoryStore) -> None:
    big = 9_000_000_000_000_000_000  # above 2^53, below 2^63
    u = MonthUsage(
        "2025-09", credit_nano=big, system_used_nano=big, models={SYSTEM: ModelUsage(10**9, 10**9, big, 10**12, 3)}
    )
    store.write_snapshots([snap("ed", "2025-09", 999_999_999_999_999_999, 1, u)], is_system=is_system)
    assert store.load_totals("ed", ["2025-09"])["2025-09"] == u.__class__(
        "2025-09", credit_nano=big, system_used_nano=big, models={SYSTEM: ModelUsage(10**9, 10**9, big, 10**12, 3)}
    )


def test_prefixes_do_not_mix(store: HistoryStore) -> None:
    store.write_snapshots([snap("fi", "2025-08", 1, 1, usage("2025-08"))], is_system=is_system, prefix="demo")
    assert store.load_months("fi", ["2025-08"]) == []  # store.prefix is "quota"
    demo = HistoryStore(store.url, prefix="demo")
    assert len(demo.load_months("fi", ["2025-08"])) == 1
    demo.close()


def test_bad_arguments_are_refused(store: HistoryStore) -> None:
    with pytest.raises(InvalidInput):
        store.load_months("no spaces", ["2025-08"])
    with pytest.raises(InvalidInput):
        store.load_months("gus", ["2025-13"])


# --- URLs and errors ----------------------------------------------------------------------------------


def test_urls_are_normalised_and_described_without_passwords() -> None:
    assert normalize_url("postgresql://u:secret@db:5433/q") == "postgresql+psycopg://u:secret@db:5433/q"
    assert normalize_url("postgres://db/q") == "postgresql+psycopg://db/q"
    assert describe_db("postgresql+psycopg://u:secret@db:5433/q") == "postgresql db:5433/q"
    assert "secret" not in repr(HistoryStore("postgresql://u:secret@db:5433/q"))
    with pytest.raises(ConfigError, match="unsupported"):
        HistoryStore("mysql://db/q")
    with pytest.raises(ConfigError, match="not a database URL"):
        HistoryStore("history.db")


def test_an_unreachable_database_is_a_storage_error_naming_it() -> None:
    s = HistoryStore("postgresql://nobody:pw@127.0.0.1:1/quota")
    with pytest.raises(StorageUnavailable, match=r"127\.0\.0\.1:1/quota") as err:
        s.load_months("hal", ["2025-01"])
    assert "pw" not in str(err.value)
    with pytest.raises(StorageUnavailable):
        s.ensure_schema()


# --- the merge get_token_stats relies on (pure) --------------------------------------------------------


def test_merge_counts_each_generation_once() -> None:
    archived_g1 = usage("2025-12", tokens=10, cost=100, gen=1)
    archived_g2 = usage("2025-12", tokens=1, cost=10, gen=2)
    # live hash of generation 2 (not yet deleted, maybe grown since): it supersedes archived g2
    live_g2 = usage("2025-12", tokens=3, cost=30, gen=2)
    merged = merge_month("2025-12", live_g2, [archived_g1, archived_g2])
    assert merged.models[SYSTEM].input_tokens == 13 and merged.system_used_nano == 130
    # a live hash the dump never saw (a late write after the delete) is added to everything archived
    fresh = usage("2025-12", tokens=2, cost=20)
    assert merge_month("2025-12", fresh, [archived_g1, archived_g2]).models[SYSTEM].input_tokens == 13
    # no live hash: the archive alone
    assert merge_month("2025-12", None, [archived_g1, archived_g2]).models[SYSTEM].calls == 2
    # an empty live month (the stats script returns one for a missing key) changes nothing
    assert merge_month("2025-12", MonthUsage("2025-12"), [archived_g1]).models[SYSTEM].input_tokens == 10


def test_merge_keeps_the_newest_credit() -> None:
    a = usage("2025-12", credit=5, gen=1)
    b = usage("2025-12", credit=None, gen=2)
    c = usage("2025-12", credit=7, gen=3)
    assert merge_month("2025-12", None, [a, b]).credit_nano == 5
    assert merge_month("2025-12", None, [a, b, c]).credit_nano == 7


# --- finding the store from the environment ---------------------------------------------------------


def test_meters_find_the_history_store_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server
) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("QUOTA_HISTORY_URL", url)
    monkeypatch.setenv("QUOTA_PREFIX", "envp")
    m = Meter.from_url(redis_server.url)
    assert isinstance(m.history, HistoryStore) and m.history.url == url and m.history.prefix == "envp"
    m.close()
    assert Meter.from_url(redis_server.url, history=None).history is None
    am = AsyncMeter.from_url(redis_server.url)
    assert isinstance(am.history, HistoryStore) and am.history.url == url
    monkeypatch.delenv("QUOTA_HISTORY_URL")
    monkeypatch.chdir(tmp_path)
    default = Meter.from_url(redis_server.url)
    assert default.history.url == f"sqlite:///{tmp_path}/quota-history.db"  # resolved once, at start
    assert default.get_token_stats("ivy")["history"] == {}
    assert not (tmp_path / "quota-history.db").exists(), "a read must not create the SQLite file"
    default.close()
    assert os.environ.get("QUOTA_HISTORY_URL") is None


PASSWORD = "Pw-s3cret@tail9"  # with an unescaped "@": SQLAlchemy reads "tail9@host" as the host


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@host:notaport/db",
        f"u:{PASSWORD}@host/db",
        f"mysql://u:{PASSWORD}@h/db",
        f"postgresql+nodriver://u:{PASSWORD}@h/db",
        f"sqlite://u:{PASSWORD}@h/x",
        f"postgresql://u:{PASSWORD}@127.0.0.1:1/q",
        f"postgresql://u:{quote(PASSWORD, safe='')}@127.0.0.1:1/q",
        f"postgresql://u:{PASSWORD}@127.0.0.1:1/q?sslmode=bogus",
    ],
    ids=[
        "port-not-a-number",
        "no-scheme",
        "mysql",
        "no-driver",
        "sqlite-with-host",
        "unreachable",
        "escaped",
        "bad-option",
    ],
)
def test_a_malformed_or_unreachable_history_url_never_shows_its_password(url: str) -> None:
    with pytest.raises((ConfigError, StorageUnavailable)) as err:
        store = HistoryStore(url)
        assert "s3cret" not in repr(store) and "tail9" not in repr(store)
        store.ensure_schema()
    message = str(err.value)
    assert "s3cret" not in message and "tail9" not in message and "%40" not in message, message
    assert "history database" in message or "database URL" in message


def test_the_dump_command_does_not_echo_a_malformed_history_url(redis_server) -> None:
    from click.testing import CliRunner

    from quota.cli import main

    out = CliRunner().invoke(
        main, ["dump", "--url", redis_server.url, "--history-url", f"postgresql://quota:{PASSWORD}@db:port/quota"]
    )
    assert out.exit_code == 2 and "invalid history database URL" in out.output
    assert "s3cret" not in out.output and "tail9" not in out.output


def test_the_sqlite_file_is_created_0600_and_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    """SQLite made the file 0644 (its -wal and -shm copy that mode) and followed a symlink."""
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "h.db"
        store = HistoryStore(f"sqlite:///{path}")
        assert store.load_months("ann", ["2025-12"]) == [] and not path.exists()  # reads still create nothing
        store.write_snapshots([snap("ann", "2025-12", 1, 1, usage("2025-12"))], is_system=is_system)
        with store.engine.connect():
            files = [path, path.with_name("h.db-wal"), path.with_name("h.db-shm")]
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        store.close()

        target = tmp_path / "elsewhere.db"
        target.write_bytes(b"")
        link = tmp_path / "link.db"
        link.symlink_to(target)
        linked = HistoryStore(f"sqlite:///{link}")
        with pytest.raises(ConfigError, match="symbolic link"):
            linked.ensure_schema()
        with pytest.raises(ConfigError, match="symbolic link"):
            linked.load_months("ann", ["2025-12"])
        assert target.read_bytes() == b""
        linked.close()
    finally:
        os.umask(old_umask)


def test_postgres_is_reachable_when_ci_says_so() -> None:
    """CI sets QUOTA_REQUIRE_PG=1: there a missing PostgreSQL is a failure, not a skip."""
    if os.environ.get("QUOTA_REQUIRE_PG") == "1":
        assert pg_url() is not None, "QUOTA_REQUIRE_PG=1 but no PostgreSQL answers on 127.0.0.1:5432"
