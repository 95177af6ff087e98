"""record.lua's server time beside a minimal script doing the same writes (the issue-14 row).

    python -m bench record-script [--pairs 40] [--batch 1000] [--json]

What the meter's one script costs Redis beyond the writes any counter must make. ``minimal`` is the
least a hand-written counter would run per LLM call: HINCRBY x4 (input, output, cost, calls) and SET EX
(the request id), no reads, no checks (bench/targets.py's, sent the same KEYS and ARGV). ``record.lua``
is the project's script with the KEYS and ARGV the core builds (quota._core.MeterCore.record), on a
system model (so it also adds system_used_nano).
Scenarios: ``under`` (a user under the credit: the common record) and ``over`` (past a month credit of
0, no grants: lib/grants.lua's has_grants marker spares the grants read).

Both scripts run in ONE private redis-server in interleaved batches of pipelined EVALSHAs, the order
alternating each round, so that both meet the same load on a shared machine. Each batch reads INFO
commandstats (``usec_per_call`` of evalsha: the scripts' own time, wall clock inside Redis), the
server's CPU time (``/proc/<pid>/task/*/schedstat``: time waiting for a core is not counted) and the
commands run per call. Printed: medians, the mean of the quietest tenth of the batches, and the median
of the per-round ratios (record/minimal; the issue's target is <= 1.25x). scripts/record_server_time.py
uses the same measurement for record.lua against another checkout's.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from quota._config import Settings
from quota._core import MeterCore
from quota.testing import RedisServer

from .targets import MINIMAL_RECORD  # HINCRBY x4 + SET EX, with record.lua's KEYS and ARGV
from .workloads import INPUT_TOKENS, MODEL, OUTPUT_TOKENS

TARGET = 1.25  # issue 14: record.lua within 1.25x of the minimal script's server time

Command = tuple[object, ...]  # the arguments of one EVALSHA


@dataclass(frozen=True)
class Reading:
    """One batch: µs per call inside Redis (commandstats), server CPU µs per call, commands per call."""

    usec: float
    cpu_us: float
    commands: float


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` (schedstat: time on a core, not waiting for one)."""
    return sum(int(Path(f).read_text().split()[0]) for f in glob.glob(f"/proc/{pid}/task/*/schedstat"))


def run_batch(client: redis.Redis, pid: int, commands: Sequence[Command]) -> Reading:
    """Send ``commands`` (EVALSHA arguments) pipelined, 500 at a time; they must all succeed."""
    client.config_resetstat()
    before = cpu_ns(pid)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.evalsha(*command)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    cpu_us = (cpu_ns(pid) - before) / len(commands) / 1000
    stats = client.info("commandstats")
    evalsha = stats.pop("cmdstat_evalsha")
    if evalsha["calls"] != len(commands) or client.info("errorstats"):
        raise SystemExit(f"a script failed: {client.info('errorstats')}")
    inner = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config|resetstat") / len(commands)
    return Reading(evalsha["usec_per_call"], cpu_us, inner)


def interleaved(
    client: redis.Redis, pid: int, makers: dict[str, Callable[[], list[Command]]], pairs: int
) -> dict[str, list[Reading]]:
    """``pairs`` rounds of one batch of each maker's commands (built before the clock starts), after
    one warm-up round; the order is reversed every other round, so neither always goes first."""
    names = list(makers)
    for name in names:
        run_batch(client, pid, makers[name]())
    got: dict[str, list[Reading]] = {name: [] for name in names}
    for i in range(pairs):
        for name in names if i % 2 == 0 else reversed(names):
            got[name].append(run_batch(client, pid, makers[name]()))
    return got


def compare(base: list[Reading], new: list[Reading]) -> dict[str, dict[str, float]]:
    """Per metric: both medians, both quietest tenths (mean) and the median per-round ratio new/base."""
    out = {}
    for metric in ("usec", "cpu_us"):
        old, now = [getattr(r, metric) for r in base], [getattr(r, metric) for r in new]
        tenth = max(1, len(old) // 10)
        out[metric] = {
            "base_median": statistics.median(old),
            "base_quietest": statistics.mean(sorted(old)[:tenth]),
            "new_median": statistics.median(now),
            "new_quietest": statistics.mean(sorted(now)[:tenth]),
            "ratio": statistics.median(n / o for o, n in zip(old, now)),
        }
    return out


def print_comparison(scenario: str, names: tuple[str, str], cmp: dict[str, dict[str, float]]) -> None:
    base, new = names
    for metric, label in (("usec", "usec_per_call"), ("cpu_us", "server CPU us/call")):
        m = cmp[metric]
        print(
            f"{scenario:5} {label:19} {base}: median {m['base_median']:6.2f} quietest tenth {m['base_quietest']:6.2f}"
            f"  {new}: median {m['new_median']:6.2f} quietest tenth {m['new_quietest']:6.2f}"
            f"  {new}/{base} per round {m['ratio']:.3f}"
        )


def measure(pairs: int, batch: int) -> dict[str, dict[str, object]]:
    """Both scenarios: record.lua against the minimal script, in one private redis-server."""
    server = RedisServer().start()
    try:
        client = redis.Redis(port=server.port)
        pid = server.proc.pid  # type: ignore[union-attr]
        core = MeterCore(Settings.from_env({"QUOTA_MONTHLY_CREDIT": "900000"}))  # "under" never reaches it
        probe = core.record("probe", MODEL, 1, 1)
        record_sha = client.script_load(probe.script.source)
        minimal_sha = client.script_load(MINIMAL_RECORD.source)
        ids = iter(range(10**12))

        def maker(script: str, user: str) -> Callable[[], list[Command]]:
            def commands() -> list[Command]:
                out: list[Command] = []
                for _ in range(batch):
                    call = core.record(user, MODEL, INPUT_TOKENS, OUTPUT_TOKENS, request_id=f"r{next(ids)}")
                    if script == "minimal":
                        out.append((minimal_sha, len(call.keys), *call.keys, *call.args))
                    else:
                        out.append((record_sha, len(call.keys), *call.keys, *call.args))
                return out

            return commands

        results: dict[str, dict[str, object]] = {}
        for scenario in ("under", "over"):
            users = {"minimal": f"m-{scenario}", "record": f"r-{scenario}"}
            if scenario == "over":
                client.hset(core.keys.month_key(users["record"], core.current_month()), "credit_nano", "0")
            got = interleaved(client, pid, {s: maker(s, u) for s, u in users.items()}, pairs)
            cmp = compare(got["minimal"], got["record"])
            print_comparison(scenario, ("minimal", "record"), cmp)
            commands = {name: readings[-1].commands for name, readings in got.items()}
            mine, theirs = commands["minimal"], commands["record"]
            print(f"{scenario:5} commands per call   minimal {mine:.0f}  record {theirs:.0f}")
            results[scenario] = {"compare": cmp, "commands": commands}
        return results
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench record-script", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40, help="rounds of one batch of each script")
    parser.add_argument("--batch", type=int, default=1000, help="EVALSHAs per batch")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    opts = parser.parse_args(argv)
    results = measure(opts.pairs, opts.batch)
    ratio = results["under"]["compare"]["usec"]["ratio"]  # type: ignore[index]
    print(f"record.lua / minimal (under the credit, usec_per_call): {ratio:.2f}x (target <= {TARGET}x)")
    if opts.json:
        print(json.dumps(results, indent=2))
    return 0
