"""Issue 15: an optional ``purpose`` per record, counted per model and purpose in the user-month hash.

Runs on both clients and every backend (``any_meter``/``any_turn``: sync and async x fakeredis,
Redis, the cluster) unless it only checks a pure part.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from quota import InvalidInput, RequestConflict
from quota._keys import MAX_PURPOSES, MODEL_RE, PURPOSE_OTHER, validate_purpose
from quota._spool import MemorySpool, Spool, SpoolEntry
from quota.testing import free_ports

SYS = "system_deepseek"
MONTH_KEY = "quota:{{{user}}}:2026-01"


def test_counts_per_purpose_in_stats_and_in_the_hash(any_meter, raw, clock):
    any_meter.update_token_usage("ann", SYS, 1000, 500, purpose="chat")
    any_meter.update_token_usage("ann", SYS, 1000, 500, purpose="chat")
    r = any_meter.update_token_usage("ann", SYS, 2000, 0, purpose="tool")
    any_meter.update_token_usage("ann", SYS, 10, 10)  # no purpose: in the model's totals only
    assert r.purpose == "tool" and r.as_dict()["purpose"] == "tool"
    model = any_meter.get_token_stats("ann")["models"][SYS]
    assert model["calls"] == 4
    assert set(model["purposes"]) == {"chat", "tool"}
    assert model["purposes"]["chat"]["calls"] == 2 and model["purposes"]["tool"]["calls"] == 1
    cost = any_meter.get_model_cost_config(SYS)
    assert isinstance(model["purposes"]["chat"]["cost"], float)
    exact = any_meter.get_token_stats("ann", exact=True)["models"][SYS]["purposes"]
    assert exact["chat"]["cost"] == 2 * (
        Decimal(str(cost["cost_per_1k_input"])) + Decimal(str(cost["cost_per_1k_output"])) / 2
    )
    month = any_meter.core.current_month()
    fields = raw.hgetall(f"quota:{{ann}}:{month}")
    assert fields[f"{SYS}:n@chat".encode()] == b"2" and fields[f"{SYS}:purposes".encode()] == b"2"
    assert int(fields[f"{SYS}:c@tool".encode()]) == r.cost_nano


def test_a_model_without_purposes_has_an_empty_map(any_meter):
    any_meter.update_token_usage("bea", SYS, 1, 1)
    assert any_meter.get_token_stats("bea")["models"][SYS]["purposes"] == {}


def test_the_ninth_distinct_purpose_is_counted_as_other(any_meter, raw):
    names = [f"p{i}" for i in range(MAX_PURPOSES)]
    for name in names:
        assert any_meter.update_token_usage("cy", SYS, 1, 1, purpose=name).purpose == name
    assert any_meter.update_token_usage("cy", SYS, 1, 1, purpose="ninth").purpose == PURPOSE_OTHER
    assert any_meter.update_token_usage("cy", SYS, 1, 1, purpose="tenth").purpose == PURPOSE_OTHER
    assert any_meter.update_token_usage("cy", SYS, 1, 1, purpose="p3").purpose == "p3"  # known: still its own
    assert any_meter.update_token_usage("cy", SYS, 1, 1, purpose="other").purpose == "other"
    # another model has its own bound
    assert any_meter.update_token_usage("cy", "custom_x", 1, 1, purpose="ninth").purpose == "ninth"
    purposes = any_meter.get_token_stats("cy")["models"][SYS]["purposes"]
    assert set(purposes) == {*names, "other"}
    assert purposes["other"]["calls"] == 3 and purposes["p3"]["calls"] == 2
    month = any_meter.core.current_month()
    assert raw.hget(f"quota:{{cy}}:{month}", f"{SYS}:purposes") == str(MAX_PURPOSES).encode()


def test_a_request_id_repeated_with_another_purpose_is_a_conflict(any_meter):
    first = any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r1", purpose="chat")
    again = any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r1", purpose="chat")
    assert not first.duplicate and again.duplicate and again.purpose == "chat"
    with pytest.raises(RequestConflict):
        any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r1", purpose="tool")
    with pytest.raises(RequestConflict):
        any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r1")  # none vs chat
    any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r2")
    assert any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r2").duplicate  # no purpose: as before
    with pytest.raises(RequestConflict):
        any_meter.update_token_usage("dee", SYS, 100, 100, request_id="r2", purpose="chat")
    assert any_meter.get_token_stats("dee")["models"][SYS]["calls"] == 2


@pytest.mark.parametrize("bad", ["", "Chat", "a" * 11, "a b", "a:b", "a@b", "ü", 7, b"chat"])
def test_invalid_purposes_are_refused_before_any_write(any_meter, raw, bad):
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage("eve", SYS, 1, 1, purpose=bad)
    with pytest.raises(InvalidInput):
        any_meter.update_token_usage_many(
            [{"user": "eve", "model_id": SYS, "input_tokens": 1, "output_tokens": 1, "purpose": bad}]
        )
    with any_meter.turn("eve", "custom_x") as turn, pytest.raises(InvalidInput):
        turn.record(input_tokens=1, output_tokens=1, purpose=bad)
    with any_meter.turn("eve", "custom_x") as turn, pytest.raises(InvalidInput):
        turn.stream(iter([]), purpose=bad)
    assert not [k for k in raw.keys("quota:{eve}:2*")]


def test_the_script_itself_refuses_a_bad_purpose(any_meter, raw):
    """A caller that skips the client's validation still cannot write a field over 64 bytes."""
    call = any_meter.core.record("fay", SYS, 1, 1, purpose="chat")
    bad = call._replace(args=call.args[:9] + ("x" * 11,))
    with pytest.raises(InvalidInput):
        any_meter.run(bad)
    assert not raw.keys("quota:{fay}:2*")


