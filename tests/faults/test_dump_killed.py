"""Scenario 6: the nightly dump killed with SIGKILL at random points ten times in a row.

12,000 user-months (4,000 users x 3 expired months, a third with a custom model too, some with a
credit override) are recorded through the real meter. ``quota dump`` (the CLI, a separate
process) is then started and SIGKILLed ten times in a row, each time at a random point of its
progress: half of the kills once it has sent a random number of commands to Redis (SCAN and the
snapshot scripts, before the first commit or between commits), half once a random number of
user-months has been deleted from Redis (after a commit, in the middle of the delete pipelines or
between batches). Small random batch sizes make each run cross many commit/delete boundaries. Then one dump
runs to completion.

Pass: the history (read through the SQL views) equals, user-month by user-month, what Redis held
before the first dump (every counter, the credit; nothing lost, nothing counted twice), Redis
holds no expired month any more, ``get_token_stats`` answers what it answered before, on SQLite
and on PostgreSQL (127.0.0.1:5432; skipped with the reason when none answers, as in
tests/history_support.py, which also holds the helpers shared with tests/test_dump_faults.py,
the single kill and the racing writer).
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest
import redis

from quota import Meter
from quota.history import HistoryStore

from ..history_support import (
    SETTINGS,
    USERS,
    archive_from_views,
    expired_keys_left,
    expired_months,
    fixed,
    month_hashes,
    plain,
    populate,
    run_dump,
    store_url,
    total_keys,
)
from .load import report

pytestmark = [pytest.mark.slow, pytest.mark.faults]

KILLS = 10


def set_some_credits(client: Any, months: list[str]) -> int:
    """Every 97th user gets a credit override in each expired month: the archive must keep it."""
    count = 0
    for month in months:
        meter = Meter(client, clock=fixed(month), settings=SETTINGS)
        for u in range(0, USERS, 97):
            meter.set_monthly_credit(f"u{u}", f"{u % 50 + 1}.25", month)
            count += 1
    return count


def commands_processed(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def kill_once(
    env: dict[str, str], client: Any, months: list[str], rng: random.Random, n: int, others: int
) -> dict[str, Any]:
    """Start a dump and SIGKILL it at a random point; what happened, for the report.

    The points are chosen by the dump's progress, not by the clock (a dump of 12,000 user-months
    takes well under a second): even kills come once the dump has sent a random number (3 to 80)
    of commands to Redis (SCAN, snapshot scripts: the reading side, before or between commits);
    odd ones once it has deleted a random number of user-months (after a commit, in or between
    the delete pipelines)."""
    batch = rng.choice([50, 100, 200, 500])
    left = expired_keys_left(client, months)
    before = commands_processed(client)
    polls = 0
    proc = run_dump(env, "--batch-size", str(batch))
    started = time.monotonic()
    deadline = started + 60
    if n % 2 == 0:
        how, target = "commands", rng.randint(3, 80)
        while proc.poll() is None and time.monotonic() < deadline:
            polls += 1
            if commands_processed(client) - before - polls >= target:  # less our own INFO calls
                break
            time.sleep(0.0005)
    else:
        how, target = "deletes", rng.randint(1, max(1, left // 15))
        while proc.poll() is None and time.monotonic() < deadline and total_keys(client) - others > left - target:
            time.sleep(0.0005)
    time.sleep(rng.random() * 0.003)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    at_s = time.monotonic() - started
    proc.communicate(timeout=30)
    after = expired_keys_left(client, months)
    return {
        "kill": n + 1,
        "how": f"{how}>={target}",
        "batch": batch,
        "at_s": round(at_s, 3),
        "killed": alive,
        "rc": proc.returncode,
        "left_before": left,
        "left_after": after,
    }


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_dump_killed_ten_times_then_completed_history_is_exact(db: str, redis_server, tmp_path) -> None:
    history_url = store_url(db, tmp_path)  # skips the PostgreSQL case when none answers
    redis_server.client().flushall()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    months = expired_months()
    populate(client, months)
    credits = set_some_credits(client, months)
    expected = {k: plain(v) for k, v in month_hashes(client).items()}
    assert len(expected) == USERS * len(months) >= 10_000
    sample = [f"u{u}" for u in (0, 1, 97, 998, 2999, USERS - 1)]
    stats_before = {u: Meter(client, settings=SETTINGS).get_token_stats(u) for u in sample}
    others = total_keys(client) - len(expected)  # request-id keys: the dump leaves them to their TTL

    env = {**os.environ, "REDIS_URL": redis_server.url, "QUOTA_HISTORY_URL": history_url, "QUOTA_PREFIX": "quota"}
    seed = int(os.environ.get("QUOTA_TEST_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    kills = [kill_once(env, client, months, rng, n, others) for n in range(KILLS)]

    started = time.monotonic()
    final = run_dump(env)
    out, err = final.communicate(timeout=180)
    final_s = time.monotonic() - started
    store = HistoryStore(history_url)
    archived = archive_from_views(store)
    meter = Meter(client, settings=SETTINGS, history=store)
    stats_after = {u: meter.get_token_stats(u) for u in sample}
    left = expired_keys_left(client, months)
    report(
        f"6. Dump killed ten times ({db})",
        {
            "seed (QUOTA_TEST_SEED)": seed,
            "user-months": len(expected),
            "credit overrides": credits,
            **{
                f"kill {k['kill']:>2}": f"{k['how']:<14} batch {k['batch']:>4}  at {k['at_s']:>5} s  "
                f"killed={k['killed']}  expired left {k['left_before']} -> {k['left_after']}"
                for k in kills
            },
            "archived before the final run": len(expected) - kills[-1]["left_after"],
            "final run": out.strip(),
            "final run s (process)": round(final_s, 2),
            "user-months in SQL": len(archived),
            "expired months left in Redis": left,
        },
    )
    assert final.returncode == 0, err
    assert out.startswith("archived ") and ", skipped 0, in " in out
    assert all(k["killed"] for k in kills), "a dump finished before its kill: the kills must all land mid-run"
    assert all(k["left_after"] > 0 for k in kills), "a dump got to the end before its kill"
    assert sum(k["left_before"] > k["left_after"] for k in kills) >= KILLS // 2, (
        "too few kills landed after some deletes"
    )
    assert left == 0
    assert archived == expected  # nothing lost, nothing counted twice, credits kept
    assert stats_after == stats_before
    store.close()
    client.close()
