"""``quota notify``: deliver the alert outbox to the webhook (the I/O; the rules are in ``quota._alerts``).

How events are found without a global key. Every script that writes an event also scores its user in
the outbox index of the user's hash slot (``<prefix>:{<slot tag>}:outbox_index``, in the same slot as
the user's keys, so the write is atomic on a cluster too). There are at most 16,384 such keys, one per
slot, and their names are known, so a sweep reads all of them in one pipeline per node: a cost fixed
by the number of slots, not by the number of keys in Redis. A ``SCAN MATCH '*:outbox'`` walks every
key (month hashes, request ids, holds): one pass took 107 ms at 200,000 keys and 800 ms at a million,
the sweep 10 to 13 ms at both (docs/ALERTS.md has the table, ``python -m bench alerts`` the command).

A sweep claims the due events of each user it found (``outbox_claim.lua``: a lease, so that another
notifier does not send them too), POSTs each one, and settles it (``outbox_settle.lua``): delivered,
retried after a backoff, dead after 24 hours, or released when the endpoint answered 410 Gone (then
the endpoint is disabled until ``quota notify --enable``). A notifier killed mid-delivery leaves its
events leased: they are due again when the lease ends, and any notifier sends them, with the same
``webhook-id`` (at least once).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from ._alerts import (
    DELIVERED,
    GONE,
    AlertEvent,
    OutboxCalls,
    WebhookSettings,
    backoff_s,
    iso_ms,
    outcome_of,
    signed_headers,
)
from ._connect import storage_errors
from ._errors import QuotaError
from ._keys import MONTH_RE, USER_RE, KeySchema

log = logging.getLogger("quota.notify")

# "<user>:<field>" of a webhook id, the field being "<YYYY-MM>:<threshold>:<kind>:<seq>" (lib/alerts.lua)
EVENT_FIELD_RE = re.compile(rf"(.+):((?:{MONTH_RE.pattern}):\d{{1,4}}:(?:crossed|cleared):\d{{1,18}})")

DEFAULT_CONCURRENCY = 4  # users delivered at once (threads); each user's events go in order
DEFAULT_POLL_S = 1.0  # how often a sweep looks for new events: the webhook's latency, about
CENSUS_EVERY_S = 15.0  # how often the gauges (pending, oldest) are counted for /metrics
SWEEP_BATCH = 200  # users read per slot per sweep (a slot with more is read again next sweep)

# Counters and gauges in one hash (a plain key: the notifier writes it with plain commands, never from a
# user's script), read by the API's /metrics. The counters add up every notifier's; the gauges are the
# last census's.
STATS_FIELDS = ("emitted", "delivered", "failed", "dead")


def stats_key(keys: KeySchema) -> str:
    return f"{keys.prefix}:alert_stats"


def disabled_key(keys: KeySchema, webhook: WebhookSettings) -> str:
    """Set when the endpoint answered 410 Gone; one per endpoint, so that a new URL starts enabled."""
    return f"{keys.prefix}:webhook_disabled:{webhook.endpoint_digest}"


# --- HTTP ----------------------------------------------------------------------------------------

# What a kept-alive connection the server closed meanwhile fails with, before any request reached it.
STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

Post = Callable[[str, bytes, dict[str, str], float], tuple[int | None, str]]


class HttpPoster:
    """POST with the standard library (``http.client``): one kept-alive connection per thread and
    endpoint. No third-party client: the notifier sends a few small requests, and needs nothing that
    urllib's stack lacks (TLS with the system's CAs, timeouts). Returns (status, error text)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        while True:
            conn, reused = self._connection(parts.scheme, parts.hostname or "", parts.port, timeout_s)
            try:
                conn.request("POST", path, body=body, headers={**headers, "user-agent": "quota-notify"})
                response = conn.getresponse()
                response.read(64 * 1024)
                if response.will_close:
                    self._drop()
                return response.status, "" if 200 <= response.status < 300 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if not (reused and isinstance(exc, STALE_CONNECTION)):
                    return None, f"{type(exc).__name__}: {exc}"[:200]
                # a kept-alive connection the server had closed: once more on a fresh one

    def _connection(
        self, scheme: str, host: str, port: int | None, timeout_s: float
    ) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (conn.host, conn.port) == (host, port or (443 if scheme == "https" else 80)):
            return conn, True
        self._drop()
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = self._local.conn = cls(host, port, timeout=timeout_s)
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None


# --- reading the outbox ---------------------------------------------------------------------------


