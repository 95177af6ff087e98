"""The API under load: 200 concurrent clients for 60 s recording usage and reading stats, with
exact totals afterwards.

One gunicorn (``-w 4`` sync workers by default, started by bench/api.py's ``gunicorn_api``)
on a loopback port, a private redis-server (never the machine's 6379), and ``wrk`` with
bench/load.lua: 60% single records, 20% batches of 10, 20% reads (token-stats, quota), every
record with a unique request id. The last ``--quiet`` seconds send reads only, so every POST has
its answer when wrk stops.

Why wrk: it is Debian's package (``apt-get install -y wrk``), written in C on epoll, so 200
connections cost it a fraction of one core and leave the machine to gunicorn and Redis; a Python
load tool (locust, an httpx asyncio client) at 200 clients would itself need a core or more and
measure its own limits on a 2-core machine. Its Lua hooks give what the check needs: unique
request bodies, and the answers read back to count the acknowledged records.

Pass: no non-2xx answer and no socket error; Redis holds exactly the records acknowledged (calls,
tokens, cost and request-id keys all equal the count from the 2xx answers, none a duplicate).

Run:  .venv/bin/python -m bench load [--clients 200] [--duration 60] [--workers 4] [--json]
Needs: apt-get install -y wrk, and the test extra (gunicorn).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from quota.testing import RedisServer, free_ports

from .api import SERVICE, gunicorn_api, wrk

SCRIPT = Path(__file__).with_name("load.lua")
INPUT, OUTPUT, COST_NANO = 100, 10, 100 * 1000 + 10 * 2000  # per record (system_deepseek prices)
MODEL = "system_deepseek"


def run_wrk(base: str, *, clients: int, duration_s: int, threads: int, users: int, quiet_s: int) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{clients}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        base,
        "--",
        str(duration_s),
        str(users),
        SERVICE,
        str(quiet_s),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration_s + 120).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("LOADRESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return json.loads(line.removeprefix("LOADRESULT "))


def redis_totals(server: RedisServer) -> dict[str, int]:
    """Every user-month hash and request-id key the run left, added up."""
    client = server.client()
    totals = {
        "calls": 0,
        "input": 0,
        "output": 0,
        "cost_nano": 0,
        "system_used_nano": 0,
        "user_months": 0,
        "request_ids": 0,
    }
    try:
        for key in client.scan_iter(match="quota:{*}:*", count=1000):
            if b":req:" in key:
                totals["request_ids"] += 1
                continue
            h = client.hgetall(key)
            totals["user_months"] += 1
            for field in ("calls", "input", "output", "cost_nano"):
                totals[field] += int(h.get(f"{MODEL}:{field}".encode(), 0))
            totals["system_used_nano"] += int(h.get(b"system_used_nano", 0))
    finally:
        client.close()
    return totals


def run(
    *,
    clients: int = 200,
    duration_s: int = 60,
    workers: int = 4,
    threads: int = 2,
    users: int = 1000,
    quiet_s: int = 3,
    ceiling_s: int = 0,
) -> dict[str, Any]:
    """One load run on fresh servers; the figures and whether Redis matches the answers.

    ``ceiling_s`` > 0 first runs wrk for that long on ``/healthz`` (one Redis PING, no auth, no
    JSON body) with the same clients on the same server: the ceiling the mixed load is compared to."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    redis = RedisServer(free_ports(1, start=18700)[0]).start()
    try:
        with gunicorn_api(redis.url, workers=workers) as base:
            ceiling = (
                wrk(base + "/healthz", seconds=ceiling_s, connections=clients, threads=threads, token=None)
                if ceiling_s
                else None
            )
            load = run_wrk(base, clients=clients, duration_s=duration_s, threads=threads, users=users, quiet_s=quiet_s)
        stored = redis_totals(redis)
    finally:
        redis.cleanup()
    acked = load["acked"]
    expected = {
        "calls": acked,
        "input": acked * INPUT,
        "output": acked * OUTPUT,
        "cost_nano": acked * COST_NANO,
        "system_used_nano": acked * COST_NANO,
        "request_ids": acked,
    }
    errors = {
        k: load[k] for k in ("non_2xx", "status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    }
    seconds = load["duration_us"] / 1e6
    return {
        "clients": clients,
        "duration_s": round(seconds, 1),
        "gunicorn_workers": workers,
        "wrk_threads": threads,
        "cpus": os.cpu_count(),
        "requests": load["requests"],
        "requests_per_s": round(load["requests"] / seconds),
        "post_single": load["singles"],
        "post_batch10": load["batches"],
        "reads": load["reads"],
        "records_acknowledged": acked,
        "records_new": load["fresh"],
        "records_per_s": round(acked / seconds),
        "p50_ms": load["p50_us"] / 1000,
        "p90_ms": load["p90_us"] / 1000,
        "p99_ms": load["p99_us"] / 1000,
        "max_ms": load["max_us"] / 1000,
        "errors": errors,
        "healthz_ceiling": ceiling
        and {**ceiling, "load_rps_ratio": round(load["requests"] / seconds / ceiling["rps"], 2)},
        "redis": stored,
        "expected": expected,
        "exact": all(stored[k] == v for k, v in expected.items()) and load["fresh"] == acked,
        "no_errors": not any(errors.values()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=int, default=60, help="seconds")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--quiet", type=int, default=3, help="last seconds with reads only")
    ap.add_argument("--ceiling", type=int, default=10, help="seconds of wrk on /healthz first (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = run(
        clients=args.clients,
        duration_s=args.duration,
        workers=args.workers,
        threads=args.threads,
        users=args.users,
        quiet_s=args.quiet,
        ceiling_s=args.ceiling,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"gunicorn -w {args.workers} (sync) + redis-server + wrk -t{args.threads} -c{args.clients} "
            f"-d{args.duration}s on {result['cpus']} CPUs, loopback\n"
        )
        for name in (
            "requests",
            "requests_per_s",
            "post_single",
            "post_batch10",
            "reads",
            "records_acknowledged",
            "records_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "errors",
            "healthz_ceiling",
        ):
            print(f"  {name:<22} {result[name]}")
        print(f"  {'redis':<22} {result['redis']}")
        print(f"  {'exact':<22} {result['exact']}    no errors: {result['no_errors']}")
    return 0 if result["exact"] and result["no_errors"] else 1
