"""Core metering benchmark (issue 2): run everything, print the table, update docs/BENCHMARKS.md.

    .venv/bin/python -m bench core                 # the full run, about 3-4 minutes on 2 cores
    .venv/bin/python -m bench core --quick --no-docs

It starts its own redis-server (and a 3-master cluster) on private loopback ports through the
harness quota ships (``quota.testing``); it never touches a Redis on 6379. See ``bench/__init__.py``
for the modules and ``bench/driver.py`` for how the runs are kept fair on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from quota.testing import RedisClusterProc, RedisServer, free_ports, server_binary

from . import scenarios, server_ceiling
from .table import PROFILE_NOTES, Measurements, markdown, plain, rows, verdict, where_time_goes, write_section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "BENCHMARKS.md"


def machine_facts() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    server = subprocess.run([server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "redis-server --version": server,
        "redis-benchmark": server_ceiling.binary() or "not installed",
        "python": platform.python_version(),
        "redis-py / hiredis / limits": f"{version('redis')} / {version('hiredis')} / {version('limits')}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench core", description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per timed slice (default 1.0)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved slices per workload, the best is kept (default 5)"
    )
    parser.add_argument("--procs", default="1,4,8", help="process counts for the per-record scenarios")
    parser.add_argument("--cluster-procs", default="1,4", help="process counts on the cluster ('' to skip)")
    parser.add_argument("--user-months", type=int, default=100_000, help="user-months for the memory growth")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s slices, 10k user-months")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.slice, args.user_months = 1, 0.5, 10_000
    return args


def run(args: argparse.Namespace) -> tuple[Measurements, float]:
    started = time.monotonic()
    m = Measurements(tasks=scenarios.ASYNC_TASKS)
    timing = {"rounds": args.rounds, "slice_s": args.slice}
    server = RedisServer(free_ports(1, start=18000)[0]).start()
    try:
        stats = [server.client()]
        for n in (int(p) for p in args.procs.split(",") if p):
            stats[0].flushall()
            _say(f"per record, {n} process(es)")
            m.per_record[n] = scenarios.per_record(server.url, n, stats_clients=stats, **timing)
        stats[0].flushall()
        _say("batches")
        m.batches = scenarios.batches(server.url, stats_clients=stats, **timing)
        stats[0].flushall()
        _say("redis-benchmark")
        m.ceilings = scenarios.server_ceilings(server.port, stats[0], **timing)
        stats[0].flushall()
        _say("asyncio")
        m.async_tasks = scenarios.async_tasks(server.url, stats_clients=stats, **timing)
        _say("memory")
        m.memory = scenarios.user_month_memory(server.url, user_months=args.user_months)
    finally:
        server.cleanup()
    cluster_procs = [int(p) for p in args.cluster_procs.split(",") if p]
    if cluster_procs:
        cluster = RedisClusterProc(masters=3).start()
        try:
            stats = cluster.master_clients()
            for n in cluster_procs:
                cluster.flushall()
                _say(f"cluster, {n} process(es)")
                m.cluster[n] = scenarios.cluster_per_record(cluster.url, n, stats_clients=stats, **timing)
        finally:
            cluster.cleanup()
    return m, time.monotonic() - started


def _say(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def docs_body(
    table: str, facts: dict[str, str], command: str, elapsed_s: float, rounds: int, analysis: str, summary: str
) -> str:
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    return f"""\
Reproduce (from the repository root, after `pip install -e '.[test,bench]'`):

```
{command}
```

It starts its own `redis-server` on a private loopback port (persistence off: `--save ""`,
`--appendonly no`) and a 3-master Redis Cluster, and took {elapsed_s:.0f} s for this run.

Machine:
{facts_md}

{summary}

{table}

How to read it:
- Every call records `system_deepseek`, 1,200 input and 300 output tokens, for one of 100 users.
  `Meter` makes its own request id per call (as in production); the raw peers send a fresh id
  per call too, so the script's dedupe never short-circuits anywhere.
- **raw EVALSHA** is redis-py's `evalsha` of `quota/lua/record.lua` with KEYS/ARGV built once per
  user: the client ceiling. Its ratio is the wrapper's cost (validation, pricing, request id,
  result object, error mapping). **limits hit()** is `FixedWindowRateLimiter.hit()` on the
  same server: one EVALSHA of a 2-command script. **seed JSON** is the seed's original design
  (one JSON document per user, GET, modify, SET, no lock); *lost* is the share of sent tokens
  missing from the documents afterwards; ratio there is seed/Meter, for context.
- **redis-benchmark** runs the same EVALSHA from C with 50 connections: the server ceiling. The
  request id is `rb-<run>-__rand_int__` with `-r 100000000`, with a fresh `<run>` tag per run
  because redis-benchmark draws the same random sequence every time (a repeated id would be
  deduplicated, cheaper and not a record); each run checks that at least 99% of its calls were
  counted. Its command line is
  `{server_ceiling.shown_command(100)}`.
- **server µs/rec** is INFO commandstats `usec` of the top-level commands (EVALSHA; GET+SET for
  the seed) over the records of the slice, after CONFIG RESETSTAT; on the cluster, summed over
  the masters.
- Each workload ran {rounds} interleaved slices (A B C, A B C, ...) in processes that stay up
  for the whole comparison; the table shows each one's best slice, since outside load on this
  shared machine only ever slows a slice down. Ratios compare bests from the same run.
- **client CPU µs/rec** is the CPU time (user + system) of the benchmark processes over the
  records of the slice (median of the slices): the cost of the client code. It moves less with
  outside load than the rates do, but not nothing (cache and scheduler contention), so compare
  it within one run. For redis-benchmark it is the C client's.
- 2 cores serve the clients *and* the server here: at 4 and 8 processes the clients compete with
  redis-server for CPU, so those rates show the machine's limit more than the library's.

Where the time goes (computed from this run):
{analysis}

{PROFILE_NOTES}"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine_facts()
    m, elapsed = run(args)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = rows(m)
    print(plain(table))
    analysis = where_time_goes(m)
    print("\n" + verdict(table) + "\n\n" + analysis)
    command = ".venv/bin/python -m bench core" + ("" if argv is None else " " + " ".join(argv)).rstrip()
    if not args.no_docs:
        body = docs_body(markdown(table), facts, command, elapsed, args.rounds, analysis, verdict(table))
        write_section(DOCS, body)
        print(f"\nwrote the section to {DOCS}", file=sys.stderr)
    return 0
