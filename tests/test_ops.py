"""Operability (issue 13): the metrics directory, logs with time and level (text or JSON), the history
store at start and in /healthz, stats served without the history, `quota credit --add`, token
rotation, and the cluster recipes of docs/OPERATIONS.md run against the test cluster."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from quota import ConfigError, Meter, StorageUnavailable
from quota.cli import main
from quota.history import HistoryStore
from quota_server import create_app
from quota_server.logs import JsonFormatter, UtcFormatter, logging_config
from quota_server.metrics import prepare_multiproc_dir
from quota_server.settings import ApiSettings

from .api_support import ADMIN, BASE_ENV, SERVICE, api_settings, bearer, make_meter
from .doc_support import commands_of, console_blocks

ROOT = Path(__file__).resolve().parent.parent
SYS = "system_deepseek"


# --- the metrics directory and the logs --------------------------------------------------------------


def test_the_metrics_directory_is_created_and_emptied_of_metric_files_only(tmp_path):
    directory = tmp_path / "a" / "prom"
    assert prepare_multiproc_dir(str(directory)) == 0
    assert directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700
    for name in ("counter_12.db", "histogram_3.db", "gauge_livesum_7.db", "notes.txt", "counter.db"):
        (directory / name).write_text("x")
    assert prepare_multiproc_dir(str(directory)) == 3
    assert sorted(p.name for p in directory.iterdir()) == ["counter.db", "notes.txt"]


def record_for(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("quota.api", logging.WARNING, __file__, 1, message, (), info)


def test_log_lines_carry_a_utc_time_and_a_level():
    text = UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record_for("hello"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING quota.api: hello", text)
    entry = json.loads(JsonFormatter().format(record_for("héllo", exc=True)))
    assert entry["level"] == "WARNING" and entry["logger"] == "quota.api" and entry["msg"] == "héllo"
    assert entry["ts"].endswith("Z") and "ValueError: boom" in entry["exc"]
    config = logging_config({"QUOTA_LOG_FORMAT": "json", "QUOTA_LOG_LEVEL": "warning"})
    assert config["root"]["level"] == "WARNING" and config["formatters"]["quota"]["()"].endswith("JsonFormatter")
    for bad in ({"QUOTA_LOG_FORMAT": "xml"}, {"QUOTA_LOG_LEVEL": "loud"}):
        with pytest.raises(ConfigError):
            logging_config(bad)


# --- the history store at start, in /healthz and in the stats ---------------------------------------------


def test_a_relative_sqlite_history_is_resolved_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = HistoryStore("sqlite:///quota-history.db")
    assert store.where == f"sqlite file {tmp_path}/quota-history.db"
    monkeypatch.chdir(ROOT)
    assert store.where == f"sqlite file {tmp_path}/quota-history.db"  # not wherever the process went since


def test_a_production_start_without_quota_history_url_warns(redis_server, clock, caplog, tmp_path):
    settings = api_settings()
    assert not settings.history_url_set
    meter = Meter.from_url(redis_server.url, settings=settings.quota, clock=clock)
    with caplog.at_level(logging.INFO, logger="quota.api"):
        create_app(settings, meter=meter)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("QUOTA_HISTORY_URL is not set" in r.getMessage() for r in warnings)
    assert any(r.getMessage().startswith("history: sqlite file /") for r in caplog.records)
    meter.close()
    caplog.clear()
    settings = api_settings(QUOTA_HISTORY_URL=f"sqlite:///{tmp_path}/h.db")
    meter = Meter.from_url(redis_server.url, settings=settings.quota, clock=clock)
    with caplog.at_level(logging.INFO, logger="quota.api"):
        create_app(settings, meter=meter)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    meter.close()


class DownStore:
    """A history store whose database does not answer."""

    where = "postgresql db.internal:5432/quota"

    def ping(self) -> None:
        raise StorageUnavailable("history database postgresql db.internal:5432/quota is unavailable")

    def load_months(self, user, months):
        self.ping()


def metric(client, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_history_down_degrades_instead_of_failing(redis_server, clock, tmp_path):
    redis_server.client().flushall()
    settings = api_settings()
    meter = make_meter(redis_server.url, clock, settings)
    meter.update_token_usage("alice", SYS, 1000, 10)
    meter.history = HistoryStore(f"sqlite:///{tmp_path}/h.db")
    client = create_app(settings, meter=meter).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "redis": "ok", "history": "ok"}
    meter.history = DownStore()
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {"status": "degraded", "redis": "ok", "history": "unavailable"}
    assert "db.internal" not in health.get_data(as_text=True)  # never where, to an anonymous caller
    stats = client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE))
    assert stats.status_code == 200
    body = stats.get_json()
    assert body["history_unavailable"] is True and body["models"][SYS]["calls"] == 1
    assert metric(client, "quota_history_errors_total") == 2 and metric(client, "quota_storage_errors_total") == 0
    meter.history = None
    assert client.get("/healthz").get_json()["history"] == "none"
    assert "history_unavailable" not in client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)).get_json()
    meter.close()


# --- quota credit: set, or --add ---------------------------------------------------------------------


def test_credit_set_and_add(any_meter):
    assert any_meter.set_monthly_credit("ann", "2", add=True).monthly_credit_nano == 7_000_000_000  # 5 + 2
    assert any_meter.set_monthly_credit("ann", "0.5", add=True).monthly_credit_nano == 7_500_000_000
    assert any_meter.set_monthly_credit("ann", "1").monthly_credit_nano == 1_000_000_000
    assert any_meter.set_monthly_credit("ann", "3", month="2025-12", add=True).monthly_credit_nano == 8_000_000_000
    with pytest.raises(ValueError, match="100,000,000"):
        any_meter.set_monthly_credit("ann", "99999999", add=True)
    assert any_meter.set_monthly_credit("ann", "0", add=True).monthly_credit_nano == 1_000_000_000  # unchanged


def test_concurrent_top_ups_all_count(redis_server):
    from concurrent.futures import ThreadPoolExecutor

    redis_server.client().flushall()
    meter = Meter.from_url(redis_server.url, history=None, monthly_credit=5)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: meter.set_monthly_credit("bob", "0.1", add=True), range(50)))
        assert meter.check_quota_available("bob", SYS).monthly_credit_nano == 10_000_000_000
    finally:
        meter.close()


def test_the_credit_command_says_what_it_does(redis_server, monkeypatch):
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("QUOTA_MONTHLY_CREDIT", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["credit", "--help"])
    assert "SET USER's credit for one month" in result.output and "--add" in result.output
    result = runner.invoke(main, ["credit", "alice", "20"])
    assert result.exit_code == 0 and json.loads(result.stdout)["monthly_credit"] == 20
    assert "set alice's credit for" in result.stderr and "now 20 CNY" in result.stderr
    result = runner.invoke(main, ["credit", "alice", "2.5", "--add"])
    assert json.loads(result.stdout)["monthly_credit"] == 22.5 and "added 2.5 CNY to alice's credit" in result.stderr


# --- token rotation ----------------------------------------------------------------------------------


def test_admin_and_service_tokens_accept_the_previous_value_while_it_is_set(redis_server, clock):
    old_admin, old_service = "old-admin-token-0123456789", "old-service-token-0123456789"
    settings = api_settings(QUOTA_ADMIN_TOKEN_PREVIOUS=old_admin, QUOTA_SERVICE_TOKEN_PREVIOUS=old_service)
    meter = make_meter(redis_server.url, clock, settings)
    client = create_app(settings, meter=meter).test_client()
    for token in (ADMIN, old_admin):
        assert client.get("/v1/admin/months/2026-01/summary", headers=bearer(token)).status_code == 200
    for token in (SERVICE, old_service):
        assert client.get("/v1/models", headers=bearer(token)).status_code == 200
        assert client.get("/v1/admin/months/2026-01/summary", headers=bearer(token)).status_code == 403
    rotated = create_app(api_settings(), meter=meter).test_client()
    assert rotated.get("/v1/models", headers=bearer(old_service)).status_code == 401
    meter.close()
    with pytest.raises(ConfigError, match="must differ"):
        ApiSettings.from_env(BASE_ENV | {"QUOTA_SERVICE_TOKEN_PREVIOUS": ADMIN})
    with pytest.raises(ConfigError, match="shorter"):
        ApiSettings.from_env(BASE_ENV | {"QUOTA_ADMIN_TOKEN_PREVIOUS": "short"})


# --- the cluster recipes of docs/OPERATIONS.md ---------------------------------------------------------


def documented_commands(marker: str) -> str:
    """The shell commands of the console block in docs/OPERATIONS.md that contains ``marker``."""
    for block in console_blocks():
        if marker in block:
            return commands_of(block)
    raise AssertionError(f"no console block with {marker!r} in docs/OPERATIONS.md")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_the_documented_cluster_recipes_find_every_key(redis_cluster):
    redis_cluster.flushall()
    host, port = redis_cluster.startup
    meter = Meter.from_url(redis_cluster.url, history=None)
    try:
        users = [f"user{i}" for i in range(60)]  # in every master's slots
        for user in users:
            meter.update_token_usage(user, SYS, 1000, 10)
        month = meter.core.current_month()
    finally:
        meter.close()
    script = documented_commands("CLUSTER NODES").replace("10.0.0.1", host).replace("7000", str(port))
    script = script.replace("2026-01", month)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    keys = done.stdout.split()
    assert sorted(keys) == sorted(f"quota:{{{u}}}:{month}" for u in users)  # every one, once

    count = documented_commands("wc -l").replace("10.0.0.1", host).replace("7000", str(port))
    count = count.replace("2026-01", month)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", count], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.split()[-1] == "60", done.stdout + done.stderr


def test_a_top_up_by_add_clears_alerts_like_a_raise(any_meter):
    any_meter.update_token_usage("alice", SYS, input_tokens=5_000_000, output_tokens=0)  # 5 CNY: 100 %
    added = any_meter.set_monthly_credit("alice", "0.5", add=True)  # 5 + 0.5: 91 %
    assert added.monthly_credit_nano == 5_500_000_000 and added.cleared == (100,)
    big = any_meter.set_monthly_credit("bob", "99999994", add=True)  # 5 + 99,999,994: just below 10^8
    assert big.monthly_credit_nano == 99_999_999 * 10**9  # exact, past 2^53 nano-CNY
