"""What each benchmark process does, one class per scenario.

A workload is built inside its own process (``driver.py``), opens its own client, then calls
``step()`` until a deadline; ``step()`` returns how many records it counted. Every workload
records the same call: ``system_deepseek``, 1,200 input and 300 output tokens, spread over the
same pool of users, so the rates compare like with like:

- :class:`MeterRecord`: ``Meter.update_token_usage`` (the library as a caller uses it).
- :class:`RawEvalsha`: the client ceiling. ``client.evalsha`` of ``quota/lua/record.lua`` with
  KEYS and ARGV built once per user by the core; only the request id changes per call, so the
  script never short-circuits on dedupe. Anything the wrapper costs on top shows against this.
- :class:`LimitsHit`: the ``limits`` library's fixed-window ``hit()`` on Redis, a well-known
  Redis+Lua counter (one EVALSHA of ``incr_expire.lua`` per hit).
- :class:`SeedJson`: the seed's original design, one JSON document per user, GET -> json.loads ->
  modify -> SET, no locking. It is fast and wrong: concurrent writers overwrite each other, and
  :meth:`SeedJson.summarize` measures the share of tokens that vanished.
- :class:`MeterBatch` / :class:`RawPipeline`: ``update_token_usage_many`` and a raw redis-py
  pipeline of the same EVALSHAs.
- :class:`AsyncMeterRecord` / :class:`RawAsyncEvalsha`: many concurrent tasks in one process.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from quota import AsyncMeter, Meter
from quota._connect import split_url
from quota._core import MeterCore
from quota._scripts import RECORD

MODEL = "system_deepseek"
INPUT_TOKENS = 1200
OUTPUT_TOKENS = 300
CONNECT_TIMEOUT_S = 10.0
USERS = 100  # users shared by all processes of a scenario; the seed design loses tokens when two collide


def user_name(i: int) -> str:
    return f"bench-{i % USERS:03d}"


def sync_client(url: str) -> Any:
    """A plain redis-py client for ``url`` (``redis+cluster://`` gives a RedisCluster)."""
    plain, is_cluster = split_url(url, None)
    return RedisCluster.from_url(plain) if is_cluster else redis.Redis.from_url(plain)


def async_client(url: str) -> Any:
    plain, is_cluster = split_url(url, None)
    # max_connections: one per task (redis-py 8 refuses past 100 by default; 200 tasks need 200).
    options = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "max_connections": 1000}
    return AsyncRedisCluster.from_url(plain, **options) if is_cluster else aredis.Redis.from_url(plain, **options)


def prebuilt_calls() -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(month key, request-key prefix, the other KEYS, ARGV) per user, exactly as the core builds them."""
    core = MeterCore()
    calls = []
    for i in range(USERS):
        user = user_name(i)
        call = core.record(user, MODEL, INPUT_TOKENS, OUTPUT_TOKENS, request_id="x")
        calls.append((call.keys[0], core.keys.request_key(user, ""), call.keys[2:], call.args))
    return calls


class Workload:
    """One process's share of a scenario. Subclasses define ``open`` and ``step``."""

    #: top-level commands whose INFO commandstats time is this workload's server time
    server_commands: tuple[str, ...] = ("evalsha",)

    def __init__(self, url: str, index: int = 0):
        self.url = url
        self.index = index
        self.i = index * 7  # processes start at different users

    def open(self) -> None:
        raise NotImplementedError

    def step(self) -> int:
        raise NotImplementedError

    def run_until(self, deadline: float) -> int:
        done, step, now = 0, self.step, time.monotonic
        while now() < deadline:
            done += step()
        return done

    def close(self) -> dict[str, Any]:
        """Release clients; return facts the parent needs for :meth:`summarize`."""
        return {}

    @classmethod
    def summarize(cls, url: str, extras: list[dict[str, Any]]) -> dict[str, Any]:
        """Facts about the whole run, computed in the parent after every process finished."""
        return {}


class MeterRecord(Workload):
    def open(self) -> None:
        self.meter = Meter.from_url(self.url)

    def step(self) -> int:
        self.i += 1
        self.meter.update_token_usage(user_name(self.i), MODEL, INPUT_TOKENS, OUTPUT_TOKENS)
        return 1

    def close(self) -> dict[str, Any]:
        self.meter.close()
        return {}


