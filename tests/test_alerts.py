"""Threshold alerts, decided in the scripts (issue 11): one event per threshold per crossing, in the
user's outbox in the same step as the record; cleared and armed again by a credit raise; nothing for a
repeated record, a custom model or a turn's hold. Every test runs on both clients and three backends
(``any_meter``), and reads the outbox the way ops do (docs/OPERATIONS.md)."""

from __future__ import annotations

import json

import pytest

from quota import ConfigError, PriceTable, Settings
from quota._config import alert_thresholds_env
from quota._keys import SLOTS, slot_tag, user_slot
from quota.testing import RedisClusterProc  # noqa: F401 - the fixtures' harness

SYS, CUS = "system_deepseek", "custom_gpt4"
# system_deepseek: 0.001 CNY per 1k in, 0.002 per 1k out; 1,000,000 input tokens cost 1 CNY
ONE_CNY = {"input_tokens": 1_000_000, "output_tokens": 0}


def outbox(raw, user="alice") -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in raw.hgetall(f"quota:{{{user}}}:outbox").items()}


def kinds(raw, user="alice") -> list[tuple[str, int]]:
    return sorted((e["kind"], e["threshold"]) for e in outbox(raw, user).values())


def test_a_record_that_reaches_a_threshold_says_so_once(any_meter, raw):
    r = [any_meter.update_token_usage("alice", SYS, **ONE_CNY, request_id=f"r{i}") for i in range(1, 6)]
    assert [x.alerts for x in r] == [(), (), (), (80,), (100,)]  # 4 of 5 CNY is 80%, 5 is 100%
    assert r[3].warning["type"] == "quota_warning" and r[3].warning["code"] == "quota_warning"
    assert (r[3].warning["threshold"], r[3].warning["monthly_used"], r[3].warning["monthly_credit"]) == (80, 4.0, 5.0)
    assert "80%" in r[3].warning["message"] and "已用" in r[3].warning["message"]
    assert r[3].warning["resets_at"] == "2026-02-01T00:00:00Z" and r[3].as_dict()["alerts"] == [80]
    again = any_meter.update_token_usage("alice", SYS, **ONE_CNY, request_id="r5")  # a retried record
    assert again.duplicate and again.alerts == ()
    assert any_meter.update_token_usage("alice", SYS, **ONE_CNY).alerts == ()  # past 100%: nothing more
    events = outbox(raw)
    assert sorted(events) == ["2026-01:100:crossed:2", "2026-01:80:crossed:1"]
    first = events["2026-01:80:crossed:1"]
    assert (first["user"], first["month"], first["used_nano"], first["credit_nano"]) == (
        "alice",
        "2026-01",
        "4000000000",
        "5000000000",
    )
    month = raw.hgetall("quota:{alice}:2026-01")
    assert (month[b"alerted_pct"], month[b"alert_seq"]) == (b"100", b"2")
    # the user is in the outbox index of their hash slot, due now
    index = raw.zrange(any_meter.core.keys.outbox_index_key("alice"), 0, -1)
    assert index == [b"alice"]


def test_one_record_can_cross_several_thresholds(any_meter, raw):
    r = any_meter.update_token_usage("alice", SYS, input_tokens=6_000_000, output_tokens=0)
    assert r.alerts == (80, 100) and r.warning["threshold"] == 100 and "all of" in r.warning["message"]
    assert kinds(raw) == [("crossed", 80), ("crossed", 100)]


def test_custom_models_and_turn_holds_never_alert(any_meter, raw):
    any_meter.update_token_usage("alice", CUS, input_tokens=10**9, output_tokens=0)  # counted, not limited
    with any_meter.turn("alice", SYS, hold="4.9"):  # holds 98% of the credit: a hold is not spend
        pass
    assert outbox(raw) == {} and raw.hget("quota:{alice}:2026-01", "alerted_pct") is None


def test_a_batch_alerts_like_single_records(any_meter, raw):
    records = [{"user": u, "model_id": SYS, **ONE_CNY, "request_id": f"b{i}"} for i in range(5) for u in ("a", "b")]
    results = any_meter.update_token_usage_many(records)
    assert [r.alerts for r in results if r.user == "a"] == [(), (), (), (80,), (100,)]
    assert kinds(raw, "a") == kinds(raw, "b") == [("crossed", 80), ("crossed", 100)]


