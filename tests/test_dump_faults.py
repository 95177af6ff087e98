"""The dump under faults, for real: SIGKILL in the middle of a dump of 12,000 user-months (then a
rerun), and a writer thread recording into expired months while the dump runs."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from quota import Meter
from quota.history import HistoryStore, dump_expired_months

from .history_support import (
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


@pytest.mark.slow
@pytest.mark.parametrize("redis_kind,db", [("redis", "sqlite"), ("redis", "postgresql"), ("cluster", "sqlite")])
def test_sigkill_anywhere_then_rerun_leaves_the_history_exact(redis_kind: str, db: str, request, tmp_path) -> None:
    if redis_kind == "redis":
        server = request.getfixturevalue("redis_server")
        server.client().flushall()
        client: Any = server.client()
        url = server.url
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        client = RedisCluster(host=cluster.startup[0], port=cluster.startup[1])
        url = cluster.url
    history_url = store_url(db, tmp_path)
    months = expired_months()
    populate(client, months)
    expected = {k: plain(v) for k, v in month_hashes(client).items()}
    assert len(expected) == USERS * len(months) >= 10_000
    sample = [f"u{u}" for u in (0, 1, 2, 999, 3999)]
    stats_before = {u: Meter(client, settings=SETTINGS).get_token_stats(u) for u in sample}

    env = {**os.environ, "REDIS_URL": url, "QUOTA_HISTORY_URL": history_url, "QUOTA_PREFIX": "quota"}
    rng = random.Random(int(os.environ.get("QUOTA_TEST_SEED", time.time_ns() % 10**6)))
    others = total_keys(client) - len(expected)  # request-id keys: the dump leaves them to their TTL
    mid_run_kills = 0
    for _ in range(4):
        left = expired_keys_left(client, months)
        if left == 0:
            break
        # small batches so that a kill lands between commits, deletes and reads alike
        proc = run_dump(env, "--batch-size", str(rng.choice([50, 200, 700])))
        target = left - rng.randint(1, max(1, left // 2))
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if total_keys(client) - others <= target:
                break
            time.sleep(0.002)
        time.sleep(rng.random() * 0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if 0 < expired_keys_left(client, months) < left:
                mid_run_kills += 1
        else:
            proc.wait()
    assert mid_run_kills >= 1, "no SIGKILL landed in the middle of a dump"

    final = run_dump(env)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert out.startswith("archived ") and ", skipped 0, in " in out
    assert expired_keys_left(client, months) == 0
    store = HistoryStore(history_url)
    assert archive_from_views(store) == expected  # nothing lost, nothing counted twice
    meter = Meter(client, settings=SETTINGS, history=store)
    for user in sample:
        assert meter.get_token_stats(user) == stats_before[user]
    store.close()
    client.close()


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_writer_racing_the_dump_loses_nothing(db: str, redis_server, tmp_path) -> None:
    """A thread keeps recording into expired months (existing and new user-months) while the
    dump runs; after it stops and one more dump, the archive holds every record exactly once."""
    redis_server.client().flushall()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    months = expired_months()[:2]
    for month in months:
        meter = Meter(client, clock=fixed(month), settings=SETTINGS)
        meter.update_token_usage_many(
            [
                {"user": f"w{u}", "model_id": "system_deepseek", "input_tokens": u + 1, "output_tokens": 1}
                for u in range(3000)
            ]
        )
    expected_in = {k: v.models["system_deepseek"].input_tokens for k, v in month_hashes(client).items()}
    expected_calls = {k: v.models["system_deepseek"].calls for k, v in month_hashes(client).items()}
    store = HistoryStore(store_url(db, tmp_path))
    stop = threading.Event()
    late = []

    def writer() -> None:
        rng = random.Random(3)
        meters = {
            m: Meter(redis.Redis(host="127.0.0.1", port=redis_server.port), clock=fixed(m), settings=SETTINGS)
            for m in months
        }
        n = 0
        while not stop.is_set():
            month = rng.choice(months)
            user = f"w{rng.randrange(3300)}"  # some of them new user-months
            tokens = rng.randrange(1, 10_000)
            meters[month].update_token_usage(user, "system_deepseek", tokens, 1, request_id=f"late-{n}")
            late.append((user, month, tokens))
            n += 1

    dumper = Meter(client, settings=SETTINGS)  # the real clock, as the nightly dump's
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        reports = [dump_expired_months(dumper, store, batch_size=100) for _ in range(2)]
    finally:
        stop.set()
        thread.join()
    dump_expired_months(dumper, store)
    assert expired_keys_left(client, months) == 0
    assert len(late) > 100 and sum(r.archived for r in reports) > 0
    for user, month, tokens in late:
        expected_in[(user, month)] = expected_in.get((user, month), 0) + tokens
        expected_calls[(user, month)] = expected_calls.get((user, month), 0) + 1
    archived = archive_from_views(store)
    got_in = {k: dict(v[2])["system_deepseek"]["input_tokens"] for k, v in archived.items()}
    got_calls = {k: dict(v[2])["system_deepseek"]["calls"] for k, v in archived.items()}
    assert got_in == expected_in
    assert got_calls == expected_calls
    store.close()
    client.close()
