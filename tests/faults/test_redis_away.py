"""Scenario 5: Redis stopped for 30 seconds while workers keep recording.

A private Redis (AOF on, so a stop and a start keep its data) serves eight workers:

* four sync turn workers (``meter.turn(...)`` with a spool file each, the way docs/INTEGRATION.md
  shows): two with ``on_unavailable="allow"``, two with ``"deny"`` whose every third message is on
  a custom model (never limited, so it passes even under "deny");
* one asyncio turn worker (``AsyncMeter``, "allow", its own spool);
* three direct callers of ``update_token_usage`` that append a record to their spool when it
  raises ``StorageUnavailable`` and replay the spool when Redis answers again.

Redis is stopped (SIGTERM) for 30 s in the middle. Pass:

* while it is away, "allow" turns start degraded, are logged and counted in
  ``checks_unavailable_allowed``; "deny" turns on a system model raise ``StorageUnavailable``
  (logged, ``checks_unavailable_denied``) and record nothing; custom-model turns pass;
* at the end of the outage (workers held still) the spool files hold exactly the records that
  were spooled, no more, no fewer;
* after Redis returns and every spool is replayed (by later turns, and by new meters on the same
  spool paths, as restarted workers would), each user's month hash equals the sum of the records
  sent: every record counted exactly once, including the ones whose reply was lost as the server
  went down (they are in Redis *and* in a spool; the request id makes the replay a duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quota import AsyncMeter, Meter
from quota._errors import StorageUnavailable
from quota._keys import FIELD_ORIGIN, SUFFIX_HOLD_ESTIMATE
from quota._spool import Spool, SpoolEntry
from quota.testing import RedisServer, free_ports

from .load import MONTH, pinned_clock, report

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PREFIX = "f5"
SYSTEM, CUSTOM = "system_deepseek", "custom_f5"  # 1,000 / 2,000 nano-CNY per token; custom: free
USERS = ("a", "b", "c", "d", "e")
OUTAGE_S = 30.0
BEFORE_S = 3.0
AFTER_S = 8.0  # > the 5 s a meter waits after a failed replay
PACE_S = 0.01  # a pause between messages while Redis is up


@dataclass
class Ledger:
    """What the workers did, added up (thread-safe). ``sent`` holds every record handed over."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # counted / duplicate / spooled / lost
    turns: Counter = field(default_factory=Counter)  # ok / degraded / denied
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rec: dict[str, Any], status: str) -> None:
        with self.lock:
            self.sent.append({**rec, "status": status})
            self.statuses[status] += 1


