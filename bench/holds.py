"""Turn holds (issue 9): what they cost the server, and how far the credit is overshot without them.

    .venv/bin/python -m bench holds [--calls 20000] [--json]

1. **Server time** (INFO commandstats ``usec`` of EVALSHA, reset between phases, one client, one
   private ``redis-server``): a turn's admission and release (turn_begin.lua + turn_end.lua) against
   today's plain check (check.lua), and a record that draws a hold down (record.lua with KEYS[3])
   against a plain record. Each ratio is from the same run.
2. **Overshoot**: N turns start at once (asyncio, one AsyncMeter) and each records 5 calls of 20,000
   in / 4,000 out (0.14 CNY a turn), "before" with the landed main's admission (check, then record:
   nothing reserved) and "after" with turn holds. Two starting points: 4.99 of 5 CNY used (the issue's
   case) and 0 used (a burst larger than the credit from a fresh month).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import redis

from quota import AsyncMeter, Meter, QuotaExceeded
from quota._money import nano_to_decimal
from quota.testing import RedisServer, free_ports

CALL = {"input_tokens": 20_000, "output_tokens": 4_000}  # 0.028 CNY on system_deepseek
TURN_CALLS = 5
CREDIT_NANO = 5_000_000_000
# check.lua as landed before turn holds (e5b558c): one HMGET. "Today's plain check" in the issue.
LANDED_CHECK = """local now = redis.call('HMGET', KEYS[1], 'system_used_nano', 'credit_nano')
return {now[1] or '0', now[2] or ARGV[1]}"""


def evalsha_usec(client: redis.Redis) -> tuple[float, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), int(stats.get("calls", 0))


def per_call_usec(client: redis.Redis, work: Any, calls: int) -> float:
    """Server µs per EVALSHA spent by ``work(i)`` for i in range(calls)."""
    client.config_resetstat()
    for i in range(calls):
        work(i)
    usec, count = evalsha_usec(client)
    return usec / count if count else float("nan")


def server_time(url: str, calls: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    meter = Meter.from_url(url, prefix="bh", history=None)
    client.flushall()
    meter.update_token_usage("u", "system_deepseek", 1000, 1000)  # the month exists
    out: dict[str, float] = {}
    out["check"] = per_call_usec(client, lambda i: meter.check_quota_available("u", "system_deepseek"), calls)
    landed = client.register_script(LANDED_CHECK)
    month_key = meter.core.keys.month_key("u", meter.core.current_month())
    out["landed_check"] = per_call_usec(client, lambda i: landed(keys=[month_key], args=["5000000000"]), calls)

    def admit_and_release(i: int) -> None:
        with meter.turn("u", "system_deepseek", hold="0.001"):
            pass

    # Two scripts per turn: the per-call figure times two is the per-turn figure.
    out["turn_begin_end_per_turn"] = 2 * per_call_usec(client, admit_and_release, calls // 2)
    out["record"] = per_call_usec(client, lambda i: meter.update_token_usage("u", "system_deepseek", 10, 10), calls)
    turn = meter.turn("r", "system_deepseek", hold="1000")
    turn.__enter__()
    out["record_with_hold"] = per_call_usec(client, lambda i: turn.record(input_tokens=10, output_tokens=10), calls)
    turn.__exit__(None, None, None)
    # A user with 10 other live turns: the admission sums their holds (O(holds of one user)).
    others = [meter.turn("busy", "system_deepseek", hold="0.001") for _ in range(10)]
    for other in others:
        other.__enter__()
    out["turn_begin_end_10_live"] = 2 * per_call_usec(
        client,
        lambda i: (lambda t: (t.__enter__(), t.__exit__(None, None, None)))(
            meter.turn("busy", "system_deepseek", hold="0.001")
        ),
        calls // 2,
    )
    for other in others:
        other.__exit__(None, None, None)
    meter.close()
    client.close()
    return out


async def burst(
    url: str, user: str, turns: int, start_nano: int, holds: bool, hold: str | None = None
) -> dict[str, Any]:
    meter = AsyncMeter.from_url(url, prefix="bo", history=None, monthly_credit=5)
    if start_nano:
        await meter.update_token_usage(user, "system_deepseek", start_nano // 1000, 0)
    # Warm the pool: a worker's connections are open already, so no turn waits on a connect
    # (without this, the first turn's records land before the other turns' checks are even sent).
    await asyncio.gather(*(meter.get_token_stats("warm-up") for _ in range(turns)))
    go = asyncio.Event()

    async def with_holds() -> int | None:
        """The turn's hold when admitted, else None."""
        await go.wait()
        try:
            async with meter.turn(user, "system_deepseek", hold=hold) as turn:
                for _ in range(TURN_CALLS):
                    await turn.record(**CALL)
            return turn.rules.hold_nano
        except QuotaExceeded:
            return None

    async def check_then_record() -> int | None:  # the landed main's admission: nothing reserved
        await go.wait()
        if not (await meter.check_quota_available(user, "system_deepseek")).allowed:
            return None
        for _ in range(TURN_CALLS):
            await meter.update_token_usage(user, "system_deepseek", **CALL)
        return 0

    tasks = [asyncio.ensure_future(with_holds() if holds else check_then_record()) for _ in range(turns)]
    await asyncio.sleep(0)
    go.set()
    held = [hold for hold in await asyncio.gather(*tasks) if hold is not None]
    used = (await meter.check_quota_available(user, "system_deepseek")).monthly_used_nano
    await meter.aclose()
    turn_nano = TURN_CALLS * 28_000_000
    # The promise of docs/INTEGRATION.md: used <= credit + the sum over turns of max(0, cost - hold)
    bound = CREDIT_NANO + sum(max(0, turn_nano - hold) for hold in held)
    return {"admitted": len(held), "used_nano": used, "bound_nano": bound}


