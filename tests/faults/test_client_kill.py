"""Scenario 3: every client connection killed (``CLIENT KILL TYPE normal``) every 10 ms under load.

A killer connection drops every other normal connection again and again (its own is skipped:
SKIPME yes is the default) while six workers record, single and pipelined, sync and asyncio.
A killed connection may lose a reply after the script ran; redis-py resends, and the callers
resend what still failed with ``StorageUnavailable``, always with the same request ids. Pass:
every record acknowledged, and every user's totals equal the sum of the records sent: nothing
lost, nothing counted twice (the "duplicate" acknowledgements are those resends).
"""

from __future__ import annotations

import time

import pytest

from quota.testing import RedisServer

from .load import Repeat, Tally, assert_exact, counted, join_all, make_records, read_back, report, start_mixed

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f3"
PER_WORKER = 3000
KILL_EVERY_S = 0.01


def kill_clients(client) -> int:  # noqa: ANN001 - redis.Redis
    return client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def test_client_kill_loop_loses_nothing_and_counts_nothing_twice(server: RedisServer):
    work = [make_records("kill", w, PER_WORKER) for w in range(6)]
    tally = Tally()
    started = time.monotonic()
    with Repeat(server.client, kill_clients, KILL_EVERY_S) as killer:
        join_all(start_mixed(server.url, PREFIX, work, tally, batches=(0, 20, 100), retry=True))
    duration = time.monotonic() - started

    records = [r for w in work for r in w]
    want, got = read_back(server.client, PREFIX, records)
    report(
        "3. CLIENT KILL TYPE normal every 10 ms under load",
        {
            **tally.figures(),
            "CLIENT KILL sent": killer.count,
            "connections killed": killer.total,
            **counted(got, want),
            "duration s": round(duration, 1),
            "first errors": [repr(e) for e in tally.errors[:3]],
        },
    )
    assert killer.total > 100, "the killer should have closed many connections"
    assert_exact(tally, records, got, want)