class RawEvalsha(Workload):
    def open(self) -> None:
        self.client = sync_client(self.url)
        self.client.script_load(RECORD.source)
        self.calls = prebuilt_calls()
        self.tag = f"raw-{self.index}-"

    def step(self) -> int:
        self.i += 1
        month_key, request_prefix, more, args = self.calls[self.i % USERS]
        self.client.evalsha(RECORD.sha, 2 + len(more), month_key, f"{request_prefix}{self.tag}{self.i}", *more, *args)
        return 1

    def close(self) -> dict[str, Any]:
        self.client.close()
        return {}


class LimitsHit(Workload):
    """``limits`` fixed window: one ``hit()`` per record, with a limit that never trips."""

    def open(self) -> None:
        from limits import RateLimitItemPerMinute
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter

        plain, is_cluster = split_url(self.url, None)
        scheme = "redis+cluster" if is_cluster else "redis"
        self.storage = storage_from_string(scheme + plain[plain.index("://") :])
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.item = RateLimitItemPerMinute(10**9)

    def step(self) -> int:
        self.i += 1
        self.limiter.hit(self.item, user_name(self.i))
        return 1


class SeedJson(Workload):
    """The seed's design: one JSON document per user, read-modify-write without a lock.

    ``users`` narrows the pool of users (1: every process writes the same user's document, the
    case a busy user with several agent workers hits). ``tag`` keeps the documents of two
    instances apart.
    """

    server_commands = ("get", "set")
    COST_CNY = (INPUT_TOKENS * 0.001 + OUTPUT_TOKENS * 0.002) / 1000  # floats, as the seed had

    def __init__(self, url: str, index: int = 0, users: int = USERS, tag: str = "seed"):
        super().__init__(url, index)
        self.keys = [f"{tag}:{{{user_name(i)}}}:agent_token_usage" for i in range(users)]

    def open(self) -> None:
        self.client = sync_client(self.url)
        self.sent_tokens = 0

    def step(self) -> int:
        self.i += 1
        key = self.keys[self.i % len(self.keys)]
        raw = self.client.get(key)
        doc = (
            json.loads(raw)
            if raw
            else {
                "current_month": "2026-01",
                "monthly_credit": 5.0,
                "monthly_used": 0.0,
                "last_reset": "2026-01-01T00:00:00Z",
                "models": {},
                "history": {},
            }
        )
        model = doc["models"].setdefault(MODEL, {"input_tokens": 0, "output_tokens": 0, "cost": 0.0})
        model["input_tokens"] += INPUT_TOKENS
        model["output_tokens"] += OUTPUT_TOKENS
        model["cost"] += self.COST_CNY
        doc["monthly_used"] += self.COST_CNY
        self.client.set(key, json.dumps(doc))
        self.sent_tokens += INPUT_TOKENS + OUTPUT_TOKENS
        return 1

    def close(self) -> dict[str, Any]:
        self.client.close()
        return {"sent_tokens": self.sent_tokens, "keys": self.keys}

    @classmethod
    def summarize(cls, url: str, extras: list[dict[str, Any]]) -> dict[str, Any]:
        """Tokens every process sent against tokens the documents hold: the share lost."""
        sent = sum(e["sent_tokens"] for e in extras)
        client = sync_client(url)
        stored = 0
        for key in extras[0]["keys"]:
            raw = client.get(key)
            if raw:
                model = json.loads(raw)["models"][MODEL]
                stored += model["input_tokens"] + model["output_tokens"]
        client.close()
        return {"sent_tokens": sent, "stored_tokens": stored, "lost_share": (sent - stored) / sent if sent else 0.0}


class MeterBatch(Workload):
    """``update_token_usage_many`` with ``batch`` records per call (one pipelined round trip)."""

    def __init__(self, url: str, index: int = 0, batch: int = 100):
        super().__init__(url, index)
        self.batch = batch

    def open(self) -> None:
        self.meter = Meter.from_url(self.url)
        self.records = [
            {
                "user": user_name(self.i + j),
                "model_id": MODEL,
                "input_tokens": INPUT_TOKENS,
                "output_tokens": OUTPUT_TOKENS,
            }
            for j in range(self.batch)
        ]

    def step(self) -> int:
        self.meter.update_token_usage_many(self.records)
        return self.batch

    def close(self) -> dict[str, Any]:
        self.meter.close()
        return {}