def test_many_and_turns_carry_purposes(any_turn):
    any_turn.update_token_usage_many(
        [
            {"user": "gil", "model_id": SYS, "input_tokens": 1, "output_tokens": 1, "purpose": "summary"},
            {"user": "gil", "model_id": SYS, "input_tokens": 1, "output_tokens": 1},
        ]
    )
    with any_turn.turn("gil", SYS) as turn:
        rec = turn.record(input_tokens=10, output_tokens=10, purpose="naming")
        chunks = [{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}]
        list(turn.stream(chunks, purpose="chat"))
    assert rec.result is not None and rec.result.purpose == "naming"
    purposes = any_turn.get_token_stats("gil")["models"][SYS]["purposes"]
    assert {p: u["calls"] for p, u in purposes.items()} == {"summary": 1, "naming": 1, "chat": 1}


def test_field_names_stay_within_the_listpack_limit():
    longest_model = "m" * 48
    assert MODEL_RE.fullmatch(longest_model)
    assert validate_purpose("p" * 10) and validate_purpose(None) is None
    for field in (f"{longest_model}:n@{'p' * 10}", f"{longest_model}:c@{'p' * 10}", f"{longest_model}:purposes"):
        assert len(field.encode()) <= 64


AT = datetime(2026, 1, 20, 8, 30, tzinfo=UTC)


def test_spool_lines_keep_the_purpose_and_old_lines_still_read():
    e = SpoolEntry("u1", SYS, 1, 2, "r-1", False, AT, 5000, None, "tool")
    assert SpoolEntry.from_line(e.to_line()) == e
    plain = SpoolEntry("u1", SYS, 1, 2, "r-1", False, AT, 5000)
    assert b"purpose" not in plain.to_line()  # what older versions wrote, and read
    assert SpoolEntry.from_line(plain.to_line()).purpose is None


def test_a_spooled_record_keeps_its_purpose_on_replay(backend, make_meter, tmp_path):
    spool = Spool(tmp_path / "p.spool")
    away = make_meter(url=f"redis://127.0.0.1:{free_ports(1, start=26600)[0]}/0", spool=spool)
    with away.turn("hal", SYS) as turn:
        assert turn.record(input_tokens=100, output_tokens=100, request_id="x1", purpose="tool").spooled
    back = make_meter(backend, spool=spool)
    assert back.replay_spool().sent == 1
    assert back.get_token_stats("hal")["models"][SYS]["purposes"]["tool"]["calls"] == 1


def test_memory_spool_replay_keeps_the_purpose(backend, make_meter):
    spool = MemorySpool()
    away = make_meter(url=f"redis://127.0.0.1:{free_ports(1, start=26650)[0]}/0", spool=spool)
    with away.turn("ian", SYS) as turn:
        turn.record(input_tokens=1, output_tokens=1, purpose="summary")
    back = make_meter(backend, spool=spool)
    back.replay_spool()
    assert set(back.get_token_stats("ian")["models"][SYS]["purposes"]) == {"summary"}
