"""Run workloads in N processes, in short interleaved slices, and read the server's time for each.

This machine is shared and small (2 cores), so a rate measured once can be off by a factor of
two when something else runs. Two things keep the comparisons fair:

- The processes of a :class:`Pool` open *every* workload of a comparison once (connect, load
  the script, warm up), then run them in turn, slice after slice (A B C, A B C, ...). A burst
  of outside load hits all of them alike, and no process start-up is ever timed.
- :func:`compare` keeps each workload's *best* slice: outside load only ever slows a slice down.

Within a slice all processes start together (a barrier, after the parent ran CONFIG RESETSTAT)
and count records until the same deadline. The rate is the sum of the per-process rates; the
server time per record is INFO commandstats' ``usec`` of the workload's top-level commands
(EVALSHA, or GET+SET for the seed design) divided by the records counted in the slice.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import statistics
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .workloads import Workload

# spawn: every process starts clean (no inherited sockets or event loops), on every platform.
CTX = mp.get_context("spawn")
TIMEOUT_S = 120.0


@dataclass
class Slice:
    """One timed slice of one workload."""

    records: int
    rate: float  # records per second, all processes together
    server_usec_per_record: float | None
    client_cpu_usec_per_record: float | None = None  # CPU time of the benchmark processes


@dataclass
class Result:
    """A workload's best slice, plus facts about its whole run (e.g. the seed design's losses)."""

    name: str
    rate: float
    server_usec_per_record: float | None  # median over the slices
    slices: list[Slice] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    client_cpu_usec_per_record: float | None = None  # median over the slices


def _child(
    url: str,
    index: int,
    specs: dict[str, tuple[type[Workload], dict[str, Any]]],
    warmup_s: float,
    commands: Any,
    replies: Any,
    barrier: Any,
) -> None:
    """A benchmark process: open every workload, then run the slices the parent asks for."""
    try:
        works = {}
        for name, (cls, params) in specs.items():
            work = works[name] = cls(url, index, **params)
            work.open()
            work.run_until(time.monotonic() + warmup_s)
        replies.put(("ready", index))
        while True:
            command = commands.get(timeout=TIMEOUT_S)
            if command[0] == "stop":
                replies.put(("closed", index, {n: w.close() for n, w in works.items()}))
                return
            _, name, duration_s = command
            barrier.wait(TIMEOUT_S)
            start, cpu = time.monotonic(), time.process_time()
            done = works[name].run_until(start + duration_s)
            replies.put(("done", index, done, time.monotonic() - start, time.process_time() - cpu))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        barrier.abort()
        replies.put(("failed", index, traceback.format_exc()))


def reset_stats(clients: Sequence[redis.Redis]) -> None:
    for client in clients:
        client.config_resetstat()


def server_usec(clients: Sequence[redis.Redis], commands: Sequence[str]) -> float:
    """Total microseconds the servers spent in ``commands`` since the last reset."""
    total = 0.0
    for client in clients:
        stats = client.info("commandstats")
        for command in commands:
            total += float(stats.get(f"cmdstat_{command}", {}).get("usec", 0))
    return total


class Pool:
    """``processes`` benchmark processes, each holding every workload in ``specs`` open.

    ``specs`` maps a name to ``(Workload subclass, params)``. ``stats_clients`` are plain
    clients on every server (every master of a cluster) whose commandstats are read.
    """

    def __init__(
        self,
        url: str,
        processes: int,
        specs: dict[str, tuple[type[Workload], dict[str, Any]]],
        stats_clients: Sequence[redis.Redis] = (),
        warmup_s: float = 0.3,
    ):
        self.url = url
        self.specs = specs
        self.stats_clients = list(stats_clients)
        self.barrier = CTX.Barrier(processes + 1)
        self.replies = CTX.Queue()
        self.commands = [CTX.Queue() for _ in range(processes)]
        self.procs = [
            CTX.Process(
                target=_child, daemon=True, args=(url, i, specs, warmup_s, self.commands[i], self.replies, self.barrier)
            )
            for i in range(processes)
        ]

    def __enter__(self) -> Pool:
        for proc in self.procs:
            proc.start()
        try:
            self._collect("ready")
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill()

    def run(self, name: str, duration_s: float) -> Slice:
        """Run workload ``name`` in every process for ``duration_s`` seconds."""
        for q in self.commands:
            q.put(("run", name, duration_s))
        reset_stats(self.stats_clients)
        try:
            self.barrier.wait(TIMEOUT_S)
        except threading.BrokenBarrierError:
            self._collect("done")  # raises with the failing process's traceback
            raise
        rows = self._collect("done", duration_s + TIMEOUT_S)
        records = sum(r[2] for r in rows)
        rate = sum(r[2] / r[3] for r in rows if r[3] > 0)
        usec = server_usec(self.stats_clients, self.specs[name][0].server_commands) if self.stats_clients else None
        cpu_usec = sum(r[4] for r in rows) * 1e6
        return Slice(
            records,
            rate,
            usec / records if usec is not None and records else None,
            cpu_usec / records if records else None,
        )

    def close(self) -> dict[str, Any]:
        """Stop the processes; return each workload's :meth:`Workload.summarize` facts."""
        for q in self.commands:
            q.put(("stop",))
        rows = self._collect("closed")
        self._kill()
        return {name: cls.summarize(self.url, [r[2][name] for r in rows]) for name, (cls, _) in self.specs.items()}

    def _collect(self, kind: str, timeout_s: float = TIMEOUT_S) -> list[tuple]:
        """One ``kind`` reply per process; raise with the child's traceback on failure."""
        rows: list[tuple] = []
        deadline = time.monotonic() + timeout_s
        while len(rows) < len(self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark processes did not report {kind!r} within {timeout_s:.0f} s")
            try:
                reply = self.replies.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a benchmark process died with exit code {dead[0].exitcode}") from None
                continue
            if reply[0] == "failed":
                raise RuntimeError(f"benchmark process {reply[1]} failed:\n{reply[2]}")
            rows.append(reply)
        return rows

    def _kill(self) -> None:
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def compare(
    url: str,
    processes: int,
    specs: dict[str, tuple[type[Workload], dict[str, Any]]],
    *,
    rounds: int = 3,
    slice_s: float = 1.5,
    stats_clients: Sequence[redis.Redis] = (),
) -> dict[str, Result]:
    """Run every workload in ``specs`` for ``rounds`` interleaved slices; keep each one's best."""
    slices: dict[str, list[Slice]] = {name: [] for name in specs}
    with Pool(url, processes, specs, stats_clients) as pool:
        for _ in range(rounds):
            for name in specs:
                slices[name].append(pool.run(name, slice_s))
        facts = pool.close()
    results = {}
    for name, runs in slices.items():
        best = max(runs, key=lambda s: s.rate)
        results[name] = Result(
            name,
            best.rate,
            median(s.server_usec_per_record for s in runs),
            runs,
            facts[name],
            client_cpu_usec_per_record=median(s.client_cpu_usec_per_record for s in runs),
        )
    return results


def median(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
