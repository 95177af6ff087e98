"""Scenario 3: every client connection killed (``CLIENT KILL TYPE normal``) every 10 ms under load.

A killer connection drops every other normal connection again and again (its own is skipped:
SKIPME yes is the default) while six workers record, single and pipelined, sync and asyncio.
A killed connection may lose a reply after the script ran; redis-py resends, and the callers
resend what still failed with ``StorageUnavailable``, always with the same request ids. Pass:
every record acknowledged, and every user's totals equal the sum of the records sent: nothing
lost, nothing counted twice (the "duplicate" acknowledgements are those resends).
"""

from __future__ import annotations

import threading
import time

import pytest

from quota import AsyncMeter, Meter
from quota.testing import RedisServer, free_ports

from .load import (Tally, expected_totals, join_all, make_records, pinned_clock, read_totals, report,
                   run_async, run_sync, start_threads)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f3"
PER_WORKER = 3000
KILL_EVERY_S = 0.01


@pytest.fixture
def server():
    srv = RedisServer(free_ports(1, start=32000)[0]).start()
    yield srv
    srv.cleanup()


def test_client_kill_loop_loses_nothing_and_counts_nothing_twice(server: RedisServer):
    url = server.url

    def sync_meter() -> Meter:
        return Meter.from_url(url, prefix=PREFIX, clock=pinned_clock)

    def async_meter() -> AsyncMeter:
        return AsyncMeter.from_url(url, prefix=PREFIX, clock=pinned_clock)

    stop = threading.Event()
    killed = [0, 0]  # CLIENT KILL commands sent, connections they closed

    def killer() -> None:
        client = server.client()
        while not stop.is_set():
            killed[1] += client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            killed[0] += 1
            time.sleep(KILL_EVERY_S)
        client.close()

    work = [make_records("kill", w, PER_WORKER) for w in range(6)]
    tally = Tally()
    started = time.monotonic()
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()
    threads = start_threads([
        (run_sync, (sync_meter, work[0], tally), dict(retry=True)),
        (run_sync, (sync_meter, work[1], tally), dict(retry=True, batch=20)),
        (run_sync, (sync_meter, work[2], tally), dict(retry=True, batch=100)),
        (run_async, (async_meter, work[3], tally), dict(retry=True)),
        (run_async, (async_meter, work[4], tally), dict(retry=True, batch=20)),
        (run_async, (async_meter, work[5], tally), dict(retry=True, batch=100)),
    ])
    join_all(threads)
    stop.set()
    kill_thread.join()
    duration = time.monotonic() - started

    records = [r for w in work for r in w]
    want = expected_totals(records)
    client = server.client()
    got = read_totals(client, PREFIX, want)
    client.close()
    report("3. CLIENT KILL TYPE normal every 10 ms under load", {
        **tally.figures(),
        "CLIENT KILL sent": killed[0],
        "connections killed": killed[1],
        "calls counted": sum(t["calls"] for t in got.values()),
        "cost counted (nano-CNY)": sum(t["cost_nano"] for t in got.values()),
        "cost expected (nano-CNY)": sum(t["cost_nano"] for t in want.values()),
        "duration s": round(duration, 1),
        "first errors": [repr(e) for e in tally.errors[:3]],
    })
    assert tally.errors == []
    assert tally.sent == tally.acked == len(records)
    assert killed[1] > 100, "the killer should have closed many connections"
    assert got == want
