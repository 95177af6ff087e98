"""Every behaviour of the core operations, on fakeredis, a real Redis and a real cluster, through
both the sync Meter and the AsyncMeter (the ``any_meter`` fixture: six combinations)."""

import json
from decimal import Decimal

import pytest

from quota import BatchError, InvalidInput, RequestConflict, UnknownModel


def snapshot(raw):
    """Every key and value on the backend (all masters on a cluster), to prove "nothing changed"."""
    out = {}
    for key in raw.scan_iter(match="quota:*", count=1000):
        kind = raw.type(key)
        out[key] = raw.hgetall(key) if kind == b"hash" else raw.get(key)
    return out


def test_record_returns_the_months_totals(any_meter):
    r = any_meter.update_token_usage("alice", "system_deepseek", 12000, 8000)
    assert (r.month, r.cost, r.monthly_used, r.monthly_credit) == ("2026-01", Decimal("0.028"), Decimal("0.028"), 5)
    assert r.remaining == Decimal("4.972") and not r.exceeded and not r.duplicate and r.is_system
    d = r.as_dict()
    assert (d["cost"], d["monthly_used"], d["monthly_credit"], d["remaining"]) == (0.028, 0.028, 5.0, 4.972)
    r2 = any_meter.update_token_usage("alice", "custom_xxx", 5000, 3000)
    assert r2.cost == 0 and r2.monthly_used == Decimal("0.028") and not r2.is_system


def test_the_hash_is_readable_by_ops(any_meter, raw):
    any_meter.update_token_usage("alice", "system_deepseek", 12000, 8000)
    any_meter.update_token_usage("alice", "custom_xxx", 5000, 3000)
    fields = raw.hgetall("quota:{alice}:2026-01")
    # The test's clock says 2026-01, the server's says later: to Redis this is a hash made after its
    # month, which carries its origin (restore-safe dumps, docs/HISTORY.md); a month's own hash does not.
    fields.pop(b"o", None)
    assert fields == {
        b"system_deepseek:input": b"12000",
        b"system_deepseek:output": b"8000",
        b"system_deepseek:cost_nano": b"28000000",
        b"system_deepseek:calls": b"1",
        b"system_used_nano": b"28000000",
        b"custom_xxx:input": b"5000",
        b"custom_xxx:output": b"3000",
        b"custom_xxx:cost_nano": b"0",
        b"custom_xxx:calls": b"1",
    }


def test_never_refuses_a_record_over_the_credit(any_meter):
    results = [any_meter.update_token_usage("bob", "system_deepseek", 1_000_000, 1_000_000) for _ in range(3)]
    assert [r.monthly_used for r in results] == [3, 6, 9]  # 3 CNY a call, all counted
    assert [r.exceeded for r in results] == [False, True, True]
    assert results[-1].remaining == 0


def test_exceeded_at_exactly_the_credit(any_meter):
    # 5 CNY = 5,000,000 input tokens at 0.001 CNY per 1k
    r = any_meter.update_token_usage("carol", "system_deepseek", 4_999_000, 0)
    assert not r.exceeded and any_meter.check_quota_available("carol", "system_deepseek").allowed
    r = any_meter.update_token_usage("carol", "system_deepseek", 1_000, 0)
    assert r.monthly_used == 5 and r.exceeded
    check = any_meter.check_quota_available("carol", "system_deepseek")
    assert not check.allowed and not check


def test_request_id_counts_once(any_meter):
    first = any_meter.update_token_usage("dan", "system_deepseek", 100, 50, request_id="chatcmpl-1")
    again = any_meter.update_token_usage("dan", "system_deepseek", 100, 50, request_id="chatcmpl-1")
    assert not first.duplicate and again.duplicate
    assert again.monthly_used == first.monthly_used == Decimal("0.0002")
    stats = any_meter.get_token_stats("dan")
    assert stats["models"]["system_deepseek"]["calls"] == 1


