"""The sans-I/O core on its own: what it sends and how it reads replies, with no Redis at all."""

from datetime import UTC, datetime

import pytest

from quota import InvalidInput, RequestConflict, Settings
from quota._core import MeterCore, translate_script_error
from quota._scripts import CHECK, RECORD

FIXED = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)


def core(**kw):
    return MeterCore(Settings(**kw), clock=lambda: FIXED)


def test_record_call_carries_every_key_and_time_in_its_arguments():
    call = core(prefix="p", dedupe_ttl_s=60).record("alice", "system_deepseek", 12000, 8000, request_id="r1")
    assert call.script is RECORD
    index = call.keys[3]  # the outbox index of alice's hash slot (quota._keys.slot_tag)
    assert call.keys == (
        "p:{alice}:2026-03",
        "p:{alice}:req:r1",
        "p:{alice}:outbox",
        index,
        "p:{alice}:plan",  # the credit when the month has none (issue 12)
        "p:{alice}:grants",  # read only past the credit
        "p:{alice}:has_grants",  # and only with this marker (lua/lib/grants.lua)
    )
    assert index.startswith("p:{~") and index.endswith("}:outbox_index")
    now_ms = str(int(FIXED.timestamp() * 1000))  # the meter's clock: which grants are live
    assert call.args == (
        "system_deepseek", "12000", "8000", "28000000", "1", "5000000000", "60", "0", "80,100", "", now_ms
    )  # fmt: skip
    result = call.parse([1, b"28000000", b"5000000000", b"", b""])
    assert result.month == "2026-03" and result.cost_nano == 28_000_000 and not result.duplicate
    assert result.alerts == () and result.warning is None
    assert call.parse([0, b"28000000", b"5000000000", b"", b""]).duplicate  # a caller's id seen before
    crossed = call.parse([1, b"3972000000", b"5000000000", b"", b"80"])  # 4 of 5 CNY after this call
    assert crossed.alerts == (80,) and crossed.warning["threshold"] == 80
    assert crossed.warning["resets_at"] == "2026-04-01T00:00:00Z" and "80%" in crossed.warning["message"]


def test_auto_ids_are_unique_and_their_retry_is_not_a_duplicate():
    c = core()
    calls = [c.record("alice", "custom_x", 1, 1) for _ in range(1000)]
    assert len({call.keys[1] for call in calls}) == 1000
    assert not calls[0].parse([0, "0", "5000000000", "", ""]).duplicate


def test_check_decision_is_made_from_the_reply():
    c = core()
    call = c.check("alice", "system_deepseek")
    assert call.script is CHECK and call.args == ("5000000000", str(int(FIXED.timestamp() * 1000)))
    assert call.parse([b"4999999999", b"5000000000", b"0", b"0", b"0"]).allowed
    denied = call.parse([b"5000000000", b"5000000000", b"0", b"0", b"0"])
    assert not denied.allowed and denied.event["resets_at"] == "2026-04-01T00:00:00Z"
    assert "grants" not in denied.event  # only for a user with grants
    assert c.check("alice", "custom_x").parse([b"9" * 17, b"0", b"0", b"0", b"0"]).allowed
    # live grants are credit too; what grants paid this month is not the month's credit's spend
    granted = call.parse([b"6000000000", b"5000000000", b"0", b"1", b"1000000000"])
    assert granted.allowed and granted.available_nano == 1 and granted.as_dict()["grants"] == 1e-9
    spent = call.parse([b"6000000000", b"5000000000", b"0", b"0", b"1000000000"])
    assert not spent.allowed and spent.event["code"] == "quota_exceeded" and spent.event["grants"] == 0.0


def test_script_errors_map_to_the_hierarchy():
    assert isinstance(translate_script_error("QUOTA_CONFLICT request_id was already used"), RequestConflict)
    assert isinstance(translate_script_error("ERR Error running script: QUOTA_INVALID x"), InvalidInput)
    assert translate_script_error("OOM command not allowed") is None


def test_validation_happens_before_anything_is_built():
    c = core()
    with pytest.raises(InvalidInput):
        c.record("alice", "custom_x", -1, 0)
    with pytest.raises(InvalidInput):
        c.set_credit("alice", "1.0000000001")


def drive(plan, outcomes):
    """Run a batch plan with scripted outcomes; returns (steps seen, result)."""
    steps = []
    try:
        step = next(plan)
        while True:
            steps.append(step)
            step = plan.send(outcomes(step))
    except StopIteration as done:
        return steps, done.value


def test_batch_plan_resends_only_missing_scripts_with_their_source():
    from redis.exceptions import NoScriptError

    from quota._batch import SendPipeline, plan_batch

    calls = [core().record("alice", "custom_x", i, 0) for i in range(4)]
    sent = []

    def outcomes(step):
        if isinstance(step, SendPipeline):
            sent.append(len(step.calls))
            if len(sent) == 1:
                return ["ok0", NoScriptError("NOSCRIPT"), "ok2", NoScriptError("NOSCRIPT")]
            return ["ok1", "ok3"]
        return None

    steps, replies = drive(plan_batch(calls), outcomes)
    assert replies == ["ok0", "ok1", "ok2", "ok3"] and sent == [4, 2]
    assert [s.with_source for s in steps] == [False, True]  # EVAL: no flush can come between load and run
    assert steps[1].calls == [calls[1], calls[3]]


