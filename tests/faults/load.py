"""Known load for the fault scenarios: workers that send records and count what happened.

Every record is fixed in advance (user, tokens, request id), so the totals Redis must hold at the
end are known exactly, whatever the fault did in between. A worker sends its records (one by one
or in pipelined batches, sync or asyncio) and, when the scenario allows it, sends again the records
that failed with ``StorageUnavailable``, with the same request ids, until they are acknowledged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quota import AsyncMeter, Meter
from quota._errors import BatchError, StorageUnavailable

MODEL = "system_deepseek"  # 1,000 nano-CNY per input token, 2,000 per output token
USERS = ("hot", "u1", "u2", "u3")  # half of all records go to "hot"
MONTH = "2026-03"
GIVE_UP_S = 90.0  # a record still failing after this is an error


def pinned_clock() -> datetime:
    """Every scenario records into one month, whatever the wall clock says."""
    return datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def make_records(tag: str, worker: int, count: int) -> list[dict[str, Any]]:
    records = []
    for i in range(count):
        user = "hot" if i % 2 == 0 else USERS[1 + (i // 2) % (len(USERS) - 1)]
        records.append(
            dict(
                user=user,
                model_id=MODEL,
                input_tokens=1 + (i % 7),
                output_tokens=i % 3,
                request_id=f"{tag}-w{worker}-{i}",
            )
        )
    return records


def expected_totals(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """What each user's month hash must hold once every record is counted exactly once."""
    totals: dict[str, dict[str, int]] = {}
    for rec in records:
        t = totals.setdefault(rec["user"], {"input": 0, "output": 0, "cost_nano": 0, "calls": 0})
        t["input"] += rec["input_tokens"]
        t["output"] += rec["output_tokens"]
        t["cost_nano"] += rec["input_tokens"] * 1000 + rec["output_tokens"] * 2000
        t["calls"] += 1
    return totals


def read_totals(client: Any, prefix: str, users: set[str] | list[str]) -> dict[str, dict[str, int]]:
    """The same figures, read back from Redis (``client`` may be a cluster client)."""
    totals = {}
    for user in users:
        raw = {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}:{{{user}}}:{MONTH}").items()}
        totals[user] = {s: raw.get(f"{MODEL}:{s}", 0) for s in ("input", "output", "cost_nano", "calls")}
        if raw.get("system_used_nano", 0) != totals[user]["cost_nano"]:
            totals[user]["system_used_nano_mismatch"] = raw.get("system_used_nano", 0)
    return totals


@dataclass
class Tally:
    """What the callers saw, added up over all workers (thread-safe)."""

    sent: int = 0  # distinct records handed to the meter
    acked: int = 0  # records acknowledged (counted, or found counted already)
    retried_records: int = 0  # records that needed more than one attempt
    failed_attempts: int = 0  # attempts that ended in StorageUnavailable
    duplicate_acks: int = 0  # acknowledged as "already counted": an earlier attempt had run
    errors: list[BaseException] = field(default_factory=list)  # errors that reached a caller
    acked_ids: list[str] = field(default_factory=list)
    failure_kinds: Counter = field(default_factory=Counter)  # why attempts failed, for the report
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set to end an open-ended load: workers finish the chunk in hand and start no other, so
    # every record sent is still acknowledged (or booked as an error).
    stop: threading.Event = field(default_factory=threading.Event)

    def acked_snapshot(self) -> list[str]:
        with self.lock:
            return list(self.acked_ids)

    def figures(self) -> dict[str, int]:
        return dict(
            sent=self.sent,
            acknowledged=self.acked,
            retried_records=self.retried_records,
            failed_attempts=self.failed_attempts,
            duplicate_acks=self.duplicate_acks,
            errors=len(self.errors),
            failure_kinds=dict(self.failure_kinds.most_common(4)),
        )

    def _outcome(
        self, pending: list[dict[str, Any]], results: list[Any], retry: bool, tried: set[str]
    ) -> list[dict[str, Any]]:
        """Book one attempt's results; return the records to send again."""
        again = []
        with self.lock:
            for rec, res in zip(pending, results):
                rid = rec["request_id"]
                if isinstance(res, StorageUnavailable) and retry:
                    self.failed_attempts += 1
                    cause = res.__cause__ or res
                    self.failure_kinds[f"{type(cause).__name__}: {str(cause)[:40]}"] += 1
                    if rid not in tried:
                        tried.add(rid)
                        self.retried_records += 1
                    again.append(rec)
                elif isinstance(res, BaseException):
                    self.errors.append(res)
                else:
                    self.acked += 1
                    self.acked_ids.append(rid)
                    self.duplicate_acks += int(res.duplicate)
        return again


