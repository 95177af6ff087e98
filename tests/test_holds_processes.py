"""Turn holds across processes, on a real Redis and a real cluster (issue 9).

* A burst: 4 worker processes start 25 turns each at the same instant, at the last of a user's
  credit (or with a few turns' worth left). The month may pass the credit only by what the
  admitted turns spent beyond their holds; every admitted turn is counted in full; no hold stays.
* Leaks: workers running turns are SIGKILLed at random points and replaced until 1,000 turns have
  started. Once ``hold_ttl_s`` has passed no hold counts, the next admission deletes the dead
  fields, every user is admitted again, and every acknowledged record is in Redis exactly once.

Workers are spawned (as in test_concurrency.py): a fresh interpreter, no state inherited.
``QUOTA_HOLD_SOAK_TURNS`` raises the leak test's 1,000 turns for a longer soak.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota import AsyncMeter, Meter, QuotaExceeded

from .process_support import gather_from_processes

AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # every process pins the same month
MONTH = "2026-01"
MODEL = "system_deepseek"
CALL = {"input_tokens": 20_000, "output_tokens": 4_000}  # 0.028 CNY on system_deepseek
CALL_NANO = 28_000_000
TURN_CALLS = 5
TURN_NANO = TURN_CALLS * CALL_NANO  # 0.14 CNY
CREDIT_NANO = 5_000_000_000

PROCESSES = 4
TURNS_PER_PROCESS = 25


def month_fields(raw, prefix: str, user: str) -> dict[str, int]:
    return {
        k.decode(): int(v)
        for k, v in raw.hgetall(f"{prefix}:{{{user}}}:{MONTH}").items()
        if not k.endswith(b":hold_est_nano")
    }


# --- 1. the burst ------------------------------------------------------------------------------


def burst_worker(url: str, prefix: str, user: str, start, results) -> None:
    asyncio.run(_burst(url, prefix, user, start, results))


async def _burst(url: str, prefix: str, user: str, start, results) -> None:
    meter = AsyncMeter.from_url(url, prefix=prefix, monthly_credit=5, clock=lambda: AT, history=None)
    # one connection per task, open before the start: the turns' admissions go out together
    await asyncio.gather(*(meter.check_quota_available(user, MODEL) for _ in range(TURNS_PER_PROCESS)))
    go = asyncio.Event()

    async def one_turn() -> tuple[int, list[str]] | None:
        await go.wait()
        try:
            async with meter.turn(user, MODEL) as turn:  # the default hold: auto
                statuses = []
                for _ in range(TURN_CALLS):
                    await asyncio.sleep(0.02)  # the LLM call
                    statuses.append((await turn.record(**CALL)).status)
                return turn.rules.hold_nano, statuses
        except QuotaExceeded:
            return None

    tasks = [asyncio.ensure_future(one_turn()) for _ in range(TURNS_PER_PROCESS)]
    await asyncio.sleep(0)  # every task waits on `go`
    await asyncio.to_thread(start.wait, 60)  # ... and every process is ready
    go.set()
    admitted = [t for t in await asyncio.gather(*tasks) if t is not None]
    await meter.aclose()
    results.put(admitted)


@pytest.mark.slow
@pytest.mark.parametrize("spent_nano", [4_990_000_000, 4_500_000_000], ids=["last-0.01", "last-0.5"])
def test_four_processes_start_a_hundred_turns_at_once(real_backend, spent_nano):
    prefix, user = "hp", "burst"
    meter = Meter(real_backend.sync_client(), prefix=prefix, monthly_credit=5, clock=lambda: AT)
    meter.update_token_usage(user, MODEL, spent_nano // 1000, 0)  # 1 nano-CNY per input token
    gathered = gather_from_processes(burst_worker, [(real_backend.url, prefix, user)] * PROCESSES, timeout=60)
    turns = [turn for got in gathered for turn in got]

    assert turns, "no turn was admitted"
    assert all(statuses == ["counted"] * TURN_CALLS for _, statuses in turns)
    fields = month_fields(meter.client, prefix, user)
    assert fields[f"{MODEL}:calls"] == 1 + len(turns) * TURN_CALLS  # every admitted turn in full
    used = fields["system_used_nano"]
    assert used == spent_nano + len(turns) * TURN_NANO
    # the promise: the credit, plus what each turn spent beyond its hold
    assert used <= CREDIT_NANO + sum(max(0, TURN_NANO - hold) for hold, _ in turns)
    if spent_nano == 4_990_000_000:
        # the first admission holds the last 0.01 CNY; every other turn finds nothing available,
        # then the month is over the credit: one turn's cost at most gets past
        assert len(turns) == 1 and turns[0][0] == 10_000_000
        assert used <= CREDIT_NANO + TURN_NANO
    assert not meter.client.exists(f"{prefix}:{{{user}}}:holds")
    assert meter.check_quota_available(user, MODEL).held_nano == 0
    meter.close()


# --- 2. leaks: workers killed mid-turn ----------------------------------------------------------

HOLD_TTL_S = 2
LEAK_USERS = ("lk0", "lk1", "lk2")
HOLDS = ("0.3", "auto", "0.05")
SOAK_TURNS = int(os.environ.get("QUOTA_HOLD_SOAK_TURNS", "1000"))
LEAK_CREDIT_CNY = max(1, SOAK_TURNS // 1000)  # about a third of it is spent: users stay admissible
WORKER_LIFETIME_S = 120 + SOAK_TURNS // 10  # a worker left behind stops by itself


def leak_worker(url: str, prefix: str, log_path: str, seed: int) -> None:
    """Turns on random users, with 0-4 records each and a pause (the LLM) before each, until killed.

    Each step is written to this worker's log and flushed *before* the next one, so that a SIGKILL
    leaves behind what the worker knew: ``B user turn`` before a turn's admission, ``H turn hold``
    once admitted, ``D turn`` refused, ``S user request in out`` before a record is sent, ``A
    request status`` once it is acknowledged, ``E turn`` after the turn's end."""
    rng = random.Random(seed)
    parent, stop_at = os.getppid(), time.monotonic() + WORKER_LIFETIME_S
    meter = Meter.from_url(
        url, prefix=prefix, monthly_credit=LEAK_CREDIT_CNY, hold_ttl_s=HOLD_TTL_S, clock=lambda: AT, history=None
    )
    with open(log_path, "a", encoding="utf-8") as log:

        def note(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        while os.getppid() == parent and time.monotonic() < stop_at:  # orphaned: stop
            user = rng.choice(LEAK_USERS)
            turn = meter.turn(user, MODEL, hold=rng.choice(HOLDS))
            tid = turn.rules.turn_id
            note(f"B {user} {tid}")
            try:
                with turn:
                    note(f"H {tid} {turn.rules.hold_nano}")
                    for i in range(rng.randint(0, 4)):
                        time.sleep(rng.uniform(0, 0.02))
                        tokens_in, tokens_out = rng.randint(1, 400), rng.randint(1, 200)
                        rid = f"{tid}.{i}"
                        note(f"S {user} {rid} {tokens_in} {tokens_out}")
                        status = turn.record(input_tokens=tokens_in, output_tokens=tokens_out, request_id=rid).status
                        note(f"A {rid} {status}")
                    time.sleep(rng.uniform(0, 0.01))
            except QuotaExceeded:
                note(f"D {tid}")
            note(f"E {tid}")


def read_logs(paths: list[Path]) -> list[list[str]]:
    lines = []
    for path in paths:
        if path.exists():
            # a line cut by the kill has no newline: only whole lines are facts
            text = path.read_text(encoding="utf-8")
            lines += [line.split() for line in text.split("\n")[:-1]]
    return lines


def started_turns(paths: list[Path]) -> int:
    return sum(1 for line in read_logs(paths) if line[0] == "B")


def kill_workers_until(turns: int, url: str, prefix: str, logs: Path, rng: random.Random) -> tuple[list[Path], int]:
    """Keep 4 to 8 workers running; SIGKILL one that has started turns every 0.05-0.4 s and start
    new ones, until ``turns`` turns have started; then SIGKILL the rest. Returns (logs, kills)."""
    ctx = mp.get_context("spawn")
    paths: list[Path] = []
    alive: list[tuple[mp.Process, Path]] = []
    kills = 0
    give_up = time.monotonic() + 60 + turns // 10

    def kill(proc: mp.Process) -> None:
        proc.kill()
        proc.join()
        assert proc.exitcode == -9  # it was running: SIGKILL ended it, nothing else did

    try:
        while True:
            pool = rng.randint(4, 8)
            while len(alive) < pool:
                path = logs / f"worker-{len(paths)}.log"
                paths.append(path)
                proc = ctx.Process(target=leak_worker, args=(url, prefix, str(path), rng.randrange(10**9)))
                proc.start()
                alive.append((proc, path))
            if started_turns(paths) >= turns:
                break
            assert time.monotonic() < give_up, f"only {started_turns(paths)} turns started"
            time.sleep(rng.uniform(0.05, 0.4))
            running = [(p, path) for p, path in alive if path.exists() and path.stat().st_size > 0]
            if running:
                victim = rng.choice(running)
                alive.remove(victim)
                kill(victim[0])
                kills += 1
        while alive:  # the last workers die mid-turn too
            kill(alive.pop()[0])
    finally:
        for proc, _ in alive:  # a failed assertion must not leave workers running
            proc.kill()
            proc.join()
    return paths, kills


@pytest.mark.slow
def test_workers_killed_mid_turn_leave_no_hold_and_lose_no_record(real_backend, tmp_path):
    prefix = "hl"
    seed = random.randrange(10**9)
    paths, kills = kill_workers_until(SOAK_TURNS, real_backend.url, prefix, tmp_path, random.Random(seed))
    killed_at = time.monotonic()
    lines = read_logs(paths)
    ended = {line[1] for line in lines if line[0] == "E"}
    leaked = [line[1] for line in lines if line[0] == "H" and line[1] not in ended]
    assert sum(line[0] == "B" for line in lines) >= SOAK_TURNS
    assert kills >= 5 and len(leaked) >= 3, (kills, len(leaked), seed)  # it did kill mid-turn

    raw = real_backend.sync_client()
    meter = Meter(raw, prefix=prefix, monthly_credit=LEAK_CREDIT_CNY, hold_ttl_s=HOLD_TTL_S, clock=lambda: AT)
    holds_key = meter.core.keys.holds_key
    # lk1 and lk2: as if a living turn had pushed the hash's expiry on (which is what a live hold's
    # put does): their dead fields stay for the next admission to delete. lk0's hash just vanishes.
    for user in LEAK_USERS[1:]:
        raw.pexpire(holds_key(user), 60_000)
    time.sleep(max(0.0, killed_at + HOLD_TTL_S + 0.5 - time.monotonic()))

    dead_fields = {user: raw.hlen(holds_key(user)) for user in LEAK_USERS}
    assert dead_fields["lk0"] == 0 and not raw.exists(holds_key("lk0"))
    assert dead_fields["lk1"] + dead_fields["lk2"] > 0, (dead_fields, seed)  # leaks were left behind
    for user in LEAK_USERS:
        check = meter.check_quota_available(user, MODEL)
        assert check.held_nano == 0 and check.allowed, (user, check, seed)
        with meter.turn(user, MODEL, hold="0.2") as turn:  # admitted again, a full hold
            assert turn.rules.hold_nano == min(200_000_000, check.monthly_credit_nano - check.monthly_used_nano)
            assert raw.hkeys(holds_key(user)) == [turn.rules.turn_id.encode()], seed  # the dead deleted
        assert raw.hlen(holds_key(user)) == 0

    # every acknowledged record is counted, and nothing is counted that was not sent
    acked = {line[1]: line[2] for line in lines if line[0] == "A"}
    assert set(acked.values()) == {"counted"}
    sent = [line[1:] for line in lines if line[0] == "S"]
    pipe = raw.pipeline(transaction=False)
    for user, rid, _, _ in sent:
        pipe.exists(meter.core.keys.request_key(user, rid))
    landed = [record for record, found in zip(sent, pipe.execute()) if found]
    assert acked.keys() <= {rid for _, rid, _, _ in landed}, seed
    for user in LEAK_USERS:
        mine = [(int(i), int(o)) for u, _, i, o in landed if u == user]
        fields = month_fields(raw, prefix, user)
        assert fields.get(f"{MODEL}:calls", 0) == len(mine)
        assert fields.get(f"{MODEL}:input", 0) == sum(i for i, _ in mine)
        assert fields.get(f"{MODEL}:output", 0) == sum(o for _, o in mine)
        assert fields.get("system_used_nano", 0) == sum(i * 1000 + o * 2000 for i, o in mine)
    meter.close()
