"""Spool costs against their peers in the same run: append+fsync vs. a direct Redis record,
and replay rate vs. a direct pipelined batch of the same records.

    .venv/bin/python -m bench spool [--records 2000]

Starts its own local Redis (quota.testing) unless REDIS_URL is set (that one is flushed!); writes the spool in a
temporary directory (the disk that TMPDIR is on: point TMPDIR at the worker's real disk).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from quota import Meter
from quota._spool import Spool, SpoolEntry
from quota.testing import redis_url_or_local


def entry(i: int, user: str) -> SpoolEntry:
    return SpoolEntry(
        user,
        "system_deepseek",
        1000 + i,
        200,
        f"chatcmpl-bench-{i}",
        False,
        datetime.now(UTC),
        (1000 + i) * 1000 + 200 * 2000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench spool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    n = parser.parse_args(argv).records
    url, local = redis_url_or_local()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.spool"
            meter = Meter.from_url(url, spool=path)
            meter.client.flushall()

            t0 = time.perf_counter()
            for i in range(n):
                meter.update_token_usage("direct", "system_deepseek", 1000 + i, 200, request_id=f"d-{i}")
            direct_s = time.perf_counter() - t0

            spool = meter.turn_options.spool
            t0 = time.perf_counter()
            for i in range(n):
                spool.append(entry(i, "spooled"))
            append_s = time.perf_counter() - t0

            nosync = Spool(Path(tmp) / "nosync.spool", fsync=False)
            t0 = time.perf_counter()
            for i in range(n):
                nosync.append(entry(i, "x"))
            nosync_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            report = meter.replay_spool()
            replay_s = time.perf_counter() - t0
            assert report.sent == n and not report.pending, report

            records = [
                {
                    "user": "batch",
                    "model_id": "system_deepseek",
                    "input_tokens": 1000 + i,
                    "output_tokens": 200,
                    "request_id": f"b-{i}",
                }
                for i in range(n)
            ]
            t0 = time.perf_counter()
            for k in range(0, n, 500):
                meter.update_token_usage_many(records[k : k + 500])
            batch_s = time.perf_counter() - t0

            used = [
                meter.check_quota_available(u, "system_deepseek").monthly_used_nano
                for u in ("direct", "spooled", "batch")
            ]
            assert used[0] == used[1] == used[2], used  # the same records, the same totals
            meter.close()
    finally:
        if local is not None:
            local.cleanup()

    us = 1e6 / n
    print(f"records: {n}  (Redis at {url.split('@')[-1]})")
    print(f"direct update_token_usage      {direct_s * us:8.1f} us/record")
    print(
        f"spool append + fsync           {append_s * us:8.1f} us/record   ({append_s / direct_s:.2f}x a direct record)"
    )
    print(
        f"spool append, no fsync         {nosync_s * us:8.1f} us/record   (fsync share {1 - nosync_s / append_s:.0%})"
    )
    print(f"replay (batches of 500)        {n / replay_s:8.0f} records/s  ({replay_s * us:.1f} us/record)")
    print(
        f"update_token_usage_many (500)  {n / batch_s:8.0f} records/s  (replay at {batch_s / replay_s:.2f}x its rate)"
    )
    return 0
