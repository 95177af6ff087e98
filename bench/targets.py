"""The speed targets of issue 14, each beside its peer or ceiling from the same run.

    .venv/bin/python -m bench                      # this, at the default sizes; rewrites its section
                                                   # of docs/BENCHMARKS.md (a few minutes on 2 cores)
    .venv/bin/python -m bench targets --quick --no-docs

One run measures every row of the target table: the sync ``Meter`` and ``limits`` at 4 processes,
the client CPU of ``Meter`` against raw redis-py EVALSHA of the same script, ``AsyncMeter`` with
200 concurrent tasks (auto-pipelined) against ``limits``, ``redis-benchmark -P 16`` and raw
``redis.asyncio`` EVALSHA (p99 latency), record.lua's server time against a minimal script that
does the same writes, the token-stats route against ``/healthz`` under gunicorn (needs ``wrk``),
and the dump into SQLite and PostgreSQL. Servers are private (``quota.testing``) on loopback
ports. The machine's load average is printed with the figures: ratios of one run are what to read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from quota._core import MeterCore
from quota._scripts import RECORD, LuaScript
from quota.history import HistoryStore
from quota.testing import RedisServer, free_ports

from . import driver, server_ceiling
from .table import write_section
from .workloads import AsyncMeterRecord, LimitsHit, MeterRecord, RawAsyncEvalsha, RawEvalsha

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Speed targets (issue 14)"
TASKS = 200

# The same writes as a record, and nothing else: the floor record.lua is compared with.
_MINIMAL_SOURCE = """\
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':input', ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':output', ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':cost_nano', ARGV[4])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':calls', 1)
redis.call('SET', KEYS[2], '1', 'EX', ARGV[7])
return 1
"""
MINIMAL_RECORD = LuaScript("minimal_record", _MINIMAL_SOURCE, hashlib.sha1(_MINIMAL_SOURCE.encode()).hexdigest())


@dataclass
class Row:
    measure: str
    value: float | None  # None: not measured (say why in ``note``)
    peer: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _row(measure: str, value: float | None, peer: str, ratio: float | None, target: str, note: str = "") -> Row:
    op, bound = target.split()
    met = None if ratio is None else (ratio >= float(bound) if op == ">=" else ratio <= float(bound))
    return Row(measure, value, peer, ratio, target, met, note)


def _say(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def script_server_time(client: redis.Redis, *, calls: int, rounds: int) -> tuple[float, float]:
    """µs of server time per call (INFO commandstats) of record.lua and of the minimal script,
    each sent ``calls`` times pipelined (100 a pipeline, fresh request ids), interleaved ``rounds``
    times; the best round of each."""
    core = MeterCore()
    for script in (RECORD, MINIMAL_RECORD):
        client.script_load(script.source)
    best = {RECORD.sha: float("inf"), MINIMAL_RECORD.sha: float("inf")}
    for _ in range(rounds):
        for script in (RECORD, MINIMAL_RECORD):
            made = [core.record(f"st-{i % 100}", "system_deepseek", 1200, 300) for i in range(calls)]
            driver.reset_stats([client])
            for start in range(0, calls, 100):
                pipe = client.pipeline(transaction=False)
                for call in made[start : start + 100]:
                    pipe.evalsha(script.sha, len(call.keys), *call.keys, *call.args)
                pipe.execute()
            best[script.sha] = min(best[script.sha], driver.server_usec([client], ["evalsha"]) / calls)
    client.flushall()
    return best[RECORD.sha], best[MINIMAL_RECORD.sha]


def measure_api(args: argparse.Namespace) -> tuple[float | None, float | None, str]:
    """requests/s of token-stats (service token) and of /healthz under gunicorn -w 4."""
    from . import api

    if not shutil.which("wrk"):
        return None, None, "wrk is not installed (apt-get install wrk)"
    server = RedisServer(free_ports(1, start=18600)[0]).start()
    try:
        api.seed(server.url)
        options = argparse.Namespace(
            duration=args.api_duration, connections=16, threads=2, rounds=args.rounds, workers=4
        )
        with api.gunicorn_api(server.url, workers=4) as base:
            results = api._measure(base, options)  # noqa: SLF001 - the api area's own measuring loop
    finally:
        server.cleanup()
    return results["token-stats, service token"]["rps"], results["/healthz (one Redis PING)"]["rps"], ""


def measure_dump(months: int, pg_url: str) -> dict[str, float | None]:
    """user-months/s: the Redis ceiling, quota dump into SQLite and into PostgreSQL (None: no PostgreSQL)."""
    from . import dump

    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    client = redis.Redis.from_url(server.url)
    out: dict[str, float | None] = {}
    try:
        dump.fill(client, months)
        started = time.perf_counter()
        count, _ = dump.redis_ceiling(client)
        out["ceiling"] = count / (time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            dump.fill(client, months)
            store = HistoryStore(f"sqlite:///{tmp}/history.db")
            seconds, archived = dump.timed_dump(client, store)
            out["sqlite"] = archived / seconds
            store.close()
        pg = dump.pg_store(pg_url)
        out["postgresql"] = None
        if pg is not None:
            dump.fill(client, months)
            seconds, archived = dump.timed_dump(client, pg)
            out["postgresql"] = archived / seconds
            pg.close()
    finally:
        client.close()
        server.cleanup()
    return out


AREAS = ("sync4", "sync1", "async", "ceiling", "script", "api", "dump")
"""What ``--only`` may name: the parts of a run (rows whose part was left out are "not measured")."""


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, str]]:
    timing = {"rounds": args.rounds, "slice_s": args.slice}
    only = set(args.only)
    facts = {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if only != set(AREAS):
        facts["parts measured"] = ", ".join(a for a in AREAS if a in only)
    rows: list[Row] = []
    four: dict[str, Any] = {}
    one: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    ceiling = None
    record_us = minimal_us = None
    server = RedisServer(free_ports(1, start=18000)[0], ["--save", "", "--appendonly", "no"]).start()
    try:
        stats = [server.client()]
        if "sync4" in only:
            _say("sync, 4 processes")
            four = driver.compare(
                server.url,
                4,
                {"meter": (MeterRecord, {}), "raw": (RawEvalsha, {}), "limits": (LimitsHit, {})},
                stats_clients=stats,
                **timing,
            )
            stats[0].flushall()
        if "sync1" in only:
            _say("sync, 1 process")
            one = driver.compare(
                server.url, 1, {"meter": (MeterRecord, {}), "raw": (RawEvalsha, {})}, stats_clients=stats, **timing
            )
            stats[0].flushall()
        if "async" in only:
            _say(f"asyncio, {args.tasks} tasks")
            tasks = driver.compare(
                server.url,
                1,
                {
                    "meter": (AsyncMeterRecord, {"tasks": args.tasks}),
                    "raw": (RawAsyncEvalsha, {"tasks": args.tasks}),
                },
                stats_clients=stats,
                **timing,
            )
            stats[0].flushall()
        if "ceiling" in only:
            _say("redis-benchmark -P 16")
            ceiling = server_ceiling.ceiling(server.port, 16, stats[0], **timing)
            stats[0].flushall()
        if "script" in only:
            _say("record.lua server time")
            record_us, minimal_us = script_server_time(stats[0], calls=args.script_calls, rounds=max(args.rounds, 2))
    finally:
        server.cleanup()
    stats_rps = health_rps = None
    api_note = "not run (--only)"
    if "api" in only:
        _say("API")
        stats_rps, health_rps, api_note = measure_api(args)
    dumped: dict[str, float | None] = {}
    if "dump" in only:
        _say("dump")
        dumped = measure_dump(args.dump_months, args.pg)
    return _rows(
        args, rows, facts, four, one, tasks, ceiling, record_us, minimal_us, (stats_rps, health_rps, api_note), dumped
    )


def _rate(results: dict[str, Any], name: str) -> float | None:
    found = results.get(name)
    return None if found is None else found.rate


def _rows(
    args: argparse.Namespace,
    rows: list[Row],
    facts: dict[str, str],
    four: dict[str, Any],
    one: dict[str, Any],
    tasks: dict[str, Any],
    ceiling: Any,
    record_us: float | None,
    minimal_us: float | None,
    api: tuple[float | None, float | None, str],
    dumped: dict[str, float | None],
) -> tuple[list[Row], dict[str, str]]:
    stats_rps, health_rps, api_note = api
    meter4, limits4, raw4 = _rate(four, "meter"), _rate(four, "limits"), _rate(four, "raw")
    rows.append(
        _row(
            "Meter at 4 processes vs `limits` `hit()` at 4 processes (records/s)",
            meter4,
            f"limits {limits4:,.0f}/s; raw EVALSHA {raw4:,.0f}/s" if limits4 and raw4 else "limits; raw EVALSHA",
            _ratio(meter4, limits4),
            ">= 1.0",
        )
    )
    cpu_m = one["meter"].client_cpu_usec_per_record if one else None
    cpu_r = one["raw"].client_cpu_usec_per_record if one else None
    rows.append(
        _row(
            "Meter client CPU per record vs raw redis-py EVALSHA of the same script (µs, 1 process)",
            cpu_m,
            f"raw EVALSHA {cpu_r:.1f} µs" if cpu_r is not None else "raw EVALSHA",
            _ratio(cpu_m, cpu_r),
            "<= 1.05",
        )
    )
    amet = _rate(tasks, "meter")
    rows.append(
        _row(
            f"AsyncMeter, 1 process, {args.tasks} concurrent tasks, vs `limits` at 4 processes (records/s)",
            amet,
            f"limits, 4 processes {limits4:,.0f}/s" if limits4 else "limits, 4 processes",
            _ratio(amet, limits4),
            ">= 2.0",
        )
    )
    rows.append(
        _row(
            "AsyncMeter as above vs redis-benchmark -P 16 of the same script (records/s)",
            amet,
            f"redis-benchmark -P 16 {ceiling.rate:,.0f}/s" if ceiling else "redis-benchmark missing",
            _ratio(amet, ceiling.rate if ceiling else None),
            ">= 0.5",
        )
    )
    rows.append(
        _row(
            "record.lua server time vs a minimal script doing the same writes (HINCRBY x4 + SET EX), µs",
            record_us,
            f"minimal script {minimal_us:.2f} µs" if minimal_us is not None else "minimal script",
            _ratio(record_us, minimal_us),
            "<= 1.25",
        )
    )
    rows.append(
        _row(
            "token-stats route vs `/healthz`, gunicorn 4 workers (requests/s)",
            stats_rps,
            f"/healthz {health_rps:,.0f}/s" if health_rps else "/healthz",
            _ratio(stats_rps, health_rps),
            ">= 0.5",
            api_note,
        )
    )
    for name, target in (("sqlite", 40_000), ("postgresql", 30_000)):
        rate = dumped.get(name)
        rows.append(
            _row(
                f"dump into {'SQLite' if name == 'sqlite' else 'PostgreSQL'}, user-months/s",
                rate,
                f"target {target:,}/s; Redis ceiling (SCAN+HGETALL+DEL) "
                + (f"{dumped['ceiling']:,.0f}/s" if dumped.get("ceiling") is not None else "not measured"),
                _ratio(rate, target),
                ">= 1.0",
                "" if rate is not None else ("no PostgreSQL answered" if "ceiling" in dumped else "not run (--only)"),
            )
        )
    p99_m = tasks["meter"].facts.get("p99_ms") if tasks else None
    p99_r = tasks["raw"].facts.get("p99_ms") if tasks else None
    rows.append(
        _row(
            f"p99 latency of one record with {args.tasks} concurrent tasks vs raw EVALSHA at the same load (ms)",
            p99_m,
            f"raw redis.asyncio EVALSHA {p99_r:.2f} ms" if p99_r is not None else "raw redis.asyncio EVALSHA",
            _ratio(p99_m, p99_r),
            "<= 1.2",
        )
    )
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return rows, facts


def markdown(rows: list[Row], facts: dict[str, str], command: str) -> str:
    def num(v: float | None) -> str:
        if v is None:
            return "not measured"
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"

    lines = [
        "| measure | this run | peer / ceiling (same run) | ratio | target | met |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        met = "not measured" if r.met is None else ("**met**" if r.met else "not met")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.measure} | {num(r.value)} | {r.peer}{note} | {ratio} | {r.target}x | {met} |")
    met = sum(1 for r in rows if r.met)
    facts_md = "; ".join(f"{k}: {v}" for k, v in facts.items())
    return (
        f"Regenerated by `{command}` (all rows from one run; {met} of {len(rows)} targets met). "
        f"{facts_md}. A load average above the machine's CPU count means other work shared it: the "
        "rates are then a floor, and the ratios within the run are what to read; the targets are "
        "judged on a quiet machine.\n\n" + "\n".join(lines) + "\n\n" + NOTES
    )


NOTES = """\
What each row rests on (measured while building it; the table above is the run's own figures):
- **Sync client CPU.** `Meter` sends EVALSHA on a pooled connection with the connection's `Retry`,
  without redis-py's per-command layers (`quota/_sync/_compat.py`, `send_script`): by hand, in one run,
  `client.evalsha` cost 90-107 µs of client CPU per record where the thin path and a raw `evalsha` of
  prebuilt arguments both cost 63 µs (best of 8 rounds each; medians move with the load). The meter's
  queueing pool (`quota._connect.QueueingPool`) takes and gives back a connection without redis-py 8's
  per-call pool metrics while observability is off: 6.4 µs a get and release against 12.2 µs for
  redis-py's blocking pool and 10.5 µs for its plain one, which the raw peer uses; that pays for the
  core's own work (validation, pricing, request id, about 6 µs) and the result object (2.5 µs).
- **AsyncMeter.** Auto-pipelining (`quota/_async/_pipeline.py`) sends a burst of 200 tasks as a few
  batches (a mean of about 60 calls); by hand, in two runs, 1.9-3.4x the records/s of the same meter
  with `auto_pipeline=False` and of raw `redis.asyncio` EVALSHA. A batch no longer goes through
  redis-py's pipeline: it is packed in one buffer by hiredis and its replies are read in one loop
  from the connection's parser (`_compat.send_scripts`), which took the client CPU per record from
  54-57 to 36-38 µs (0.61-0.66x; two runs, each the medians of 8-10 interleaved 2 s slices
  against main, load average 10-15; the sync batch of 100: 43 to 31 µs). What
  is left, sampled (py-spy): the core's `record` and `parse` about 30 %, the event loop and the
  tasks' wake-ups about a quarter, the socket write a tenth, packing 5 %.
- **record.lua** does validation, dedupe, the overflow check, holds, alerts and purposes where the
  minimal script only writes. The lean pass (one string reply, the holds/alerts/grants libraries made
  only when a record needs them, an alert pre-check, locals) took it from 176k to 118k server
  instructions per call (callgrind), 0.62-0.67x main's time; the same 8 commands with no logic at all
  cost 97.5k, 1.54x the minimal script's 63.5k: 1.25x needs fewer commands (the MGET of request id,
  plan and grants marker, the HMGET, the `system_used_nano` HINCRBY), not leaner Lua.
