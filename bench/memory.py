"""Bytes per user-month: what one user's month costs the Redis server.

    .venv/bin/python -m bench memory [--calls 500] [--user-months 100000]

Two figures, as ops would measure them:

- ``MEMORY USAGE`` (SAMPLES 0) of a realistic user-month hash: one user, one system model,
  ``calls`` records written through ``Meter`` with varied token counts.
- the average growth of INFO ``used_memory`` when ``user_months`` such hashes exist, each for its
  own user (key name, dict entry and allocator rounding included). The copies are written with
  HSET of the very fields and values the Meter produced, so each one is the same listpack; the
  request-id keys of the records are not in this figure (they expire, see ``request_key_bytes``).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass

import redis

from quota import Meter
from quota.testing import RedisServer

from .workloads import MODEL, sync_client

USER_ID_WIDTH = 7  # user ids like "user0012345": 11 characters


@dataclass
class MemoryFacts:
    calls: int
    fields: int
    encoding: str
    memory_usage_bytes: int  # MEMORY USAGE of the realistic hash
    copy_memory_usage_bytes: int  # MEMORY USAGE of one HSET copy: must equal the above
    user_months: int
    growth_per_user_month: float  # used_memory growth / user_months
    request_key_bytes: int  # MEMORY USAGE of one request-id (dedupe) key


def user(i: int) -> str:
    return f"user{i:0{USER_ID_WIDTH}d}"


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(url: str, *, calls: int = 500, user_months: int = 100_000, seed: int = 7) -> MemoryFacts:
    client = sync_client(url)
    client.flushall()
    rng = random.Random(seed)
    meter = Meter.from_url(url)
    records = [
        {
            "user": user(0),
            "model_id": MODEL,
            "input_tokens": rng.randint(300, 6000),
            "output_tokens": rng.randint(50, 1500),
        }
        for _ in range(calls)
    ]
    results = []
    for start in range(0, calls, 100):
        results += meter.update_token_usage_many(records[start : start + 100])
    meter.close()
    key = meter.core.keys.month_key(user(0), results[0].month)
    request_key = meter.core.keys.request_key(user(0), results[0].request_id)
    usage = int(client.memory_usage(key, samples=0))
    request_usage = int(client.memory_usage(request_key, samples=0))
    encoding = client.object("encoding", key).decode()
    fields = client.hgetall(key)

    client.flushall()
    before = used_memory(client)
    pipe = client.pipeline(transaction=False)
    for i in range(1, user_months + 1):
        pipe.hset(meter.core.keys.month_key(user(i), results[0].month), mapping=fields)
        if i % 2_000 == 0:
            pipe.execute()
    pipe.execute()
    growth = (used_memory(client) - before) / user_months
    copy_usage = int(client.memory_usage(meter.core.keys.month_key(user(1), results[0].month), samples=0))
    client.flushall()
    client.close()
    return MemoryFacts(calls, len(fields), encoding, usage, copy_usage, user_months, growth, request_usage)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench memory``: these figures alone, on a private server (the core run has them too)."""
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="records written into the realistic hash")
    parser.add_argument("--user-months", type=int, default=100_000, help="copies for the used_memory growth")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    try:
        facts = measure(server.url, calls=args.calls, user_months=args.user_months)
    finally:
        server.cleanup()
    for name, value in asdict(facts).items():
        print(f"{name:<26} {value:,.1f}" if isinstance(value, float) else f"{name:<26} {value}")
    return 0
