"""The rules, checked by random sequences: the real scripts on a real Redis against a model.

A Hypothesis state machine records on system and custom models (with and without request ids,
repeating ids with the same or different content), sets credits, moves the pinned clock across
months and year ends, checks quotas and sends batches. After every step ``get_token_stats`` of
every user and every check must equal what ``Model`` -- a few lines of plain Python holding the
rules of docs/OPERATIONS.md -- says.

Extension point: the machine asks ``Model`` for the expected stats and never looks at where
Redis keeps a month, so a ``dump`` rule (issue 3: archive expired months to SQL, remove them from
Redis) can be added as one more ``@rule`` that runs the dump at the pinned clock and gives the
Meter a history store (``make_meter``); the model needs no change, because a dump must not change
what ``get_token_stats`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from quota import Meter
from quota.config import Settings
from quota.errors import BatchError, InvalidInput, RequestConflict
from quota.keys import add_months, month_of
from quota.money import nano_to_json
from quota.prices import PriceTable

USERS = ("alice", "bob", "carol")
CREDIT_NANO = 5_000_000_000
# nano-CNY per input and output token, written out here independently of the price table below
PER_TOKEN = {"system_deepseek": (1_000, 2_000), "system_big": (6_000_000, 9_000_000),
             "custom_gpt": (17_500, 70_000), "custom_free": (0, 0)}
CALL_PRICES = {"cheap": ({"cost_per_1k_input": "0.002", "cost_per_1k_output": "0.004"}, (2_000, 4_000)),
               "dear": ({"cost_per_1k_input": "0.003", "cost_per_1k_output": "0.001"}, (3_000, 1_000))}
PRICES = PriceTable(
    system={"system_deepseek": {"cost_per_1k_input": "0.001", "cost_per_1k_output": "0.002"},
            "system_big": {"cost_per_1k_input": "6", "cost_per_1k_output": "9"}},
    custom={"custom_gpt": {"cost_per_1k_input": "0.0175", "cost_per_1k_output": "0.07"}},
)
MODELS = ("system_deepseek", "system_big", "custom_gpt", "custom_free", "custom_x")

users = st.sampled_from(USERS)
models = st.sampled_from(MODELS)
tokens = st.integers(0, 3_000) | st.sampled_from([0, 1, 10**9])
request_ids = st.none() | st.sampled_from(["r1", "r2", "r3", "r4"])


@st.composite
def records(draw) -> dict:
    model = draw(models)
    rec = dict(user=draw(users), model_id=model, input_tokens=draw(tokens), output_tokens=draw(tokens),
               request_id=draw(request_ids), estimated=draw(st.booleans()))
    if model == "custom_x":
        rec["price"] = draw(st.sampled_from(sorted(CALL_PRICES)))
    return rec


@dataclass
class Month:
    credit_nano: int | None = None
    used_nano: int = 0
    models: dict[str, list[int]] = field(default_factory=dict)  # input, output, cost, calls, estimated


class Model:
    """The rules in plain Python: what Redis must end up holding."""

    def __init__(self) -> None:
        self.months: dict[tuple[str, str], Month] = {}
        self.seen: dict[tuple[str, str], tuple] = {}  # (user, request id) -> content; kept across months

    def month(self, user: str, month: str) -> Month:
        return self.months.setdefault((user, month), Month())

    @staticmethod
    def cost(rec: dict) -> int:
        per_in, per_out = CALL_PRICES[rec["price"]][1] if rec["model_id"] == "custom_x" else PER_TOKEN[rec["model_id"]]
        return rec["input_tokens"] * per_in + rec["output_tokens"] * per_out

    def record(self, rec: dict, month: str) -> str:
        """'counted', 'duplicate' or 'conflict' (which changes nothing)."""
        content = (rec["model_id"], rec["input_tokens"], rec["output_tokens"], self.cost(rec), rec["estimated"])
        if rec["request_id"] is not None:
            key = (rec["user"], rec["request_id"])
            if key in self.seen:
                return "duplicate" if self.seen[key] == content else "conflict"
            self.seen[key] = content
        m = self.month(rec["user"], month)
        counters = m.models.setdefault(rec["model_id"], [0, 0, 0, 0, 0])
        for i, add in enumerate((rec["input_tokens"], rec["output_tokens"], content[3], 1, int(rec["estimated"]))):
            counters[i] += add
        if rec["model_id"].startswith("system_"):
            m.used_nano += content[3]
        return "counted"

    def used_and_credit(self, user: str, month: str) -> tuple[int, int]:
        m = self.months.get((user, month), Month())
        return m.used_nano, CREDIT_NANO if m.credit_nano is None else m.credit_nano

    def expected_stats(self, user: str, current: str) -> dict:
        used, credit = self.used_and_credit(user, current)
        m = self.months.get((user, current), Month())
        history = {}
        for back in range(1, 13):
            month = add_months(current, -back)
            old = self.months.get((user, month))
            if old and old.models:
                history[month] = {mid: {"input": c[0], "output": c[1], "cost": nano_to_json(c[2]), "calls": c[3],
                                        "is_system": mid.startswith("system_")} for mid, c in old.models.items()}
        return {
            "current_month": current, "monthly_credit": nano_to_json(credit), "monthly_used": nano_to_json(used),
            "remaining": nano_to_json(max(credit - used, 0)), "exceeded": used >= credit,
            "models": {mid: {"input_tokens": c[0], "output_tokens": c[1], "cost": nano_to_json(c[2]), "calls": c[3],
                             "estimated_calls": c[4], "is_system": mid.startswith("system_")}
                       for mid, c in m.models.items()},
            "history": history,
        }


def as_call(rec: dict) -> dict:
    call = dict(rec)
    if "price" in call:
        call["price"] = CALL_PRICES[call["price"]][0]
    return call


class MeterMachine(RuleBasedStateMachine):
    redis_url: str = ""  # set by the test from the session's private server

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.redis_url)
        self.client.flushall()
        self.now = datetime(2025, 11, 20, 8, 30, tzinfo=timezone.utc)
        self.meter = self.make_meter()
        self.model = Model()

    def make_meter(self) -> Meter:
        settings_ = Settings(prefix="prop", credit_nano=CREDIT_NANO, prices=PRICES)
        return Meter(self.client, settings=settings_, clock=lambda: self.now)

    @property
    def month(self) -> str:
        return month_of(self.now)

    def teardown(self) -> None:
        self.client.close()

    @rule(rec=records())
    def record(self, rec: dict) -> None:
        outcome = self.model.record(rec, self.month)
        if outcome == "conflict":
            with pytest.raises(RequestConflict):
                self.meter.update_token_usage(**as_call(rec))
            return
        result = self.meter.update_token_usage(**as_call(rec))
        used, credit = self.model.used_and_credit(rec["user"], self.month)
        assert (result.duplicate, result.cost_nano) == (outcome == "duplicate", Model.cost(rec))
        assert (result.monthly_used_nano, result.monthly_credit_nano) == (used, credit)

    @rule(batch=st.lists(records(), min_size=1, max_size=5))
    def record_many(self, batch: list[dict]) -> None:
        ids = [(r["user"], r["request_id"]) for r in batch if r["request_id"] is not None]
        if len(set(ids)) != len(ids):  # refused before anything is sent
            with pytest.raises(InvalidInput):
                self.meter.update_token_usage_many([as_call(r) for r in batch])
            return
        outcomes = [self.model.record(r, self.month) for r in batch]
        try:
            results = self.meter.update_token_usage_many([as_call(r) for r in batch])
        except BatchError as exc:
            results = exc.results
        for outcome, result in zip(outcomes, results):
            if outcome == "conflict":
                assert isinstance(result, RequestConflict)
            else:
                assert result.duplicate == (outcome == "duplicate")

    @rule(user=users, credit=st.sampled_from([0, 1, 5, "0.5", "12.345678901"]),
          shift=st.sampled_from([None, 0, -1, 1]))
    def set_credit(self, user: str, credit: object, shift: int | None) -> None:
        month = None if shift is None else add_months(self.month, shift)
        result = self.meter.set_monthly_credit(user, credit, month)
        target = self.model.month(user, month or self.month)
        target.credit_nano = int(Decimal(str(credit)) * 10**9)
        assert (result.monthly_credit_nano, result.monthly_used_nano) == (target.credit_nano, target.used_nano)

    @rule(months=st.integers(0, 13), to_month_end=st.booleans())
    def advance_clock(self, months: int, to_month_end: bool) -> None:
        """Move forward to the first or the last microsecond of a later (or this) month."""
        target = add_months(self.month, months)
        year, mon = (int(p) for p in target.split("-"))
        start = datetime(year, mon, 1, tzinfo=timezone.utc)
        if to_month_end or months == 0:
            nxt = add_months(target, 1).split("-")
            start = datetime(int(nxt[0]), int(nxt[1]), 1, tzinfo=timezone.utc) - timedelta(microseconds=1)
        self.now = max(self.now, start)

    @rule(user=users, model_id=st.sampled_from(MODELS[:4]))
    def check(self, user: str, model_id: str) -> None:
        used, credit = self.model.used_and_credit(user, self.month)
        got = self.meter.check_quota_available(user, model_id)
        allowed = not model_id.startswith("system_") or used < credit
        assert (got.allowed, got.monthly_used_nano, got.monthly_credit_nano, got.month) == (allowed, used, credit, self.month)
        assert (got.event is None) == allowed

    @invariant()
    def stats_agree(self) -> None:
        for user in USERS:
            stats = self.meter.get_token_stats(user)
            want = self.model.expected_stats(user, self.month)
            got = {k: stats[k] for k in want}
            for model in got["models"].values():
                model.pop("name")
            assert got == want, user


@pytest.mark.slow
def test_meter_follows_the_model(redis_server) -> None:
    MeterMachine.redis_url = redis_server.url
    run_state_machine_as_test(MeterMachine, settings=settings(
        max_examples=200, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
