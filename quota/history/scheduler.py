"""``quota scheduler``: run the dump every day at a fixed UTC time, and log each run.

A small loop instead of a dependency (APScheduler, cron in the image): one job, one time of day,
UTC only. It sleeps in short steps and recomputes the next run each time, so a suspended host
or a clock change delays a run instead of skipping it. A failed run (Redis or the database
away) is logged and retried every ``retry_s`` until the next scheduled time; the dump is safe
to run again at any point, so a retry never counts anything twice.

The cron equivalent of the default is ``10 0 * * * quota dump`` with ``CRON_TZ=UTC``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

from .._core import Clock, utc_now
from .._errors import InvalidInput, QuotaError

log = logging.getLogger("quota.scheduler")

AT_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
# Short steps: a SIGTERM that the kernel delivers to another thread (the dump's read-ahead thread,
# the metrics server) does not interrupt the main thread's wait, so the stop is seen at the next
# step. With 60 s steps a `docker stop` waited up to a minute (a CI run caught it: no exit in 30 s).
MAX_SLEEP_S = 1.0


def parse_at(text: str) -> time:
    """``"00:10"`` -> ``time(0, 10)`` (UTC); anything else is refused."""
    found = AT_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not found:
        raise InvalidInput(f"invalid time {text!r}: use HH:MM in UTC, 00:00 to 23:59 (e.g. 00:10)")
    return time(int(found.group(1)), int(found.group(2)))


def next_run(now: datetime, at: time) -> datetime:
    """The first ``at`` (UTC) strictly after ``now``."""
    now = now.astimezone(UTC)
    candidate = datetime.combine(now.date(), at, tzinfo=UTC)
    return candidate if candidate > now else candidate + timedelta(days=1)


class Scheduler:
    """Calls ``job`` (which returns a one-line summary) every day at ``at`` UTC.

    ``clock`` and ``sleep`` are injectable so tests can run days in milliseconds; ``sleep``
    returns True when the scheduler should stop.
    """

    def __init__(
        self,
        job: Callable[[], str],
        *,
        at: time,
        clock: Clock | None = None,
        sleep: Callable[[float], bool] | None = None,
        retry_s: float = 600.0,
    ) -> None:
        self.job = job
        self.at = at
        self.clock = clock or utc_now
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait
        self.retry_s = retry_s
        self.runs = 0
        self.failures = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, run_now: bool = False, max_runs: int | None = None) -> None:
        """Loop until stopped (or after ``max_runs`` attempts, for tests)."""
        due = self.clock() if run_now else next_run(self.clock(), self.at)
        log.info("quota scheduler: dump every day at %s UTC; next run %s", self.at.strftime("%H:%M"), _iso(due))
        attempts = 0
        while max_runs is None or attempts < max_runs:
            if self._wait_until(due):
                break
            attempts += 1
            scheduled = next_run(self.clock(), self.at)
            if self._run_once():
                due = scheduled
            else:
                due = min(self.clock() + timedelta(seconds=self.retry_s), scheduled)
            log.info("quota scheduler: next run %s", _iso(due))
        log.info("quota scheduler: stopped after %d run(s), %d failed", self.runs, self.failures)

    def _wait_until(self, due: datetime) -> bool:
        while True:
            left = (due - self.clock()).total_seconds()
            if left <= 0:
                return self._stop.is_set()
            if self.sleep(min(left, MAX_SLEEP_S)) or self._stop.is_set():
                return True

    def _run_once(self) -> bool:
        self.runs += 1
        started = self.clock()
        try:
            summary = self.job()
        except QuotaError as exc:
            self.failures += 1
            log.error("quota scheduler: dump started %s failed: %s", _iso(started), exc)
            return False
        except Exception:  # noqa: BLE001 - a scheduler must outlive one bad night; the trace is logged
            self.failures += 1
            log.exception("quota scheduler: dump started %s failed unexpectedly", _iso(started))
            return False
        log.info("quota scheduler: dump started %s: %s", _iso(started), summary)
        return True


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
