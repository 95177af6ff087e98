"""docs/OPERATIONS.md, "Runbook": every command of the section, run as written (its example paths
pointed at a temporary directory) against a Redis server of the test's own, the API, and SQLite and
PostgreSQL histories. The backup and restore drill also proves the restore-safe dump end to end: a
Redis restored from a backup older than the last dump does not double the archive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from quota import Meter
from quota._config import Settings
from quota.history import HistoryStore
from quota.history.store import SCHEMA_VERSION
from quota.testing import free_ports

from .api_support import ADMIN, live_server
from .doc_support import commands_of, console_blocks, section
from .history_support import expired_months, fixed, pg_url

SYS = "system_deepseek"
# What each runbook block does, by a string only it contains: every block must be one of these, and
# each is run by a test below.
BLOCKS = {
    "--rdb": "back up Redis",
    ".backup": "back up SQLite",
    "pg_dump": "back up PostgreSQL",
    "SHUTDOWN NOSAVE": "restore Redis",
    ".restore": "restore SQLite",
    "pg_restore": "restore PostgreSQL",
    "token_urlsafe": "rotate: the new token, the old one kept",
    "set -a": "rotate: both work",
    "_PREVIOUS=/d": "rotate: drop the old one",
    "quota adjust": "correct a record",
    "quota --version": "upgrade",
}
NEEDS = ("redis-cli", "redis-server", "sqlite3", "pg_dump", "pg_restore", "curl")
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in NEEDS), reason=f"the runbook needs {', '.join(NEEDS)}"
)


def runbook_block(marker: str) -> str:
    found = [b for b in console_blocks(section("Runbook")) if marker in b]
    assert len(found) == 1, (marker, len(found))
    return found[0]


def test_every_runbook_block_is_run_by_a_test() -> None:
    blocks = console_blocks(section("Runbook"))
    for block in blocks:
        assert sum(marker in block for marker in BLOCKS) == 1, block
    assert len(blocks) == len(BLOCKS)


class Box:
    """The runbook's example paths, pointed at a directory of the test's own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("redis", "quota", "backup", "etc"):
            (root / sub).mkdir()
        self.paths = {
            "/etc/redis/redis.conf": str(root / "etc" / "redis.conf"),
            "/etc/quota/env": str(root / "etc" / "env"),
            "/var/lib/redis": str(root / "redis"),
            "/var/lib/quota": str(root / "quota"),
            "/backup": str(root / "backup"),
        }
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDISCLI_AUTH", "REDIS_URL")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"  # `quota`

    def run(self, marker: str, **env: str) -> str:
        script = commands_of(runbook_block(marker))
        for example, real in self.paths.items():
            script = script.replace(example, real)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            env=self.env | env,
            timeout=120,
        )
        assert done.returncode == 0, f"{BLOCKS[marker]}:\n{script}\n{done.stdout}\n{done.stderr}"
        return done.stdout


@pytest.fixture
def box(tmp_path: Path):
    yield Box(tmp_path)


@pytest.fixture
def own_redis(box: Box):
    """A Redis server with AOF on, daemonized from the runbook's redis.conf (the restore stops it and
    starts it again from the same file); stopped at the end by its pidfile."""
    port = free_ports(1, start=21000)[0]
    conf = Path(box.paths["/etc/redis/redis.conf"])
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {box.paths['/var/lib/redis']}\ndaemonize yes\n"
        f'pidfile {box.root / "redis.pid"}\nlogfile {box.root / "redis.log"}\nappendonly yes\nsave ""\n'
    )
    subprocess.run(["redis-server", str(conf)], check=True)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(url)
    yield url
    pidfile = box.root / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass


def wait_for(url: str) -> None:
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"no Redis at {url}")