class Phase:
    """The conductor: workers run until ``stop``, and wait while ``hold`` is set."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.parked: set[str] = set()
        self.lock = threading.Lock()

    def pause_point(self, name: str) -> None:
        if self.running.is_set():
            return
        with self.lock:
            self.parked.add(name)
        self.running.wait()
        with self.lock:
            self.parked.discard(name)


def record_args(name: str, n: int, model: str) -> dict[str, Any]:
    return dict(
        user=USERS[n % len(USERS)],
        model_id=model,
        input_tokens=1 + n % 11,
        output_tokens=n % 5,
        request_id=f"{name}-{n}",
    )


def turn_worker(
    name: str, url: str, spool: Path, policy: str, phase: Phase, ledger: Ledger, meters: dict[str, Any]
) -> None:
    """Messages of three LLM calls each; under "deny" every third message is on the custom model."""
    meter = Meter.from_url(
        url, prefix=PREFIX, clock=pinned_clock, spool=spool, on_unavailable=policy, monthly_credit=1_000_000
    )
    meters[name] = meter
    n = msg = 0
    try:
        while not phase.stop.is_set():
            phase.pause_point(name)
            model = CUSTOM if policy == "deny" and msg % 3 == 2 else SYSTEM
            msg += 1
            try:
                with meter.turn(USERS[msg % len(USERS)], model) as turn:
                    with ledger.lock:
                        ledger.turns["degraded" if turn.degraded else "ok"] += 1
                    for _ in range(3):
                        rec = record_args(name, n, model)
                        n += 1
                        got = turn.record(
                            input_tokens=rec["input_tokens"],
                            output_tokens=rec["output_tokens"],
                            request_id=rec["request_id"],
                            model_id=model,
                        )
                        ledger.add({**rec, "user": turn.rules.user}, got.status)
            except StorageUnavailable:
                with ledger.lock:
                    ledger.turns["denied"] += 1
            time.sleep(PACE_S)
    except BaseException as exc:  # noqa: BLE001 - booked; the test fails on it
        ledger.errors.append(exc)


def async_turn_worker(name: str, url: str, spool: Path, phase: Phase, ledger: Ledger, meters: dict[str, Any]) -> None:
    async def main() -> None:
        meter = AsyncMeter.from_url(url, prefix=PREFIX, clock=pinned_clock, spool=spool, monthly_credit=1_000_000)
        n = msg = 0
        try:
            while not phase.stop.is_set():
                if not phase.running.is_set():
                    await meter.turn_options.wait_background()  # no replay may run while held
                    await asyncio.to_thread(phase.pause_point, name)
                msg += 1
                async with meter.turn(USERS[msg % len(USERS)], SYSTEM) as turn:
                    with ledger.lock:
                        ledger.turns["degraded" if turn.degraded else "ok"] += 1
                    for _ in range(3):
                        rec = record_args(name, n, SYSTEM)
                        n += 1
                        got = await turn.record(
                            input_tokens=rec["input_tokens"],
                            output_tokens=rec["output_tokens"],
                            request_id=rec["request_id"],
                        )
                        ledger.add({**rec, "user": turn.rules.user}, got.status)
                await asyncio.sleep(PACE_S)
            await meter.turn_options.wait_background()
        finally:
            meters[name] = meter.turn_options.metrics.as_dict()
            await meter.aclose()

    try:
        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001
        ledger.errors.append(exc)


def direct_worker(name: str, url: str, spool_path: Path, phase: Phase, ledger: Ledger, meters: dict[str, Any]) -> None:
    """A caller of ``update_token_usage`` (no turn): on StorageUnavailable it keeps the record in
    its spool, with the instant of the call; once Redis answers again it replays the spool."""
    meter = Meter.from_url(url, prefix=PREFIX, clock=pinned_clock, spool=spool_path)
    meters[name] = meter
    spool: Spool = meter.turn_options.spool  # type: ignore[assignment]
    n = 0
    try:
        while not phase.stop.is_set():
            phase.pause_point(name)
            rec = record_args(name, n, SYSTEM)
            n += 1
            try:
                meter.update_token_usage(**rec)
                status = "counted"
            except StorageUnavailable:
                cost = rec["input_tokens"] * 1000 + rec["output_tokens"] * 2000
                spool.append(
                    SpoolEntry(
                        rec["user"],
                        rec["model_id"],
                        rec["input_tokens"],
                        rec["output_tokens"],
                        rec["request_id"],
                        False,
                        meter.core.clock(),
                        cost,
                    )
                )
                status = "spooled"
            ledger.add(rec, status)
            if status == "counted" and meter.turn_options.replay_due():
                meter.replay_spool()
            time.sleep(PACE_S / 3)
    except BaseException as exc:  # noqa: BLE001
        ledger.errors.append(exc)


def expected_hashes(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The non-zero fields each user's month hash must hold once every record counts once."""
    want: dict[str, Counter] = {}
    for r in records:
        h = want.setdefault(r["user"], Counter())
        m, i, o = r["model_id"], r["input_tokens"], r["output_tokens"]
        h[f"{m}:input"] += i
        h[f"{m}:output"] += o
        h[f"{m}:calls"] += 1
        if m == SYSTEM:
            h[f"{m}:cost_nano"] += i * 1000 + o * 2000
            h["system_used_nano"] += i * 1000 + o * 2000
    return {u: {k: v for k, v in h.items() if v} for u, h in want.items()}


