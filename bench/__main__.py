"""``python -m bench``: every speed target of issue 14 from one run, rewriting their section of
docs/BENCHMARKS.md (bench/targets.py); ``python -m bench <area> [options]``: one area's benchmark
(``python -m bench --help`` lists them).

Each area is a module of this package with a ``main(argv)``; ``python -m bench <area> --help``
shows its options.
"""

from __future__ import annotations

import importlib
import sys

AREAS = {
    "targets": "every speed target (issue 14) beside its peer from one run; what `python -m bench` runs",
    "core": "the meter beside raw EVALSHA, limits, the seed design, redis-benchmark; writes docs/BENCHMARKS.md",
    "holds": "turn holds: server time of admission and release, and the credit overshoot with and without",
    "dump": "quota dump into SQLite and PostgreSQL beside the Redis and sqlite3 ceilings",
    "api": "requests/s of the HTTP API under gunicorn and wrk, beside cheaper routes",
    "load": "the API under 200 clients for 60 s, with exact totals afterwards",
    "spool": "the spool's append and replay beside direct records",
    "scale": "bytes per user-month at a million, records/s on one Redis and a 3-master cluster",
    "memory": "bytes per user-month of a realistic hash (MEMORY USAGE, used_memory growth)",
    "report": "month reports: the live month over a million user-months beside the hot path, archived months, CSV",
    "alerts": "threshold alerts: record server time on vs off, finding the events, one notifier's delivery rate",
}


def usage() -> str:
    width = max(map(len, AREAS))
    lines = [f"  {name:<{width}}  {what}" for name, what in AREAS.items()]
    return (
        "usage: python -m bench                       (every speed target; rewrites docs/BENCHMARKS.md)\n"
        "       python -m bench <area> [options]      (python -m bench <area> --help)\n\nareas:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return importlib.import_module("bench.targets").main([]) or 0
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    area, rest = args[0], args[1:]
    if area not in AREAS:
        print(f"unknown area {area!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"bench.{area}").main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
