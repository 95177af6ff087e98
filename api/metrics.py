"""Prometheus metrics, through the official ``prometheus-client``.

Why the library and not hand-written text: it gets the exposition format (escaping, histogram
buckets, ``_created`` samples) right, and it solves the multi-worker problem. Under gunicorn
every worker is its own process with its own counters, and a scrape reaches one worker at random,
so plain per-process counters would jump up and down between scrapes. With
``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory (before the workers start), each worker
writes its values to memory-mapped files there and ``/metrics`` adds up every worker's files,
so any worker answers with the totals of the whole server. Without it (``quota serve``, one
process) the counters are that process's.

Each app gets its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from quota._money import NANO_PER_CNY

log = logging.getLogger("api.metrics")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Every label value comes from a fixed set: a label fed by the request itself (the method of
# `curl -X XMETHOD1`, an unrouted path) would let anyone without a token add series without end,
# each one kept in memory and in every scrape.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"


def method_label(method: str) -> str:
    """The request method, or ``other`` for any method outside :data:`KNOWN_METHODS`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def route_label(rule: str | None) -> str:
    """The matched URL rule (from the app's own url_map), or ``unmatched``: never the raw path."""
    return rule if rule is not None else UNMATCHED_ROUTE


# The files prometheus-client writes in PROMETHEUS_MULTIPROC_DIR: only these are ever removed, so a
# directory set by mistake to one with other files (/tmp) loses nothing else.
_METRIC_FILE = re.compile(r"(counter|gauge_[a-z]+|gauge|histogram|summary)_\d+\.db")


def prepare_multiproc_dir(directory: str) -> int:
    """Create ``directory`` (0700) if missing, and remove the metric files a previous run left
    there; how many were removed. Run before the first worker starts (gunicorn's ``on_starting``)."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = 0
    for entry in path.iterdir():
        if entry.is_file() and _METRIC_FILE.fullmatch(entry.name):
            entry.unlink()
            removed += 1
    return removed


def mark_worker_dead(pid: int) -> None:
    """A worker exited: its live gauges stop counting (prometheus-client's multi-process mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class AlertCollector:
    """The alert outbox's figures, read from Redis at each scrape (``quota._notify.read_stats``: one
    HGETALL of the hash the notifiers write): so they are the same whichever worker answers, and
    nothing is counted twice under ``PROMETHEUS_MULTIPROC_DIR``. Redis away: no alert series."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return []  # not known before a scrape (and never collected at registration)

    def collect(self) -> Iterator[Any]:
        try:
            stats = self.read()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer whatever Redis does
            log.warning("alert metrics unavailable: %s", exc)
            return
        for name, what in (
            ("emitted", "Alert events a notifier picked up for the first time."),
            ("delivered", "Alert events the webhook acknowledged (2xx)."),
            ("failed", "Webhook attempts that failed (each is retried, or the event dies)."),
            ("dead", "Alert events given up on after 24 hours of retries (dead letters)."),
        ):
            yield CounterMetricFamily(f"quota_alerts_{name}", what, value=stats.get(name, 0))
        yield GaugeMetricFamily(
            "quota_alerts_pending",
            "Alert events waiting for the webhook (at the last census).",
            value=stats.get("pending", 0),
        )
        yield GaugeMetricFamily(
            "quota_alerts_dead_letters", "Dead letters kept (at the last census).", value=stats.get("dead_pending", 0)
        )
        oldest_ms = stats.get("oldest_pending_ms", 0)
        age_s = max(time.time() - oldest_ms / 1000, 0.0) if oldest_ms else 0.0
        yield GaugeMetricFamily(
            "quota_alerts_oldest_pending_age_seconds", "Age of the oldest pending alert event (0: none).", value=age_s
        )
        census_ms = stats.get("census_ms", 0)
        yield GaugeMetricFamily(
            "quota_alerts_census_age_seconds",
            "Time since a notifier last counted the outbox: large when no notifier runs.",
            value=max(time.time() - census_ms / 1000, 0.0) if census_ms else float("inf"),
        )


class Metrics:
    def __init__(self, alert_stats: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.alerts = AlertCollector(alert_stats) if alert_stats is not None else None
        r = self.registry
        if self.alerts is not None:
            r.register(self.alerts)
        self.requests = Counter(
            "quota_http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "quota_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.records = Counter(
            "quota_usage_records", "LLM calls recorded through the API.", ["kind", "duplicate"], registry=r
        )
        self.cost = Counter(
            "quota_usage_cost_cny",
            "CNY recorded through the API (a duplicate is not counted again): the spend rate.",
            ["kind"],
            registry=r,
        )
        self.checks = Counter(
            "quota_checks", "Quota checks, by outcome (denied = quota_exceeded).", ["outcome"], registry=r
        )
        self.storage_errors = Counter(
            "quota_storage_errors", "Requests that failed because Redis was unavailable.", registry=r
        )
        self.history_errors = Counter(
            "quota_history_errors",
            "Reads of the SQL history that failed (the answer was served from Redis alone, or it was a 503).",
            registry=r,
        )

    def record_usage(self, is_system: bool, duplicate: bool, cost_nano: int = 0) -> None:
        kind = "system" if is_system else "custom"
        self.records.labels(kind, "true" if duplicate else "false").inc()
        if cost_nano and not duplicate:
            self.cost.labels(kind).inc(cost_nano / NANO_PER_CNY)

    def record_check(self, allowed: bool) -> None:
        self.checks.labels("allowed" if allowed else "denied").inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve and its content type; totals over all workers in multi-process mode."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            if self.alerts is not None:
                registry.register(self.alerts)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