def test_a_turns_records_alert_and_hand_the_warning_over_at_once(any_meter, raw, side):
    got = []

    def on_warning(event):
        got.append(event)

    async def on_warning_async(event):
        got.append(event)

    any_meter.update_token_usage("alice", SYS, input_tokens=3_900_000, output_tokens=0)
    with any_meter.turn("alice", SYS, on_warning=on_warning if side == "sync" else on_warning_async) as turn:
        first = turn.record(input_tokens=200_000, output_tokens=0)  # 4.1 of 5: 80%
        assert first.alerts == (80,) and got == [first.warning]
        turn.record(input_tokens=100_000, output_tokens=0)
        assert len(got) == 1
    assert first.as_dict()["alerts"] == [80]


def test_a_raise_clears_the_thresholds_it_brings_the_spend_under_and_arms_them_again(any_meter, raw):
    any_meter.update_token_usage("alice", SYS, input_tokens=5_000_000, output_tokens=0)  # 100%
    raised = any_meter.set_monthly_credit("alice", "5.5")  # 91%: under 100, still over 80
    assert raised.cleared == (100,) and raised.as_dict()["cleared_alerts"] == [100]
    assert raw.hget("quota:{alice}:2026-01", "alerted_pct") == b"80"
    assert any_meter.set_monthly_credit("alice", "5.5").cleared == ()  # the same credit again: nothing new
    assert any_meter.set_monthly_credit("alice", "4").cleared == ()  # a cut clears nothing, emits nothing
    assert any_meter.set_monthly_credit("alice", "10").cleared == (80,)  # 50%: under both (100 was cleared)
    crossed = any_meter.update_token_usage("alice", SYS, input_tokens=3_000_000, output_tokens=0)  # 8 of 10
    assert crossed.alerts == (80,)  # armed again: a second crossing, a new event
    events = outbox(raw)
    assert [(e["kind"], e["threshold"], e["seq"]) for e in sorted(events.values(), key=lambda e: e["seq"])] == [
        ("crossed", 80, 1),
        ("crossed", 100, 2),
        ("cleared", 100, 3),
        ("cleared", 80, 4),
        ("crossed", 80, 5),
    ]
    cleared = events["2026-01:100:cleared:3"]
    assert (cleared["used_nano"], cleared["credit_nano"]) == ("5000000000", "5500000000")


def test_a_cut_alerts_at_the_next_record(any_meter, raw):
    any_meter.update_token_usage("alice", SYS, input_tokens=3_000_000, output_tokens=0)  # 60%
    any_meter.set_monthly_credit("alice", "3.5")  # 86%: nothing yet, the next record decides
    assert outbox(raw) == {}
    assert any_meter.update_token_usage("alice", SYS, input_tokens=0, output_tokens=0).alerts == (80,)


def test_alerts_off_write_nothing(backend, make_meter, raw):
    meter = make_meter(backend, prefix="quota", monthly_credit=5, alert_thresholds=())
    assert meter.update_token_usage("alice", SYS, input_tokens=6_000_000, output_tokens=0).alerts == ()
    assert meter.set_monthly_credit("alice", 100).cleared == ()
    assert outbox(raw) == {} and raw.hget("quota:{alice}:2026-01", "alerted_pct") is None


def test_amounts_past_2_to_the_53_are_compared_exactly(backend, make_meter):
    """The scripts compare used x 100 with credit x percent in two base-1e9 limbs: as doubles, both
    sides below would round to the same number, 128 apart, and the threshold would fire one nano early."""
    prices = PriceTable(
        system={
            "system_top": {"cost_per_1k_input": "10", "cost_per_1k_output": "0"},  # 1e7 nano a token, the limit
            "system_kilo": {"cost_per_1k_input": "0.001", "cost_per_1k_output": "0"},  # 1,000 nano a token
            "system_nano": {"cost_per_1k_input": "0.000001", "cost_per_1k_output": "0"},  # 1 nano a token
        }
    )
    meter = make_meter(backend, prefix="quota", prices=prices)
    credit_nano = 2**53 + 5  # 80% of it is 7,205,759,403,792,797.6
    meter.set_monthly_credit("alice", f"{credit_nano // 10**9}.{credit_nano % 10**9:09d}")
    for model, tokens in (("system_top", 720_575_940), ("system_kilo", 3_792), ("system_nano", 797)):
        r = meter.update_token_usage("alice", model, tokens, 0)
        assert r.alerts == ()
    assert r.monthly_used_nano == 7_205_759_403_792_797  # just under 80%
    assert meter.update_token_usage("alice", "system_nano", 1, 0).alerts == (80,)  # one nano more: reached


