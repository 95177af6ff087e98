"""The audit trail of credit changes (issue 12, part 5): every monthly credit, plan, grant and revoke
is written to the history store (SQLite and PostgreSQL) before it is made, from the library, the
CLI and the API; a change whose audit row cannot be written is not made."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from quota import AuditUnavailable, Meter
from quota.cli import main
from quota.history import HistoryStore
from quota_server import create_app

from .api_support import ADMIN, SERVICE, api_settings, bearer, user_token
from .history_support import history_url, store  # noqa: F401 - fixtures

NANO = 10**9


def rows(store, user):
    """(actor, action, month or grant, before, after, status, reason), oldest first."""
    return [
        (
            e["actor"],
            e["action"],
            e["month"] or e["grant_id"],
            e["before_nano"],
            e["after_nano"],
            e["status"],
            e["reason"],
        )
        for e in reversed(store.read_audit(user))
    ]


@pytest.fixture
def audited(redis_server, clock, store):  # noqa: F811 - the fixture
    redis_server.client().flushall()
    meter = Meter(redis_server.client(), clock=clock, history=store, prefix="quota", monthly_credit=5)
    yield meter
    meter.close()


def test_every_change_from_the_library_is_audited(audited, store, clock):  # noqa: F811
    m = audited
    m.set_monthly_credit("ann", "8")
    m.set_monthly_credit("ann", "2", add=True)
    m.set_plan_credit("ann", "20")
    m.set_plan_credit("ann", None)
    m.grant_credit("ann", "3", grant_id="g1", reason="order 1", expires_at=clock.now + timedelta(days=9))
    m.grant_credit("ann", "3", grant_id="g1", reason="order 1", expires_at=clock.now + timedelta(days=9))
    m.update_token_usage("ann", "system_deepseek", 11_000_000, 0)  # 11 CNY: 10 from the credit, 1 from g1
    m.revoke_grant("ann", "g1", reason="refund")
    m.revoke_grant("ann", "g1")
    assert rows(store, "ann") == [
        ("library", "set_monthly_credit", "2026-01", None, 8 * NANO, "done", None),
        ("library", "set_monthly_credit", "2026-01", 8 * NANO, 10 * NANO, "done", "add"),
        ("library", "set_plan_credit", None, None, 20 * NANO, "done", None),
        ("library", "set_plan_credit", None, 20 * NANO, None, "done", None),
        ("library", "grant", "g1", None, 3 * NANO, "done", "order 1"),
        ("library", "grant", "g1", 3 * NANO, 3 * NANO, "unchanged", "order 1"),
        ("library", "revoke_grant", "g1", 2 * NANO, 0, "done", "refund"),
        ("library", "revoke_grant", "g1", 0, 0, "unchanged", None),
    ]
    [latest] = store.read_audit("ann", limit=1)
    assert latest["at"] == "2026-01-15T12:00:00.000Z" and latest["finished_at"].endswith("Z")
    assert latest["requested"] is None and m.get_audit("ann", limit=2)[1]["before"] == 2.0
    assert store.read_audit("nobody") == []


def test_a_refused_change_is_audited_as_failed(audited, store):  # noqa: F811
    with pytest.raises(Exception, match="no grant"):
        audited.revoke_grant("bo", "missing")
    assert rows(store, "bo") == [("library", "revoke_grant", "missing", None, None, "failed", None)]


def test_no_change_without_its_audit_row(redis_server, clock, tmp_path):
    """The history store cannot be written (its directory does not exist): nothing changes in Redis."""
    redis_server.client().flushall()
    broken = HistoryStore(f"sqlite:///{tmp_path}/missing/dir/h.db")
    m = Meter(redis_server.client(), clock=clock, history=broken, prefix="quota", monthly_credit=5)
    m.grant_credit  # noqa: B018 - exists
    for change in (
        lambda: m.set_monthly_credit("cy", "9"),
        lambda: m.set_plan_credit("cy", "9"),
        lambda: m.grant_credit("cy", "9", grant_id="g"),
        lambda: m.revoke_grant("cy", "g"),
    ):
        with pytest.raises(AuditUnavailable, match="was not made: its audit row could not be written"):
            change()
    assert redis_server.client().keys("quota:{cy}:*") == []
    assert m.get_token_stats("cy")["monthly_credit"] == 5.0


def test_a_meter_without_history_changes_credit_unaudited(redis_server, clock):
    redis_server.client().flushall()
    m = Meter(redis_server.client(), clock=clock, prefix="quota", monthly_credit=5)
    assert m.grant_credit("dee", "1", grant_id="x").created
    with pytest.raises(Exception, match="no history store"):
        m.get_audit("dee")


def test_cli_changes_are_audited(redis_server, monkeypatch, tmp_path):
    redis_server.client().flushall()
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("QUOTA_HISTORY_URL", url)
    runner = CliRunner()
    for args in (
        ["credit", "eve", "7"],
        ["plan", "eve", "12"],
        ["grant", "eve", "2.5", "--id", "promo", "--reason", "welcome", "--expires-at", "2099-01-01T00:00:00Z"],
        ["revoke-grant", "eve", "promo"],
        ["plan", "eve", "--clear"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert json.loads(runner.invoke(main, ["audit", "eve", "--json"]).stdout)[0]["action"] == "set_plan_credit"
    assert [(a, act, b, after, st) for a, act, _, b, after, st, _ in rows(HistoryStore(url), "eve")] == [
        ("cli", "set_monthly_credit", None, 7 * NANO, "done"),
        ("cli", "set_plan_credit", None, 12 * NANO, "done"),
        ("cli", "grant", None, 2_500_000_000, "done"),
        ("cli", "revoke_grant", 2_500_000_000, 0, "done"),
        ("cli", "set_plan_credit", 12 * NANO, None, "done"),
    ]
    table = runner.invoke(main, ["audit", "eve"])
    assert table.exit_code == 0 and "revoke_grant" in table.output and "welcome" in table.output
    for bad in (["plan", "eve"], ["plan", "eve", "3", "--clear"], ["grant", "eve", "1", "--expires-at", "soon"]):
        assert runner.invoke(main, bad).exit_code == 2
    assert runner.invoke(main, ["revoke-grant", "eve", "nope"]).exit_code == 1


@pytest.fixture
def api(redis_server, clock, store):  # noqa: F811
    redis_server.client().flushall()
    settings = api_settings()
    meter = Meter.from_url(redis_server.url, settings=settings.quota, clock=clock, prefix="apitest", history=store)
    yield create_app(settings, meter=meter).test_client()
    meter.close()


def test_api_grants_plans_and_audit(api, store):  # noqa: F811
    admin = bearer(ADMIN)
    made = api.post("/v1/users/fay/grants", json={"amount": 2, "grant_id": "p1", "reason": "promo"}, headers=admin)
    assert made.status_code == 201, made.get_json()
    assert made.get_json() | {"created_at": None} == {
        "user": "fay",
        "created": True,
        "grant_id": "p1",
        "amount": 2.0,
        "remaining": 2.0,
        "expires_at": None,
        "reason": "promo",
        "created_at": None,
        "revoked_at": None,
        "live": True,
    }
    again = api.post("/v1/users/fay/grants", json={"amount": "2", "grant_id": "p1", "reason": "promo"}, headers=admin)
    assert again.status_code == 200 and again.get_json()["created"] is False
    conflict = api.post("/v1/users/fay/grants", json={"amount": 3, "grant_id": "p1"}, headers=admin)
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "request_conflict"
    later = api.post(
        "/v1/users/fay/grants",
        json={"amount": 1, "grant_id": "p2", "expires_at": "2026-02-01T00:00:00+08:00"},
        headers=admin,
    )
    assert later.status_code == 201 and later.get_json()["expires_at"] == "2026-01-31T16:00:00.000Z"
    listed = api.get("/v1/users/fay/grants", headers=bearer(user_token("fay")))
    assert [g["grant_id"] for g in listed.get_json()["grants"]] == ["p2", "p1"]
    assert api.get("/v1/users/fay/grants", headers=bearer(user_token("gil"))).status_code == 403
    assert api.get("/v1/users/fay/grants", headers=bearer(SERVICE)).status_code == 200
    assert api.post("/v1/users/fay/grants", json={"amount": 1}, headers=bearer(SERVICE)).status_code == 403
    stats = api.get("/v1/users/fay/token-stats", headers=admin).get_json()
    assert stats["grants_remaining"] == 3.0 and stats["available"] == 8.0 and stats["plan_credit"] is None
    plan = api.put("/v1/users/fay/plan", json={"credit": "20"}, headers=admin)
    assert plan.get_json() == {"user": "fay", "plan_credit": 20.0, "plan_credit_before": None, "cleared_alerts": []}
    assert api.get("/v1/users/fay/token-stats", headers=admin).get_json()["monthly_credit"] == 20.0
    revoked = api.delete("/v1/users/fay/grants/p1", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked"] is True
    assert revoked.get_json()["remaining"] == 0.0
    missing = api.delete("/v1/users/fay/grants/nope", headers=admin)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert api.put("/v1/users/fay/credit", json={"credit": 6}, headers=admin).status_code == 200
    audit = api.get("/v1/users/fay/audit", headers=admin)
    assert audit.status_code == 200
    assert [(e["actor"], e["action"], e["status"]) for e in reversed(audit.get_json()["entries"])] == [
        ("api:admin", "grant", "done"),
        ("api:admin", "grant", "unchanged"),
        ("api:admin", "grant", "failed"),
        ("api:admin", "grant", "done"),
        ("api:admin", "set_plan_credit", "done"),
        ("api:admin", "revoke_grant", "done"),
        ("api:admin", "revoke_grant", "failed"),
        ("api:admin", "set_monthly_credit", "done"),
    ]
    assert api.get("/v1/users/fay/audit", headers=bearer(user_token("fay"))).status_code == 403
    assert api.get("/v1/users/fay/audit?limit=0", headers=admin).status_code == 400


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("post", "/v1/users/hu/grants", {"amount": 0}),
        ("post", "/v1/users/hu/grants", {"amount": None}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "expires_at": "tomorrow"}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "expires_at": "2030-01-01T00:00:00"}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "expires_at": 5}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "grant_id": "a:b"}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "reason": 7}),
        ("post", "/v1/users/hu/grants", {"amount": 1, "extra": 1}),
        ("post", "/v1/users/hu/grants", []),
        ("post", "/v1/users/h{u}/grants", {"amount": 1}),
        ("put", "/v1/users/hu/plan", {}),
        ("put", "/v1/users/hu/plan", {"credit": -1}),
        ("put", "/v1/users/hu/plan", {"credit": [1]}),
        ("delete", "/v1/users/hu/grants/a:b", None),
    ],
)
def test_api_bad_input_is_a_json_400(api, method, path, body):
    kwargs = {} if body is None else {"json": body}
    response = getattr(api, method)(path, headers=bearer(ADMIN), **kwargs)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json" and response.get_json()["error"]["code"] in (
        "invalid_input",
        "invalid_body",
    )


def test_a_version_4_archive_reads_until_the_first_audited_change_migrates_it(tmp_path, redis_server, clock):
    """Schema 5 (issue 12) adds grants_drawn_nano and the audit table; a version-4 database stays readable."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/v4.db"
    old = HistoryStore(url)
    old.ensure_schema()
    with old.engine.begin() as conn:
        conn.execute(text("DROP TABLE quota_credit_audit"))
        conn.execute(text("ALTER TABLE quota_month_snapshot DROP COLUMN grants_drawn_nano"))
        conn.execute(text("UPDATE quota_schema_version SET version = 4"))
        conn.execute(
            text(
                "INSERT INTO quota_month_snapshot VALUES "
                "('quota', 'ann', '2025-12', 1, 1, NULL, 7, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    old.close()
    store = HistoryStore(url)
    [month] = store.load_months("ann", ["2025-12"])
    assert (month.system_used_nano, month.grants_drawn_nano) == (7, 0)
    assert store.read_audit("ann") == []
    redis_server.client().flushall()
    Meter(redis_server.client(), clock=clock, history=store, prefix="quota").set_plan_credit("ann", "9")
    assert [e["action"] for e in store.read_audit("ann")] == ["set_plan_credit"]
    [month] = store.load_months("ann", ["2025-12"])
    assert (month.system_used_nano, month.grants_drawn_nano) == (7, 0)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == 6


# --- corrections (quota adjust) in the same trail (schema 6) ----------------------------------------

SYS = "system_deepseek"


def test_adjustments_are_audited_with_the_models_cost_before_and_after(audited, store):  # noqa: F811
    m = audited
    wrong = m.update_token_usage("ann", SYS, 1000, 2000)
    m.adjust("ann", SYS, adjustment_id="fix-1", reason="billed twice", cost=f"-{wrong.cost}", calls=-1, actor="li")
    m.adjust("ann", SYS, adjustment_id="fix-1", reason="billed twice", cost=f"-{wrong.cost}", calls=-1, actor="li")
    with pytest.raises(Exception, match="below zero"):
        m.adjust("ann", SYS, adjustment_id="fix-2", reason="again", cost="-0.5")
    assert rows(store, "ann") == [
        ("li", "adjust", "2026-01", wrong.cost_nano, 0, "done", "billed twice"),
        ("li", "adjust", "2026-01", 0, 0, "unchanged", "billed twice"),
        ("library", "adjust", "2026-01", None, None, "failed", "again"),
    ]
    [failed, _, done] = m.get_audit("ann")
    assert done["requested_nano"] == -wrong.cost_nano and failed["requested_nano"] == -500_000_000
    assert (done["model_id"], done["adjustment_id"], failed["adjustment_id"]) == (SYS, "fix-1", "fix-2")
    assert done["details"] == {"input_tokens": 0, "output_tokens": 0, "calls": -1}
    assert m.get_token_stats("ann")["monthly_used"] == 0


def test_no_adjustment_without_its_audit_row(redis_server, clock, tmp_path):
    redis_server.client().flushall()
    broken = HistoryStore(f"sqlite:///{tmp_path}/missing/dir/h.db")
    m = Meter(redis_server.client(), clock=clock, history=broken, prefix="quota", monthly_credit=5)
    m.update_token_usage("cy", SYS, 1000, 0)
    before = redis_server.client().hgetall("quota:{cy}:2026-01")
    with pytest.raises(AuditUnavailable, match="adjust for cy was not made"):
        m.adjust("cy", SYS, adjustment_id="f", reason="r", calls=-1)
    assert redis_server.client().hgetall("quota:{cy}:2026-01") == before
    assert m.adjustments("cy") == []


def test_cli_and_api_adjustments_are_in_the_audit(redis_server, monkeypatch, tmp_path, clock, store):  # noqa: F811
    redis_server.client().flushall()
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("QUOTA_HISTORY_URL", url)
    monkeypatch.setenv("USER", "ops")
    Meter.from_url(redis_server.url).update_token_usage("eve", SYS, 1000, 0)
    runner = CliRunner()
    made = runner.invoke(main, ["adjust", "eve", SYS, "--id", "x1", "--reason", "dup", "--calls", "-1"])
    assert made.exit_code == 0, made.output
    [entry] = json.loads(runner.invoke(main, ["audit", "eve", "--json"]).stdout)
    assert (entry["action"], entry["status"], entry["adjustment_id"]) == ("adjust", "done", "x1")
    assert entry["actor"].startswith("cli:") and entry["before"] == entry["after"]
    table = runner.invoke(main, ["audit", "eve"])
    assert table.exit_code == 0 and f" {SYS} x1 " in table.output and " adjust " in table.output

    settings = api_settings()
    meter = Meter.from_url(redis_server.url, settings=settings.quota, clock=clock, prefix="apitest", history=store)
    try:
        client = create_app(settings, meter=meter).test_client()
        wrong = meter.update_token_usage("fay", SYS, 1000, 0)
        body = {"model_id": SYS, "adjustment_id": "a1", "reason": "wrong", "cost": f"-{wrong.cost}", "actor": "Li Wei"}
        made = client.post("/v1/admin/users/fay/adjustments", json=body, headers=bearer(ADMIN))
        assert made.status_code == 201, made.get_json()
        [entry] = client.get("/v1/users/fay/audit", headers=bearer(ADMIN)).get_json()["entries"]
        assert (entry["actor"], entry["action"], entry["status"]) == ("api:admin:Li Wei", "adjust", "done")
        assert (entry["before_nano"], entry["after_nano"], entry["requested_nano"]) == (
            wrong.cost_nano,
            0,
            -wrong.cost_nano,
        )
    finally:
        meter.close()


def test_a_version_5_audit_table_reads_until_the_first_change_migrates_it(history_url):  # noqa: F811
    """Schema 6 adds the corrections' columns (and a 128-character actor) to the audit table."""
    from sqlalchemy import text

    from quota._audit import AuditEntry
    from quota.history.store import SCHEMA_VERSION

    old = HistoryStore(history_url)
    old.ensure_schema()
    with old.engine.begin() as conn:
        for column in ("model_id", "adjustment_id", "details"):
            conn.execute(text(f"ALTER TABLE quota_credit_audit DROP COLUMN {column}"))
        if old.dialect == "postgresql":
            conn.execute(text("ALTER TABLE quota_credit_audit ALTER COLUMN actor TYPE VARCHAR(64)"))
        conn.execute(text("UPDATE quota_schema_version SET version = 5"))
    now = datetime.now(UTC)
    old._schema_ready = False  # noqa: SLF001 - as a new process would find it
    old.close()
    store = HistoryStore(history_url)
    assert store.read_audit("ann") == []
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO quota_credit_audit (prefix, at, actor, action, user_id, month, status) "
                "VALUES ('quota', :at, 'cli', 'set_monthly_credit', 'ann', '2026-01', 'done')"
            ),
            {"at": now},
        )
    [row] = store.read_audit("ann")
    assert row["action"] == "set_monthly_credit" and row["adjustment_id"] is None and row["details"] is None
    actor = "api:admin:" + "x" * 100  # longer than version 5's 64 characters
    store.audit_begin(AuditEntry(now, actor, "adjust", "ann", "2026-01", adjustment_id="f", details={"calls": -1}))
    assert store.read_audit("ann")[0]["actor"] == actor and store.read_audit("ann")[0]["details"] == {"calls": -1}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == SCHEMA_VERSION == 6
    store.close()