@pytest.fixture(params=["sqlite", "postgresql"])
def history(request: pytest.FixtureRequest, box: Box):
    """(kind, QUOTA_HISTORY_URL): a SQLite file at the runbook's path, or a PostgreSQL database of
    this test's own (pg_restore --clean works on a whole database)."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{box.paths['/var/lib/quota']}/quota-history.db"
        return
    found = pg_url()
    if found is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (see tests/history_support.py)")
    server = found.split("?")[0].replace("+psycopg", "").rsplit("/", 1)[0]
    name = f"quota_runbook_{os.getpid()}"
    admin = create_engine(
        f"{server.replace('postgresql:', 'postgresql+psycopg:')}/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield "postgresql", f"{server}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def record(url: str, month: str, user: str, rid: str) -> None:
    meter = Meter.from_url(url, clock=fixed(month), history=None)
    try:
        meter.update_token_usage(user, SYS, 1000, 2000, request_id=rid)
    finally:
        meter.close()


def test_backup_and_restore_as_the_runbook_says(box: Box, own_redis: str, history: tuple[str, str]) -> None:
    kind, history_url = history
    env = {"REDIS_URL": own_redis, "QUOTA_HISTORY_URL": history_url}
    older, last = expired_months()[0], expired_months()[-1]
    record(own_redis, older, "ann", "a1")
    box.run("quota --version", **env)  # (the upgrade block: a dry run and a dump) archives `older`
    record(own_redis, last, "ann", "b1")

    box.run("--rdb", **env)  # back up Redis: `last` has one call
    box.run(".backup" if kind == "sqlite" else "pg_dump", **env)  # and the history: `older` only
    record(own_redis, last, "ann", "b2")
    box.run("quota --version", **env)  # the nightly dump: `last` (two calls) archived, gone from Redis
    store = HistoryStore(history_url)
    truth = store.load_totals("ann", [last])[last].models[SYS].calls
    assert truth == 2

    box.run("SHUTDOWN NOSAVE", **env)  # restore Redis from the older backup, then `quota dump`
    client = redis.Redis.from_url(own_redis)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    # the request-id keys of b1... and a1, not the archived months (nor the dump's archive epoch)
    assert client.dbsize() - client.exists("quota:archive_epoch") == 2
    assert store.load_totals("ann", [last])[last].models[SYS].calls == 2  # not 3: recognised
    assert store.count_months() == 2
    client.close()

    box.run(".restore" if kind == "sqlite" else "pg_restore", **env)  # the history as backed up
    store.close()
    store = HistoryStore(history_url)
    assert store.count_months() == 1 and older in store.load_totals("ann", [older, last])
    store.close()


def test_token_rotation_as_the_runbook_says(box: Box, redis_server: Any, clock: Any) -> None:
    env_file = Path(box.paths["/etc/quota/env"])
    env_file.write_text(f"QUOTA_ADMIN_TOKEN={ADMIN}\n")

    def read_env() -> dict[str, str]:
        return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)

    box.run("token_urlsafe")
    rotated = read_env()
    new = rotated["QUOTA_ADMIN_TOKEN"]
    assert rotated["QUOTA_ADMIN_TOKEN_PREVIOUS"] == ADMIN and new != ADMIN and len(new) >= 32
    server = live_server(redis_server.url, clock, **rotated)  # "restart the API"
    try:
        box.run("set -a", BASE=server.url)  # both tokens work
    finally:
        server.stop()
    box.run("_PREVIOUS=/d")
    assert read_env() == {"QUOTA_ADMIN_TOKEN": new}
    server = live_server(redis_server.url, clock, **read_env())
    try:
        assert status(server.url, new) == 200 and status(server.url, ADMIN) == 401
    finally:
        server.stop()


def status(base: str, token: str) -> int:
    request = urllib.request.Request(
        f"{base}/v1/admin/months/2026-01/summary", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_correcting_a_record_as_the_runbook_says(box: Box, redis_server: Any) -> None:
    redis_server.client().flushall()
    meter = Meter.from_url(redis_server.url, history=None, settings=Settings())
    try:
        meter.update_token_usage("alice", SYS, 12000, 8000, request_id="chatcmpl-abc123")
        out = box.run("quota adjust", REDIS_URL=redis_server.url)
        block = runbook_block("quota adjust")
        assert '"system_deepseek|12000|8000|28000000|0"' in block and "system_deepseek|12000|8000|28000000|0" in out
        listed = json.loads(out[out.index("[") :])
        assert [a["adjustment_id"] for a in listed] == ["fix-chatcmpl-abc123"]
        stats = meter.get_token_stats("alice")
        assert stats["monthly_used"] == 0 and stats["models"][SYS]["calls"] == 0
        assert stats["models"][SYS]["adjustments"] == {"count": 1, "cost": -0.028}
    finally:
        meter.close()


def test_upgrading_migrates_an_older_history(box: Box, redis_server: Any) -> None:
    redis_server.client().flushall()
    url = f"sqlite:///{box.paths['/var/lib/quota']}/quota-history.db"
    store = HistoryStore(url)
    store.ensure_schema()
    with store.engine.begin() as conn:  # a version-2 database, as the previous release left it
        for column in ("adjustments", "adjusted_cost_nano"):
            conn.execute(text(f"ALTER TABLE quota_model_snapshot DROP COLUMN {column}"))
        conn.execute(text("UPDATE quota_schema_version SET version = 2"))
    store.close()
    out = box.run("quota --version", REDIS_URL=redis_server.url, QUOTA_HISTORY_URL=url)
    assert "version" in out
    with create_engine(url).connect() as conn:
        assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == SCHEMA_VERSION