def test_the_month_hash_stays_readable_by_the_stats_and_the_dump(any_meter):
    any_meter.update_token_usage("alice", SYS, input_tokens=5_000_000, output_tokens=0)
    stats = any_meter.get_token_stats("alice")
    assert stats["monthly_used"] == 5.0 and set(stats["models"]) == {SYS}  # alerted_pct is no model


def test_slot_tags_put_every_index_in_its_users_slot():
    from redis.crc import key_slot

    assert len({slot_tag(s) for s in range(SLOTS)}) == SLOTS
    for user in ("alice", "bob", "a.b@c+d-e", "x" * 128):
        index = f"quota:{{{slot_tag(user_slot(user))}}}:outbox_index"
        assert key_slot(index.encode()) == key_slot(f"quota:{{{user}}}:outbox".encode()) == user_slot(user)


@pytest.mark.parametrize(
    ("raw", "want"),
    [(None, (80, 100)), ("", (80, 100)), ("50, 80%,100", (50, 80, 100)), ("100,80", (80, 100)), ("off", ()), ("0", ())],
)
def test_thresholds_from_the_environment(raw, want):
    env = {} if raw is None else {"QUOTA_ALERT_THRESHOLDS": raw}
    assert alert_thresholds_env(env) == want
    assert Settings.from_env(env).alert_thresholds == want


@pytest.mark.parametrize("raw", ["80,80", "1001", "eighty", "80,,100", "1,2,3,4,5,6,7,8,9,10,11", "-5"])
def test_bad_thresholds_are_refused(raw):
    with pytest.raises(ConfigError, match="QUOTA_ALERT_THRESHOLDS"):
        Settings.from_env({"QUOTA_ALERT_THRESHOLDS": raw})
    with pytest.raises(ConfigError):
        Settings(alert_thresholds=(100, 80))


@pytest.mark.parametrize("short", [0, 1])
def test_a_threshold_past_2_53_is_reached_to_the_nano(any_meter, raw, short):
    """record.lua skips the alert decision only well below the lowest threshold (in doubles, with a
    margin); at the threshold lib/alerts.lua decides exactly, here where the products pass 2^53."""
    # 80 % of the credit is reached at 8,000,000,000,000,009 nano-CNY, where doubles (no margin) still
    # put the spend below it: float(8e15 + 9) * 100 < float(10**16 + 11) * 80
    credit, reached = 10**16 + 11, 8 * 10**15 + 9
    raw.hset("quota:{big}:2026-01", mapping={"credit_nano": credit, "system_used_nano": reached - 2000 - short})
    r = any_meter.update_token_usage("big", SYS, input_tokens=0, output_tokens=1)  # 2,000 nano-CNY
    assert r.monthly_used_nano == reached - short
    assert r.alerts == (() if short else (80,))
    assert kinds(raw, "big") == ([] if short else [("crossed", 80)])


def test_bad_thresholds_are_refused_when_the_spend_nears_them_and_change_nothing(any_meter, raw):
    """The thresholds argument is checked where it is used: by a record within reach of the lowest."""
    from redis.exceptions import ResponseError

    from quota._batch import eval_args

    any_meter.update_token_usage("alice", SYS, input_tokens=3_999_000, output_tokens=0)  # 3.999 of 5 CNY
    call = any_meter.core.record("alice", SYS, 1_000, 0, request_id="bad")
    bad = call._replace(args=(*call.args[:8], "80,,100", *call.args[9:]))
    before = raw.hgetall("quota:{alice}:2026-01")
    with pytest.raises(ResponseError, match="QUOTA_INVALID record thresholds"):
        raw.eval(*eval_args(bad))
    assert raw.hgetall("quota:{alice}:2026-01") == before and raw.exists(call.keys[1]) == 0
    assert raw.eval(*eval_args(call))  # the same record with the meter's thresholds: counted
    assert kinds(raw) == [("crossed", 80)]
