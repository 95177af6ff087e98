"""Scale figures for docs/SCALING.md: bytes per user-month, request-id key size, records/s.

    .venv/bin/python -m bench scale                 # the full run (about 4 minutes on 2 cores)
    .venv/bin/python -m bench scale --users 100000 --seconds 1 --rounds 1   # a quick look

Everything runs on private servers started here (quota.testing: a standalone Redis and a 3-master
cluster on loopback ports); nothing touches 6379. Each rate is measured beside a ceiling in the
same run by the shared driver (bench/driver.py: the workloads take turns in slices, and the best
slice of each is kept): the same processes sending plain HINCRBY (one command per record, the
least a counter can cost), so the ratio says what the script's extra work (dedupe, five counters,
the request-id key) costs. On a 2-core machine the clients and the server share the cores: the
rates are a floor for a real deployment, where the server has its cores to itself.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime
from typing import Any

import redis
from redis.cluster import RedisCluster

from quota import Meter
from quota.testing import RedisClusterProc, RedisServer, free_ports

from . import driver
from .workloads import Workload, sync_client

PREFIX = "scale"
MONTH = "2026-03"
MODEL = "system_deepseek"
USERS = 100_000  # users the throughput records are spread over


def clock() -> datetime:
    return datetime(2026, 3, 15, tzinfo=UTC)


# --- memory ----------------------------------------------------------------------------------------


def month_hash(i: int) -> dict[str, int]:
    """A realistic one-model user-month: the fields record.lua writes for one system model."""
    calls = 20 + i % 200
    tin, tout = calls * 1_200, calls * 800
    cost = tin * 1_000 + tout * 2_000
    return {
        f"{MODEL}:input": tin,
        f"{MODEL}:output": tout,
        f"{MODEL}:cost_nano": cost,
        f"{MODEL}:calls": calls,
        "system_used_nano": cost,
    }


def measure_memory(client: redis.Redis, users: int, request_keys: int) -> dict[str, Any]:
    client.flushall()
    before = client.info("memory")["used_memory"]
    pipe = client.pipeline(transaction=False)
    for i in range(users):
        pipe.hset(f"quota:{{user{i}}}:{MONTH}", mapping=month_hash(i))
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    after = client.info("memory")["used_memory"]
    sample = random.Random(1).sample(range(users), 1000)
    usage = [client.memory_usage(f"quota:{{user{i}}}:{MONTH}", samples=0) for i in sample]
    for i in range(request_keys):
        pipe.set(f"quota:{{user{i}}}:req:{i:016x}-{i:016x}", f"{MODEL}|1200|800|2800000|0", ex=86400)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    after_req = client.info("memory")["used_memory"]
    req_usage = [
        client.memory_usage(f"quota:{{user{i}}}:req:{i:016x}-{i:016x}", samples=0) for i in sample if i < request_keys
    ]
    encoding = client.object("encoding", f"quota:{{user0}}:{MONTH}")
    return {
        "user_months": users,
        "bytes_per_user_month_used_memory": round((after - before) / users, 1),
        "bytes_per_user_month_memory_usage": round(sum(usage) / len(usage), 1),
        "hash_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
        "request_keys": request_keys,
        "bytes_per_request_key_used_memory": round((after_req - after) / request_keys, 1),
        "bytes_per_request_key_memory_usage": round(sum(req_usage) / max(len(req_usage), 1), 1),
        "used_memory_mb": round(after_req / 2**20, 1),
    }


# --- throughput ------------------------------------------------------------------------------------


class ScaleMeter(Workload):
    """``update_token_usage`` (``batch`` 1) or ``update_token_usage_many`` of ``batch`` records,
    for users drawn from 100,000, each record with a fresh request id."""

    server_commands = ("evalsha", "eval")

    def __init__(self, url: str, index: int = 0, batch: int = 1):
        super().__init__(url, index)
        self.batch = batch

    def open(self) -> None:
        self.meter = Meter.from_url(self.url, prefix=PREFIX, clock=clock, history=None)
        self.rng = random.Random(self.index)
        self.seq = 0

    def records(self) -> list[dict[str, Any]]:
        self.seq += self.batch
        return [
            dict(
                user=f"user{self.rng.randrange(USERS)}",
                model_id=MODEL,
                input_tokens=1200,
                output_tokens=800,
                request_id=f"p{self.index}-{self.seq - self.batch + k}",
            )
            for k in range(self.batch)
        ]

    def step(self) -> int:
        if self.batch == 1:
            self.meter.update_token_usage(**self.records()[0])
        else:
            self.meter.update_token_usage_many(self.records())
        return self.batch

    def close(self) -> dict[str, Any]:
        self.meter.close()
        return {}


class ScaleHincrby(Workload):
    """The ceiling: one plain HINCRBY per record (``batch`` > 1: pipelined; on a cluster redis-py's
    cluster pipeline groups the commands by node itself)."""

    server_commands = ("hincrby",)

    def __init__(self, url: str, index: int = 0, batch: int = 1):
        super().__init__(url, index)
        self.batch = batch

    def open(self) -> None:
        self.client = sync_client(self.url)
        self.rng = random.Random(self.index)

    def key(self) -> str:
        return f"{PREFIX}:{{user{self.rng.randrange(USERS)}}}:{MONTH}"

    def step(self) -> int:
        if self.batch == 1:
            self.client.hincrby(self.key(), f"{MODEL}:calls", 1)
            return 1
        pipe = (
            self.client.pipeline() if isinstance(self.client, RedisCluster) else self.client.pipeline(transaction=False)
        )
        for _ in range(self.batch):
            pipe.hincrby(self.key(), f"{MODEL}:calls", 1)
        pipe.execute()
        return self.batch

    def close(self) -> dict[str, Any]:
        self.client.close()
        return {}


WORKLOADS = {
    "meter_single": (ScaleMeter, {}),
    "hincrby_single": (ScaleHincrby, {}),
    "meter_batch100": (ScaleMeter, {"batch": 100}),
    "hincrby_batch100": (ScaleHincrby, {"batch": 100}),
}


def rates(
    url: str, masters: list[redis.Redis], *, processes: int, rounds: int, slice_s: float
) -> dict[str, driver.Result]:
    """Every workload in ``processes`` processes, in interleaved slices, the best slice kept
    (bench/driver.py); server time per record from the INFO commandstats of ``masters``."""
    return driver.compare(url, processes, WORKLOADS, rounds=rounds, slice_s=slice_s, stats_clients=masters)


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"processes": args.processes, "rounds": args.rounds, "slice_s": args.seconds}
    timing = dict(processes=args.processes, rounds=args.rounds, slice_s=args.seconds)
    server = RedisServer(free_ports(1, start=33000)[0], ["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    try:
        client = server.client()
        figures["memory"] = measure_memory(client, args.users, args.request_keys)
        print(json.dumps(figures["memory"], indent=2), flush=True)
        client.flushall()
        figures["standalone"] = _rates_figures("standalone", rates(server.url, [client], **timing))
        client.close()
    finally:
        server.cleanup()
    cluster = RedisClusterProc(masters=3).start()
    try:
        figures["cluster3"] = _rates_figures("cluster3", rates(cluster.url, cluster.master_clients(), **timing))
    finally:
        cluster.cleanup()
    for where in ("standalone", "cluster3"):
        f = figures[where]
        f["ratio_single_vs_hincrby"] = round(f["meter_single"] / f["hincrby_single"], 2)
        f["ratio_batch_vs_hincrby"] = round(f["meter_batch100"] / f["hincrby_batch100"], 2)
    return figures


def _rates_figures(where: str, results: dict[str, driver.Result]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, result in results.items():
        usec = result.server_usec_per_record or 0.0
        out[name] = round(result.rate)
        out[f"{name}_server_usec"] = round(usec, 2)
        print(f"{where:<10} {name:<18} {result.rate:>10,.0f} records/s  server {usec:6.2f} us/record", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="user-months to load (default 1,000,000)")
    parser.add_argument("--request-keys", type=int, default=200_000, help="request-id keys to load")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per timed slice (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per workload, the best is kept")
    parser.add_argument("--processes", type=int, default=4, help="client processes per rate measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0