def test_batch_plan_reroutes_redirected_calls_on_a_cluster_only():
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MovedError

    from quota._batch import SendOne, SendPipeline, plan_batch

    calls = [core().record(f"u{i}", "custom_x", 1, 0) for i in range(6)]
    node_of = lambda key: int(key.split("{u")[1][0]) % 2  # noqa: E731

    def outcomes(step):
        if isinstance(step, SendPipeline):
            if step.node == 0:
                return [MovedError("1 127.0.0.1:1")] + ["ok"] * (len(step.calls) - 1)
            return RedisConnectionError("node away")  # the whole pipeline failed
        assert isinstance(step, SendOne)
        return "rerouted"

    steps, replies = drive(plan_batch(calls, node_of), outcomes)
    assert replies == ["rerouted", "rerouted", "ok", "rerouted", "ok", "rerouted"]
    with_standalone = plan_batch(calls)
    next(with_standalone)
    with pytest.raises(RedisConnectionError):
        with_standalone.send(RedisConnectionError("down"))


def test_auto_request_ids_differ_across_a_fork():
    import os

    from quota._core import auto_request_id

    parent = {auto_request_id() for _ in range(3)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave without running pytest's teardown
        os.write(write, " ".join(auto_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = set(os.read(read, 4096).decode().split())
    assert len(child) == 3 and not child & parent
    assert {i.rsplit(".", 1)[0] for i in child} != {i.rsplit(".", 1)[0] for i in parent}


def test_check_counts_live_holds():
    """A system model is denied when spend plus the live turn holds reach the credit (issue 9)."""
    c = core()
    call = c.check("alice", "system_deepseek")
    assert call.keys == ("quota:{alice}:2026-03", "quota:{alice}:holds", "quota:{alice}:plan", "quota:{alice}:grants")
    free = call.parse([b"4000000000", b"5000000000", b"999999999", b"0", b"0"])
    assert free.allowed and free.available_nano == 1 and free.held_nano == 999_999_999
    held = call.parse([b"4000000000", b"5000000000", b"1000000000", b"0", b"0"])
    assert not held.allowed and held.event["held"] == 1.0 and held.event["code"] == "credit_held"
    assert "reserved by replies in progress" in held.event["message"]
    used_up = call.parse([b"5000000000", b"5000000000", b"0", b"0", b"0"])
    assert not used_up.allowed and used_up.event["code"] == "quota_exceeded"
    assert c.check("alice", "custom_x").parse([b"5000000000", b"5000000000", b"9", b"0", b"0"]).allowed


def test_turn_calls_carry_the_hold_and_its_settings():
    c = core(hold_ttl_s=30, turn_hold_default_nano=7, turn_hold_floor_nano=2, turn_hold_cap_nano=9)
    model = c.prices.lookup("system_deepseek")
    begin = c.turn_begin("alice", model, "turn-1", c.hold_arg(None))
    assert begin.keys == ("quota:{alice}:2026-03", "quota:{alice}:holds", "quota:{alice}:plan", "quota:{alice}:grants")
    now_ms = str(int(FIXED.timestamp() * 1000))
    assert begin.args == (
        "turn-1", "auto", "system_deepseek:hold_est_nano", "5000000000", "30000", "7", "2", "9", now_ms
    )  # fmt: skip
    check, hold = begin.parse([b"1", b"0", b"5000000000", b"0", b"7", b"0", b"0"])
    assert check.allowed and hold == 7
    check, hold = begin.parse([b"0", b"4999999999", b"5000000000", b"1", b"0", b"0", b"0"])
    assert not check.allowed and check.event["type"] == "quota_exceeded"
    assert c.hold_arg("0.5") == "500000000" and c.hold_arg("auto") == "auto"
    record = c.record("alice", "system_deepseek", 1, 1, request_id="r", turn_id="turn-1")
    assert record.keys[7] == "quota:{alice}:holds" and record.args[9:] == ("", now_ms, "turn-1", "30000")
    assert record.parse([1, b"0", b"5000000000", b"4", b""]).hold_remaining_nano == 4
    end = c.turn_end("alice", model, "turn-1", 123)
    assert end.keys == ("quota:{alice}:holds", "quota:{alice}:2026-03")
    assert end.args == ("turn-1", "system_deepseek:hold_est_nano", "123", "7", "1")
    assert end.parse(1) is True and end.parse(0) is False


@pytest.mark.parametrize("hold", ["-1", "abc", "1e-10", True, "20000000"])
def test_bad_holds_are_refused_before_any_io(hold):
    with pytest.raises(InvalidInput):
        core().hold_arg(hold)


def test_record_lua_one_string_reply_parses_as_its_fields():
    """record.lua answers one string, fields split on single spaces (a table reply costs Redis more);
    empty fields stay in place, and bytes and str read the same."""
    call = core().record("alice", "system_deepseek", 12_000, 8_000, request_id="r1", purpose="chat")
    counted = call.parse(b"1 3972000000 5000000000 250 80 chat 7")
    assert (counted.monthly_used_nano, counted.monthly_credit_nano) == (4_000_000_000, 5_000_000_000)
    assert (counted.hold_remaining_nano, counted.alerts, counted.purpose, counted.grants_drawn_nano) == (
        250,
        (80,),
        "chat",
        7,
    )
    assert not counted.duplicate
    plain = call.parse(b"1 0 5000000000    0")  # no hold, nothing crossed, no purpose, no draw
    assert (plain.hold_remaining_nano, plain.alerts, plain.purpose, plain.grants_drawn_nano) == (None, (), None, 0)
    assert plain.monthly_used_nano == 28_000_000
    repeated = call.parse("0 28000000 5000000000   chat 0")  # decode_responses=True gives str
    assert repeated.duplicate and repeated.monthly_used_nano == 28_000_000 and repeated.purpose == "chat"
    assert call.parse([1, b"3972000000", b"5000000000", b"250", b"80", b"chat", 7]) == counted
