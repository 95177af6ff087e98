"""Grants and plans (issue 12, parts 3 and 4): credit beyond the month's, drawn down atomically by the
record, earliest expiry first, and a standing per-user monthly credit.

The bodies run on Meter and AsyncMeter over fakeredis, a real Redis and the real cluster
(``any_meter``); expiry is on the meter's clock, which the tests pin."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from quota import Meter, QuotaExceeded, RequestConflict
from quota._errors import InvalidInput, UnknownGrant

from .history_support import history_url, store  # noqa: F401 - fixtures

NANO = 10**9


def spend(meter, user: str, nano: int, **kw):
    """Spend exactly ``nano`` (a multiple of 1000) on system_deepseek: 1 nano-CNY per input token."""
    return meter.update_token_usage(user, "system_deepseek", nano // 1000, 0, **kw)


def grants_of(meter, user: str) -> dict[str, int]:
    return {g.grant_id: g.remaining_nano for g in meter.get_grants(user)}


def test_spend_beyond_the_credit_draws_grants_earliest_expiry_first(any_meter, clock):
    m = any_meter
    soon, later = clock.now + timedelta(days=5), clock.now + timedelta(days=40)
    m.grant_credit("ann", "2", grant_id="forever", reason="bought")  # no expiry: drawn last
    m.grant_credit("ann", "1", grant_id="later", expires_at=later)
    m.grant_credit("ann", "0.5", grant_id="soon", expires_at=soon)
    under = spend(m, "ann", 4_700_000_000)
    assert under.grants_drawn_nano == 0 and grants_of(m, "ann") == {
        "soon": NANO // 2,
        "later": NANO,
        "forever": 2 * NANO,
    }
    across = spend(m, "ann", 400_000_000)  # 0.3 fits under the credit, 0.1 is beyond it
    assert across.grants_drawn_nano == 100_000_000
    assert grants_of(m, "ann") == {"soon": 400_000_000, "later": NANO, "forever": 2 * NANO}
    spend(m, "ann", 900_000_000)  # the rest of "soon" (0.4), then 0.5 of "later"
    assert grants_of(m, "ann") == {"later": 500_000_000, "forever": 2 * NANO, "soon": 0}
    spend(m, "ann", 1_000_000_000)
    assert grants_of(m, "ann") == {"forever": 1_500_000_000, "later": 0, "soon": 0}
    stats = m.get_token_stats("ann")
    assert stats["monthly_used"] == 7.0 and stats["monthly_credit"] == 5.0
    assert stats["grants_drawn"] == 2.0 and stats["grants_remaining"] == 1.5
    assert stats["remaining"] == 0.0 and stats["available"] == 1.5 and stats["exceeded"] is True
    assert [g["grant_id"] for g in stats["grants"]] == ["forever", "soon", "later"]  # live first
    forever = stats["grants"][0]
    assert forever == {
        "grant_id": "forever",
        "amount": 2.0,
        "remaining": 1.5,
        "expires_at": None,
        "reason": "bought",
        "live": True,
    }
    assert stats["grants"][2]["expires_at"] == "2026-02-24T12:00:00.000Z" and not stats["grants"][2]["live"]
    # beyond every grant: counted (a record never refuses), drawn only what there is
    last = spend(m, "ann", 2_000_000_000)
    assert last.grants_drawn_nano == 1_500_000_000 and grants_of(m, "ann")["forever"] == 0
    assert m.get_token_stats("ann", exact=True)["grants_drawn"] == Decimal("3.5")


def test_a_repeated_request_id_draws_once_and_custom_models_never(any_meter):
    m = any_meter
    m.grant_credit("bo", "1", grant_id="g1")
    spend(m, "bo", 5_000_000_000)
    first = spend(m, "bo", 300_000_000, request_id="r1")
    again = spend(m, "bo", 300_000_000, request_id="r1")
    assert (first.grants_drawn_nano, again.grants_drawn_nano, again.duplicate) == (300_000_000, 0, True)
    m.update_token_usage("bo", "custom_x", 10**6, 10**6, price={"cost_per_1k_input": 1, "cost_per_1k_output": 1})
    assert grants_of(m, "bo") == {"g1": 700_000_000}


def test_an_expired_grant_is_never_drawn(any_meter, clock):
    m = any_meter
    m.grant_credit("cy", "1", grant_id="short", expires_at=clock.now + timedelta(hours=1))
    spend(m, "cy", 5_000_000_000)
    clock.now += timedelta(hours=1)  # expiry is exclusive: at expires_at the grant is dead
    result = spend(m, "cy", 100_000_000)
    assert result.grants_drawn_nano == 0 and grants_of(m, "cy") == {"short": NANO}
    [grant] = m.get_grants("cy")
    assert not grant.live and grant.remaining == Decimal(1)
    assert not m.check_quota_available("cy", "system_deepseek").allowed
    assert m.get_token_stats("cy")["available"] == 0.0


def test_admission_counts_live_grants(any_meter, clock):
    m = any_meter
    spend(m, "di", 5_000_000_000)
    denied = m.check_quota_available("di", "system_deepseek")
    assert not denied.allowed and denied.event["code"] == "quota_exceeded"
    with pytest.raises(QuotaExceeded):
        with m.turn("di", "system_deepseek"):
            pass
    m.grant_credit("di", "0.05", grant_id="top")
    check = m.check_quota_available("di", "system_deepseek")
    assert check.allowed and check.grants_nano == 50_000_000 and check.available_nano == 50_000_000
    with m.turn("di", "system_deepseek", hold="1") as turn:
        assert turn.hold == Decimal("0.05")  # all there is: the credit's rest is 0, the grant 0.05
        held = m.check_quota_available("di", "system_deepseek")
        assert not held.allowed and held.event["code"] == "credit_held"
        turn.record(input_tokens=20_000, output_tokens=0)
    assert grants_of(m, "di") == {"top": 30_000_000}
    assert m.check_quota_available("di", "system_deepseek").available_nano == 30_000_000
    assert m.check_quota_available("di", "custom_x").allowed


def test_without_grants_admission_is_unchanged(any_meter):
    m = any_meter
    spend(m, "ed", 4_000_000_000)
    check = m.check_quota_available("ed", "system_deepseek")
    assert check.allowed and check.available_nano == NANO and check.grants_nano == 0
    assert check.as_dict()["grants"] == 0.0
    spend(m, "ed", NANO)
    assert not m.check_quota_available("ed", "system_deepseek").allowed


def test_revoke_takes_back_the_rest_once(any_meter):
    m = any_meter
    m.grant_credit("fy", "1", grant_id="promo")
    spend(m, "fy", 5_300_000_000)
    revoked = m.revoke_grant("fy", "promo")
    assert (revoked.remaining_nano, revoked.revoked_nano, revoked.amount_nano) == (0, 700_000_000, NANO)
    again = m.revoke_grant("fy", "promo")
    assert again.revoked_nano == 700_000_000 and again.revoked_at_ms == revoked.revoked_at_ms
    assert not m.check_quota_available("fy", "system_deepseek").allowed
    assert spend(m, "fy", 100_000_000).grants_drawn_nano == 0
    with pytest.raises(UnknownGrant):
        m.revoke_grant("fy", "nope")
    # the id keeps its meaning: granting it again changes nothing
    assert not m.grant_credit("fy", "1", grant_id="promo").created
    assert grants_of(m, "fy") == {"promo": 0}


def test_grants_are_idempotent_by_id(any_meter, clock):
    m = any_meter
    until = clock.now + timedelta(days=30)
    first = m.grant_credit("gu", "3", grant_id="order-17", expires_at=until, reason="order 17")
    assert first.created and first.remaining == Decimal(3) and first.expires_at == until
    spend(m, "gu", 6_000_000_000)
    repeat = m.grant_credit("gu", "3.0", grant_id="order-17", expires_at=until, reason="order 17")
    assert not repeat.created and repeat.remaining_nano == 2 * NANO  # as it is now
    for changed in (
        dict(amount="4", expires_at=until, reason="order 17"),
        dict(amount="3", expires_at=until + timedelta(days=1), reason="order 17"),
        dict(amount="3", expires_at=None, reason="order 17"),
        dict(amount="3", expires_at=until, reason="another"),
    ):
        with pytest.raises(RequestConflict):
            m.grant_credit("gu", changed.pop("amount"), grant_id="order-17", **changed)
    assert grants_of(m, "gu") == {"order-17": 2 * NANO}
    auto = m.grant_credit("gu", "1")  # no id: a new grant every time
    assert auto.created and auto.grant_id != m.grant_credit("gu", "1").grant_id


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(amount="0"),
        dict(amount="-1"),
        dict(amount="1000000"),
        dict(amount="1", grant_id="has:colon"),
        dict(amount="1", grant_id=""),
        dict(amount="1", reason="x" * 201),
        dict(amount="1", expires_at="2027-01-01"),
        dict(amount="1", expires_at=datetime(2026, 1, 15, 11, 0, tzinfo=UTC)),  # the past, on the meter's clock
        dict(amount="1", expires_at=datetime(2027, 1, 1)),  # naive
    ],
)
def test_bad_grants_change_nothing(any_meter, raw, kwargs):
    kwargs = dict(kwargs)
    amount = kwargs.pop("amount")
    with pytest.raises(InvalidInput):
        any_meter.grant_credit("hal", amount, **kwargs)
    assert not raw.exists("quota:{hal}:grants", "quota:{hal}:grant_info")


def test_plans_apply_to_every_month_and_an_override_wins(any_meter, clock):
    m = any_meter
    assert m.set_plan_credit("ivy", "20").before_nano is None
    stats = m.get_token_stats("ivy")
    assert (stats["monthly_credit"], stats["plan_credit"]) == (20.0, 20.0)
    spend(m, "ivy", 6_000_000_000)  # past the default 5, under the plan's 20
    assert m.check_quota_available("ivy", "system_deepseek").monthly_credit_nano == 20 * NANO
    clock.set(2026, 2, 3, 9, 0)  # the following month starts on the plan too
    assert m.get_token_stats("ivy")["monthly_credit"] == 20.0
    assert spend(m, "ivy", NANO).monthly_credit_nano == 20 * NANO
    m.set_monthly_credit("ivy", "7")  # this month only
    assert m.get_token_stats("ivy")["monthly_credit"] == 7.0
    clock.set(2026, 3, 1, 0, 0)
    assert m.get_token_stats("ivy")["monthly_credit"] == 20.0
    cleared = m.set_plan_credit("ivy", None)
    assert (cleared.plan_credit_nano, cleared.before_nano) == (None, 20 * NANO)
    stats = m.get_token_stats("ivy")
    assert (stats["monthly_credit"], stats["plan_credit"]) == (5.0, None)
    clock.set(2026, 2, 10, 0, 0)
    assert m.get_token_stats("ivy")["monthly_credit"] == 7.0  # the override stays


def test_a_plan_moves_the_line_grants_draw_from(any_meter):
    m = any_meter
    m.set_plan_credit("jo", "10")
    m.grant_credit("jo", "1", grant_id="g")
    assert spend(m, "jo", 9_500_000_000).grants_drawn_nano == 0
    assert spend(m, "jo", 1_000_000_000).grants_drawn_nano == 500_000_000
    top = m.set_monthly_credit("jo", "1", add=True)  # a top-up adds to the plan's credit
    assert top.monthly_credit_nano == 11 * NANO and top.credit_before_nano is None


def test_alerts_stay_on_the_months_credit(any_meter):
    m = any_meter
    m.grant_credit("kim", "10", grant_id="big")
    assert spend(m, "kim", 4_000_000_000).alerts == (80,)
    assert spend(m, "kim", 2_000_000_000).alerts == (100,)  # while grants pay for it


def test_a_plan_raise_clears_the_alerts_it_brings_the_spend_under(any_meter, raw):
    m = any_meter
    assert spend(m, "max", 4_200_000_000).alerts == (80,)  # 84 % of the default 5
    cut = m.set_plan_credit("max", "4.5")  # a cut clears nothing (and emits nothing)
    assert cut.cleared == () and cut.month == "2026-01"
    raised = m.set_plan_credit("max", "10")
    assert raised.cleared == (80,) and raised.as_dict()["cleared_alerts"] == [80]
    events = [json.loads(v) for v in raw.hvals("quota:{max}:outbox")]
    assert sorted((e["kind"], e["threshold"]) for e in events) == [("cleared", 80), ("crossed", 80)]
    assert spend(m, "max", 4_000_000_000).alerts == (80,)  # armed again: 8.2 of 10
    m.set_monthly_credit("max", "20")
    assert m.set_plan_credit("max", None).cleared == ()  # the month's own credit wins: nothing to clear


def _worker(url: str, n: int, calls: int, cost_nano: int) -> None:
    meter = Meter.from_url(url, prefix="quota", monthly_credit=5, history=None)
    for i in range(calls):
        spend(meter, "hot", cost_nano, request_id=f"w{n}-{i}")
    meter.close()


@pytest.mark.parametrize("processes,calls", [(4, 150)])
def test_four_processes_spend_across_the_credit_and_two_grants_exactly(real_backend, processes, calls):
    """4 processes x 150 calls of 0.013 CNY = 7.8 CNY on a 5 CNY credit and grants of 1.5 (expiring)
    and 2 (not): the credit pays 5, the expiring grant 1.5, the other 1.3, to the nano-CNY."""
    meter = Meter.from_url(real_backend.url, prefix="quota", monthly_credit=5, history=None)
    meter.grant_credit("hot", "1.5", grant_id="a", expires_at=datetime.now(UTC) + timedelta(days=3))
    meter.grant_credit("hot", "2", grant_id="b")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(real_backend.url, n, calls, 13_000_000)) for n in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    total = processes * calls * 13_000_000
    stats = meter.get_token_stats("hot", exact=True)
    assert stats["monthly_used"] == Decimal(total) / NANO
    assert stats["grants_drawn"] == Decimal("2.8")
    assert grants_of(meter, "hot") == {"b": 700_000_000, "a": 0}
    meter.close()


def test_the_worked_example_of_pricing_md(any_meter, clock):
    """docs/PRICING.md, "A worked example: a plan and two grants", figure by figure."""
    m = any_meter
    clock.set(2026, 2, 10, 9, 0)
    m.set_plan_credit("alice", 20)
    m.grant_credit("alice", 3, grant_id="order-1042", reason="order 1042", expires_at=datetime(2026, 3, 1, tzinfo=UTC))
    m.grant_credit("alice", 1, grant_id="support-7", reason="sorry for the outage")
    assert m.get_token_stats("alice")["available"] == 24.0
    spend(m, "alice", 19_500_000_000)
    assert m.get_token_stats("alice")["available"] == 4.5
    assert spend(m, "alice", 1_200_000_000).grants_drawn_nano == 700_000_000
    assert grants_of(m, "alice") == {"order-1042": 2_300_000_000, "support-7": NANO}
    assert m.get_token_stats("alice")["available"] == 3.3
    spend(m, "alice", 2_800_000_000)
    assert grants_of(m, "alice") == {"support-7": 500_000_000, "order-1042": 0}
    stats = m.get_token_stats("alice")
    assert {k: stats[k] for k in ("monthly_credit", "plan_credit", "monthly_used", "remaining", "grants_drawn")} == {
        "monthly_credit": 20.0,
        "plan_credit": 20.0,
        "monthly_used": 23.5,
        "remaining": 0.0,
        "grants_drawn": 3.5,
    }
    assert (stats["grants_remaining"], stats["exceeded"], stats["available"]) == (0.5, True, 0.5)
    assert m.check_quota_available("alice", "system_deepseek").allowed
    clock.set(2026, 3, 1, 0, 0)
    assert m.get_token_stats("alice")["available"] == 20.5


def test_the_archive_keeps_each_months_draw_on_grants(backend, clock, store):
    from quota.history import dump_expired_months

    meter = Meter(backend.sync_client(), clock=clock, prefix="quota", monthly_credit=5)
    meter.grant_credit("lu", "2", grant_id="g")
    spend(meter, "lu", 6_250_000_000)
    clock.set(2026, 2, 2, 0, 0)
    report = dump_expired_months(meter, store)
    assert report.archived == 1
    [archived] = store.load_months("lu", ["2026-01"])
    assert (archived.system_used_nano, archived.grants_drawn_nano) == (6_250_000_000, 1_250_000_000)
    assert grants_of(meter, "lu") == {"g": 750_000_000}  # grants are not month data: the dump leaves them
    meter.close()