def redis_hashes(server: RedisServer) -> dict[str, dict[str, int]]:
    client = server.client()
    try:
        got = {}
        for user in USERS:
            raw = {k.decode(): int(v) for k, v in client.hgetall(f"{PREFIX}:{{{user}}}:{MONTH}").items()}
            # usage only: not the credit, nor the turn-hold estimate turn_end.lua keeps (issue 9), nor
            # the origin a hash made after its month carries (the pinned clock's month is past; issue 13)
            got[user] = {
                k: v
                for k, v in raw.items()
                if v and k not in ("credit_nano", FIELD_ORIGIN) and not k.endswith(":" + SUFFIX_HOLD_ESTIMATE)
            }
        return got
    finally:
        client.close()


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_redis_away_30s_spool_keeps_records_and_totals_are_exact(aof_server: RedisServer, tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING)
    url = aof_server.url
    phase, ledger, meters = Phase(), Ledger(), {}
    spools = {f"turn-allow-{i}": tmp_path / f"turn-allow-{i}.spool" for i in range(2)}
    spools |= {f"turn-deny-{i}": tmp_path / f"turn-deny-{i}.spool" for i in range(2)}
    spools |= {"aturn-allow": tmp_path / "aturn-allow.spool"}
    spools |= {f"direct-{i}": tmp_path / f"direct-{i}.spool" for i in range(3)}
    threads = []
    for name, path in spools.items():
        if name.startswith("turn-"):
            target, args = turn_worker, (name, url, path, name.split("-")[1], phase, ledger, meters)
        elif name.startswith("aturn"):
            target, args = async_turn_worker, (name, url, path, phase, ledger, meters)
        else:
            target, args = direct_worker, (name, url, path, phase, ledger, meters)
        threads.append(threading.Thread(target=target, args=args, name=name, daemon=True))
    for t in threads:
        t.start()

    time.sleep(BEFORE_S)
    sent_before = len(ledger.sent)
    aof_server.stop()  # SIGTERM: the server flushes its AOF and exits
    stopped_at = time.monotonic()
    time.sleep(OUTAGE_S)

    # Hold the workers still and look at the spool files: they must hold what was spooled.
    phase.running.clear()
    wait_until(lambda: phase.parked == set(spools), 30, "the workers did not come to a stop")
    outage_s = time.monotonic() - stopped_at
    spooled_now = dict(ledger.statuses)
    pending = {name: Spool(path).pending_count() for name, path in spools.items()}
    pending_total = sum(pending.values())
    sent_during = len(ledger.sent) - sent_before

    aof_server.start()  # same port and directory: the AOF is read back
    back_at = time.monotonic()
    phase.running.set()
    emptied_s = None  # live traffic again; later turns replay their spools
    while time.monotonic() - back_at < AFTER_S:
        if emptied_s is None and not any(Spool(p).has_pending() for p in spools.values()):
            emptied_s = time.monotonic() - back_at
        time.sleep(0.05)
    phase.stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    assert ledger.errors == [], ledger.errors[:3]

    # What turns and direct callers replayed on their own, then the rest by restarted workers.
    auto_replayed = sum(
        m.turn_options.metrics.records_replayed if isinstance(m, Meter) else m["records_replayed"]
        for m in meters.values()
    )
    left_before_final = sum(Spool(p).pending_count() for p in spools.values())
    final_replayed = 0
    replay_started = time.monotonic()
    for path in spools.values():
        restarted = Meter.from_url(url, prefix=PREFIX, clock=pinned_clock, spool=path)
        rep = restarted.replay_spool()
        assert rep.dead == 0 and not rep.pending, rep
        final_replayed += rep.sent
        restarted.close()
    final_replay_s = time.monotonic() - replay_started
    for name, path in spools.items():
        assert not Spool(path).has_pending(), name
        assert not path.with_name(path.name + ".bad").exists() and not path.with_name(path.name + ".dead").exists()

    metrics = Counter()
    for m in meters.values():
        metrics.update(m.turn_options.metrics.as_dict() if isinstance(m, Meter) else m)
    for m in meters.values():
        if isinstance(m, Meter):
            m.close()

    want = expected_hashes(ledger.sent)
    got = redis_hashes(aof_server)
    spooled_total = ledger.statuses["spooled"]
    report(
        "5. Redis away for 30 s (spool)",
        {
            "outage s": round(outage_s, 1),
            "records sent": len(ledger.sent),
            "sent from the stop to the restart": sent_during,
            "record outcomes": dict(ledger.statuses),
            "spooled": spooled_total,
            "in the spool files at the end of the outage": pending_total,
            "turns": dict(ledger.turns),
            "checks allowed / denied / custom while away": (
                metrics["checks_unavailable_allowed"],
                metrics["checks_unavailable_denied"],
                metrics["checks_unavailable_custom"],
            ),
            "replayed by later turns/callers": auto_replayed,
            "replayed by restarted workers": final_replayed,
            "final replay s": round(final_replay_s, 3),
            "Redis back -> every spool empty (live traffic) s": emptied_s and round(emptied_s, 2),
            "calls counted (Redis)": sum(v for h in got.values() for k, v in h.items() if k.endswith(":calls")),
            "system cost counted (nano-CNY)": sum(h.get("system_used_nano", 0) for h in got.values()),
            "system cost expected (nano-CNY)": sum(h.get("system_used_nano", 0) for h in want.values()),
        },
    )

    # the check's policy while Redis was away
    assert ledger.turns["degraded"] > 0 and ledger.turns["denied"] > 0
    assert metrics["checks_unavailable_allowed"] > 0 and metrics["checks_unavailable_denied"] > 0
    assert metrics["checks_unavailable_custom"] > 0  # custom turns passed even under "deny"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allowed by policy" in w for w in warnings) and any("denied by policy" in w for w in warnings)
    # the spool kept the records
    assert spooled_total > 0 and ledger.statuses["lost"] == 0
    assert pending_total == spooled_now.get("spooled", 0)
    direct_spooled = sum(1 for r in ledger.sent if r["request_id"].startswith("direct") and r["status"] == "spooled")
    assert metrics["records_spooled"] + direct_spooled == spooled_total
    assert final_replayed == left_before_final
    assert auto_replayed + final_replayed == spooled_total
    # exact totals: every record sent counted once
    assert got == want