def test_reused_request_id_with_other_content_is_an_error_and_changes_nothing(any_meter, raw):
    any_meter.update_token_usage("dan", "system_deepseek", 100, 50, request_id="r-1")
    before = snapshot(raw)
    for args in [("dan", "system_deepseek", 101, 50), ("dan", "custom_x", 100, 50)]:
        with pytest.raises(RequestConflict, match="different record"):
            any_meter.update_token_usage(*args, request_id="r-1")
    assert snapshot(raw) == before


def test_request_id_window_is_configurable(any_meter, raw):
    any_meter.update_token_usage("erin", "custom_x", 1, 1, request_id="abc")
    ttl = raw.ttl("quota:{erin}:req:abc")
    assert 86400 - 5 <= ttl <= 86400


def test_the_client_makes_an_id_per_call(any_meter, raw):
    a = any_meter.update_token_usage("fay", "custom_x", 1, 1)
    b = any_meter.update_token_usage("fay", "custom_x", 1, 1)
    assert a.request_id != b.request_id and not a.duplicate and not b.duplicate
    assert raw.exists(f"quota:{{fay}}:req:{a.request_id}", f"quota:{{fay}}:req:{b.request_id}") == 2
    assert any_meter.get_token_stats("fay")["models"]["custom_x"]["calls"] == 2


@pytest.mark.parametrize("tokens", [True, False, 1.0, 1.5, "10", -1, 10**9 + 1, None, Decimal(1)])
def test_bad_token_counts_change_nothing(any_meter, raw, tokens):
    before = snapshot(raw)
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage("gus", "system_deepseek", tokens, 1)
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage("gus", "system_deepseek", 1, tokens)
    assert snapshot(raw) == before


def test_token_limits_are_inclusive(any_meter):
    r = any_meter.update_token_usage("gus", "system_deepseek", 10**9, 0)
    assert r.cost == 1000 and any_meter.update_token_usage("gus", "system_deepseek", 0, 0).cost == 0


