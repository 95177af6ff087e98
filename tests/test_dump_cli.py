"""``quota dump`` and ``quota scheduler`` on the command line, and the scheduler's clock logic."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest
from click.testing import CliRunner

from quota import Meter
from quota._config import Settings
from quota._errors import InvalidInput, StorageUnavailable
from quota.cli import main
from quota.history import HistoryStore, Scheduler, next_run, parse_at

from .history_support import expired_months, fixed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(redis_server, tmp_path, monkeypatch):
    redis_server.client().flushall()
    month = expired_months()[-1]
    meter = Meter(redis_server.client(), clock=fixed(month), settings=Settings(prefix="quota"))
    for u in range(25):
        meter.update_token_usage(f"cli{u}", "system_deepseek", 100 + u, 10)
    values = {"REDIS_URL": redis_server.url, "QUOTA_HISTORY_URL": f"sqlite:///{tmp_path}/h.db", "QUOTA_PREFIX": "quota"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def test_dump_prints_one_summary_line_and_stats_then_read_the_archive(env) -> None:
    result = CliRunner().invoke(main, ["dump"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("archived 25 user-months (25 models), skipped 0, in ")
    assert result.stdout.count("\n") == 1 and "\r" not in result.stdout
    month = expired_months()[-1]
    stats = CliRunner().invoke(main, ["stats", "cli3"])  # the CLI finds the archive by itself
    assert stats.exit_code == 0, stats.output
    assert '"input": 103' in stats.stdout and month in stats.stdout
    again = CliRunner().invoke(main, ["dump"])
    assert again.stdout.startswith("archived 0 user-months (0 models), skipped 0")


def test_dry_run_and_progress(env) -> None:
    result = CliRunner().invoke(main, ["dump", "--dry-run", "--progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("dry run: would archive 25 user-months (25 models) before ")
    assert "\rquota dump: 25 user-months read" in result.stderr
    assert HistoryStore(env["QUOTA_HISTORY_URL"]).count_months() == 0
    assert not Path(env["QUOTA_HISTORY_URL"].removeprefix("sqlite:///")).exists()


def test_unreachable_redis_or_database_exits_1_with_a_clear_message(env, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(main, ["dump"])
    assert result.exit_code == 1
    assert "error: Redis at 127.0.0.1:1 is unavailable" in result.stderr
    monkeypatch.setenv("REDIS_URL", env["REDIS_URL"])
    monkeypatch.setenv("QUOTA_HISTORY_URL", "postgresql://quota@127.0.0.1:1/history")
    result = CliRunner().invoke(main, ["dump"])
    assert result.exit_code == 1
    assert "error: history database postgresql 127.0.0.1:1/history is unavailable" in result.stderr


def test_bad_usage_exits_2(env, monkeypatch) -> None:
    assert CliRunner().invoke(main, ["dump", "--before", "2025-13"]).exit_code == 2
    future = CliRunner().invoke(main, ["dump", "--before", "2999-01"])
    assert future.exit_code == 2 and "live month" in future.stderr
    assert CliRunner().invoke(main, ["dump", "--history-url", "mysql://x/y"]).exit_code == 2
    monkeypatch.delenv("REDIS_URL")
    missing = CliRunner().invoke(main, ["dump"])
    assert missing.exit_code == 2 and "REDIS_URL" in missing.stderr
    assert CliRunner().invoke(main, ["scheduler", "--at", "24:00"]).exit_code == 2


# --- the scheduler --------------------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_parse_at_and_next_run() -> None:
    assert parse_at("00:10") == dtime(0, 10) and parse_at("23:59") == dtime(23, 59)
    for bad in ("0:10", "24:00", "12:60", "noon", ""):
        with pytest.raises(InvalidInput):
            parse_at(bad)
    at = dtime(0, 10)
    assert next_run(utc(2026, 1, 31, 23, 0), at) == utc(2026, 2, 1, 0, 10)
    assert next_run(utc(2026, 2, 1, 0, 9, 59), at) == utc(2026, 2, 1, 0, 10)
    assert next_run(utc(2026, 2, 1, 0, 10), at) == utc(2026, 2, 2, 0, 10)  # strictly after


class FakeTime:
    def __init__(self, start: datetime):
        self.now = start

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += timedelta(seconds=seconds)
        return False


def test_scheduler_runs_daily_at_the_time_and_retries_a_failed_run(caplog) -> None:
    t = FakeTime(utc(2026, 1, 30, 15, 0))
    calls: list[datetime] = []

    def job() -> str:
        calls.append(t.now)
        if len(calls) == 2:
            raise StorageUnavailable("Redis at 127.0.0.1:1 is unavailable")
        t.now += timedelta(seconds=3)  # the dump takes a while
        return f"archived {len(calls)} user-months"

    caplog.set_level(logging.INFO, logger="quota.scheduler")
    Scheduler(job, at=dtime(0, 10), clock=t.clock, sleep=t.sleep, retry_s=600).run(max_runs=4)
    assert calls == [utc(2026, 1, 31, 0, 10), utc(2026, 2, 1, 0, 10), utc(2026, 2, 1, 0, 20), utc(2026, 2, 2, 0, 10)]
    log = caplog.text
    assert "dump started 2026-01-31T00:10:00Z: archived 1 user-months" in log
    assert "dump started 2026-02-01T00:10:00Z failed: Redis at 127.0.0.1:1 is unavailable" in log
    assert "stopped after 4 run(s), 1 failed" in log


def test_scheduler_survives_an_unexpected_error(caplog) -> None:
    t = FakeTime(utc(2026, 1, 30, 0, 10))
    outcomes = iter([RuntimeError("boom"), "ok"])

    def job() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    caplog.set_level(logging.INFO, logger="quota.scheduler")
    Scheduler(job, at=dtime(0, 10), clock=t.clock, sleep=t.sleep, retry_s=60).run(run_now=True, max_runs=2)
    assert "failed unexpectedly" in caplog.text and ": ok" in caplog.text


@pytest.mark.slow
def test_scheduler_process_dumps_now_logs_and_stops_on_sigterm(env) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quota.cli", "scheduler", "--now", "--at", "00:10"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "dump started" in line:
            break
    proc.send_signal(signal.SIGTERM)
    # Not communicate(): it reads the raw pipe and would drop what readline() already buffered
    # (the "next run" line often arrives in the same chunk as "dump started"). The log is a few
    # lines, so the pipe cannot fill while we wait.
    proc.wait(timeout=30)
    rest = proc.stderr.read()
    assert proc.returncode == 0
    text = "".join(lines) + rest
    assert "archived 25 user-months (25 models), skipped 0" in text
    assert "next run" in text and "00:10:00Z" in text and "stopped after 1 run(s), 0 failed" in text