def test_one_replay_sends_the_claimed_file_and_what_was_spooled_after_it(redis_server, tmp_path: Path):
    """Found by the scenario above: a replay that failed during the outage leaves its claimed file
    (``.replaying``) behind and later records go to a fresh spool file; one ``replay_spool()``
    after Redis returns must send both, not stop after the first file with records still pending."""
    path = tmp_path / "w.spool"
    dead = Meter.from_url(
        f"redis://127.0.0.1:{free_ports(1, start=26700)[0]}/0", prefix=PREFIX, clock=pinned_clock, spool=path
    )
    with dead.turn("a", SYSTEM) as turn:
        assert [turn.record(input_tokens=n, output_tokens=0, request_id=f"early-{n}").status for n in (1, 2)] == [
            "spooled",
            "spooled",
        ]
    failed = dead.replay_spool()  # Redis away: claims the file, sends nothing
    assert (failed.sent, failed.pending) == (0, True) and path.with_name("w.spool.replaying").exists()
    with dead.turn("a", SYSTEM) as turn:
        assert turn.record(input_tokens=4, output_tokens=0, request_id="late-4").status == "spooled"
    dead.close()
    redis_server.client().delete(f"{PREFIX}:{{a}}:{MONTH}")
    back = Meter.from_url(redis_server.url, prefix=PREFIX, clock=pinned_clock, spool=path)
    rep = back.replay_spool()
    assert (rep.sent, rep.dead, rep.pending) == (3, 0, False)
    assert not Spool(path).has_pending()
    assert back.get_token_stats("a", months=0)["models"][SYSTEM]["input_tokens"] == 7
    back.close()