def _chunks(records: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def run_sync(
    make_meter: Callable[[], Meter],
    records: list[dict[str, Any]],
    tally: Tally,
    *,
    batch: int = 0,
    retry: bool = False,
    pause_s: float = 0.0,
) -> None:
    """Send ``records`` one by one (``batch=0``) or ``batch`` at a time."""
    meter = make_meter()
    tried: set[str] = set()
    try:
        for chunk in _chunks(records, batch or 1):
            if tally.stop.is_set():
                break
            with tally.lock:
                tally.sent += len(chunk)
            pending, since = chunk, time.monotonic()
            while pending:
                try:
                    if batch:
                        results: list[Any] = meter.update_token_usage_many(pending)
                    else:
                        results = [meter.update_token_usage(**pending[0])]
                except BatchError as exc:
                    results = exc.results
                except Exception as exc:  # noqa: BLE001 - everything is booked, none is hidden
                    results = [exc] * len(pending)
                pending = tally._outcome(pending, results, retry, tried)
                if pending:
                    if time.monotonic() - since > GIVE_UP_S:
                        tally.errors.append(TimeoutError(f"{len(pending)} records never acknowledged"))
                        return
                    time.sleep(0.02)
            if pause_s:
                time.sleep(pause_s)
    finally:
        meter.close()


def run_async(
    make_meter: Callable[[], AsyncMeter],
    records: list[dict[str, Any]],
    tally: Tally,
    *,
    batch: int = 0,
    retry: bool = False,
    concurrency: int = 4,
) -> None:
    """The asyncio twin of ``run_sync``: ``concurrency`` tasks on one AsyncMeter, in this thread."""

    async def main() -> None:
        meter = make_meter()
        tried: set[str] = set()
        chunks = _chunks(records, batch or 1)

        async def task(mine: list[list[dict[str, Any]]]) -> None:
            for chunk in mine:
                if tally.stop.is_set():
                    break
                with tally.lock:
                    tally.sent += len(chunk)
                pending, since = chunk, time.monotonic()
                while pending:
                    try:
                        if batch:
                            results: list[Any] = await meter.update_token_usage_many(pending)
                        else:
                            results = [await meter.update_token_usage(**pending[0])]
                    except BatchError as exc:
                        results = exc.results
                    except Exception as exc:  # noqa: BLE001
                        results = [exc] * len(pending)
                    pending = tally._outcome(pending, results, retry, tried)
                    if pending:
                        if time.monotonic() - since > GIVE_UP_S:
                            tally.errors.append(TimeoutError(f"{len(pending)} records never acknowledged"))
                            return
                        await asyncio.sleep(0.02)

        try:
            await asyncio.gather(*(task(chunks[i::concurrency]) for i in range(concurrency)))
        finally:
            await meter.aclose()

    asyncio.run(main())


def start_mixed(
    url: str,
    prefix: str,
    work: list[list[dict[str, Any]]],
    tally: Tally,
    *,
    batches: Sequence[int],
    retry: bool,
    **meter_options: Any,
) -> list[threading.Thread]:
    """The scenarios' mixed load: ``len(batches)`` sync workers (a Meter each), then as many asyncio
    ones (an AsyncMeter each), worker i of each kind sending its list of ``work`` in batches of
    ``batches[i]`` (0: one by one), all on ``url`` with ``prefix`` and the pinned clock."""
    if len(work) != 2 * len(batches):
        raise ValueError("one list of records per worker: two workers per batch size")

    def sync_meter() -> Meter:
        return Meter.from_url(url, prefix=prefix, clock=pinned_clock, **meter_options)

    def async_meter() -> AsyncMeter:
        return AsyncMeter.from_url(url, prefix=prefix, clock=pinned_clock, **meter_options)

    n = len(batches)
    return start_threads(
        [(run_sync, (sync_meter, work[i], tally), dict(retry=retry, batch=b)) for i, b in enumerate(batches)]
        + [(run_async, (async_meter, work[n + i], tally), dict(retry=retry, batch=b)) for i, b in enumerate(batches)]
    )


class Repeat:
    """The injected fault: ``action(client)`` every ``every_s`` on a connection of its own, in a
    thread, for as long as the ``with`` block runs. ``count`` is how many times it ran, ``total``
    the sum of its results that are integers (CLIENT KILL's: the connections it closed)."""

    def __init__(self, make_client: Callable[[], Any], action: Callable[[Any], Any], every_s: float):
        self.make_client, self.action, self.every_s = make_client, action, every_s
        self.count = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self.make_client()
        try:
            while not self._stop.is_set():
                result = self.action(client)
                self.total += result if type(result) is int else 0
                self.count += 1
                time.sleep(self.every_s)
        finally:
            client.close()

    def __enter__(self) -> Repeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def read_back(
    make_client: Callable[[], Any], prefix: str, records: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """``(want, got)``: the totals ``records`` make, and the totals Redis holds for their users."""
    want = expected_totals(records)
    client = make_client()
    try:
        return want, read_totals(client, prefix, want)
    finally:
        client.close()


def counted(got: dict[str, dict[str, int]], want: dict[str, dict[str, int]]) -> dict[str, int]:
    """The report's lines on what Redis counted against what was sent."""
    return {
        "calls counted": sum(t["calls"] for t in got.values()),
        "cost counted (nano-CNY)": sum(t["cost_nano"] for t in got.values()),
        "cost expected (nano-CNY)": sum(t["cost_nano"] for t in want.values()),
    }


def assert_exact(tally: Tally, records: list[dict[str, Any]], got: dict, want: dict) -> None:
    """Every record acknowledged once, no error reached a caller, and Redis holds the sums."""
    assert tally.errors == []
    assert tally.sent == tally.acked == len(records)
    assert got == want


def start_threads(targets: list[tuple[Callable[..., None], tuple, dict]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True) for fn, args, kwargs in targets]
    for t in threads:
        t.start()
    return threads


def join_all(threads: list[threading.Thread], timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.1))
    assert not any(t.is_alive() for t in threads), "a load worker did not finish in time"


def report(title: str, figures: dict[str, Any]) -> None:
    """One block per scenario, shown by ``pytest -s``, copied into docs/RELIABILITY.md."""
    print(f"\n=== {title} ===")
    for name, value in figures.items():
        print(f"  {name:<28} {value}")