class RawPipeline(Workload):
    """A raw redis-py pipeline of ``batch`` EVALSHAs of record.lua: the client ceiling for batches."""

    def __init__(self, url: str, index: int = 0, batch: int = 100):
        super().__init__(url, index)
        self.batch = batch

    def open(self) -> None:
        self.client = redis.Redis.from_url(split_url(self.url, None)[0])
        self.client.script_load(RECORD.source)
        self.calls = prebuilt_calls()
        self.tag = f"rawp-{self.index}-"

    def step(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for _ in range(self.batch):
            self.i += 1
            month_key, request_prefix, more, args = self.calls[self.i % USERS]
            pipe.evalsha(RECORD.sha, 2 + len(more), month_key, f"{request_prefix}{self.tag}{self.i}", *more, *args)
        pipe.execute()
        return self.batch

    def close(self) -> dict[str, Any]:
        self.client.close()
        return {}


class AsyncWorkload(Workload):
    """``tasks`` coroutines on one private event loop, each calling ``one()`` in a loop."""

    def __init__(self, url: str, index: int = 0, tasks: int = 100):
        super().__init__(url, index)
        self.tasks = tasks
        self.loop = asyncio.new_event_loop()
        self.latencies: list[float] = []  # seconds per call, every slice (for the p99)

    def open(self) -> None:
        self.loop.run_until_complete(self.aopen())

    async def aopen(self) -> None:
        raise NotImplementedError

    async def one(self, n: int) -> None:
        raise NotImplementedError

    def run_until(self, deadline: float) -> int:
        latencies = self.latencies
        clock = time.perf_counter

        async def task(start: int) -> int:
            done, n = 0, start
            while time.monotonic() < deadline:
                n += self.tasks
                began = clock()
                await self.one(n)
                latencies.append(clock() - began)
                done += 1
            return done

        async def all_tasks() -> list[int]:
            return await asyncio.gather(*(task(self.i + t) for t in range(self.tasks)))

        counts = self.loop.run_until_complete(all_tasks())
        self.i += sum(counts) * self.tasks + self.tasks
        return sum(counts)

    def close(self) -> dict[str, Any]:
        self.loop.run_until_complete(self.aclose())
        self.loop.close()
        ordered = sorted(self.latencies)
        p99 = ordered[int(len(ordered) * 0.99)] if ordered else None
        return {"p99_ms": None if p99 is None else p99 * 1000, "calls": len(ordered)}

    @classmethod
    def summarize(cls, url: str, extras: list[dict[str, Any]]) -> dict[str, Any]:
        """The p99 latency of one call over every slice (the worst process's, if several)."""
        p99s = [e["p99_ms"] for e in extras if e.get("p99_ms") is not None]
        return {"p99_ms": max(p99s) if p99s else None}

    async def aclose(self) -> None:
        raise NotImplementedError


class AsyncMeterRecord(AsyncWorkload):
    async def aopen(self) -> None:
        # A long connect timeout: the warm-up opens ``tasks`` connections at once, which on a busy
        # 2-core machine can take longer than the 1 s default. Calls themselves are unchanged.
        self.meter = AsyncMeter.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT_S)

    async def one(self, n: int) -> None:
        await self.meter.update_token_usage(user_name(n), MODEL, INPUT_TOKENS, OUTPUT_TOKENS)

    async def aclose(self) -> None:
        await self.meter.aclose()


class RawAsyncEvalsha(AsyncWorkload):
    async def aopen(self) -> None:
        self.client = async_client(self.url)
        await self.client.script_load(RECORD.source)
        self.calls = prebuilt_calls()
        self.tag = f"rawa-{self.index}-"

    async def one(self, n: int) -> None:
        month_key, request_prefix, more, args = self.calls[n % USERS]
        await self.client.evalsha(RECORD.sha, 2 + len(more), month_key, f"{request_prefix}{self.tag}{n}", *more, *args)

    async def aclose(self) -> None:
        await self.client.aclose()