class IndexProbe:
    """Which of the 16,384 outbox indexes exist: one ``EXISTS`` per slot, sent to each node as one
    buffer packed once and read back raw. Measured (python -m bench alerts, docs/ALERTS.md): 10 to 14
    ms of client time a sweep at 20,000 to a million keys, where a redis-py pipeline of the same
    commands took 72 to 118 ms (it builds a command object per key); so a notifier polling every
    second uses about 1% of a core. Only the indexes that exist are then read, through the client."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self._groups: list[tuple[Any, list[str], bytes]] | None = None

    def _plan(self) -> list[tuple[Any, list[str], bytes]]:
        """(client of a node, its index keys, their EXISTS packed) per node."""
        client = self.meter.client
        keys = self.meter.core.keys.all_index_keys()
        by_node: dict[str, tuple[Any, list[str]]] = {}
        if isinstance(client, RedisCluster):
            for slot, key in enumerate(keys):
                node = client.nodes_manager.get_node_from_slot(slot)
                by_node.setdefault(node.name, (client.get_redis_connection(node), []))[1].append(key)
        else:
            by_node[""] = (client, list(keys))
        plan = []
        for node_client, node_keys in by_node.values():
            conn = node_client.connection_pool.get_connection()
            try:
                packed = conn.pack_commands([("EXISTS", key) for key in node_keys])
            finally:
                node_client.connection_pool.release(conn)
            plan.append((node_client, node_keys, packed))
        return plan

    def existing(self) -> list[str]:
        with storage_errors(self.meter.where):
            if self._groups is None:
                self._groups = self._plan()
            found: list[str] = []
            moved = False
            for node_client, node_keys, packed in self._groups:
                pool = node_client.connection_pool
                conn = pool.get_connection()
                try:
                    conn.send_packed_command(packed)
                    for key in node_keys:
                        try:
                            if conn.read_response():
                                found.append(key)
                        except ResponseError:  # MOVED/ASK: a slot changed hands; read the rest, then re-plan
                            moved = True
                except BaseException:
                    conn.disconnect()  # replies may be left unread on it
                    raise
                finally:
                    pool.release(conn)
            if moved:
                self._groups = None
                self.meter.client.nodes_manager.initialize()
                return self.existing()
            return found


def _read_all(meter: Any, keys: list[str], command: Callable[[Any, str], None]) -> list[Any]:
    """``command(pipe, key)`` for each key, pipelined (per node on a cluster); one reply per key."""
    if not keys:
        return []
    with storage_errors(meter.where):
        pipe = meter.client.pipeline(transaction=False)
        for key in keys:
            command(pipe, key)
        replies: list[Any] = pipe.execute()
        return replies


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Sweep:
    """What one read of the indexes found: the users due now, and when the next one is due (None:
    no pending event anywhere)."""

    due: list[str]
    next_due_ms: float | None
    now_ms: int


def server_ms(meter: Any) -> int:
    with storage_errors(meter.where):
        seconds, micros = meter.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def sweep(meter: Any, probe: IndexProbe, batch: int = SWEEP_BATCH) -> Sweep:
    """The users with due events (at most ``batch`` per slot, earliest first), and the next due time."""
    now_ms = server_ms(meter)
    replies = _read_all(meter, probe.existing(), lambda pipe, key: pipe.zrange(key, 0, batch - 1, withscores=True))
    due: list[str] = []
    next_due: float | None = None
    for members in replies:
        for member, score in members:
            if math.isinf(score):
                break  # dead letters only, and the rest of the slot too (sorted)
            if score > now_ms:  # the slot's next, and the rest are later still
                next_due = score if next_due is None else min(next_due, score)
                break
            due.append(_text(member))
    if due:
        next_due = now_ms
    return Sweep(due, next_due, now_ms)


def read_events(meter: Any, *, dead: bool, limit: int = 1000) -> list[AlertEvent]:
    """The pending events (``dead=False``) or the dead letters of every user, oldest first, at most
    ``limit``: for the API and ``quota notify --status``. Reads every index, then the outboxes."""
    keys = meter.core.keys
    index = _read_all(meter, IndexProbe(meter).existing(), lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True))
    users = [_text(member) for members in index for member, score in members if dead or not math.isinf(score)]
    events: list[AlertEvent] = []
    if dead:
        for reply in _read_all(meter, [keys.dead_key(u) for u in users], lambda pipe, key: pipe.lrange(key, 0, -1)):
            events += [AlertEvent.from_json(keys.prefix, None, text) for text in reply]
    else:
        for reply in _read_all(meter, [keys.outbox_key(u) for u in users], lambda pipe, key: pipe.hgetall(key)):
            events += [AlertEvent.from_json(keys.prefix, f, t) for f, t in reply.items()]
    events.sort(key=lambda e: (e.at_ms, e.user, e.seq))
    return events[:limit]


@dataclass
class Census:
    """The gauges: pending events, and when the oldest was written (ms; None when none is pending)."""

    pending: int
    dead: int
    oldest_ms: int | None


def census(meter: Any) -> Census:
    pending = read_events(meter, dead=False, limit=10**9)
    dead = read_events(meter, dead=True, limit=10**9)
    return Census(len(pending), len(dead), min((e.since_ms for e in pending), default=None))


def read_stats(meter: Any) -> dict[str, int]:
    """The notifiers' counters and the last census (``pending``, ``dead_pending``, ``oldest_pending_ms``,
    ``census_ms``; absent until a notifier ran), for /metrics."""
    with storage_errors(meter.where):
        raw = meter.client.hgetall(stats_key(meter.core.keys))
    return {_text(k): int(v) for k, v in raw.items()}


# --- the notifier ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What a notifier did (since it started, or in one ``--once`` run)."""

    emitted: int = 0  # events this notifier sent for the first time
    delivered: int = 0
    failed: int = 0  # attempts that failed (each retried, or dead)
    dead: int = 0
    sweeps: int = 0
    pending: int | None = None  # at the end of a --once run: events still waiting (None: not counted)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        tail = "" if self.pending is None else f", {self.pending} still pending"
        return f"delivered {self.delivered}, failed attempts {self.failed}, dead {self.dead}{tail}"


