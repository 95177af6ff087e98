"""Scenario 1: Redis restarted under load, AOF with ``appendfsync always``.

Four workers (single records and pipelined batches, sync and asyncio) send known records to a
private Redis; the server is killed with SIGKILL once and stopped with SIGTERM once while they
run, then started again on the same directory. Pass: every record acknowledged before a stop is
in Redis after the restart (its request-id key is there, written by the same script as the
counters), and once the callers have re-sent the failed records with their request ids, every
user's totals equal the sum of the records sent: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import time

import pytest

from quota.testing import RedisServer

from .load import Tally, assert_exact, counted, join_all, make_records, read_back, report, start_mixed

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f1"
PER_WORKER = 2500


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the load did not progress"
        time.sleep(0.01)


def test_restart_under_load_loses_no_acknowledged_record(aof_server: RedisServer):
    work = [make_records("restart", w, PER_WORKER) for w in range(4)]
    tally = Tally()
    started = time.monotonic()
    threads = start_mixed(aof_server.url, PREFIX, work, tally, batches=(0, 25), retry=True)
    stops = []
    for kill, at in ((True, len(work) * PER_WORKER // 4), (False, len(work) * PER_WORKER // 2)):
        wait_for(lambda at=at: tally.acked >= at)
        aof_server.stop(kill=kill)
        acked_before = tally.acked_snapshot()  # the server is gone: nothing later can be acknowledged
        down_at = time.monotonic()
        time.sleep(0.5)  # the callers meet a dead server for a while
        aof_server.start()
        restart_s = time.monotonic() - down_at
        client = aof_server.client()
        # The `f1:{user}:req:<id>` key is written by the same script as the counters.
        users = {r["request_id"]: r["user"] for w in work for r in w}
        pipe = client.pipeline(transaction=False)
        for rid in acked_before:
            pipe.exists(f"{PREFIX}:{{{users[rid]}}}:req:{rid}")
        missing = [rid for rid, present in zip(acked_before, pipe.execute()) if not present]
        client.close()
        stops.append((("SIGKILL" if kill else "SIGTERM"), len(acked_before), len(missing), round(restart_s, 2)))
        assert missing == [], f"acknowledged before the {'kill' if kill else 'stop'} but gone: {missing[:5]}"
    join_all(threads)
    duration = time.monotonic() - started

    records = [r for w in work for r in w]
    want, got = read_back(aof_server.client, PREFIX, records)
    report(
        "1. Redis restarted under load (AOF, appendfsync always)",
        {
            **tally.figures(),
            "stops (signal, acked before, missing after, down s)": stops,
            **counted(got, want),
            "duration s": round(duration, 1),
        },
    )
    assert tally.failed_attempts > 0, "the restarts should have failed some attempts"
    assert_exact(tally, records, got, want)
