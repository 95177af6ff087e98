"""The benchmark scenarios: each runs the thing measured beside its peers and ceilings.

Every function takes a server URL and how long to run, and returns the measured results
keyed by a short name; ``report.py`` turns them into rows with ratios. ``tests/test_bench_smoke.py``
runs each one for a fraction of a second, so this code cannot silently rot.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from . import driver, memory, server_ceiling
from .driver import Result
from .workloads import (
    AsyncMeterRecord,
    LimitsHit,
    MeterBatch,
    MeterRecord,
    RawAsyncEvalsha,
    RawEvalsha,
    RawPipeline,
    SeedJson,
)

BATCH_SIZES = (100, 500)
ASYNC_TASKS = 100


def per_record(
    url: str, processes: int, *, rounds: int = 3, slice_s: float = 1.5, stats_clients: Sequence[redis.Redis] = ()
) -> dict[str, Result]:
    """``Meter.update_token_usage`` beside raw EVALSHA, ``limits`` and the seed's JSON design.

    With more than one process the seed design also runs with every process on one user
    (``seed_hot``): the case where its lost updates show most.
    """
    specs = {
        "meter": (MeterRecord, {}),
        "raw": (RawEvalsha, {}),
        "limits": (LimitsHit, {}),
        "seed": (SeedJson, {}),
    }
    if processes > 1:
        specs["seed_hot"] = (SeedJson, {"users": 1, "tag": "seedhot"})
    return driver.compare(url, processes, specs, rounds=rounds, slice_s=slice_s, stats_clients=stats_clients)


def cluster_per_record(
    url: str, processes: int, *, rounds: int = 3, slice_s: float = 1.5, stats_clients: Sequence[redis.Redis] = ()
) -> dict[str, Result]:
    """The sync Meter against raw ``RedisCluster.evalsha`` on a cluster (``redis+cluster://``)."""
    specs = {"meter": (MeterRecord, {}), "raw": (RawEvalsha, {})}
    return driver.compare(url, processes, specs, rounds=rounds, slice_s=slice_s, stats_clients=stats_clients)


def batches(
    url: str,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    rounds: int = 3,
    slice_s: float = 1.5,
    stats_clients: Sequence[redis.Redis] = (),
) -> dict[str, Result]:
    """``update_token_usage_many`` per batch size beside a raw redis-py pipeline, one process."""
    specs: dict = {}
    for size in sizes:
        specs[f"meter_{size}"] = (MeterBatch, {"batch": size})
        specs[f"raw_{size}"] = (RawPipeline, {"batch": size})
    return driver.compare(url, 1, specs, rounds=rounds, slice_s=slice_s, stats_clients=stats_clients)


def async_tasks(
    url: str,
    *,
    tasks: int = ASYNC_TASKS,
    rounds: int = 3,
    slice_s: float = 1.5,
    stats_clients: Sequence[redis.Redis] = (),
) -> dict[str, Result]:
    """``AsyncMeter`` with ``tasks`` concurrent tasks beside raw ``redis.asyncio`` EVALSHA."""
    specs = {"meter": (AsyncMeterRecord, {"tasks": tasks}), "raw": (RawAsyncEvalsha, {"tasks": tasks})}
    return driver.compare(url, 1, specs, rounds=rounds, slice_s=slice_s, stats_clients=stats_clients)


def server_ceilings(
    port: int, stats_client: redis.Redis, *, pipelines: Sequence[int] = (100, 1), rounds: int = 3, slice_s: float = 1.5
) -> dict[int, Result | None]:
    """redis-benchmark on record.lua, pipelined and not; None when redis-benchmark is missing."""
    return {p: server_ceiling.ceiling(port, p, stats_client, rounds=rounds, slice_s=slice_s) for p in pipelines}


def user_month_memory(url: str, *, calls: int = 500, user_months: int = 100_000) -> memory.MemoryFacts:
    return memory.measure(url, calls=calls, user_months=user_months)