def overshoot(url: str) -> list[dict[str, Any]]:
    rows = []
    cases = [
        (4_990_000_000, "4.99 of 5 used", None, (1, 10, 100)),
        (0, "0 of 5 used", None, (1, 10, 100)),
        (0, "0 of 5 used, hold=0.14", "0.14", (100,)),
    ]
    for start_nano, label, hold, sizes in cases:
        for turns in sizes:
            row: dict[str, Any] = {"start": label, "turns": turns}
            for mode, holds in (("before", False), ("after", True)):
                user = f"{mode}-{turns}-{start_nano}-{hold}"
                result = asyncio.run(burst(url, user, turns, start_nano, holds, hold))
                row[mode] = result
            rows.append(row)
    return rows


def cny(nano: int) -> str:
    return f"{nano_to_decimal(nano):.2f}"


def markdown(server: dict[str, float], rows: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", ""]
    check, turn, landed = server["check"], server["turn_begin_end_per_turn"], server["landed_check"]
    record, with_hold = server["record"], server["record_with_hold"]
    lines += [
        "| server time (µs per call, INFO commandstats) | this run | vs | ratio | aim |",
        "|---|---:|---|---:|---:|",
        f"| turn admission + release (turn_begin + turn_end) | {turn:.2f} | landed check.lua {landed:.2f} | "
        f"{turn / landed:.2f}x | <= 2x |",
        f"| turn admission + release (turn_begin + turn_end) | {turn:.2f} | check.lua with holds {check:.2f} | "
        f"{turn / check:.2f}x | |",
        f"| check.lua with holds (sums the live holds) | {check:.2f} | landed check.lua {landed:.2f} | "
        f"{check / landed:.2f}x | |",
        f"| the same with 10 other live turns of the user | {server['turn_begin_end_10_live']:.2f} | "
        f"plain check {check:.2f} | {server['turn_begin_end_10_live'] / check:.2f}x | |",
        f"| record drawing a hold down | {with_hold:.2f} | plain record {record:.2f} | "
        f"{with_hold / record:.2f}x | <= 1.25x |",
        "",
        "| start | parallel turns | before: admitted | before: used (CNY) | after: admitted | after: used (CNY) "
        "| after: bound credit + Σ max(0, cost - hold) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        before, after = row["before"], row["after"]
        lines.append(
            f"| {row['start']} | {row['turns']} | {before['admitted']} | {cny(before['used_nano'])} "
            f"({before['used_nano'] / CREDIT_NANO:.2f}x) | {after['admitted']} | "
            f"{cny(after['used_nano'])} ({after['used_nano'] / CREDIT_NANO:.2f}x) | "
            f"{cny(after['bound_nano'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench holds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000, help="script calls per server-time phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server = RedisServer(free_ports(1, start=18500)[0]).start()
    try:
        times = server_time(server.url, args.calls)
        rows = overshoot(server.url)
    finally:
        server.cleanup()
    if args.json:
        print(json.dumps({"server_usec": times, "overshoot": rows}, indent=2, default=str))
    else:
        print(markdown(times, rows, f"python -m bench holds --calls {args.calls}"))
    return 0
