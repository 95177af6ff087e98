"""The dump's metrics, for Prometheus: ``quota scheduler --metrics-port 9101`` serves them.

The API's ``/metrics`` knows nothing of the nightly dump, which runs in the scheduler's process;
an alert on a dump that stopped running (docs/OPERATIONS.md, ``ops/prometheus/alerts.yml``)
needs the time of the last successful run, so the scheduler exports it:

| metric                                     | meaning                                               |
|--------------------------------------------|-------------------------------------------------------|
| ``quota_dump_last_success_timestamp_seconds`` | Unix time the last successful dump finished (0: none yet) |
| ``quota_dump_last_run_timestamp_seconds``  | Unix time the last dump, successful or not, finished  |
| ``quota_dump_runs_total{outcome}``         | dumps run, ``ok`` or ``failed``                        |
| ``quota_dump_archived_user_months_total``  | user-months moved to SQL (and deleted from Redis)     |
| ``quota_dump_seconds``                     | how long the last dump took                           |

The dump lag, what the dashboard shows and the alert watches, is
``time() - quota_dump_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server

if TYPE_CHECKING:
    from .dump import DumpReport


class DumpMetrics:
    """The dump's counters in a registry of their own (never the API's)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.last_success = Gauge(
            "quota_dump_last_success_timestamp_seconds", "When the last successful dump finished.", registry=r
        )
        self.last_run = Gauge("quota_dump_last_run_timestamp_seconds", "When the last dump finished.", registry=r)
        self.runs = Counter("quota_dump_runs", "Dumps run, by outcome.", ["outcome"], registry=r)
        self.archived = Counter(
            "quota_dump_archived_user_months", "User-months moved from Redis to the SQL history.", registry=r
        )
        self.seconds = Gauge("quota_dump_seconds", "How long the last dump took.", registry=r)
        for outcome in ("ok", "failed"):
            self.runs.labels(outcome)
        ProcessCollector(registry=r)  # process_start_time_seconds: "no dump since the start" needs it

    def observe(self, job: Callable[[], DumpReport]) -> Callable[[], str]:
        """``job`` wrapped for ``Scheduler``: each run is counted, its outcome and time recorded."""

        def run() -> str:
            try:
                report = job()
            except BaseException:
                self.runs.labels("failed").inc()
                self.last_run.set(time.time())
                raise
            now = time.time()
            self.runs.labels("ok").inc()
            self.archived.inc(report.archived)
            self.seconds.set(report.seconds)
            self.last_run.set(now)
            self.last_success.set(now)
            return report.summary()

        return run

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)
