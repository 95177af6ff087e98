"""``quota demo``: simulated agent workers metering their LLM calls until one user is refused.

No real LLM is called: each simulated message makes a chat call, a tool call, a history summary
and, on a conversation's first message, a naming call, with deterministic fake token counts.
Workers run concurrently (threads, each with its own connection pool share), check the quota when
a user's message arrives, and record every call of the reply, which always finishes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ._sync.meter import Meter

PURPOSES = ("chat", "tool", "summary", "naming")


@dataclass
class DemoReport:
    refused: dict[str, str] = field(default_factory=dict)  # user -> quota_exceeded message
    messages: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def fake_tokens(rng: random.Random, purpose: str) -> tuple[int, int]:
    """Deterministic, plausible token counts per kind of call."""
    base = {"chat": (60_000, 20_000), "tool": (30_000, 4_000), "summary": (80_000, 3_000), "naming": (2_000, 50)}
    tin, tout = base[purpose]
    return tin + rng.randrange(tin // 2), tout + rng.randrange(max(tout // 2, 1))


def run_user(
    meter: Meter,
    user: str,
    model_id: str,
    report: DemoReport,
    rng: random.Random,
    max_messages: int,
    say: Callable[[str], None],
) -> None:
    for number in range(max_messages):
        check = meter.check_quota_available(user, model_id)
        if not check.allowed:
            assert check.event is not None
            with report.lock:
                report.refused[user] = check.event["message"]
            say(
                f"  {user:<8} refused on message {number + 1}: quota_exceeded "
                f"(used {check.monthly_used} of {check.monthly_credit} CNY)"
            )
            return
        purposes = ["chat", "tool", "summary"] + (["naming"] if number == 0 else [])
        for purpose in purposes:  # the reply in progress always finishes, and is always counted
            tin, tout = fake_tokens(rng, purpose)
            meter.update_token_usage(user, model_id, tin, tout)
        with report.lock:
            report.messages += 1
            report.calls += len(purposes)


def run_demo(
    meter: Meter, *, users: int = 5, seed: int = 7, max_messages: int = 400, say: Callable[[str], None] = print
) -> DemoReport:
    """Workers for ``users`` users; user0 and user1 chat a lot on the system model, the last one
    uses a custom model (counted, never limited)."""
    report = DemoReport()
    plan = []
    for i in range(users):
        model = "custom_llama" if i == users - 1 else "system_deepseek"
        messages = max_messages if i < 2 or model.startswith("custom") else 5 + 3 * i
        if model.startswith("custom"):
            messages = 30
        plan.append((f"user{i}", model, messages))
    threads = [
        threading.Thread(target=run_user, args=(meter, user, model, report, random.Random(seed + n), count, say))
        for n, (user, model, count) in enumerate(plan)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report


def stats_table(meter: Meter, users: list[str]) -> str:
    """A plain-text table of each user's month, per model."""
    rows = [("user", "model", "kind", "calls", "input", "output", "cost CNY", "used/credit")]
    for user in users:
        stats = meter.get_token_stats(user)
        for model_id, m in stats["models"].items():
            rows.append(
                (
                    user,
                    model_id,
                    "system" if m["is_system"] else "custom",
                    str(m["calls"]),
                    f"{m['input_tokens']:,}",
                    f"{m['output_tokens']:,}",
                    f"{m['cost']}",
                    f"{stats['monthly_used']}/{stats['monthly_credit']} ({stats['percent_used']}%)",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
