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

from quota import AsyncMeter, Meter
from quota.testing import RedisServer, free_ports

from .load import (Tally, expected_totals, join_all, make_records, pinned_clock, read_totals, report,
                   run_async, run_sync, start_threads)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f1"
PER_WORKER = 2500


@pytest.fixture
def aof_server():
    server = RedisServer(free_ports(1, start=30000)[0],
                         ["--appendonly", "yes", "--appendfsync", "always"]).start()
    yield server
    server.cleanup()


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the load did not progress"
        time.sleep(0.01)


def test_restart_under_load_loses_no_acknowledged_record(aof_server: RedisServer):
    url = aof_server.url

    def sync_meter() -> Meter:
        return Meter.from_url(url, prefix=PREFIX, clock=pinned_clock)

    def async_meter() -> AsyncMeter:
        return AsyncMeter.from_url(url, prefix=PREFIX, clock=pinned_clock)

    work = [make_records("restart", w, PER_WORKER) for w in range(4)]
    tally = Tally()
    started = time.monotonic()
    threads = start_threads([
        (run_sync, (sync_meter, work[0], tally), dict(retry=True)),
        (run_sync, (sync_meter, work[1], tally), dict(retry=True, batch=25)),
        (run_async, (async_meter, work[2], tally), dict(retry=True)),
        (run_async, (async_meter, work[3], tally), dict(retry=True, batch=25)),
    ])
    stops = []
    for kill, at in ((True, len(work) * PER_WORKER // 4), (False, len(work) * PER_WORKER // 2)):
        wait_for(lambda: tally.acked >= at)
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
    want = expected_totals(records)
    client = aof_server.client()
    got = read_totals(client, PREFIX, want)
    client.close()
    report("1. Redis restarted under load (AOF, appendfsync always)", {
        **tally.figures(),
        "stops (signal, acked before, missing after, down s)": stops,
        "calls counted": sum(t["calls"] for t in got.values()),
        "cost counted (nano-CNY)": sum(t["cost_nano"] for t in got.values()),
        "cost expected (nano-CNY)": sum(t["cost_nano"] for t in want.values()),
        "duration s": round(duration, 1),
    })
    assert tally.errors == []
    assert tally.sent == tally.acked == len(records)
    assert tally.failed_attempts > 0, "the restarts should have failed some attempts"
    assert got == want
