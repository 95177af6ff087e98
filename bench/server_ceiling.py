"""The server ceiling: ``redis-benchmark`` (C, 50 connections) running the project's own record.lua.

The script is loaded first and called by EVALSHA with the same KEYS and ARGV the core builds;
the request id carries ``__rand_int__`` (with ``-r``) so every call is a new record and the
dedupe never short-circuits it. What redis-benchmark reaches is what the server can do with
this script when the client costs (almost) nothing.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import resource
import shlex
import shutil
import subprocess

import redis

from quota._core import MeterCore
from quota._scripts import RECORD

from .driver import Result, Slice, median, reset_stats, server_usec
from .workloads import INPUT_TOKENS, MODEL, OUTPUT_TOKENS

KEYSPACE = 100_000_000  # -r: request ids drawn from 1e8, so repeats are rare (and then only cheaper)
CLIENTS = 50
_runs = itertools.count()


def binary() -> str | None:
    return shutil.which("redis-benchmark")


def evalsha_args(run: str = "0") -> list[str]:
    """``EVALSHA <sha> 4 <month key> <request key> <outbox> <outbox index> <ARGV...>`` exactly as the core builds it.

    ``run`` goes into the request id beside ``__rand_int__``: redis-benchmark draws the same
    random sequence in every run, so without it a second run would only repeat request ids
    that the script then deduplicates (cheaper, and not a record).
    """
    call = MeterCore().record("bench-rb", MODEL, INPUT_TOKENS, OUTPUT_TOKENS, request_id=f"rb-{run}-__rand_int__")
    return ["EVALSHA", RECORD.sha, str(len(call.keys)), *call.keys, *call.args]


def command(port: int, requests: int, pipeline: int, run: str = "0") -> list[str]:
    exe = binary() or "redis-benchmark"
    return [
        exe,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(CLIENTS),
        "-n",
        str(requests),
        "-P",
        str(pipeline),
        "-r",
        str(KEYSPACE),
        "--csv",
        *evalsha_args(run),
    ]


def run_once(port: int, requests: int, pipeline: int, stats_client: redis.Redis) -> Slice:
    stats_client.script_load(RECORD.source)
    month_key = evalsha_args()[3]
    calls_before = int(stats_client.hget(month_key, f"{MODEL}:calls") or 0)
    reset_stats([stats_client])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = next(_runs)
    out = subprocess.run(
        command(port, requests, pipeline, f"{os.getpid()}x{run}"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0] != "test"]
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no result: {out.stdout!r} {out.stderr!r}")
    rate = float(rows[-1][1])
    usec = server_usec([stats_client], ["evalsha"])
    # redis-benchmark does not look at replies: make sure the calls were records, not errors.
    counted = int(stats_client.hget(month_key, f"{MODEL}:calls") or 0) - calls_before
    if counted < requests * 0.99:
        raise RuntimeError(f"redis-benchmark sent {requests} EVALSHAs but only {counted} were counted")
    return Slice(requests, rate, usec / requests, cpu_s * 1e6 / requests)


def ceiling(
    port: int, pipeline: int, stats_client: redis.Redis, *, rounds: int = 3, slice_s: float = 1.5
) -> Result | None:
    """redis-benchmark's best rate over ``rounds`` runs of about ``slice_s`` seconds; None if absent."""
    if binary() is None:
        return None
    probe = run_once(port, 50_000 if pipeline > 1 else 5_000, pipeline, stats_client)
    requests = max(1_000, int(probe.rate * slice_s))
    slices = [run_once(port, requests, pipeline, stats_client) for _ in range(rounds)]
    stats_client.flushall()
    best = max(slices, key=lambda s: s.rate)
    return Result(
        f"redis-benchmark -P {pipeline}",
        best.rate,
        median(s.server_usec_per_record for s in slices),
        slices,
        client_cpu_usec_per_record=median(s.client_cpu_usec_per_record for s in slices),
    )


def shown_command(pipeline: int, requests: int = 100_000, port: int = 6379) -> str:
    """The redis-benchmark command line, for the docs (quoted for a POSIX shell)."""
    return shlex.join(["redis-benchmark", *command(port, requests, pipeline)[1:]])
