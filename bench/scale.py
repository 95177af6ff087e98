"""Scale figures for docs/SCALING.md: bytes per user-month, request-id key size, records/s.

    .venv/bin/python -m bench.scale                 # the full run (about 3 minutes on 2 cores)
    .venv/bin/python -m bench.scale --users 100000 --seconds 3   # a quick look

Everything runs on private servers started here (a standalone Redis and a 3-master cluster on
loopback ports, as in the tests); nothing touches 6379. Each rate is measured beside a ceiling in
the same run: the same processes sending plain HINCRBY (one command per record, the least a
counter can cost), so the ratio says what the script's extra work (dedupe, five counters, the
request-id key) costs. On a 2-core machine the clients and the server share the cores: the rates
are a floor for a real deployment, where the server has its cores to itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from datetime import datetime, timezone
from typing import Any

import redis
from redis.cluster import RedisCluster

from quota import Meter
from tests.servers import RedisClusterProc, RedisServer, free_ports

MONTH = "2026-03"
MODEL = "system_deepseek"
CTX = mp.get_context("spawn")
WORKLOADS = ("meter_single", "hincrby_single", "meter_batch100", "hincrby_batch100")


def clock() -> datetime:
    return datetime(2026, 3, 15, tzinfo=timezone.utc)


# --- memory ----------------------------------------------------------------------------------------

def month_hash(i: int) -> dict[str, int]:
    """A realistic one-model user-month: the fields record.lua writes for one system model."""
    calls = 20 + i % 200
    tin, tout = calls * 1_200, calls * 800
    cost = tin * 1_000 + tout * 2_000
    return {f"{MODEL}:input": tin, f"{MODEL}:output": tout, f"{MODEL}:cost_nano": cost,
            f"{MODEL}:calls": calls, "system_used_nano": cost}


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
    req_usage = [client.memory_usage(f"quota:{{user{i}}}:req:{i:016x}-{i:016x}", samples=0)
                 for i in sample if i < request_keys]
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

def _child(url: str, cluster: bool, workload: str, index: int, seconds: float, go: Any, out: Any) -> None:
    rng = random.Random(index)
    meter = Meter.from_url(url, prefix="scale", clock=clock, history=None)
    raw = RedisCluster.from_url(url.replace("redis+cluster", "redis")) if cluster else redis.Redis.from_url(url)
    seq = 0

    def batch(n: int) -> list[dict[str, Any]]:
        nonlocal seq
        seq += n
        return [dict(user=f"user{rng.randrange(100_000)}", model_id=MODEL, input_tokens=1200, output_tokens=800,
                     request_id=f"p{index}-{seq - n + k}") for k in range(n)]

    def step() -> int:
        if workload == "meter_single":
            meter.update_token_usage(**batch(1)[0])
            return 1
        if workload == "meter_batch100":
            meter.update_token_usage_many(batch(100))
            return 100
        if workload == "hincrby_single":
            raw.hincrby(f"scale:{{user{rng.randrange(100_000)}}}:{MONTH}", f"{MODEL}:calls", 1)
            return 1
        if workload == "hincrby_batch100":
            if cluster:  # the cluster pipeline groups by node itself
                pipe = raw.pipeline()
            else:
                pipe = raw.pipeline(transaction=False)
            for _ in range(100):
                pipe.hincrby(f"scale:{{user{rng.randrange(100_000)}}}:{MONTH}", f"{MODEL}:calls", 1)
            pipe.execute()
            return 100
        raise ValueError(workload)

    for _ in range(3):
        step()  # connect, load the script
    out.put(("ready", index))
    go.wait()
    done, deadline = 0, time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        done += step()
    out.put(("done", done / (time.monotonic() - started)))
    meter.close()
    raw.close()


COMMANDS = {"meter": ("evalsha", "eval"), "hincrby": ("hincrby",)}


def server_usec_per_record(masters: list[redis.Redis], workload: str) -> float:
    """Server CPU time per record (INFO commandstats ``usec`` since CONFIG RESETSTAT): what a
    shard spends executing one record, without the client or the network. 1e6 / this is the
    ceiling of one shard's single command thread."""
    usec = calls = 0
    for node in masters:
        stats = node.info("commandstats")
        for name in COMMANDS[workload.split("_")[0]]:
            entry = stats.get(f"cmdstat_{name}", {})
            usec += entry.get("usec", 0)
            calls += entry.get("calls", 0)
    return usec / max(calls, 1)  # every workload sends one command per record


def measure_rate(url: str, cluster: bool, workload: str, processes: int, seconds: float,
                 masters: list[redis.Redis]) -> tuple[float, float]:
    go, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_child, args=(url, cluster, workload, i, seconds, go, out)) for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get(timeout=120)[0] == "ready"
    for node in masters:
        node.config_resetstat()
    go.set()
    rate = sum(out.get(timeout=seconds + 120)[1] for _ in procs)
    for p in procs:
        p.join()
    return rate, server_usec_per_record(masters, workload)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="user-months to load (default 1,000,000)")
    parser.add_argument("--request-keys", type=int, default=200_000, help="request-id keys to load")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per rate measurement")
    parser.add_argument("--processes", type=int, default=4, help="client processes per rate measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    figures: dict[str, Any] = {"processes": args.processes, "seconds": args.seconds}
    server = RedisServer(free_ports(1, start=33000)[0], ["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    try:
        client = server.client()
        figures["memory"] = measure_memory(client, args.users, args.request_keys)
        print(json.dumps(figures["memory"], indent=2), flush=True)
        client.flushall()
        figures["standalone"] = {}
        for workload in WORKLOADS:
            rate, usec = measure_rate(server.url, False, workload, args.processes, args.seconds, [client])
            figures["standalone"][workload] = round(rate)
            figures["standalone"][f"{workload}_server_usec"] = round(usec, 2)
            print(f"standalone {workload:<18} {rate:>10,.0f} records/s  server {usec:6.2f} us/record", flush=True)
        client.close()
    finally:
        server.cleanup()
    cluster = RedisClusterProc(masters=3).start()
    try:
        figures["cluster3"] = {}
        masters = [n.client() for n in cluster.nodes[: cluster.masters]]
        for workload in WORKLOADS:
            rate, usec = measure_rate(cluster.url, True, workload, args.processes, args.seconds, masters)
            figures["cluster3"][workload] = round(rate)
            figures["cluster3"][f"{workload}_server_usec"] = round(usec, 2)
            print(f"cluster3   {workload:<18} {rate:>10,.0f} records/s  server {usec:6.2f} us/record", flush=True)
    finally:
        cluster.cleanup()
    for where in ("standalone", "cluster3"):
        f = figures[where]
        f["ratio_single_vs_hincrby"] = round(f["meter_single"] / f["hincrby_single"], 2)
        f["ratio_batch_vs_hincrby"] = round(f["meter_batch100"] / f["hincrby_batch100"], 2)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return figures


if __name__ == "__main__":
    main()
