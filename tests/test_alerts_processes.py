"""Threshold alerts across processes and crashes, on a real Redis and the real cluster (issue 11).

* 8 worker processes record for the same 50 users at once, past 80% and 100% of their credit: each
  user gets exactly one event per threshold at a loopback receiver, each signature verifies with the
  ``standardwebhooks`` package, and exactly one record of each user reports each threshold.
* A worker killed right after its record (SIGKILL, before anything else): the event still arrives.
* ``quota notify`` SIGKILLed while a delivery waits for the receiver: the next notifier takes the event
  over when the lease ends and sends it with the same ``webhook-id``.
* The receiver down for ``QUOTA_ALERTS_DOWN_S`` (10 s; slow), then up: every event arrives.

Workers are spawned (a fresh interpreter, no state inherited), as in test_holds_processes.py.
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from quota import Meter
from quota._alerts import WebhookSettings
from quota._notify import Notifier, read_events
from quota.testing import WebhookReceiver

from .process_support import gather_from_processes

AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # every process pins the same month
SECRET = "whsec_" + base64.b64encode(b"quota-processes-secret-32-bytes!").decode()
SYS = "system_deepseek"
PROCESSES, USERS = 8, 50
CALL = {"input_tokens": 350_000, "output_tokens": 0}  # 0.35 CNY; 8 processes x 2 calls = 5.6 of 5 CNY
ROOT = Path(__file__).resolve().parent.parent


def worker(url: str, prefix: str, index: int, start, results) -> None:
    meter = Meter.from_url(url, prefix=prefix, monthly_credit=5, clock=lambda: AT, history=None)
    meter.ping()
    start.wait(60)
    crossed = []
    for round_ in range(2):
        for u in range(USERS):
            r = meter.update_token_usage(f"user{u}", SYS, **CALL, request_id=f"p{index}-{round_}")
            crossed += [(r.user, t) for t in r.alerts]
    meter.close()
    results.put(crossed)


@pytest.mark.slow
def test_eight_processes_cross_for_fifty_users_and_each_threshold_is_sent_once(real_backend):
    prefix = "ap"
    gathered = gather_from_processes(worker, [(real_backend.url, prefix, i) for i in range(PROCESSES)])
    crossed = [c for got in gathered for c in got]
    want = {(f"user{u}", t) for u in range(USERS) for t in (80, 100)}
    assert Counter(crossed) == Counter(want)  # one record of each user reported each threshold

    meter = Meter.from_url(real_backend.url, prefix=prefix, clock=lambda: AT, history=None)
    with WebhookReceiver() as receiver:
        report = Notifier(meter, WebhookSettings(receiver.url, SECRET), concurrency=8).run_once(30)
        assert (report.delivered, report.failed, report.pending) == (2 * USERS, 0, 0)
        bodies = [Webhook(SECRET).verify(r.body, r.headers) for r in receiver.received]
    assert Counter((b["data"]["user"], b["data"]["threshold"]) for b in bodies) == Counter(want)
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 2 * USERS
    meter.close()


def record_and_die(url: str, prefix: str) -> None:
    meter = Meter.from_url(url, prefix=prefix, monthly_credit=5, clock=lambda: AT, history=None)
    meter.update_token_usage("victim", SYS, input_tokens=4_500_000, output_tokens=0, request_id="last-words")
    os.kill(os.getpid(), signal.SIGKILL)  # between the record and anything after it


def test_a_worker_killed_right_after_its_record_loses_no_event(real_backend):
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=record_and_die, args=(real_backend.url, "ak"))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    meter = Meter.from_url(real_backend.url, prefix="ak", clock=lambda: AT, history=None)
    with WebhookReceiver() as receiver:
        Notifier(meter, WebhookSettings(receiver.url, SECRET)).run_once(10)
    [body] = [Webhook(SECRET).verify(r.body, r.headers) for r in receiver.received]
    assert (body["data"]["user"], body["data"]["threshold"]) == ("victim", 80)
    meter.close()


def notify_command(url: str, prefix: str, receiver: WebhookReceiver, *args: str, **env: str) -> list:
    """``quota notify`` as its own process (the CLI), on the worktree's code."""
    environment = {
        **os.environ,
        "REDIS_URL": url,
        "QUOTA_PREFIX": prefix,
        "QUOTA_WEBHOOK_URL": receiver.url,
        "QUOTA_WEBHOOK_SECRET": SECRET,
        "QUOTA_HISTORY_URL": "sqlite://",
        **env,
    }
    return [[sys.executable, "-m", "quota.cli", "notify", *args], environment]


@pytest.mark.slow
def test_a_notifier_killed_mid_delivery_is_taken_over_with_the_same_id(real_backend):
    prefix = "an"
    meter = Meter.from_url(real_backend.url, prefix=prefix, monthly_credit=5, history=None)
    meter.update_token_usage("alice", SYS, input_tokens=4_500_000, output_tokens=0)
    with WebhookReceiver() as receiver:
        receiver.hold.clear()  # requests wait: the notifier is mid-delivery
        lease = {"QUOTA_WEBHOOK_LEASE_S": "2", "QUOTA_WEBHOOK_TIMEOUT_S": "1"}
        command, env = notify_command(real_backend.url, prefix, receiver, "--poll", "0.1", **lease)
        first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            receiver.wait_for(lambda _: len(receiver.started) == 1, timeout_s=30)
        finally:
            first.kill()  # SIGKILL: no settle, no goodbye
            first.wait()
        receiver.hold.set()
        command, env = notify_command(real_backend.url, prefix, receiver, "--once", "--max-wait", "20", **lease)
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        ids = [h["webhook-id"] for h in receiver.started]
        assert ids == ["an:alice:" + read_id(ids)] * 2  # the killed attempt and the one that took over
        assert [r.headers["webhook-id"] for r in receiver.delivered()][-1] == ids[0]
        Webhook(SECRET).verify(receiver.delivered()[-1].body, receiver.delivered()[-1].headers)
    assert read_events(meter, dead=False) == []
    meter.close()


def read_id(ids: list[str]) -> str:
    return ids[0].split(":", 2)[2]


@pytest.mark.slow
def test_a_receiver_down_for_a_while_gets_every_event_when_back(real_backend):
    """Down for QUOTA_ALERTS_DOWN_S seconds (default 10) while ``quota notify`` keeps retrying."""
    down_s = float(os.environ.get("QUOTA_ALERTS_DOWN_S", "10"))
    prefix = "ad"
    meter = Meter.from_url(real_backend.url, prefix=prefix, monthly_credit=5, history=None)
    receiver = WebhookReceiver()  # not started: down
    command, env = notify_command(
        real_backend.url,
        prefix,
        receiver,
        "--poll",
        "0.2",
        QUOTA_WEBHOOK_RETRY_BASE_S="0.5",
        QUOTA_WEBHOOK_RETRY_CAP_S="2",
    )
    notifier = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for u in range(10):
            meter.update_token_usage(f"user{u}", SYS, input_tokens=5_000_000, output_tokens=0)
        time.sleep(down_s)
        failed = {e.webhook_id: e.attempts for e in read_events(meter, dead=False)}
        assert len(failed) == 20 and min(failed.values()) >= 2  # retried while down
        receiver.start()
        receiver.wait_for(lambda got: len(got) >= 20, timeout_s=30)
        ids = [r.headers["webhook-id"] for r in receiver.delivered()]
        assert sorted(ids) == sorted(failed)  # every event, each once, under the id it had while down
    finally:
        notifier.send_signal(signal.SIGTERM)
        notifier.wait(timeout=30)
        receiver.stop()
    assert read_events(meter, dead=False) == []
    meter.close()