@pytest.mark.parametrize("user", ["", "a{b}", "a:b", "a b", "a\nb", "x" * 129, None, 7])
def test_bad_user_ids_change_nothing(any_meter, raw, user):
    before = snapshot(raw)
    for call in (
        lambda: any_meter.update_token_usage(user, "custom_x", 1, 1),
        lambda: any_meter.check_quota_available(user, "custom_x"),
        lambda: any_meter.set_monthly_credit(user, 1),
        lambda: any_meter.get_token_stats(user),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert snapshot(raw) == before


@pytest.mark.parametrize("request_id", ["", "a b", "x" * 129, "a{b}", 5])
def test_bad_request_ids(any_meter, raw, request_id):
    before = snapshot(raw)
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage("hal", "custom_x", 1, 1, request_id=request_id)
    assert snapshot(raw) == before


def test_unknown_system_model_is_never_custom(any_meter, raw):
    with pytest.raises(UnknownModel):
        any_meter.update_token_usage("ivy", "system_gpt9", 1, 1)
    with pytest.raises(UnknownModel):
        any_meter.check_quota_available("ivy", "system_gpt9")
    assert snapshot(raw) == {}


def test_check_denies_system_models_only(any_meter):
    any_meter.update_token_usage("jo", "system_deepseek", 5_000_000, 0)
    denied = any_meter.check_quota_available("jo", "system_deepseek")
    assert not denied.allowed
    assert denied.event == {
        "type": "quota_exceeded",
        "code": "quota_exceeded",  # the credit is used up (credit_held: the rest is held by replies in progress)
        "model_id": "system_deepseek",
        "monthly_used": 5.0,
        "monthly_credit": 5.0,
        "held": 0.0,
        "resets_at": "2026-02-01T00:00:00Z",
        "message": denied.event["message"],
    }
    assert "额度" in denied.event["message"] and "credit" in denied.event["message"]
    custom = any_meter.check_quota_available("jo", "custom_anything")
    assert custom.allowed and custom.event is None and not custom.is_system


def test_check_on_an_empty_month(any_meter):
    check = any_meter.check_quota_available("newbie", "system_deepseek")
    assert check.allowed and check.monthly_used == 0 and check.monthly_credit == 5
    assert check.resets_at == "2026-02-01T00:00:00Z"


def test_set_monthly_credit_is_for_one_month(any_meter, clock):
    any_meter.update_token_usage("kim", "system_deepseek", 5_000_000, 0)
    assert not any_meter.check_quota_available("kim", "system_deepseek").allowed
    top_up = any_meter.set_monthly_credit("kim", "7.5")
    assert top_up.monthly_credit == Decimal("7.5") and top_up.month == "2026-01"
    assert any_meter.check_quota_available("kim", "system_deepseek").allowed
    r = any_meter.update_token_usage("kim", "system_deepseek", 1000, 0)
    assert r.monthly_credit == Decimal("7.5") and r.monthly_used == Decimal("5.001")
    clock.set(2026, 2, 1, 0, 0, 0)
    assert any_meter.check_quota_available("kim", "system_deepseek").monthly_credit == 5


def test_set_credit_for_a_named_month_and_bad_credits(any_meter, raw):
    any_meter.set_monthly_credit("lee", 20, month="2026-03")
    assert raw.hget("quota:{lee}:2026-03", "credit_nano") == b"20000000000"
    before = snapshot(raw)
    for credit, month in [
        (-1, None),
        ("abc", None),
        (1, "2026-13"),
        (1, "26-01"),
        (True, None),
        ("1e-10", None),
        (10**9, None),
    ]:
        with pytest.raises(InvalidInput):
            any_meter.set_monthly_credit("lee", credit, month=month)
    assert snapshot(raw) == before


def test_month_boundary_is_utc(any_meter, clock, raw):
    clock.set(2026, 1, 31, 23, 59, 59, microsecond=999000)
    any_meter.update_token_usage("max", "system_deepseek", 5_000_000, 0)
    assert not any_meter.check_quota_available("max", "system_deepseek").allowed
    clock.set(2026, 2, 1, 0, 0, 0)
    r = any_meter.update_token_usage("max", "system_deepseek", 1000, 0)
    assert r.month == "2026-02" and r.monthly_used == Decimal("0.001") and r.monthly_credit == 5
    assert any_meter.check_quota_available("max", "system_deepseek").allowed
    # nothing copied, nothing deleted: the key simply changed
    assert raw.hget("quota:{max}:2026-01", "system_used_nano") == b"5000000000"
    assert raw.hget("quota:{max}:2026-02", "system_used_nano") == b"1000000"


def test_stats_have_the_seeds_structure(any_meter, clock):
    clock.set(2025, 12, 10, 8, 0, 0)
    any_meter.update_token_usage("ned", "system_deepseek", 50000, 30000)
    any_meter.update_token_usage("ned", "custom_xxx", 1000, 1000)
    clock.set(2026, 1, 20, 8, 0, 0)
    any_meter.update_token_usage("ned", "system_deepseek", 12000, 8000)
    any_meter.update_token_usage("ned", "custom_xxx", 5000, 3000)
    stats = any_meter.get_token_stats("ned")
    assert {"current_month", "monthly_credit", "monthly_used", "last_reset", "models", "history"} <= set(stats)
    assert stats["current_month"] == "2026-01" and stats["last_reset"] == "2026-01-01T00:00:00Z"
    assert stats["monthly_credit"] == 5.0 and stats["monthly_used"] == 0.028
    assert stats["remaining"] == 4.972 and stats["percent_used"] == 0.56
    assert stats["resets_at"] == "2026-02-01T00:00:00Z"
    assert stats["models"]["system_deepseek"] == {
        "input_tokens": 12000,
        "output_tokens": 8000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "cost": 0.028,
        "calls": 1,
        "estimated_calls": 0,
        "is_system": True,
        "name": "DeepSeek Chat（系统提供）",
        "purposes": {},
    }
    assert stats["models"]["custom_xxx"]["cost"] == 0.0 and not stats["models"]["custom_xxx"]["is_system"]
    assert stats["history"] == {
        "2025-12": {
            "custom_xxx": {
                "input": 1000,
                "output": 1000,
                "cached_input": 0,
                "cache_write": 0,
                "cost": 0.0,
                "calls": 1,
                "is_system": False,
            },
            "system_deepseek": {
                "input": 50000,
                "output": 30000,
                "cached_input": 0,
                "cache_write": 0,
                "cost": 0.11,
                "calls": 1,
                "is_system": True,
            },
        }
    }


def test_stats_amounts_are_json_numbers_by_default_and_exact_decimals_on_request(any_meter, clock):
    """get_token_stats: JSON numbers (floats whose repr is the amount); exact=True: the same keys
    with Decimal CNY, to the nano-CNY, where a float would round (1/3 of a fen per call here)."""
    clock.set(2025, 12, 10, 8, 0, 0)
    any_meter.update_token_usage("nia", "system_deepseek", 50000, 30000)
    clock.set(2026, 1, 20, 8, 0, 0)
    price = {"cost_per_1k_input": "0.000001", "cost_per_1k_output": "0"}  # 1 nano-CNY per token
    for _ in range(3):
        any_meter.update_token_usage("nia", "custom_x", 1, 0, price=price)
    any_meter.update_token_usage("nia", "system_deepseek", 12345, 6789)
    any_meter.set_monthly_credit("nia", "3.333333333")
    plain = any_meter.get_token_stats("nia")
    exact = any_meter.get_token_stats("nia", exact=True)
    assert json.loads(json.dumps(plain)) == plain  # JSON as it is
    assert set(exact) == set(plain) and exact["models"].keys() == plain["models"].keys()
    amounts = ["monthly_credit", "monthly_used", "remaining", "held", "available", "percent_used"]
    assert all(type(plain[k]) is float for k in amounts) and all(type(exact[k]) is Decimal for k in amounts)
    assert exact["monthly_used"] == Decimal("0.025923") and exact["monthly_credit"] == Decimal("3.333333333")
    assert exact["remaining"] == Decimal("3.307410333") and exact["percent_used"] == Decimal("0.78")
    assert exact["models"]["custom_x"]["cost"] == Decimal("0.000000003")
    assert exact["history"]["2025-12"]["system_deepseek"]["cost"] == Decimal("0.11")
    for key in amounts:  # the float is the exact amount's nearest double: the same number
        assert plain[key] == float(exact[key])
    assert {k: v for k, v in exact.items() if k not in amounts + ["models", "history"]} == {
        k: v for k, v in plain.items() if k not in amounts + ["models", "history"]
    }


def test_stats_history_window_and_order(any_meter, clock):
    for month in range(1, 13):
        clock.set(2025, month, 5, 0, 0, 0)
        any_meter.update_token_usage("oz", "custom_x", month, 0)
    clock.set(2026, 1, 5, 0, 0, 0)
    history = any_meter.get_token_stats("oz")["history"]
    assert list(history) == [f"2025-{m:02d}" for m in range(12, 0, -1)]
    assert list(any_meter.get_token_stats("oz", months=3)["history"]) == ["2025-12", "2025-11", "2025-10"]


def test_stats_reuse_the_built_history_only_while_the_past_months_are_unchanged(any_meter, clock):
    """quota._stats.HistoryMemo: a repeat read reuses the history built from the same replies; a
    late record, a correction or a credit set on a past month shows at the next read, and a caller
    changing what it got changes nothing kept."""
    clock.set(2025, 11, 5)
    any_meter.update_token_usage("memo", "system_deepseek", 1000, 100, request_id="nov")
    clock.set(2025, 12, 5)
    any_meter.update_token_usage("memo", "custom_x", 10, 1, request_id="dec")
    clock.set(2026, 1, 5)
    memo = any_meter.core._history  # noqa: SLF001 - the test looks at what was reused
    first = any_meter.get_token_stats("memo")
    hits = memo.hits
    assert any_meter.get_token_stats("memo") == first and memo.hits == hits + 1
    first["history"]["2025-12"]["custom_x"]["input"] = -1  # the caller's copy
    del first["history"]["2025-11"]
    again = any_meter.get_token_stats("memo")
    assert again["history"]["2025-12"]["custom_x"]["input"] == 10 and "2025-11" in again["history"]
    assert list(again["history"]) == ["2025-12", "2025-11"] and again["models"] == {}

    clock.set(2025, 12, 31, 23, 59)  # a late record (e.g. replayed from a spool) reaches December
    any_meter.update_token_usage("memo", "custom_x", 5, 0, request_id="dec-late")
    clock.set(2026, 1, 5)
    assert any_meter.get_token_stats("memo")["history"]["2025-12"]["custom_x"]["input"] == 15
    any_meter.adjust("memo", "custom_x", adjustment_id="fix", reason="test", input_tokens=-3, month="2025-12")
    assert any_meter.get_token_stats("memo")["history"]["2025-12"]["custom_x"]["input"] == 12
    exact = any_meter.get_token_stats("memo", exact=True)["history"]["2025-11"]["system_deepseek"]["cost"]
    assert isinstance(exact, Decimal)
    assert any_meter.get_token_stats("memo")["history"]["2025-11"]["system_deepseek"]["cost"] == float(exact)
    assert list(any_meter.get_token_stats("memo", months=1)["history"]) == ["2025-12"]


def test_stats_of_an_unknown_user_are_empty(any_meter):
    stats = any_meter.get_token_stats("nobody")
    assert stats["models"] == {} and stats["history"] == {} and stats["monthly_used"] == 0.0


def test_many_records_in_one_round_trip(any_meter):
    records = [
        dict(
            user=f"u{i % 7}",
            model_id="system_deepseek" if i % 2 else "custom_x",
            input_tokens=1000 * i,
            output_tokens=i,
        )
        for i in range(200)
    ]
    results = any_meter.update_token_usage_many(records)
    assert len(results) == 200 and all(not r.duplicate for r in results)
    for user in {r["user"] for r in records}:
        mine = [r for r in records if r["user"] == user]
        stats = any_meter.get_token_stats(user)
        assert stats["models"]["custom_x"]["input_tokens"] == sum(
            r["input_tokens"] for r in mine if r["model_id"] == "custom_x"
        )
        sys_calls = [r for r in mine if r["model_id"] == "system_deepseek"]
        expected_nano = sum(r["input_tokens"] * 1000 + r["output_tokens"] * 2000 for r in sys_calls)
        assert Decimal(str(stats["monthly_used"])) == Decimal(expected_nano) / 10**9


def test_many_with_request_ids_and_a_conflict(any_meter, raw):
    any_meter.update_token_usage("pam", "custom_x", 1, 1, request_id="seen")
    records = [
        dict(user="pam", model_id="custom_x", input_tokens=1, output_tokens=1, request_id="seen"),
        dict(user="pam", model_id="custom_x", input_tokens=2, output_tokens=2, request_id="new"),
        dict(user="quinn", model_id="custom_x", input_tokens=9, output_tokens=9, request_id="seen"),
    ]
    results = any_meter.update_token_usage_many(records)
    assert [r.duplicate for r in results] == [True, False, False]
    with pytest.raises(BatchError) as info:
        any_meter.update_token_usage_many(
            [
                dict(user="pam", model_id="custom_x", input_tokens=5, output_tokens=5, request_id="seen"),
                dict(user="pam", model_id="custom_x", input_tokens=3, output_tokens=3, request_id="third"),
            ]
        )
    assert isinstance(info.value.errors[0], RequestConflict) and list(info.value.errors) == [0]
    assert not info.value.results[1].duplicate
    assert any_meter.get_token_stats("pam")["models"]["custom_x"]["calls"] == 3


@pytest.mark.parametrize(
    "records",
    [
        "nope",
        {"user": "a"},
        [{"user": "a"}],
        [1],
        [dict(user="a", model_id="custom_x", input_tokens=1, output_tokens=1, colour="red")],
        [
            dict(user="a", model_id="custom_x", input_tokens=1, output_tokens=1),
            dict(user="a{", model_id="custom_x", input_tokens=1, output_tokens=1),
        ],
        [dict(user="a", model_id="custom_x", input_tokens=1, output_tokens=1, request_id="x")] * 2,
    ],
)
def test_one_bad_record_in_a_batch_changes_nothing(any_meter, raw, records):
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage_many(records)
    assert snapshot(raw) == {}


def test_empty_batch(any_meter):
    assert any_meter.update_token_usage_many([]) == []


def test_counters_past_2_53_come_back_exact(any_meter, raw):
    big = 2**55 + 1  # 17 digits: past 2^53, still below the overflow guard (1e17)
    raw.hset("quota:{rex}:2026-01", mapping={"system_used_nano": big, "credit_nano": big + 1})
    r = any_meter.update_token_usage("rex", "system_deepseek", 0, 1)
    assert r.monthly_used_nano == big + 2000 and r.monthly_credit_nano == big + 1
    assert any_meter.check_quota_available("rex", "system_deepseek").monthly_used_nano == big + 2000


def test_a_counter_near_the_int64_limit_is_refused_and_changes_nothing(any_meter, raw):
    raw.hset("quota:{sam}:2026-01", mapping={"system_deepseek:input": 10**17})
    before = snapshot(raw)
    with pytest.raises(InvalidInput, match="too large"):
        any_meter.update_token_usage("sam", "system_deepseek", 1, 1)
    assert snapshot(raw) == before


def test_a_record_refused_for_a_counter_too_large_claims_no_request_id(any_meter, raw):
    """The refusal changes nothing, its request id included: sent again once the counter is sane,
    the same record is counted once (not taken for a repeat), and a third time it is a repeat."""
    raw.hset("quota:{sam}:2026-01", mapping={"system_deepseek:input": 10**17})
    with pytest.raises(InvalidInput, match="too large"):
        any_meter.update_token_usage("sam", "system_deepseek", 1, 1, request_id="again")
    with pytest.raises(InvalidInput, match="too large"):  # still refused, not a repeat of a refusal
        any_meter.update_token_usage("sam", "system_deepseek", 1, 1, request_id="again")
    assert raw.exists("quota:{sam}:req:again") == 0
    raw.hset("quota:{sam}:2026-01", "system_deepseek:input", 5)
    first = any_meter.update_token_usage("sam", "system_deepseek", 1, 1, request_id="again")
    repeat = any_meter.update_token_usage("sam", "system_deepseek", 1, 1, request_id="again")
    assert not first.duplicate and repeat.duplicate
    assert raw.hget("quota:{sam}:2026-01", "system_deepseek:input") == b"6"
    assert raw.hget("quota:{sam}:2026-01", "system_deepseek:calls") == b"1"


def test_custom_model_price_from_the_call(any_meter):
    r = any_meter.update_token_usage(
        "tia", "custom_gpt", 1000, 1000, price={"cost_per_1k_input": "0.0175", "cost_per_1k_output": "0.07"}
    )
    assert r.cost == Decimal("0.0875") and r.monthly_used == 0  # counted, never limited


def test_script_cache_flush_is_recovered(any_meter, raw):
    any_meter.update_token_usage("uma", "custom_x", 1, 1)
    raw.script_flush()  # on a cluster, redis-py sends it to every primary
    any_meter.update_token_usage("uma", "custom_x", 1, 1)
    raw.script_flush()
    any_meter.update_token_usage_many(
        [dict(user=f"v{i}", model_id="custom_x", input_tokens=1, output_tokens=1) for i in range(20)]
    )
    raw.script_flush()
    assert any_meter.check_quota_available("uma", "system_deepseek").allowed
    raw.script_flush()
    any_meter.set_monthly_credit("uma", 1)
    raw.script_flush()
    assert any_meter.get_token_stats("uma")["models"]["custom_x"]["calls"] == 2
