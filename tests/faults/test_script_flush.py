"""Scenario 2: ``SCRIPT FLUSH`` every 5 ms under load.

The script cache is emptied again and again while six workers record (single records and
pipelined batches, sync and asyncio). The callers do not retry: pass means no error at all
reaches a caller, and every user's totals equal the sum of the records sent. The read timeout
is 5 s instead of 1 s: on a loaded 2-core CI machine a reply can take over a second, and that
is scenario 3's subject (lost connections), not this one's.
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

PREFIX = "f2"
PER_WORKER = 6000
FLUSH_EVERY_S = 0.005


@pytest.fixture
def server():
    srv = RedisServer(free_ports(1, start=31000)[0]).start()
    yield srv
    srv.cleanup()


def test_script_flush_loop_reaches_no_caller(server: RedisServer):
    url = server.url

    def sync_meter() -> Meter:
        return Meter.from_url(url, prefix=PREFIX, clock=pinned_clock, socket_timeout=5.0)

    def async_meter() -> AsyncMeter:
        return AsyncMeter.from_url(url, prefix=PREFIX, clock=pinned_clock, socket_timeout=5.0)

    stop = threading.Event()
    flushes = [0]

    def flusher() -> None:
        client = server.client()
        while not stop.is_set():
            client.script_flush()
            flushes[0] += 1
            time.sleep(FLUSH_EVERY_S)
        client.close()

    work = [make_records("flush", w, PER_WORKER) for w in range(6)]
    tally = Tally()
    started = time.monotonic()
    flush_thread = threading.Thread(target=flusher, daemon=True)
    flush_thread.start()
    threads = start_threads([
        (run_sync, (sync_meter, work[0], tally), {}),
        (run_sync, (sync_meter, work[1], tally), dict(batch=20)),
        (run_sync, (sync_meter, work[2], tally), dict(batch=100)),
        (run_async, (async_meter, work[3], tally), {}),
        (run_async, (async_meter, work[4], tally), dict(batch=20)),
        (run_async, (async_meter, work[5], tally), dict(batch=100)),
    ])
    join_all(threads)
    stop.set()
    flush_thread.join()
    duration = time.monotonic() - started

    records = [r for w in work for r in w]
    want = expected_totals(records)
    client = server.client()
    got = read_totals(client, PREFIX, want)
    noscript = int(client.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))
    client.close()
    report("2. SCRIPT FLUSH every 5 ms under load", {
        **tally.figures(),
        "SCRIPT FLUSH sent": flushes[0],
        "NOSCRIPT replies (server)": noscript,
        "calls counted": sum(t["calls"] for t in got.values()),
        "duration s": round(duration, 1),
        "first errors": [repr(e) for e in tally.errors[:3]],
    })
    assert tally.errors == []
    assert tally.sent == tally.acked == len(records)
    assert noscript > 0, "the flushes should have been felt"
    assert got == want
