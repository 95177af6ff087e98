"""Threshold alerts (issue 11): what deciding them costs a record, how the notifier finds events, how
fast one notifier delivers.

    .venv/bin/python -m bench alerts [--records 20000] [--keys 200000] [--events 2000] [--json]

1. **Record server time** (INFO commandstats ``usec`` of EVALSHA, reset between phases, one client,
   one private ``redis-server``): the same records, on the same users, with alerts on (80,100) and
   off. Each user's spend climbs through 80% and 100% of the credit, so the "on" run pays for its
   crossings too (2 per user); a crossing record alone is measured apart.
2. **Finding the events**: one sweep of the 16,384 per-slot outbox indexes (``quota._notify.IndexProbe``,
   and a redis-py pipeline of the same commands) against one ``SCAN MATCH '*:outbox'`` pass over a
   keyspace of ``--keys`` keys (month hashes and request ids, as records leave them).
3. **Delivery**: ``--events`` events delivered by one notifier (``run_once``) to a loopback
   ``quota.testing.WebhookReceiver`` (http.server, threads), at concurrency 1 and 4.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import redis

from quota import Meter
from quota._alerts import WebhookSettings
from quota._notify import IndexProbe, Notifier
from quota.testing import RedisServer, WebhookReceiver, free_ports

SYS = "system_deepseek"
SECRET = "whsec_" + base64.b64encode(b"bench-alerts-secret-32-bytes-ok!").decode()
USERS = 500


def evalsha_usec(client: redis.Redis) -> tuple[float, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), int(stats.get("calls", 0))


def record_server_time(url: str, records: int) -> dict[str, float]:
    """µs per record.lua with alerts on and off, each run twice, interleaved.

    ``climb``: each user's records take it from 0 to 110% of the credit, so the "on" runs pay for both
    crossings of every user (2 in records // USERS calls). ``flat``: every user stays between 10% and
    60%, so nothing is crossed: the hot path's own cost (one more HMGET field, the thresholds, one
    comparison). ``crossing``: records that each cross 80% (the rare path), beside ones that do not."""
    client = redis.Redis.from_url(url)
    per_user = max(records // USERS, 2)
    out: dict[str, float] = {}
    for workload, total_tokens, start_tokens in (("climb", 5_500_000, 0), ("flat", 2_500_000, 500_000)):
        tokens = total_tokens // per_user  # 1 nano-CNY per input token
        for label, thresholds in (("off", ()), ("on", (80, 100)), ("off2", ()), ("on2", (80, 100))):
            client.flushall()
            meter = Meter(client, prefix="ba", monthly_credit=5, alert_thresholds=thresholds)
            for u in range(USERS):
                meter.update_token_usage(f"u{u}", SYS, start_tokens, 0)
            client.config_resetstat()
            crossings = 0
            for i in range(per_user):
                for u in range(USERS):
                    crossings += len(meter.update_token_usage(f"u{u}", SYS, tokens, 0, request_id=f"r{i}").alerts)
            usec, calls = evalsha_usec(client)
            out[f"{workload}_{label}"] = usec / calls
            out[f"{workload}_{label}_crossings"] = crossings
    client.flushall()
    meter = Meter(client, prefix="bc", monthly_credit=5)
    for u in range(2000):
        meter.update_token_usage(f"c{u}", SYS, 3_999_999, 0)
    client.config_resetstat()
    for u in range(2000):
        assert meter.update_token_usage(f"c{u}", SYS, 1, 0).alerts == (80,)
    usec, calls = evalsha_usec(client)
    out["crossing"] = usec / calls
    client.config_resetstat()
    for u in range(2000):
        meter.update_token_usage(f"c{u}", SYS, 1, 0)
    usec, calls = evalsha_usec(client)
    out["not_crossing"] = usec / calls
    client.close()
    return out


def discovery(url: str, sizes: list[int]) -> list[dict[str, float]]:
    """One probe of the indexes against one SCAN pass, on keyspaces of about each of ``sizes`` keys."""
    client = redis.Redis.from_url(url)
    client.flushall()
    meter = Meter(client, prefix="bd", monthly_credit=5)
    for u in range(10):  # a few users with events
        meter.update_token_usage(f"e{u}", SYS, 5_000_000, 0)
    probe = IndexProbe(meter)
    probe.existing()  # plans once (the slot tags, the packed commands)
    index_keys = meter.core.keys.all_index_keys()
    rows = []
    users = 0
    for size in sizes:
        batch = []
        while users < size // 2:  # a month hash and a request id per user, as one record leaves them
            batch.append(
                {"user": f"u{users}", "model_id": SYS, "input_tokens": 1, "output_tokens": 0, "request_id": "r"}
            )
            users += 1
            if len(batch) == 1000:
                meter.update_token_usage_many(batch)
                batch = []
        if batch:
            meter.update_token_usage_many(batch)
        out: dict[str, float] = {"dbsize": client.dbsize()}

        def timed(work: Any, rounds: int) -> tuple[float, float]:
            client.config_resetstat()
            started = time.perf_counter()
            for _ in range(rounds):
                work()
            wall = (time.perf_counter() - started) / rounds
            server = sum(v["usec"] for k, v in client.info("commandstats").items() if k != "cmdstat_config")
            return wall * 1000, server / rounds / 1000

        def pipelined() -> None:
            pipe = client.pipeline(transaction=False)
            for key in index_keys:
                pipe.exists(key)
            pipe.execute()

        def scan() -> None:
            found = sum(1 for _ in client.scan_iter(match="bd:{*}:outbox", count=1000))
            assert found == 10, found

        out["probe_ms"], out["probe_server_ms"] = timed(probe.existing, 10)
        out["pipeline_ms"], out["pipeline_server_ms"] = timed(pipelined, 3)
        out["scan_ms"], out["scan_server_ms"] = timed(scan, 3)
        rows.append(out)
    client.close()
    return rows


def delivery(url: str, events: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    out: dict[str, float] = {}
    for concurrency in (1, 4):
        client.flushall()
        meter = Meter(client, prefix="bn", monthly_credit=5)
        for u in range(events):
            meter.update_token_usage(f"u{u}", SYS, 4_000_000, 0)  # 80%: one event each
        with WebhookReceiver() as receiver:
            notifier = Notifier(meter, WebhookSettings(receiver.url, SECRET), concurrency=concurrency)
            started = time.perf_counter()
            report = notifier.run_once(60)
            seconds = time.perf_counter() - started
            assert report.delivered == events and len(receiver.delivered()) == events, report
        out["events"] = events
        out[f"events_per_s_c{concurrency}"] = events / seconds
        out[f"seconds_c{concurrency}"] = seconds
    client.close()
    return out


def markdown(rec: dict[str, float], find: list[dict[str, float]], send: dict[str, float], command: str) -> str:
    lines = [
        f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        "| record.lua server time (µs per call, INFO commandstats) | alerts on (80,100) | alerts off | ratio | aim |",
        "|---|---:|---:|---:|---:|",
    ]
    for workload, what in (
        ("flat", "users between 10% and 60%: nothing crossed (the hot path)"),
        ("climb", "users from 0 to 110%: every user crosses both"),
    ):
        on = (rec[f"{workload}_on"] + rec[f"{workload}_on2"]) / 2
        off = (rec[f"{workload}_off"] + rec[f"{workload}_off2"]) / 2
        crossings = int(rec[f"{workload}_on_crossings"])
        lines.append(
            f"| {what} ({crossings} crossings; runs: on {rec[f'{workload}_on']:.2f} / {rec[f'{workload}_on2']:.2f}, "
            f"off {rec[f'{workload}_off']:.2f} / {rec[f'{workload}_off2']:.2f}) | {on:.2f} | {off:.2f} | "
            f"{on / off:.2f}x | {'<= 1.15x' if workload == 'flat' else ''} |"
        )
    lines += [
        f"| a record that crosses 80% (writes the event) vs one that does not, alerts on | {rec['crossing']:.2f} | "
        f"{rec['not_crossing']:.2f} | {rec['crossing'] / rec['not_crossing']:.2f}x | |",
        "",
        "| finding the events: keys in Redis | IndexProbe (16,384 EXISTS packed once, read raw): client / server ms "
        "| the same in a redis-py pipeline | SCAN MATCH '*:outbox' COUNT 1000, one pass |",
        "|---:|---:|---:|---:|",
    ]
    for row in find:
        lines.append(
            f"| {int(row['dbsize']):,} | {row['probe_ms']:.1f} / {row['probe_server_ms']:.1f} "
            f"| {row['pipeline_ms']:.1f} / {row['pipeline_server_ms']:.1f} "
            f"| {row['scan_ms']:.1f} / {row['scan_server_ms']:.1f} |"
        )
    lines += ["", "| delivery, one notifier, loopback receiver | events/s | seconds |", "|---|---:|---:|"]
    for c in (1, 4):
        rate, seconds = send[f"events_per_s_c{c}"], send[f"seconds_c{c}"]
        lines.append(f"| {int(send['events'])} events, concurrency {c} | {rate:,.0f} | {seconds:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench alerts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=50_000, help="records per server-time phase")
    parser.add_argument(
        "--keys", default="20000,200000,1000000", help="keys in Redis for the discovery part (comma-separated sizes)"
    )
    parser.add_argument("--events", type=int, default=2_000, help="events to deliver")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server = RedisServer(free_ports(1, start=18700)[0]).start()
    try:
        rec = record_server_time(server.url, args.records)
        find = discovery(server.url, [int(k) for k in args.keys.split(",")])
        send = delivery(server.url, args.events)
    finally:
        server.cleanup()
    if args.json:
        print(json.dumps({"record": rec, "discovery": find, "delivery": send}, indent=2))
    else:
        command = f"python -m bench alerts --records {args.records} --keys {args.keys} --events {args.events}"
        print(markdown(rec, find, send, command))
    return 0
