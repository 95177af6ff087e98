"""Scenario 2: ``SCRIPT FLUSH`` every 5 ms under load.

The script cache is emptied again and again while six workers record (single records and
pipelined batches, sync and asyncio). The callers do not retry: pass means no error at all
reaches a caller, and every user's totals equal the sum of the records sent. The read timeout
is 5 s instead of 1 s: on a loaded 2-core CI machine a reply can take over a second, and that
is scenario 3's subject (lost connections), not this one's.
"""

from __future__ import annotations

import time

import pytest

from quota.testing import RedisServer

from .load import Repeat, Tally, assert_exact, join_all, make_records, read_back, report, start_mixed

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f2"
PER_WORKER = 6000
FLUSH_EVERY_S = 0.005


def test_script_flush_loop_reaches_no_caller(server: RedisServer):
    work = [make_records("flush", w, PER_WORKER) for w in range(6)]
    tally = Tally()
    started = time.monotonic()
    with Repeat(server.client, lambda client: client.script_flush(), FLUSH_EVERY_S) as flusher:
        join_all(
            start_mixed(
                server.url,
                PREFIX,
                work,
                tally,
                batches=(0, 20, 100),
                retry=False,
                socket_timeout=5.0,
                # the scenario is flushes reaching callers, not connect speed: on a
                # loaded 2-core CI machine the default 0.5 s connect timeout was hit
                socket_connect_timeout=5.0,
            )
        )
    duration = time.monotonic() - started

    records = [r for w in work for r in w]
    want, got = read_back(server.client, PREFIX, records)
    with server.client() as client:
        noscript = int(client.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))
    report(
        "2. SCRIPT FLUSH every 5 ms under load",
        {
            **tally.figures(),
            "SCRIPT FLUSH sent": flusher.count,
            "NOSCRIPT replies (server)": noscript,
            "calls counted": sum(t["calls"] for t in got.values()),
            "duration s": round(duration, 1),
            "first errors": [repr(e) for e in tally.errors[:3]],
        },
    )
    assert noscript > 0, "the flushes should have been felt"
    assert_exact(tally, records, got, want)
