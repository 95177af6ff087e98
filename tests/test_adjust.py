"""Corrections (``Meter.adjust``, adjust.lua, ``quota adjust``, ``POST /v1/admin/users/<u>/adjustments``):
signed, audited, idempotent by their own id, never below zero; on fakeredis, a real Redis and a
real cluster; kept by the dump in the SQL archive (schema version 3, migrated from 2)."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from quota import AsyncMeter, InvalidInput, Meter, RequestConflict, UnknownModel
from quota.cli import main
from quota.history import HistoryStore, dump_expired_months
from quota.history.store import SCHEMA_VERSION
from quota_server import create_app

from .api_support import ADMIN, SERVICE, api_settings, bearer, make_meter
from .history_support import SETTINGS, history_url, store  # noqa: F401 - fixtures

SYS, CUS = "system_deepseek", "custom_x"


@pytest.fixture
def world(backend, clock):
    client = backend.sync_client()
    clock.set(2026, 1, 10, 12, 0, 0)
    yield client, Meter(client, clock=clock, settings=SETTINGS)
    client.close()


def hash_of(meter: Meter, user: str, month: str = "2026-01") -> dict[bytes, bytes]:
    return meter.client.hgetall(meter.core.keys.month_key(user, month))


def test_reversing_a_wrong_record_on_a_system_model(world, caplog) -> None:
    _, meter = world
    meter.update_token_usage("ann", SYS, 1000, 2000, request_id="good")
    wrong = meter.update_token_usage("ann", SYS, 5000, 9000, request_id="wrong")
    before = meter.get_token_stats("ann")
    caplog.set_level(logging.INFO, logger="quota.audit")
    fix = meter.adjust(
        "ann",
        SYS,
        adjustment_id="fix-1",
        reason="billed twice by the gateway",
        cost=-wrong.cost,
        input_tokens=-5000,
        output_tokens=-9000,
        calls=-1,
        actor="ops:li",
    )
    assert not fix.duplicate and fix.cost_nano == -wrong.cost_nano and fix.is_system
    stats = meter.get_token_stats("ann")
    model = stats["models"][SYS]
    assert (model["input_tokens"], model["output_tokens"], model["calls"]) == (1000, 2000, 1)
    assert model["adjustments"] == {"count": 1, "cost": -float(wrong.cost)}
    assert fix.monthly_used_nano == wrong.monthly_used_nano - wrong.cost_nano
    assert stats["monthly_used"] < before["monthly_used"]
    [logged] = [r for r in caplog.records if r.name == "quota.audit"]
    assert "fix-1" in logged.getMessage() and "billed twice" in logged.getMessage() and "ops:li" in logged.getMessage()
    [listed] = meter.adjustments("ann")
    assert (listed.adjustment_id, listed.reason, listed.actor, listed.calls) == ("fix-1", fix.reason, "ops:li", -1)
    assert listed.at == "2026-01-10T12:00:00Z" and listed.is_system


def test_the_same_id_counts_once_and_another_content_is_a_conflict(world) -> None:
    _, meter = world
    meter.update_token_usage("bo", CUS, 10, 10)
    first = meter.adjust("bo", CUS, adjustment_id="a1", reason="credit note", cost="0.5", calls=1)
    after_first = hash_of(meter, "bo")
    again = meter.adjust("bo", CUS, adjustment_id="a1", reason="credit note", cost="0.5", calls=1, actor="other")
    assert again.duplicate and again.actor == first.actor and hash_of(meter, "bo") == after_first
    with pytest.raises(RequestConflict):
        meter.adjust("bo", CUS, adjustment_id="a1", reason="credit note", cost="0.6", calls=1)
    assert hash_of(meter, "bo") == after_first
    assert b"system_used_nano" not in after_first  # a custom model's cost never draws on the credit
    assert meter.get_token_stats("bo")["models"][CUS]["adjustments"] == {"count": 1, "cost": 0.5}


def test_a_counter_never_goes_below_zero_and_nothing_changes(world) -> None:
    _, meter = world
    meter.update_token_usage("cy", SYS, 100, 100)
    before = hash_of(meter, "cy")
    for kwargs in ({"calls": -2}, {"input_tokens": -101}, {"cost": "-1000"}, {"output_tokens": -1, "calls": -5}):
        with pytest.raises(InvalidInput, match="below zero"):
            meter.adjust("cy", SYS, adjustment_id="x", reason="too much", **kwargs)
    with pytest.raises(InvalidInput, match="below zero"):  # a month with nothing in it
        meter.adjust("cy", SYS, adjustment_id="x", reason="r", calls=-1, month="2025-12")
    assert hash_of(meter, "cy") == before
    assert meter.adjustments("cy") == [] and meter.adjustments("cy", "2025-12") == []


def test_bad_adjustments_are_refused_before_redis(world) -> None:
    _, meter = world
    bad = [
        ({"reason": "nothing"}, "must change something"),
        ({"reason": "", "calls": 1}, "reason"),
        ({"reason": "two\nlines", "calls": 1}, "reason"),
        ({"reason": "r", "cost": "abc"}, "number"),
        ({"reason": "r", "cost": "0.0000000001"}, "finer"),
        ({"reason": "r", "calls": True}, "calls"),
        ({"reason": "r", "input_tokens": 10**10}, "input_tokens"),
        ({"reason": "r", "calls": 1, "month": "2026-13"}, "month"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InvalidInput, match=message):
            meter.adjust("dee", CUS, adjustment_id="b", **kwargs)
    with pytest.raises(UnknownModel):
        meter.adjust("dee", "system_nope", adjustment_id="b", reason="r", calls=1)
    with pytest.raises(InvalidInput, match="request_id|adjustment"):
        meter.adjust("dee", CUS, adjustment_id="has space", reason="r", calls=1)
    assert hash_of(meter, "dee") == {}


async def test_the_asyncio_meter_adjusts_too(backend, clock) -> None:
    client = backend.async_client()
    meter = AsyncMeter(client, clock=clock, settings=SETTINGS)
    try:
        await meter.update_token_usage("eve", SYS, 10, 10)
        done = await meter.adjust("eve", SYS, adjustment_id="z", reason="test", input_tokens=-10)
        assert not done.duplicate
        stats = await meter.get_token_stats("eve")
        assert stats["models"][SYS]["input_tokens"] == 0
        assert [a.adjustment_id for a in await meter.adjustments("eve")] == ["z"]
    finally:
        await meter.aclose()


def test_the_dump_keeps_adjustments_in_the_archive(world, clock, store) -> None:
    _, meter = world
    clock.set(2025, 12, 5, 0, 0, 0)
    wrong = meter.update_token_usage("fay", SYS, 1000, 1000)
    meter.adjust("fay", SYS, adjustment_id="r1", reason="r", cost=-wrong.cost, calls=-1)
    clock.set(2026, 1, 2, 0, 0, 0)
    assert dump_expired_months(meter, store).archived == 1
    [part] = store.load_months("fay", ["2025-12"])
    model = part.models[SYS]
    assert (model.calls, model.cost_nano, model.adjustments, model.adjusted_cost_nano) == (0, 0, 1, -wrong.cost_nano)
    assert part.system_used_nano == 0


def test_a_version_2_archive_reads_as_no_adjustments_until_the_dump_migrates_it(history_url) -> None:  # noqa: F811
    from quota._stats import ModelUsage, MonthUsage
    from quota.history.store import Snapshot

    first = HistoryStore(history_url)
    usage = MonthUsage("2025-11", system_used_nano=5, models={SYS: ModelUsage(1, 2, 5, 1, 0, adjustments=2)})
    first.write_snapshots([Snapshot("gus", "2025-11", 9, 1, usage)], is_system=lambda m: True)
    with first.engine.begin() as conn:  # back to what version 2 had
        for column in ("adjustments", "adjusted_cost_nano"):
            conn.execute(text(f"ALTER TABLE quota_model_snapshot DROP COLUMN {column}"))
        conn.execute(text("UPDATE quota_schema_version SET version = 2"))
    first.close()
    old = HistoryStore(history_url)
    [part] = old.load_months("gus", ["2025-11"])
    assert part.models[SYS].calls == 1 and part.models[SYS].adjustments == 0
    assert old.ensure_schema() == SCHEMA_VERSION
    old.write_snapshots([Snapshot("gus", "2025-11", 9, 2, usage)], is_system=lambda m: True)
    [part] = old.load_months("gus", ["2025-11"])
    assert part.models[SYS].adjustments == 2
    old.close()


def test_quota_adjust_on_the_command_line(redis_server, monkeypatch) -> None:
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    meter = Meter.from_url(redis_server.url)
    wrong = meter.update_token_usage("hal", SYS, 1000, 2000)
    runner = CliRunner()
    args = ["adjust", "hal", SYS, "--id", "fix-42", "--reason", "billed twice"]
    negate = ["--cost", f"-{wrong.cost}", "--input", "-1000", "--output", "-2000", "--calls", "-1"]
    result = runner.invoke(main, args + negate)
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["cost_nano"] == str(-wrong.cost_nano) and made["actor"].startswith("cli:")
    assert "made" in result.stderr
    result = runner.invoke(main, args + negate)
    assert result.exit_code == 0 and json.loads(result.stdout)["duplicate"] is True
    result = runner.invoke(main, args + ["--calls", "-1"])  # the same id, another adjustment
    assert result.exit_code == 1 and "already used" in result.output
    result = runner.invoke(main, ["adjust", "hal", SYS, "--id", "f2", "--reason", "r", "--calls", "-1"])
    assert result.exit_code == 1 and "below zero" in result.output
    result = runner.invoke(main, ["adjust", "hal", SYS, "--calls", "-1"])
    assert result.exit_code == 2 and "--id and --reason" in result.output
    result = runner.invoke(main, ["adjust", "hal", "-", "--list"])
    assert result.exit_code == 0 and [a["adjustment_id"] for a in json.loads(result.stdout)] == ["fix-42"]
    assert meter.get_token_stats("hal")["monthly_used"] == 0
    meter.close()


def test_the_admin_endpoint(redis_server, clock) -> None:
    redis_server.client().flushall()
    clock.set(2026, 1, 10, 12, 0, 0)
    meter = make_meter(redis_server.url, clock, api_settings())
    client = create_app(api_settings(), meter=meter).test_client()
    wrong = meter.update_token_usage("ivy", SYS, 1000, 2000)
    path = "/v1/admin/users/ivy/adjustments"
    body = {"model_id": SYS, "adjustment_id": "fix-1", "reason": "test", "cost": f"-{wrong.cost}", "calls": -1}
    made = client.post(path, json=body | {"actor": "li"}, headers=bearer(ADMIN))
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["actor"] == "api:admin:li" and made.get_json()["monthly_used"] == 0
    assert client.post(path, json=body, headers=bearer(ADMIN)).status_code == 200
    conflict = client.post(path, json=body | {"reason": "other"}, headers=bearer(ADMIN))
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "request_conflict"
    below = client.post(path, json=body | {"adjustment_id": "fix-2"}, headers=bearer(ADMIN))
    assert below.status_code == 400 and "below zero" in below.get_json()["error"]["message"]
    for bad in ({"model_id": SYS}, body | {"extra": 1}, body | {"cost": True}, body | {"actor": 3}):
        response = client.post(path, json=bad, headers=bearer(ADMIN))
        assert response.status_code == 400 and response.is_json
    assert client.post(path, json=body, headers=bearer(SERVICE)).status_code == 403
    assert client.get(path, headers=bearer(SERVICE)).status_code == 403
    listed = client.get(path + "?month=2026-01", headers=bearer(ADMIN)).get_json()
    assert [a["adjustment_id"] for a in listed["adjustments"]] == ["fix-1"]
    assert client.get(path + "?month=2026-1", headers=bearer(ADMIN)).status_code == 400
    meter.close()
