"""The rules, checked by random sequences: the real scripts on a real Redis against a model.

A Hypothesis state machine records on system and custom models (with and without request ids,
repeating ids with the same or different content), sets credits, moves the pinned clock across
months and year ends, checks quotas and sends batches. It also runs turns with holds (issue 9):
admits them (an explicit hold or "auto"), records within them (drawing the hold down), releases
them, retries their turn_begin and turn_end (a reply lost, the script resent), and lets holds die
as a killed worker's would. After every step ``get_token_stats`` of every user and every check
must equal what ``Model`` -- a few lines of plain Python holding the rules of docs/OPERATIONS.md
-- says. Threshold alerts (issue 11) too: every record's ``alerts`` and every credit's ``cleared``
are the model's, and each user's outbox holds exactly the events the model emitted (crossed when
the system spend first reaches a threshold, none for a repeated record; cleared and armed again by a
raise that brings the spend under it).

A hold dies when the server's clock passes its expiry. The machine cannot move Redis' clock, so it
writes the expiry into the past with a raw HSET: for every script that is exactly what the time
passing looks like.

Extension point: the machine asks ``Model`` for the expected stats and never looks at where
Redis keeps a month, so a ``dump`` rule (issue 3: archive expired months to SQL, remove them from
Redis) can be added as one more ``@rule`` that runs the dump at the pinned clock and gives the
Meter a history store (``make_meter``); the model needs no change, because a dump must not change
what ``get_token_stats`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from quota import Meter, QuotaExceeded
from quota._config import Settings
from quota._errors import BatchError, InvalidInput, RequestConflict
from quota._keys import add_months, month_of
from quota._money import nano_to_json
from quota._prices import PriceTable

USERS = ("alice", "bob", "carol")
CREDIT_NANO = 5_000_000_000
# nano-CNY per input and output token, written out here independently of the price table below
PER_TOKEN = {
    "system_deepseek": (1_000, 2_000),
    "system_big": (6_000_000, 9_000_000),
    "custom_gpt": (17_500, 70_000),
    "custom_free": (0, 0),
}
# issue 12: nano-CNY per cached-input and cache-write token (default: the input price)
PER_CACHE_TOKEN = {"system_deepseek": (100, 1_000), "system_big": (6_000_000, 7_500_000), "custom_gpt": (1_750, 21_875)}
CALL_PRICES = {
    "cheap": ({"cost_per_1k_input": "0.002", "cost_per_1k_output": "0.004"}, (2_000, 4_000)),
    "dear": ({"cost_per_1k_input": "0.003", "cost_per_1k_output": "0.001"}, (3_000, 1_000)),
}
PRICES = PriceTable(
    system={
        "system_deepseek": {
            "cost_per_1k_input": "0.001",
            "cost_per_1k_output": "0.002",
            "cost_per_1k_cached_input": "0.0001",
        },
        "system_big": {"cost_per_1k_input": "6", "cost_per_1k_output": "9", "cost_per_1k_cache_write": "7.5"},
    },
    custom={
        "custom_gpt": {
            "cost_per_1k_input": "0.0175",
            "cost_per_1k_output": "0.07",
            "cost_per_1k_cached_input": "0.00175",
            "cost_per_1k_cache_write": "0.021875",
        }
    },
)
MODELS = ("system_deepseek", "system_big", "custom_gpt", "custom_free", "custom_x")

# turn holds: the settings' defaults for "auto" (written out here), and what a turn may ask for
AUTO_DEFAULT_NANO, AUTO_FLOOR_NANO, AUTO_CAP_NANO = 100_000_000, 10_000_000, 1_000_000_000
TURN_MODELS = ("system_deepseek", "system_big", "custom_gpt")
HOLD_ASKS = ("auto", "0", "0.01", "0.1", "1", "3")
MAX_OPEN_TURNS = 8
THRESHOLDS = (50, 80, 100)  # alert thresholds, percents of the credit

users = st.sampled_from(USERS)
models = st.sampled_from(MODELS)
tokens = st.integers(0, 3_000) | st.sampled_from([0, 1, 10**9])
request_ids = st.none() | st.sampled_from(["r1", "r2", "r3", "r4"])
# issue 15: 10 named purposes and "other", so that the bound (8 named per model and month) is reached
purposes = st.none() | st.sampled_from(["chat", "tool", "other", *(f"p{i}" for i in range(8))])
MAX_PURPOSES = 8


@st.composite
def records(draw) -> dict:
    model = draw(models)
    rec = dict(
        user=draw(users),
        model_id=model,
        input_tokens=draw(tokens),
        output_tokens=draw(tokens),
        request_id=draw(request_ids),
        estimated=draw(st.booleans()),
        purpose=draw(purposes),
    )
    if draw(st.booleans()):  # issue 12: parts of the input hit or wrote the cache
        rec["cached_input_tokens"] = draw(st.integers(0, rec["input_tokens"]))
        rec["cache_write_tokens"] = draw(st.integers(0, rec["input_tokens"] - rec["cached_input_tokens"]))
    if model == "custom_x":
        rec["price"] = draw(st.sampled_from(sorted(CALL_PRICES)))
    return rec


@dataclass
class Hold:
    remaining_nano: int
    live: bool = True  # False: past its expiry, but its field is still in the holds hash


@dataclass
class OpenTurn:
    turn: object  # quota.turn.Turn, entered
    user: str
    model_id: str
    asked: str
    holding: bool  # a system turn that was admitted with a hold (it sends turn_end)
    cost_nano: int = 0  # the system cost it recorded


@dataclass
class Month:
    credit_nano: int | None = None
    used_nano: int = 0
    models: dict[str, list[int]] = field(default_factory=dict)  # input, output, cost, calls, estimated
    purposes: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # model -> purpose -> calls, cost
    alerted: int = 0  # the highest threshold alerted and not cleared
    events: list[str] = field(default_factory=list)  # the outbox fields written: <month>:<pct>:<kind>:<seq>


class Model:
    """The rules in plain Python: what Redis must end up holding."""

    def __init__(self) -> None:
        self.months: dict[tuple[str, str], Month] = {}
        self.seen: dict[tuple[str, str], tuple] = {}  # (user, request id) -> content; kept across months
        self.holds: dict[str, dict[str, Hold]] = {}  # user -> turn id -> the field in the holds hash
        self.estimates: dict[tuple[str, str, str], int] = {}  # (user, month, model) -> "auto" estimate

    def month(self, user: str, month: str) -> Month:
        return self.months.setdefault((user, month), Month())

    @staticmethod
    def cost(rec: dict) -> int:
        per_in, per_out = CALL_PRICES[rec["price"]][1] if rec["model_id"] == "custom_x" else PER_TOKEN[rec["model_id"]]
        per_cached, per_write = PER_CACHE_TOKEN.get(rec["model_id"], (per_in, per_in))
        cached, write = rec.get("cached_input_tokens", 0), rec.get("cache_write_tokens", 0)
        fresh = rec["input_tokens"] - cached - write
        return fresh * per_in + cached * per_cached + write * per_write + rec["output_tokens"] * per_out

    def record(self, rec: dict, month: str) -> str:
        """'counted', 'duplicate' or 'conflict' (which changes nothing); ``self.crossed`` the thresholds."""
        self.crossed: tuple[int, ...] = ()
        content = (
            rec["model_id"],
            rec["input_tokens"],
            rec["output_tokens"],
            self.cost(rec),
            rec["estimated"],
            rec.get("purpose"),
            rec.get("cached_input_tokens", 0),
            rec.get("cache_write_tokens", 0),
        )
        if rec["request_id"] is not None:
            key = (rec["user"], rec["request_id"])
            if key in self.seen:
                return "duplicate" if self.seen[key] == content else "conflict"
            self.seen[key] = content
        m = self.month(rec["user"], month)
        counters = m.models.setdefault(rec["model_id"], [0, 0, 0, 0, 0, 0, 0])
        adds = (rec["input_tokens"], rec["output_tokens"], content[3], 1, int(rec["estimated"]), *content[6:])
        for i, add in enumerate(adds):
            counters[i] += add
        purpose = rec.get("purpose")
        if purpose is not None:  # a new named purpose past the bound counts as "other"
            named = m.purposes.setdefault(rec["model_id"], {})
            if purpose != "other" and purpose not in named and len(set(named) - {"other"}) >= MAX_PURPOSES:
                purpose = "other"
            per = named.setdefault(purpose, [0, 0])
            per[0] += 1
            per[1] += content[3]
        if rec["model_id"].startswith("system_"):
            m.used_nano += content[3]
            credit = CREDIT_NANO if m.credit_nano is None else m.credit_nano
            crossed = []
            for pct in THRESHOLDS:
                if pct > m.alerted:
                    if m.used_nano * 100 < credit * pct:
                        break
                    crossed.append(pct)
            for pct in crossed:
                m.events.append(f"{month}:{pct}:crossed:{len(m.events) + 1}")
            m.alerted = max(crossed, default=m.alerted)
            self.crossed = tuple(crossed)
        return "counted"

    def set_credit(self, user: str, month: str, credit_nano: int) -> tuple[int, ...]:
        """The thresholds a new credit clears (the spend is under them now), highest first."""
        m = self.month(user, month)
        m.credit_nano = credit_nano
        cleared = []
        for pct in reversed(THRESHOLDS):
            if pct <= m.alerted:
                if m.used_nano * 100 >= credit_nano * pct:
                    break
                cleared.append(pct)
        for pct in cleared:
            m.events.append(f"{month}:{pct}:cleared:{len(m.events) + 1}")
        if cleared:
            m.alerted = next((p for p in reversed(THRESHOLDS) if p <= m.alerted and p not in cleared), 0)
        return tuple(cleared)

    def outbox(self, user: str) -> set[str]:
        return {e for (u, _), m in self.months.items() if u == user for e in m.events}

    def held(self, user: str, skip: str | None = None) -> int:
        return sum(h.remaining_nano for tid, h in self.holds.get(user, {}).items() if h.live and tid != skip)

    def begin(self, user: str, turn_id: str, model_id: str, asked: str, month: str) -> tuple[bool, int, int]:
        """turn_begin.lua: (admitted, this turn's hold, what the other turns hold). The user's dead
        holds are deleted; a live hold of the same turn (a retry) is kept as it is."""
        holds = self.holds.setdefault(user, {})
        others = self.held(user, skip=turn_id)
        for tid in [tid for tid, h in holds.items() if not h.live]:
            del holds[tid]
        if turn_id in holds:
            return True, holds[turn_id].remaining_nano, others
        used, credit = self.used_and_credit(user, month)
        available = credit - used - others
        if available <= 0:
            return False, 0, others
        if asked == "auto":
            estimate = self.estimates.get((user, month, model_id), AUTO_DEFAULT_NANO)
            wanted = min(max(estimate, AUTO_FLOOR_NANO), AUTO_CAP_NANO)
        else:
            wanted = int(Decimal(asked) * 10**9)
        holds[turn_id] = Hold(min(wanted, available))
        return True, holds[turn_id].remaining_nano, others

    def draw(self, user: str, turn_id: str, cost: int, is_system: bool) -> int | None:
        """record.lua within a turn: the hold left after this call (None: no live hold)."""
        hold = self.holds.get(user, {}).get(turn_id)
        if hold is None or not hold.live:
            return None
        if is_system:
            hold.remaining_nano = max(hold.remaining_nano - cost, 0)
        return hold.remaining_nano

    def end(self, user: str, turn_id: str, model_id: str, cost: int, month: str) -> bool:
        """turn_end.lua: delete the hold's field; the call that deleted it teaches the estimate."""
        if self.holds.get(user, {}).pop(turn_id, None) is None:
            return False
        key = (user, month, model_id)
        if key in self.estimates or cost > 0:
            old = self.estimates.get(key, AUTO_DEFAULT_NANO)
            self.estimates[key] = old + (cost - old) // 2 if cost > old else old - (old - cost) // 8
        return True

    def used_and_credit(self, user: str, month: str) -> tuple[int, int]:
        m = self.months.get((user, month), Month())
        return m.used_nano, CREDIT_NANO if m.credit_nano is None else m.credit_nano

    def expected_stats(self, user: str, current: str) -> dict:
        used, credit = self.used_and_credit(user, current)
        held = self.held(user)
        m = self.months.get((user, current), Month())
        history = {}
        for back in range(1, 13):
            month = add_months(current, -back)
            old = self.months.get((user, month))
            if old and old.models:
                history[month] = {
                    mid: {
                        "input": c[0],
                        "output": c[1],
                        "cached_input": c[5],
                        "cache_write": c[6],
                        "cost": nano_to_json(c[2]),
                        "calls": c[3],
                        "is_system": mid.startswith("system_"),
                    }
                    for mid, c in old.models.items()
                }
        return {
            "current_month": current,
            "monthly_credit": nano_to_json(credit),
            "monthly_used": nano_to_json(used),
            "remaining": nano_to_json(max(credit - used, 0)),
            "exceeded": used >= credit,
            "held": nano_to_json(held),
            "available": nano_to_json(max(credit - used - held, 0)),
            "models": {
                mid: {
                    "input_tokens": c[0],
                    "output_tokens": c[1],
                    "cached_input_tokens": c[5],
                    "cache_write_tokens": c[6],
                    "cost": nano_to_json(c[2]),
                    "calls": c[3],
                    "estimated_calls": c[4],
                    "is_system": mid.startswith("system_"),
                    "purposes": {
                        p: {"calls": n, "cost": nano_to_json(cost)} for p, (n, cost) in m.purposes.get(mid, {}).items()
                    },
                }
                for mid, c in m.models.items()
            },
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
        self.now = datetime(2025, 11, 20, 8, 30, tzinfo=UTC)
        self.meter = self.make_meter()
        self.model = Model()
        self.turns: list[OpenTurn] = []
        self.ended: list[tuple[str, str, str, int]] = []  # user, model, turn id, cost: for retries

    def make_meter(self) -> Meter:
        settings_ = Settings(prefix="prop", credit_nano=CREDIT_NANO, prices=PRICES, alert_thresholds=THRESHOLDS)
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
        assert result.alerts == (self.model.crossed if outcome == "counted" else ())

    @rule(batch=st.lists(records(), min_size=1, max_size=5))
    def record_many(self, batch: list[dict]) -> None:
        ids = [(r["user"], r["request_id"]) for r in batch if r["request_id"] is not None]
        if len(set(ids)) != len(ids):  # refused before anything is sent
            with pytest.raises(InvalidInput):
                self.meter.update_token_usage_many([as_call(r) for r in batch])
            return
        outcomes = []
        for r in batch:
            outcomes.append((self.model.record(r, self.month), self.model.crossed))
        try:
            results = self.meter.update_token_usage_many([as_call(r) for r in batch])
        except BatchError as exc:
            results = exc.results
        for (outcome, crossed), result in zip(outcomes, results):
            if outcome == "conflict":
                assert isinstance(result, RequestConflict)
            else:
                assert result.duplicate == (outcome == "duplicate")
                assert result.alerts == (crossed if outcome == "counted" else ())

    @rule(user=users, credit=st.sampled_from([0, 1, 5, "0.5", "12.345678901"]), shift=st.sampled_from([None, 0, -1, 1]))
    def set_credit(self, user: str, credit: object, shift: int | None) -> None:
        month = None if shift is None else add_months(self.month, shift)
        result = self.meter.set_monthly_credit(user, credit, month)
        cleared = self.model.set_credit(user, month or self.month, int(Decimal(str(credit)) * 10**9))
        target = self.model.month(user, month or self.month)
        assert (result.monthly_credit_nano, result.monthly_used_nano) == (target.credit_nano, target.used_nano)
        assert result.cleared == cleared

    @rule(months=st.integers(0, 13), to_month_end=st.booleans())
    def advance_clock(self, months: int, to_month_end: bool) -> None:
        """Move forward to the first or the last microsecond of a later (or this) month."""
        target = add_months(self.month, months)
        year, mon = (int(p) for p in target.split("-"))
        start = datetime(year, mon, 1, tzinfo=UTC)
        if to_month_end or months == 0:
            nxt = add_months(target, 1).split("-")
            start = datetime(int(nxt[0]), int(nxt[1]), 1, tzinfo=UTC) - timedelta(microseconds=1)
        self.now = max(self.now, start)

    @rule(user=users, model_id=st.sampled_from(MODELS[:4]))
    def check(self, user: str, model_id: str) -> None:
        used, credit = self.model.used_and_credit(user, self.month)
        held = self.model.held(user)
        got = self.meter.check_quota_available(user, model_id)
        allowed = not model_id.startswith("system_") or used + held < credit
        assert (got.allowed, got.monthly_used_nano, got.monthly_credit_nano, got.month, got.held_nano) == (
            allowed,
            used,
            credit,
            self.month,
            held,
        )
        assert (got.event is None) == allowed

    # --- turns and their holds ------------------------------------------------------------------

    def holds_key(self, user: str) -> str:
        return self.meter.core.keys.holds_key(user)

    @precondition(lambda self: len(self.turns) < MAX_OPEN_TURNS)
    @rule(user=users, model_id=st.sampled_from(TURN_MODELS), asked=st.sampled_from(HOLD_ASKS))
    def admit(self, user: str, model_id: str, asked: str) -> None:
        turn = self.meter.turn(user, model_id, hold=asked)
        if not model_id.startswith("system_"):  # custom: never limited, holds nothing
            turn.__enter__()
            assert turn.rules.hold_nano == 0 and turn.check.allowed
            self.turns.append(OpenTurn(turn, user, model_id, asked, holding=False))
            return
        used, credit = self.model.used_and_credit(user, self.month)
        admitted, hold, others = self.model.begin(user, turn.rules.turn_id, model_id, asked, self.month)
        if not admitted:
            with pytest.raises(QuotaExceeded) as refused:
                turn.__enter__()
            event = refused.value.event
            assert (event["held"], event["monthly_used"]) == (nano_to_json(others), nano_to_json(used))
            return
        turn.__enter__()
        assert (turn.rules.hold_nano, turn.check.held_nano, turn.check.monthly_used_nano) == (hold, others, used)
        assert credit - used - others > 0
        self.turns.append(OpenTurn(turn, user, model_id, asked, holding=True))

    @precondition(lambda self: self.turns)
    @rule(
        index=st.integers(0, MAX_OPEN_TURNS - 1),
        model_id=st.sampled_from((None,) + MODELS[:4]),
        input_tokens=st.integers(0, 3_000),
        output_tokens=st.integers(0, 3_000),
        purpose=purposes,
    )
    def turn_record(
        self, index: int, model_id: str | None, input_tokens: int, output_tokens: int, purpose: str | None
    ) -> None:
        """A call of a turn's reply (the turn's model or another): it draws its system cost down
        from the turn's live hold, never below 0. Tokens stay small: a turn's cost stays exact in
        Lua's doubles (see record.lua), which is what the estimate in turn_end.lua is fed."""
        t = self.turns[index % len(self.turns)]
        rec = dict(
            user=t.user,
            model_id=model_id or t.model_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=None,
            estimated=False,
            purpose=purpose,
        )
        assert self.model.record(rec, self.month) == "counted"
        cost, is_system = Model.cost(rec), rec["model_id"].startswith("system_")
        left = self.model.draw(t.user, t.turn.rules.turn_id, cost, is_system) if t.holding else None
        got = t.turn.record(input_tokens=input_tokens, output_tokens=output_tokens, model_id=model_id, purpose=purpose)
        assert (got.status, got.result.cost_nano, got.result.hold_remaining_nano) == ("counted", cost, left)
        assert got.alerts == self.model.crossed
        t.cost_nano += cost if is_system else 0

    @precondition(lambda self: self.turns)
    @rule(index=st.integers(0, MAX_OPEN_TURNS - 1))
    def release(self, index: int) -> None:
        t = self.turns.pop(index % len(self.turns))
        t.turn.__exit__(None, None, None)
        if not t.holding:
            return
        tid = t.turn.rules.turn_id
        self.model.end(t.user, tid, t.model_id, t.cost_nano, self.month)
        self.ended.append((t.user, t.model_id, tid, t.cost_nano))
        estimate = self.client.hget(self.meter.core.keys.month_key(t.user, self.month), f"{t.model_id}:hold_est_nano")
        want = self.model.estimates.get((t.user, self.month, t.model_id))
        assert estimate == (None if want is None else str(want).encode())
        assert not self.client.hexists(self.holds_key(t.user), tid)

    def live_holds(self) -> list[tuple[str, str, Hold]]:
        return [
            (user, tid, h)
            for user, holds in sorted(self.model.holds.items())
            for tid, h in sorted(holds.items())
            if h.live
        ]

    @precondition(lambda self: any(self.live_holds()))
    @rule(index=st.integers(0, MAX_OPEN_TURNS - 1))
    def expire(self, index: int) -> None:
        """A hold's expiry passes (its worker was killed, or stalled for hold_ttl_s): the field
        stays, with its expiry in the past, until the user's next admission deletes it."""
        live = self.live_holds()
        user, tid, hold = live[index % len(live)]
        self.client.hset(self.holds_key(user), tid, f"{hold.remaining_nano}:1")
        hold.live = False

    @precondition(lambda self: any(t.holding for t in self.turns))
    @rule(index=st.integers(0, MAX_OPEN_TURNS - 1))
    def retry_begin(self, index: int) -> None:
        """turn_begin.lua sent again for an open turn (redis-py resends when a reply is lost):
        a live hold is kept as it is (not refilled, not doubled); a dead one is a new admission."""
        holding = [t for t in self.turns if t.holding]
        t = holding[index % len(holding)]
        tid = t.turn.rules.turn_id
        model = self.meter.prices.lookup(t.model_id)
        call = self.meter.core.turn_begin(t.user, model, tid, self.meter.core.hold_arg(t.asked))
        admitted, hold, others = self.model.begin(t.user, tid, t.model_id, t.asked, self.month)
        check, got_hold = self.meter.run(call)
        assert (check.allowed, got_hold, check.held_nano) == (admitted, hold, others)

    @precondition(lambda self: self.ended)
    @rule(index=st.integers(0, 10**6))
    def retry_end(self, index: int) -> None:
        """turn_end.lua sent again for a turn that ended: it releases and learns nothing more."""
        user, model_id, tid, cost = self.ended[index % len(self.ended)]
        month_before = self.client.hgetall(self.meter.core.keys.month_key(user, self.month))
        assert self.model.end(user, tid, model_id, cost, self.month) is False
        call = self.meter.core.turn_end(user, self.meter.prices.lookup(model_id), tid, cost)
        assert self.meter.run(call) is False
        assert self.client.hgetall(self.meter.core.keys.month_key(user, self.month)) == month_before

    @invariant()
    def stats_agree(self) -> None:
        for user in USERS:
            stats = self.meter.get_token_stats(user)
            want = self.model.expected_stats(user, self.month)
            got = {k: stats[k] for k in want}
            for model in got["models"].values():
                model.pop("name")
            assert got == want, user

    @invariant()
    def outboxes_hold_what_the_model_emitted(self) -> None:
        for user in USERS:
            got = {f.decode() for f in self.client.hkeys(self.meter.core.keys.outbox_key(user))}
            assert got == self.model.outbox(user), user

    @invariant()
    def checks_count_the_live_holds(self) -> None:
        for user in USERS:
            used, credit = self.model.used_and_credit(user, self.month)
            held = self.model.held(user)
            got = self.meter.check_quota_available(user, "system_deepseek")
            assert (got.held_nano, got.allowed) == (held, used + held < credit), user


@pytest.mark.slow
def test_meter_follows_the_model(redis_server) -> None:
    MeterMachine.redis_url = redis_server.url
    run_state_machine_as_test(
        MeterMachine,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