class Notifier:
    """Delivers the alert outbox of ``meter``'s key prefix to ``webhook``.

    ``post(url, body, headers, timeout_s) -> (status or None, error)`` sends one request (default: the
    standard library's http.client); tests pass their own. Several notifiers may run at once: a claim
    is atomic and leased, so each event goes to one of them at a time.
    """

    def __init__(
        self,
        meter: Any,
        webhook: WebhookSettings,
        *,
        post: Post | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_s: float = DEFAULT_POLL_S,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = meter
        self.webhook = webhook
        self.key = webhook.key
        self.calls = OutboxCalls(meter.core.keys)
        self.post: Post = post or HttpPoster()
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ms = int(webhook.lease_s * 1000)
        # Claim no more events at once than can be sent (each up to the timeout) before the lease ends.
        self.per_claim = max(1, int(webhook.lease_s / webhook.timeout_s) - 1)
        self.report = Report()
        self.stop_event = threading.Event()
        self._stats_key = stats_key(meter.core.keys)
        self._disabled_key = disabled_key(meter.core.keys, webhook)
        self._lock = threading.Lock()
        self._warned_disabled = False
        self.probe = IndexProbe(meter)

    # one user --------------------------------------------------------------------------------------

    def deliver_user(self, user: str) -> None:
        """Claim ``user``'s due events and send them, in order; a 410 stops at once."""
        _, events = self.meter.run(self.calls.claim(user, self.owner, self.lease_ms, self.per_claim))
        for index, event in enumerate(events):
            if event.attempts == 1:
                self._count("emitted")
            if self.deliver(event) == GONE:
                for rest in events[index + 1 :]:
                    self.meter.run(self.calls.settle(rest, self.owner, "release"))
                return

    def deliver(self, event: AlertEvent) -> str:
        """POST one claimed event and settle it; returns delivered, retry or gone."""
        body = event.body()
        headers = signed_headers(self.key, event.webhook_id, int(time.time()), body)
        status, error = self.post(self.webhook.url, body, headers, self.webhook.timeout_s)
        outcome = outcome_of(status)
        if outcome == DELIVERED:
            self.meter.run(self.calls.settle(event, self.owner, "delivered"))
            self._count("delivered")
            log.info("delivered %s (attempt %d)", event.webhook_id, event.attempts)
        elif outcome == GONE:
            self._disable(event)
            self.meter.run(self.calls.settle(event, self.owner, "release", error="410 Gone"))
        else:
            delay_ms = int(
                1000 * backoff_s(event.attempts, self.webhook.retry_base_s, self.webhook.retry_cap_s, self.rng)
            )
            window_ms = int(1000 * self.webhook.retry_window_s)
            applied = self.meter.run(
                self.calls.settle(event, self.owner, "retry", delay_ms=delay_ms, window_ms=window_ms, error=error)
            )
            self._count("failed")
            if applied == "dead":
                self._count("dead")
                log.error("dead letter %s after %d attempts: %s", event.webhook_id, event.attempts, error)
            else:
                log.warning(
                    "attempt %d of %s failed (%s); next in %.1f s",
                    event.attempts,
                    event.webhook_id,
                    error,
                    delay_ms / 1000,
                )
        return outcome

    def _disable(self, event: AlertEvent) -> None:
        with storage_errors(self.meter.where):
            value = json.dumps(
                {"endpoint": self.webhook.endpoint, "at": iso_ms(int(time.time() * 1000)), "event": event.webhook_id}
            )
            self.meter.client.set(self._disabled_key, value)
        log.error(
            "%s answered 410 Gone: webhooks to it are disabled (events stay pending); `quota notify --enable` "
            "turns them on again",
            self.webhook.endpoint,
        )

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.report, name, getattr(self.report, name) + 1)
        try:
            with storage_errors(self.meter.where):
                self.meter.client.hincrby(self._stats_key, name, 1)
        except QuotaError as exc:  # a counter is not worth a delivery
            log.debug("could not count %s: %s", name, exc)

    # sweeps ---------------------------------------------------------------------------------------

    def disabled(self) -> bool:
        with storage_errors(self.meter.where):
            flag = self.meter.client.get(self._disabled_key)
        if flag is not None and not self._warned_disabled:
            log.error("webhooks to %s are disabled (410 Gone): %s", self.webhook.endpoint, _text(flag))
        self._warned_disabled = flag is not None
        return flag is not None

    def sweep_once(self, pool: ThreadPoolExecutor) -> Sweep:
        """Deliver every due event once (users in parallel); returns what the sweep saw."""
        found = sweep(self.meter, self.probe)
        self.report.sweeps += 1
        if found.due and not self.disabled():
            for failure in [f.exception() for f in [pool.submit(self.deliver_user, u) for u in found.due]]:
                if failure is not None:
                    self.report.errors.append(str(failure))
                    log.warning("a delivery failed: %s", failure)
        return found

    def write_census(self) -> Census:
        counted = census(self.meter)
        now_ms = server_ms(self.meter)
        fields = {"pending": counted.pending, "dead_pending": counted.dead, "census_ms": now_ms}
        fields["oldest_pending_ms"] = counted.oldest_ms or 0
        with storage_errors(self.meter.where):
            self.meter.client.hset(self._stats_key, mapping=fields)
        return counted

    def run(self) -> Report:
        """Deliver until ``stop_event`` is set (SIGTERM, Ctrl-C): a sweep every ``poll_s``, sooner when
        a retry is due; a census every CENSUS_EVERY_S. Redis away: wait and try again."""
        next_census = 0.0
        pause = self.poll_s
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="quota-notify") as pool:
            while not self.stop_event.is_set():
                try:
                    found = self.sweep_once(pool)
                    if time.monotonic() >= next_census:
                        self.write_census()
                        next_census = time.monotonic() + CENSUS_EVERY_S
                    wait_s = self.poll_s
                    if found.next_due_ms is not None and not found.due:
                        wait_s = min(self.poll_s, max(0.0, (found.next_due_ms - found.now_ms) / 1000))
                    pause = self.poll_s
                except QuotaError as exc:
                    log.warning("Redis unavailable (%s); trying again in %.1f s", exc, pause)
                    wait_s, pause = pause, min(pause * 2, 30.0)
                self.stop_event.wait(wait_s)
        return self.report

    def run_once(self, max_wait_s: float) -> Report:
        """Deliver what is due, then wait for the retries that come due within ``max_wait_s``, and
        return; ``report.pending`` counts what is left (0: the outbox is empty but for dead letters)."""
        deadline = time.monotonic() + max_wait_s
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="quota-notify") as pool:
            while True:
                errors = len(self.report.errors)
                found = self.sweep_once(pool)
                left_s = deadline - time.monotonic()
                if self._warned_disabled or found.next_due_ms is None or left_s <= 0:
                    break
                # 0 when some were due: look again at once (more users, or a retry due soon)
                wait_s = max((found.next_due_ms - found.now_ms) / 1000, 0.0)
                if len(self.report.errors) > errors:
                    wait_s = max(wait_s, 0.1)  # Redis failing under the deliveries: do not spin
                if wait_s > left_s or (wait_s > 0 and self.stop_event.wait(wait_s)):
                    break
        self.report.pending = self.write_census().pending
        return self.report


def redeliver(meter: Any, user: str, field: str) -> AlertEvent | None:
    """Put one dead letter back in its user's outbox, due now (None: no such dead letter)."""
    event: AlertEvent | None = meter.run(OutboxCalls(meter.core.keys).redeliver(user, field))
    return event


def parse_event_id(prefix: str, event_id: str) -> tuple[str, str]:
    """``(user, field)`` of a webhook id ``<prefix>:<user>:<month>:<pct>:<kind>:<seq>``; ValueError
    when it is not one."""
    head = prefix + ":"
    found = EVENT_FIELD_RE.fullmatch(event_id[len(head) :]) if event_id.startswith(head) else None
    if found is None or not USER_RE.fullmatch(found.group(1)):
        raise ValueError(f"an event id is {prefix}:<user>:<YYYY-MM>:<threshold>:<crossed|cleared>:<seq>")
    return found.group(1), found.group(2)


def status_lines(events: Iterable[AlertEvent]) -> list[str]:
    """One line per event, for ``quota notify --status``."""
    return [f"{e.webhook_id}  {e.type}  attempts={e.attempts}  {e.error}".rstrip() for e in events]
