"""The API under load, short: bench/load.py with 50 clients for 10 s (the 60 s, 200-client run
is ``python -m bench load``; docs/RELIABILITY.md has its figures).

gunicorn (4 sync workers) on a loopback port, a private Redis, wrk with bench/load.lua sending
single records, batches of 10 and reads, every record with a unique request id. Pass: no non-2xx
and no socket error, and Redis holds exactly the records acknowledged in the 2xx answers (calls,
tokens, cost, request-id keys).
"""

from __future__ import annotations

import shutil

import pytest

from bench import load

from .load import report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)"),
]


def test_api_under_load_answers_2xx_and_counts_every_acknowledged_record_once() -> None:
    result = load.run(clients=50, duration_s=10, workers=4, quiet_s=2)
    report(
        "API load (short: 50 clients x 10 s)",
        {
            k: result[k]
            for k in (
                "requests",
                "requests_per_s",
                "post_single",
                "post_batch10",
                "reads",
                "records_acknowledged",
                "records_per_s",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "errors",
                "redis",
            )
        },
    )
    assert result["no_errors"], result["errors"]
    assert result["post_single"] > 100 and result["post_batch10"] > 20 and result["reads"] > 100
    assert result["records_acknowledged"] == result["post_single"] + 10 * result["post_batch10"]
    assert result["redis"]["calls"] == result["records_acknowledged"], (result["redis"], result["expected"])
    assert result["exact"], (result["redis"], result["expected"])
