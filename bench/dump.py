"""How fast ``quota dump`` moves expired user-months from Redis into SQLite and PostgreSQL.

    .venv/bin/python -m bench dump [--months 50000] [--pg postgresql://postgres@127.0.0.1:5432/quota_bench_history]

Each run fills a private Redis (a server on a free loopback port, see quota.testing) with
``--months`` expired user-months shaped like real ones (two models each, a tenth with a credit
set), then measures, in the same run and on the same data:

- ``redis ceiling``: SCAN + pipelined HGETALL + pipelined DEL with the same batch sizes and no
  SQL at all: what any dump must do on Redis, the ceiling for the whole dump;
- ``sqlite3 ceiling``: the same rows inserted by the bare ``sqlite3`` module, one transaction,
  plain INSERT (no upsert, no fsync per batch): the ceiling for the SQL half;
- ``quota dump -> SQLite`` and ``quota dump -> PostgreSQL``: the real thing (snapshot script,
  upsert per generation, fsync'd commit per batch, delete-if-unchanged script).

Prints user-months per second, the ratio to the Redis ceiling, and the CPU each dump cost per
user-month in this process and in the Redis server (a split that holds on a loaded machine). The
targets (issue 14) are 40,000 user-months/s into SQLite and 30,000/s into PostgreSQL. PostgreSQL is
skipped (with a note) when none answers.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime

import redis

from quota import Meter, Settings
from quota.history import DEFAULT_BATCH, HistoryStore, dump_expired_months
from quota.history.dump import SCAN_COUNT
from quota.testing import RedisServer

NOW = datetime(2026, 2, 10, tzinfo=UTC)
MONTHS = ("2025-11", "2025-12", "2026-01")


def fill(client: redis.Redis, count: int) -> None:
    """``count`` user-months across three expired months, as record.lua would have left them."""
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        month = MONTHS[i % len(MONTHS)]
        fields = {
            "system_deepseek:input": 1000 + i,
            "system_deepseek:output": 2000 + i,
            "system_deepseek:cost_nano": 5_000_000 + i,
            "system_deepseek:calls": 3,
            "custom_x:input": 10 + i,
            "custom_x:output": 20,
            "custom_x:cost_nano": 0,
            "custom_x:calls": 1,
            "system_used_nano": 5_000_000 + i,
        }
        if i % 10 == 0:
            fields["credit_nano"] = 7_500_000_000
        pipe.hset(f"quota:{{user{i // len(MONTHS)}}}:{month}", mapping=fields)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def redis_ceiling(client: redis.Redis) -> tuple[int, list[tuple[str, dict]]]:
    """SCAN + HGETALL + DEL, batched like the dump; returns the count and the rows read."""
    rows: list[tuple[str, dict]] = []
    batch: list[bytes] = []

    def flush() -> None:
        # SCAN may return a key twice (the deletes shrink the table under it): count it once, as the
        # dump does (a key deleted since reads as empty; one repeated within a batch is read once)
        batch[:] = dict.fromkeys(batch)
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        rows.extend((k.decode(), h) for k, h in zip(batch, pipe.execute()) if h)
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.delete(key)
        pipe.execute()
        batch.clear()

    for key in client.scan_iter(match="quota:{*}:????-??", count=SCAN_COUNT, _type="hash"):
        batch.append(key)
        if len(batch) >= DEFAULT_BATCH:
            flush()
    if batch:
        flush()
    return len(rows), rows


def sqlite_ceiling(rows: list[tuple[str, dict]], path: str) -> float:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE m (key TEXT, model TEXT, input INT, output INT, cost INT, calls INT, PRIMARY KEY (key, model))"
    )
    started = time.perf_counter()
    with conn:
        conn.executemany(
            "INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    key,
                    model,
                    int(h[f"{model}:input".encode()]),
                    int(h[f"{model}:output".encode()]),
                    int(h[f"{model}:cost_nano".encode()]),
                    int(h[f"{model}:calls".encode()]),
                )
                for key, h in rows
                for model in ("system_deepseek", "custom_x")
            ),
        )
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def timed_dump(client: redis.Redis, store: HistoryStore) -> tuple[float, int]:
    seconds, archived, _, _ = measured_dump(client, store)
    return seconds, archived


def measured_dump(client: redis.Redis, store: HistoryStore) -> tuple[float, int, float, float]:
    """One dump: seconds, user-months archived, and the CPU seconds it cost this process (the
    client, SQLite included) and the Redis server (INFO cpu): a split that holds under load,
    where the rates do not."""
    redis_cpu = _redis_cpu(client)
    client_cpu = time.process_time()
    started = time.perf_counter()
    report = dump_expired_months(Meter(client, settings=Settings(prefix="quota"), clock=lambda: NOW), store)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    redis_cpu = _redis_cpu(client) - redis_cpu
    left = client.dbsize() - client.exists("quota:archive_epoch")  # the epoch stays (quota._stats.ArchiveCache)
    assert report.skipped == 0 and left == 0, report
    return elapsed, report.archived, client_cpu, redis_cpu


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pg_store(url: str) -> HistoryStore | None:
    from sqlalchemy import text

    admin = HistoryStore(url.rsplit("/", 1)[0] + "/postgres")
    name = url.rsplit("/", 1)[1]
    try:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - a bench reports and moves on
        print(f"PostgreSQL at {url}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return None
    finally:
        admin.close()
    store = HistoryStore(url)
    with store.engine.begin() as conn:
        conn.execute(text("DROP VIEW IF EXISTS quota_month, quota_month_model"))
        conn.execute(text("DROP TABLE IF EXISTS quota_model_snapshot, quota_month_snapshot, quota_schema_version"))
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dump", description=__doc__.split("\n\n")[0])
    parser.add_argument("--months", type=int, default=50_000, help="user-months to dump per run")
    parser.add_argument(
        "--pg", default=os.environ.get("QUOTA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/quota_bench_history")
    )
    args = parser.parse_args(argv)
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    client = redis.Redis.from_url(server.url)
    results: list[tuple[str, float, int]] = []
    cpu: dict[str, tuple[float, float]] = {}  # run: (client, Redis) CPU µs per user-month
    try:
        fill(client, args.months)
        started = time.perf_counter()
        count, rows = redis_ceiling(client)
        results.append(("redis ceiling (SCAN+HGETALL+DEL)", time.perf_counter() - started, count))
        with tempfile.TemporaryDirectory() as tmp:
            results.append(("sqlite3 ceiling (bare INSERT)", sqlite_ceiling(rows, os.path.join(tmp, "c.db")), count))
            fill(client, args.months)
            store = HistoryStore(f"sqlite:///{tmp}/history.db")
            seconds, archived, client_cpu, redis_cpu = measured_dump(client, store)
            results.append(("quota dump -> SQLite", seconds, archived))
            cpu["quota dump -> SQLite"] = (client_cpu / archived * 1e6, redis_cpu / archived * 1e6)
            store.close()
        store = pg_store(args.pg)
        if store is not None:
            fill(client, args.months)
            seconds, archived, client_cpu, redis_cpu = measured_dump(client, store)
            results.append(("quota dump -> PostgreSQL", seconds, archived))
            cpu["quota dump -> PostgreSQL"] = (client_cpu / archived * 1e6, redis_cpu / archived * 1e6)
            store.close()
    finally:
        client.close()
        server.cleanup()
    ceiling = results[0][2] / results[0][1]
    print(
        f"\n{args.months} user-months (2 models each), {server.kind}, batch {DEFAULT_BATCH}, SCAN COUNT {SCAN_COUNT}\n"
    )
    print(f"| {'run':36} | {'seconds':>7} | {'user-months/s':>13} | {'vs Redis ceiling':>16} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 15}|{'-' * 18}|")
    for name, seconds, n in results:
        rate = n / seconds
        print(f"| {name:36} | {seconds:7.2f} | {rate:13,.0f} | {rate / ceiling:15.2f}x |")
    print("\nCPU per user-month (holds under load; the client is this process, SQLite in it):\n")
    for name, (client_us, redis_us) in cpu.items():
        print(f"  {name:28} client {client_us:6.1f} µs   Redis server {redis_us:6.1f} µs")
    return 0