- **Dump.** snapshot_month.lua returns the hash's `DUMP` as its fingerprint (delete_if_unchanged.lua
  compares DUMPs) instead of building one in Lua, reads the generation instead of writing `dump_gen`,
  and reads the plan in the same step; the batch's calls go out as one raw packed buffer. Redis server
  CPU per user-month halved (about 47 to 25 µs), client CPU about 60 to 51 µs (bench/dump.py prints
  both). Both stores are now bound by CPU on 2 cores: SQLite's upsert of 3 rows per user-month and
  parsing the hash in Python are most of the client's share.
- **token-stats** reads the live months and the archive epoch in one pipeline and reuses archived
  months read at the same epoch (docs/HISTORY.md); the history built from the past months is reused
  while their hashes come back the same (`quota._stats.HistoryMemo`), and so is its JSON in the route
  (`api/jsonio.py`). By hand, one gunicorn
  worker, CPU per request: 1,955-2,994 -> 1,484-1,508 µs for the stats, 990-1,085 µs for /healthz (the
  connection per request of a sync worker, the access log and Flask are most of it); Redis spends
  about 250 µs on the stats script (13 HGETALLs) against 40 µs on a PING."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench targets", description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per timed slice (default 1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per workload, best kept")
    parser.add_argument("--tasks", type=int, default=TASKS, help="concurrent AsyncMeter tasks (default 200)")
    parser.add_argument("--script-calls", type=int, default=20_000, help="calls per server-time round")
    parser.add_argument("--api-duration", type=int, default=5, help="seconds of wrk per route and round")
    parser.add_argument("--dump-months", type=int, default=50_000, help="user-months per dump run")
    parser.add_argument(
        "--pg", default=os.environ.get("QUOTA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/quota_bench_history")
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CI smoke): seconds, not minutes")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    parser.add_argument(
        "--only",
        type=lambda text: [a for a in text.split(",") if a],
        default=list(AREAS),
        help=f"measure only these parts, comma-separated, of: {','.join(AREAS)} (e.g. sync4,async,ceiling for "
        "the AsyncMeter rows; the others say not measured; implies --no-docs)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(AREAS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; choose from {','.join(AREAS)}")
    if set(args.only) != set(AREAS):
        args.no_docs = True  # a partial run never rewrites the table
    if args.quick:
        args.slice, args.rounds, args.tasks = 0.2, 1, 20
        args.script_calls, args.api_duration, args.dump_months = 500, 1, 600
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, facts = run(args)
    command = "python -m bench" + (" " + " ".join(argv) if argv else "")
    text = markdown(rows, facts, command)
    print(text)
    if not args.no_docs:
        write_section(DOCS, text, SECTION)
        print(f"\nwrote the section {SECTION!r} of {DOCS}", file=sys.stderr)
    return 0


def collect(argv: list[str]) -> tuple[list[Row], Any]:
    """The rows of a run, for tests (tests/test_bench_smoke.py)."""
    args = parse_args(argv)
    return run(args)
