"""The Flask API through its test client, on a real Redis: every endpoint, error code and access rule."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from urllib.parse import quote, unquote

import pytest
from prometheus_client.parser import text_string_to_metric_families

import quota
from quota import Meter
from quota._errors import ConfigError
from quota.testing import free_ports
from quota_server import create_app, get_quota
from quota_server.settings import ApiSettings

from .api_support import ADMIN, SECRET, SERVICE, api_settings, bearer, make_meter, user_token

SYS, CUS = "system_deepseek", "custom_llama"


@pytest.fixture
def env():
    return {}


@pytest.fixture
def meter(redis_server, clock, env):
    redis_server.client().flushall()
    m = make_meter(redis_server.url, clock, api_settings(**env))
    yield m
    m.close()


@pytest.fixture
def app(meter, env):
    return create_app(api_settings(**env), meter=meter)


@pytest.fixture
def client(app):
    return app.test_client()


def record(client, token=SERVICE, **body):
    body = {"user": "alice", "model_id": SYS, "input_tokens": 1000, "output_tokens": 500, **body}
    return client.post("/v1/usage", json=body, headers=bearer(token))


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# --- the endpoints ---------------------------------------------------------------------------------


def test_record_then_stats_match_the_library(client, meter):
    r = record(client, input_tokens=12000, output_tokens=8000, request_id="r1")
    assert r.status_code == 200
    assert r.get_json() == {
        "user": "alice",
        "model_id": SYS,
        "month": "2026-01",
        "input_tokens": 12000,
        "output_tokens": 8000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "cost": 0.028,
        "monthly_used": 0.028,
        "monthly_credit": 5.0,
        "remaining": 4.972,
        "exceeded": False,
        "duplicate": False,
        "is_system": True,
        "estimated": False,
        "request_id": "r1",
        "alerts": [],
        "purpose": None,
        "grants_drawn": 0.0,
    }
    record(client, model_id=CUS, input_tokens=5000, output_tokens=3000)
    stats = client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE))
    assert stats.status_code == 200
    assert stats.get_json() == meter.get_token_stats("alice")
    body = stats.get_json()
    assert body["models"][SYS]["input_tokens"] == 12000 and body["models"][CUS]["is_system"] is False
    assert body["monthly_used"] == 0.028  # the custom model is counted, not charged to the credit
    assert body["models"][SYS]["purposes"] == {}


def test_a_record_with_a_purpose_is_shown_per_purpose(client, meter):
    first = record(client, purpose="chat", request_id="p1").get_json()
    assert first["purpose"] == "chat"
    assert record(client, purpose="tool", request_id="p1").status_code == 409  # same id, other purpose
    assert_error(record(client, purpose="Chat!"), 400, "invalid_input")
    body = client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)).get_json()
    assert body["models"][SYS]["purposes"] == {"chat": {"calls": 1, "cost": first["cost"]}}


def test_stats_months_parameter_and_history(client, clock):
    clock.set(2025, 11, 20)
    record(client)
    clock.set(2026, 1, 15)
    full = client.get("/v1/users/alice/token-stats", headers=bearer(ADMIN)).get_json()
    assert list(full["history"]) == ["2025-11"]
    one = client.get("/v1/users/alice/token-stats?months=1", headers=bearer(ADMIN)).get_json()
    assert one["history"] == {}
    for bad in ("-1", "x", "121", "1.5"):
        assert_error(
            client.get(f"/v1/users/alice/token-stats?months={bad}", headers=bearer(ADMIN)), 400, "invalid_input"
        )


def test_stats_body_is_jsonify_byte_for_byte_while_the_history_json_is_reused(app, client, meter, clock):
    """api.jsonio.QuotaJSONProvider.stats_response: the history's JSON is reused while the history
    is unchanged, and the body is always exactly what ``jsonify`` makes of the same stats."""
    clock.set(2025, 11, 20)
    record(client, request_id="nov", purpose="chat")
    clock.set(2025, 12, 20)
    record(client, model_id=CUS, request_id="dec")
    clock.set(2026, 1, 15)
    record(client, request_id="jan")

    def body_and_expected(path: str = "/v1/users/alice/token-stats", months: int | None = None):
        response = client.get(path, headers=bearer(SERVICE))
        assert response.status_code == 200 and response.mimetype == "application/json"
        with app.app_context():
            expected = app.json.response(meter.get_token_stats("alice", months=months)).get_data()
        return response.get_data(), expected

    first, expected = body_and_expected()
    assert first == expected and first.endswith(b"}\n") and b'"history":{"2025-12"' in first
    assert body_and_expected() == (first, expected)  # the kept history JSON, the same bytes
    clock.set(2025, 12, 31, 23)  # a late record reaches December: the history changes
    record(client, model_id=CUS, request_id="dec-late", input_tokens=7)
    clock.set(2026, 1, 15)
    changed, expected = body_and_expected()
    assert changed == expected and changed != first
    assert json.loads(changed)["history"]["2025-12"][CUS]["input"] == 1007
    one, expected = body_and_expected("/v1/users/alice/token-stats?months=1", months=1)
    assert one == expected and json.loads(one)["history"] == {"2025-12": json.loads(changed)["history"]["2025-12"]}
    none, expected = body_and_expected("/v1/users/alice/token-stats?months=0", months=0)
    assert none == expected and json.loads(none)["history"] == {}
    app.debug = True  # indented: jsonify itself
    indented, expected = body_and_expected()
    assert indented == expected and b'\n  "history": {' in indented


def test_duplicate_request_id_counts_once_and_conflict_is_409(client, meter):
    first = record(client, request_id="same")
    again = record(client, request_id="same")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert again.get_json()["monthly_used"] == first.get_json()["monthly_used"]
    assert_error(record(client, request_id="same", input_tokens=999), 409, "request_conflict")
    assert meter.get_token_stats("alice")["models"][SYS]["calls"] == 1


def test_batch_records_and_returns_results(client, meter):
    body = [
        {"user": "alice", "model_id": SYS, "input_tokens": 1000, "output_tokens": 0},
        {
            "user": "bob",
            "model_id": CUS,
            "input_tokens": 7,
            "output_tokens": 8,
            "request_id": "b1",
            "price": {"cost_per_1k_input": "0.01", "cost_per_1k_output": 0.02},
            "estimated": True,
        },
    ]
    r = client.post("/v1/usage", json=body, headers=bearer(SERVICE))
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["user"] for x in results] == ["alice", "bob"]
    assert results[1]["cost"] == 0.00023 and results[1]["estimated"] is True
    assert meter.get_token_stats("bob")["models"][CUS]["estimated_calls"] == 1
    empty = client.post("/v1/usage", json=[], headers=bearer(SERVICE))
    assert empty.status_code == 200 and empty.get_json() == {"results": []}


def test_a_bad_record_in_a_batch_changes_nothing(client, meter):
    body = [
        {"user": "alice", "model_id": SYS, "input_tokens": 1, "output_tokens": 1},
        {"user": "alice", "model_id": SYS, "input_tokens": -1, "output_tokens": 1},
    ]
    err = assert_error(client.post("/v1/usage", json=body, headers=bearer(SERVICE)), 400, "invalid_input")
    assert "record 1" in err["message"]
    assert meter.get_token_stats("alice")["models"] == {}


def test_batch_with_a_conflict_reports_per_record_results(client, meter):
    record(client, request_id="taken")
    body = [
        {"user": "alice", "model_id": SYS, "input_tokens": 1000, "output_tokens": 0, "request_id": "new"},
        {"user": "alice", "model_id": SYS, "input_tokens": 5, "output_tokens": 5, "request_id": "taken"},
    ]
    r = client.post("/v1/usage", json=body, headers=bearer(SERVICE))
    err = assert_error(r, 409, "batch_failed")
    assert err["results"][0]["request_id"] == "new"
    assert err["results"][1]["error"]["code"] == "request_conflict"
    assert meter.get_token_stats("alice")["models"][SYS]["calls"] == 2  # "taken" once, "new" once


def test_batch_size_limit(meter):
    client = create_app(api_settings(QUOTA_MAX_BATCH="2"), meter=meter).test_client()
    rec = {"user": "alice", "model_id": SYS, "input_tokens": 1, "output_tokens": 1}
    assert_error(client.post("/v1/usage", json=[rec] * 3, headers=bearer(SERVICE)), 400, "invalid_body")
    assert client.post("/v1/usage", json=[rec] * 2, headers=bearer(SERVICE)).status_code == 200


def test_quota_check_allowed_then_denied_with_event_custom_still_allowed(client, meter):
    ok = client.get(f"/v1/users/alice/quota?model_id={SYS}", headers=bearer(SERVICE))
    assert ok.status_code == 200 and ok.get_json()["allowed"] is True and "event" not in ok.get_json()
    record(client, input_tokens=5_000_000, output_tokens=0)  # 5 CNY: the whole credit
    denied = client.get(f"/v1/users/alice/quota?model_id={SYS}", headers=bearer(user_token("alice")))
    body = denied.get_json()
    assert denied.status_code == 200 and body["allowed"] is False
    assert body["event"]["type"] == "quota_exceeded" and body["event"]["resets_at"] == "2026-02-01T00:00:00Z"
    custom = client.get(f"/v1/users/alice/quota?model_id={CUS}", headers=bearer(SERVICE)).get_json()
    assert custom["allowed"] is True and custom["is_system"] is False


def test_quota_check_bad_input(client):
    assert_error(client.get("/v1/users/alice/quota", headers=bearer(SERVICE)), 400, "invalid_input")
    assert_error(
        client.get("/v1/users/alice/quota?model_id=system_nope", headers=bearer(SERVICE)), 400, "unknown_model"
    )
    assert_error(client.get("/v1/users/al%20ice/quota?model_id=x", headers=bearer(SERVICE)), 400, "invalid_input")


@pytest.mark.parametrize("model_id", ["System_deepseek", "SYSTEM_DEEPSEEK", "ｓｙｓｔｅｍ_deepseek", "System_gpt5"])
def test_a_respelled_system_id_is_an_unknown_model_and_records_nothing(client, meter, model_id):
    """Issue 9: case or Unicode compatibility forms must not turn a system model into a free custom one."""
    body = {"user": "alice", "model_id": model_id, "input_tokens": 10**6, "output_tokens": 0}
    assert_error(client.post("/v1/usage", json=body, headers=bearer(SERVICE)), 400, "unknown_model")
    assert_error(
        client.get("/v1/users/alice/quota", query_string={"model_id": model_id}, headers=bearer(SERVICE)),
        400,
        "unknown_model",
    )
    assert meter.get_token_stats("alice")["models"] == {}


def test_set_credit(client, meter):
    r = client.put("/v1/users/alice/credit", json={"credit": "0.1"}, headers=bearer(ADMIN))
    assert r.status_code == 200
    assert r.get_json() == {
        "user": "alice",
        "month": "2026-01",
        "monthly_credit": 0.1,
        "monthly_used": 0.0,
        "remaining": 0.1,
        "cleared_alerts": [],
    }
    feb = client.put("/v1/users/alice/credit", json={"credit": 12.5, "month": "2026-02"}, headers=bearer(ADMIN))
    assert feb.get_json()["month"] == "2026-02" and feb.get_json()["monthly_credit"] == 12.5
    assert meter.get_token_stats("alice")["monthly_credit"] == 0.1


@pytest.mark.parametrize(
    "body, code",
    [
        ({"credit": -1}, "invalid_input"),
        ({"credit": "abc"}, "invalid_input"),
        ({"credit": True}, "invalid_input"),
        ({"credit": None}, "invalid_input"),
        ({"credit": [1]}, "invalid_input"),
        ({"credit": 1e-12}, "invalid_input"),
        ({"credit": 1, "month": "2026-13"}, "invalid_input"),
        ({"credit": 1, "month": 202601}, "invalid_input"),
        ({}, "invalid_body"),
        ({"credit": 1, "extra": 1}, "invalid_body"),
        ([1], "invalid_body"),
    ],
)
def test_set_credit_bad_input_changes_nothing(client, meter, body, code):
    assert_error(client.put("/v1/users/alice/credit", json=body, headers=bearer(ADMIN)), 400, code)
    assert meter.get_token_stats("alice")["monthly_credit"] == 5.0


def test_models(client, meter):
    r = client.get("/v1/models", headers=bearer(SERVICE))
    assert r.status_code == 200 and r.get_json() == meter.prices.as_json()
    assert r.get_json()["system"][SYS]["cost_per_1k_output"] == 0.002


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok", "redis": "ok", "history": "ok"}


@pytest.fixture
def dead_client(clock):
    port = free_ports(1, start=26000)[0]  # nothing listens there
    settings = api_settings(QUOTA_DEMO="1")
    m = Meter.from_url(f"redis://127.0.0.1:{port}/0", settings=settings.quota, clock=clock)
    yield create_app(settings, meter=m).test_client()
    m.close()


def test_redis_down_gives_503_and_counts_storage_errors(dead_client):
    assert_error(dead_client.get("/healthz"), 503, "storage_unavailable")
    assert_error(dead_client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)), 503, "storage_unavailable")
    assert_error(record(dead_client), 503, "storage_unavailable")
    batch = dead_client.post(
        "/v1/usage",
        headers=bearer(SERVICE),
        json=[{"user": "a", "model_id": SYS, "input_tokens": 1, "output_tokens": 1}],
    )
    assert batch.status_code == 503 and batch.get_json()["error"]["code"] in ("storage_unavailable", "batch_failed")
    assert metric(dead_client, "quota_storage_errors_total") == 4


def test_without_an_operator_token_a_503_does_not_say_where_redis_is(dead_client):
    port = get_quota(dead_client.application).meter.client.connection_pool.connection_kwargs["port"]
    where = f"127.0.0.1:{port}"
    anonymous = [
        dead_client.get("/healthz"),
        dead_client.get("/v1/users/alice/token-stats", headers=bearer(user_token("alice"))),
        dead_client.post("/demo/turn", json={"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 1}),
    ]
    for response in anonymous:
        err = assert_error(response, 503, "storage_unavailable")
        assert err["message"] == "the storage is unavailable; try again later"
        assert where.split(":")[1] not in response.get_data(as_text=True)
    for token in (SERVICE, ADMIN):  # operators and workers get the detail they need
        err = assert_error(
            dead_client.get("/v1/users/alice/token-stats", headers=bearer(token)), 503, "storage_unavailable"
        )
        assert where in err["message"]


# --- bodies that are not what they should be ---------------------------------------------------------


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        ("{", "application/json", 400, "bad_request"),
        ("", "application/json", 400, "bad_request"),
        ("5", "application/json", 400, "invalid_body"),
        ("null", "application/json", 400, "invalid_body"),
        ('"text"', "application/json", 400, "invalid_body"),
        ("[1, 2]", "application/json", 400, "invalid_body"),
        ('{"user": "alice"}', "application/json", 400, "invalid_body"),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": 1, "output_tokens": 1, "x": 1}',
            "application/json",
            400,
            "invalid_body",
        ),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": true, "output_tokens": 1}',
            "application/json",
            400,
            "invalid_input",
        ),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": 1.0, "output_tokens": 1}',
            "application/json",
            400,
            "invalid_input",
        ),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": NaN, "output_tokens": 1}',
            "application/json",
            400,
            "invalid_input",
        ),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": 1e999, "output_tokens": 1}',
            "application/json",
            400,
            "invalid_input",
        ),
        (
            '{"user": "alice", "model_id": "system_typo", "input_tokens": 1, "output_tokens": 1}',
            "application/json",
            400,
            "unknown_model",
        ),
        (
            '{"user": "alice", "model_id": "system_deepseek", "input_tokens": 1, "output_tokens": 1,'
            ' "price": {"cost_per_1k_input": 1, "cost_per_1k_output": 1}}',
            "application/json",
            400,
            "invalid_input",
        ),
        (
            '{"user": "a b", "model_id": "m", "input_tokens": 1, "output_tokens": 1}',
            "application/json",
            400,
            "invalid_input",
        ),
        ('{"user": "alice"}', "text/plain", 415, "unsupported_media_type"),
        ("user=alice", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ('{"user": "alice"}', None, 415, "unsupported_media_type"),
    ],
)
def test_bad_bodies_get_a_clear_4xx_and_change_nothing(client, meter, data, content_type, status, code):
    headers = bearer(SERVICE) | ({"Content-Type": content_type} if content_type else {})
    assert_error(client.post("/v1/usage", data=data, headers=headers), status, code)
    assert meter.get_token_stats("alice")["models"] == {}


def test_huge_body_is_413(meter):
    client = create_app(api_settings(QUOTA_MAX_BODY_BYTES="2048"), meter=meter).test_client()
    big = json.dumps([{"user": "alice", "model_id": SYS, "input_tokens": 1, "output_tokens": 1}] * 100)
    err = assert_error(
        client.post("/v1/usage", data=big, content_type="application/json", headers=bearer(SERVICE)),
        413,
        "payload_too_large",
    )
    assert "2048" in err["message"]
    assert_error(
        client.put("/v1/users/alice/credit", data="1" * 5000, content_type="application/json", headers=bearer(ADMIN)),
        413,
        "payload_too_large",
    )


def test_unknown_route_404_and_wrong_method_405_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/v1/nope", headers=bearer(ADMIN)), 404, "not_found")
    r = client.delete("/v1/usage", headers=bearer(ADMIN))
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    assert_error(client.post("/healthz"), 405, "method_not_allowed")


def test_an_unexpected_error_is_a_json_500_without_details(app, meter, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(meter, "get_token_stats", boom)
    err = assert_error(app.test_client().get("/v1/users/alice/token-stats", headers=bearer(ADMIN)), 500, "internal")
    assert "secret" not in err["message"]


# --- access control ------------------------------------------------------------------------------------

ROUTES = {
    "stats_alice": ("get", "/v1/users/alice/token-stats", None),
    "quota_alice": ("get", f"/v1/users/alice/quota?model_id={SYS}", None),
    "stats_bob": ("get", "/v1/users/bob/token-stats", None),
    "quota_bob": ("get", f"/v1/users/bob/quota?model_id={SYS}", None),
    "record": ("post", "/v1/usage", {"user": "alice", "model_id": SYS, "input_tokens": 1, "output_tokens": 1}),
    "credit": ("put", "/v1/users/alice/credit", {"credit": 7}),
    "models": ("get", "/v1/models", None),
    "revoke_bob": ("post", "/v1/users/bob/tokens/revoke", None),
}
# role -> routes it may use; every other /v1 route gives 403
MAY = {
    "admin": set(ROUTES),
    "service": {"stats_alice", "quota_alice", "stats_bob", "quota_bob", "record", "models"},
    "alice": {"stats_alice", "quota_alice"},
}


def token_of(role: str) -> str:
    return {"admin": ADMIN, "service": SERVICE, "alice": user_token("alice")}[role]


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("role", sorted(MAY))
def test_access_rules(client, role, route):
    method, path, body = ROUTES[route]
    r = getattr(client, method)(path, json=body, headers=bearer(token_of(role)))
    if route in MAY[role]:
        assert r.status_code == 200, r.get_json()
    else:
        assert_error(r, 403, "forbidden")


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": f"Bearer {ADMIN}x"},
        {"Authorization": f"Bearer {ADMIN[:-1]}"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {user_token('alice')}tampered"},
    ],
    ids=["none", "empty", "no-token", "basic", "longer", "shorter", "garbage", "tampered"],
)
def test_no_or_invalid_token_is_401(client, meter, route, headers):
    method, path, body = ROUTES[route]
    r = getattr(client, method)(path, json=body, headers=headers)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert meter.get_token_stats("alice")["models"] == {} and meter.get_token_stats("alice")["monthly_credit"] == 5.0


def test_expired_and_foreign_user_tokens(client):
    expired = user_token("alice", ttl_s=60, now_s=1_000_000)
    assert_error(client.get("/v1/users/alice/token-stats", headers=bearer(expired)), 401, "token_expired")
    from quota._tokens import mint_user_token

    forged = mint_user_token("another-secret-key-0123456789", "alice", 3600)
    assert_error(client.get("/v1/users/alice/token-stats", headers=bearer(forged)), 401, "unauthorized")


def test_panel_link_mints_a_token_and_percent_encodes_the_user(client, monkeypatch):
    """quota.panel_link: what a site's backend hands a logged-in user. The user id rides
    percent-encoded in the fragment (quote(user, safe="")), the token reads that user only."""
    user = "alice+work@corp.com"
    link = quota.panel_link("https://quota.example.com/", user, secret_key=SECRET, ttl_s=600)
    base, _, fragment = link.partition("#")
    assert base == "https://quota.example.com/panel"
    params = dict(part.split("=", 1) for part in fragment.split("&"))
    assert params["user"] == "alice%2Bwork%40corp.com" == quote(user, safe="") and unquote(params["user"]) == user
    assert client.get(f"/v1/users/{params['user']}/token-stats", headers=bearer(params["token"])).status_code == 200
    assert_error(client.get("/v1/users/bob/token-stats", headers=bearer(params["token"])), 403, "forbidden")
    monkeypatch.setenv("QUOTA_SECRET_KEY", SECRET)  # the service's own variable is the default
    from_env = quota.panel_link("http://127.0.0.1:8000", "bob")
    token = from_env.rpartition("&token=")[2]
    assert client.get("/v1/users/bob/token-stats", headers=bearer(token)).status_code == 200
    monkeypatch.delenv("QUOTA_SECRET_KEY")
    with pytest.raises(quota.ConfigError, match="QUOTA_SECRET_KEY is not set"):
        quota.panel_link("http://127.0.0.1:8000", "bob")
    for bad in ("quota.example.com", "ftp://quota.example.com", "https://quota.example.com/?x=1"):
        with pytest.raises(quota.InvalidInput, match="base_url"):
            quota.panel_link(bad, "bob", secret_key=SECRET)
    with pytest.raises(quota.InvalidInput, match="invalid user id"):
        quota.panel_link("https://quota.example.com", "张三", secret_key=SECRET)


# --- revoking one user's tokens ------------------------------------------------------------------------


def test_revoking_a_users_tokens_refuses_the_old_ones_and_accepts_new_ones(client, redis_server):
    now = time.time()
    old_alice, bob = user_token("alice", now_s=now - 5), user_token("bob", now_s=now - 5)
    assert client.get("/v1/users/alice/token-stats", headers=bearer(old_alice)).status_code == 200
    r = client.post("/v1/users/alice/tokens/revoke", headers=bearer(ADMIN))
    assert r.status_code == 200
    body = r.get_json()
    assert body["user"] == "alice" and abs(body["tokens_valid_after_ms"] / 1000 - now) < 5
    assert body["tokens_valid_after"].endswith("Z") and body["tokens_valid_after"][:10] == time.strftime(
        "%Y-%m-%d", time.gmtime(body["tokens_valid_after_ms"] / 1000)
    )
    raw = redis_server.client()
    key = "apitest:{alice}:tokens_valid_after"  # under alice's hash tag, with the meter's prefix
    assert int(raw.get(key)) == body["tokens_valid_after_ms"] and 400 * 86400 < raw.ttl(key) <= 401 * 86400
    for path in ("/v1/users/alice/token-stats", f"/v1/users/alice/quota?model_id={SYS}"):
        r = client.get(path, headers=bearer(old_alice))
        assert_error(r, 401, "token_revoked")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    fresh = user_token("alice", now_s=body["tokens_valid_after_ms"] / 1000 + 0.01)
    assert client.get("/v1/users/alice/token-stats", headers=bearer(fresh)).status_code == 200
    assert client.get("/v1/users/bob/token-stats", headers=bearer(bob)).status_code == 200  # others untouched
    assert client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)).status_code == 200


def test_a_token_minted_before_tokens_carried_their_issue_time_is_revoked_too(client):
    from itsdangerous import URLSafeSerializer

    legacy = URLSafeSerializer(
        SECRET, salt="quota.user-token.v1", signer_kwargs={"digest_method": hashlib.sha256}
    ).dumps({"u": "alice", "exp": int(time.time()) + 3600})
    assert client.get("/v1/users/alice/token-stats", headers=bearer(legacy)).status_code == 200
    client.post("/v1/users/alice/tokens/revoke", headers=bearer(ADMIN))
    assert_error(client.get("/v1/users/alice/token-stats", headers=bearer(legacy)), 401, "token_revoked")


def test_only_an_admin_may_revoke_and_bad_users_are_400(client, redis_server):
    for token in (SERVICE, user_token("alice"), user_token("bob")):
        assert_error(client.post("/v1/users/alice/tokens/revoke", headers=bearer(token)), 403, "forbidden")
    assert_error(client.post("/v1/users/alice/tokens/revoke"), 401, "unauthorized")
    assert_error(client.post("/v1/users/al%7Bice%7D/tokens/revoke", headers=bearer(ADMIN)), 400, "invalid_input")
    assert_error(client.get("/v1/users/alice/tokens/revoke", headers=bearer(ADMIN)), 405, "method_not_allowed")
    assert redis_server.client().keys("*tokens_valid_after*") == []


def test_a_user_token_is_refused_while_its_revocation_can_not_be_read(dead_client):
    err = assert_error(
        dead_client.get("/v1/users/alice/token-stats", headers=bearer(user_token("alice"))), 503, "storage_unavailable"
    )
    assert err["message"] == "the storage is unavailable; try again later"


def test_tokens_never_reach_the_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    alice = user_token("alice")
    for token in (ADMIN, SERVICE, alice, alice + "x", "guess-" + ADMIN):
        client.get("/v1/users/alice/token-stats", headers=bearer(token))
        client.get("/v1/users/bob/token-stats", headers=bearer(token))
        client.put("/v1/users/alice/credit", json={"credit": "x"}, headers=bearer(token))
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (ADMIN, SERVICE, SECRET, alice):
        assert secret not in text


def csp_directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


@pytest.mark.parametrize("path", ["/panel", "/demo"])
def test_pages_send_a_strict_content_security_policy_and_have_no_inline_script(meter, path):
    client = create_app(api_settings(QUOTA_DEMO="1"), meter=meter).test_client()
    r = client.get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = csp_directives(r.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert not any("unsafe" in v for values in csp.values() for v in values)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["X-Frame-Options"] == "DENY"
    html = r.get_data(as_text=True)
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(re.search(r'\bsrc="/static/[a-z0-9]+\.js"', tag) for tag in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler would be blocked by the CSP"
    for src in re.findall(r'src="(/static/[^"]+)"', html):
        static = client.get(src)
        assert static.status_code == 200 and static.headers["X-Content-Type-Options"] == "nosniff"


def test_v1_answers_are_never_cached_errors_included(client):
    answers = [
        client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)),
        client.get("/v1/users/alice/token-stats"),
        client.get("/v1/models", headers=bearer(user_token("alice"))),
        client.get("/v1/nope", headers=bearer(ADMIN)),
    ]
    assert [a.status_code for a in answers] == [200, 401, 403, 404]
    for answer in answers:
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" not in answer.headers  # JSON: nothing to run
    assert "no-store" not in client.get("/healthz").headers.get("Cache-Control", "")


def test_pages_and_ops_need_no_token(client):
    for path in ("/healthz", "/openapi.json", "/panel", "/metrics"):
        assert client.get(path).status_code == 200, path
    page = client.get("/panel")
    assert page.mimetype == "text/html" and b"panel.js" in page.data


# --- metrics --------------------------------------------------------------------------------------------


def metric(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_labels(client, name: str, label: str) -> dict[str, float]:
    """{label value: total} over the samples of ``name``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels[label]] = out.get(sample.labels[label], 0) + sample.value
    return out


def test_metrics_labels_come_from_fixed_sets_whatever_the_request_says(client, app):
    """Made-up methods and paths, without a token, must not add series: before, each
    `curl -X XMETHOD<n>` added one for good."""
    for n in range(25):
        client.open("/healthz", method=f"XMETHOD{n}")
        client.open("/v1/users/alice/token-stats", method=f"LOCK{n}")
        client.get(f"/made-up-{n}")
        client.get(f"/v1/made-up/{n}", headers=bearer(SERVICE))
    client.get("/healthz")
    methods = metric_labels(client, "quota_http_requests_total", "method")
    assert set(methods) == {"GET", "other"} and methods["other"] == 50
    routes = metric_labels(client, "quota_http_requests_total", "route")
    # a 405 (unknown method) or 404 matched no rule: all 100 are one series
    assert set(routes) == {"/healthz", "/metrics", "unmatched"} and routes["unmatched"] == 100
    rules = {r.rule for r in app.url_map.iter_rules()} | {"unmatched"}
    assert set(metric_labels(client, "quota_http_request_duration_seconds_count", "route")) <= rules


def test_metrics_count_records_denials_and_latency(client):
    record(client, input_tokens=5_000_000, output_tokens=0)
    record(client, model_id=CUS, request_id="c1")
    record(client, model_id=CUS, request_id="c1")
    client.get(f"/v1/users/alice/quota?model_id={SYS}", headers=bearer(SERVICE))
    client.get(f"/v1/users/alice/quota?model_id={CUS}", headers=bearer(SERVICE))
    client.get("/v1/users/alice/token-stats")  # 401
    assert metric(client, "quota_usage_records_total", kind="system") == 1
    assert metric(client, "quota_usage_records_total", kind="custom", duplicate="true") == 1
    assert metric(client, "quota_checks_total", outcome="denied") == 1
    assert metric(client, "quota_checks_total", outcome="allowed") == 1
    assert metric(client, "quota_http_requests_total", route="/v1/usage", method="POST", status="200") == 3
    assert metric(client, "quota_http_requests_total", route="/v1/users/<user>/token-stats", status="401") == 1
    assert metric(client, "quota_http_request_duration_seconds_count", route="/v1/usage") == 3
    assert client.get("/metrics").mimetype == "text/plain"


# --- the demo turn ----------------------------------------------------------------------------------------


@pytest.fixture
def demo_client(meter):
    return create_app(api_settings(QUOTA_DEMO="1"), meter=meter).test_client()


@pytest.fixture
def demo_meter(demo_client):
    """The demo's own meter: the same Redis, the key prefix ``apitest-demo``."""
    return get_quota(demo_client.application).demo_meter


def turn(client, n, user="demo-a", model=SYS, conversation="c1"):
    return client.post(
        "/demo/turn",
        json={"user": user, "model_id": model, "conversation_id": conversation, "turn": n, "message": f"hello {n}"},
    )


def test_demo_turns_record_every_call_then_refuse_and_custom_keeps_working(demo_client, demo_meter):
    demo_meter.set_monthly_credit("demo-a", "0.5")
    first = turn(demo_client, 1).get_json()
    assert first["type"] == "reply" and [c["purpose"] for c in first["calls"]] == ["chat", "tool", "summary", "naming"]
    assert [c["purpose"] for c in turn(demo_client, 2).get_json()["calls"]] == ["chat", "tool", "summary"]
    n, replies = 3, 2
    while True:
        body = turn(demo_client, n).get_json()
        if body["type"] == "quota_exceeded":
            break
        replies, n = replies + 1, n + 1
        assert n < 20
    stats = demo_meter.get_token_stats("demo-a")
    assert stats["exceeded"] and stats["models"][SYS]["calls"] == 3 * replies + 1  # the crossing reply finished
    assert body["event"]["type"] == "quota_exceeded" and body["check"]["allowed"] is False
    assert turn(demo_client, n).get_json()["type"] == "quota_exceeded"
    assert demo_meter.get_token_stats("demo-a")["models"][SYS]["calls"] == 3 * replies + 1  # refused: nothing
    custom = turn(demo_client, n, model="custom_demo").get_json()
    assert custom["type"] == "reply" and custom["is_system"] is False


def test_demo_turn_is_deterministic_and_a_retry_counts_once(demo_client, demo_meter):
    a = turn(demo_client, 1).get_json()
    b = turn(demo_client, 1).get_json()
    assert [c["input_tokens"] for c in a["calls"]] == [c["input_tokens"] for c in b["calls"]]
    assert all(c["duplicate"] for c in b["calls"]) and not any(c["duplicate"] for c in a["calls"])
    assert demo_meter.get_token_stats("demo-a")["models"][SYS]["calls"] == 4


@pytest.mark.parametrize(
    "body, code",
    [
        ({"user": "alice", "model_id": SYS, "conversation_id": "c", "turn": 1}, "invalid_input"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c c", "turn": 1}, "invalid_input"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 0}, "invalid_input"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": True}, "invalid_input"),
        ({"user": "demo-a", "model_id": "system_x", "conversation_id": "c", "turn": 1}, "unknown_model"),
        ({"user": "demo-a", "model_id": "System_deepseek", "conversation_id": "c", "turn": 1}, "unknown_model"),
        ({"user": "demo-a", "model_id": "ＳＹＳＴＥＭ_DEEPSEEK", "conversation_id": "c", "turn": 1}, "unknown_model"),
        (
            {"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 1, "message": "x" * 2001},
            "message_too_long",
        ),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 51}, "conversation_too_long"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 10**9}, "conversation_too_long"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 1, "message": 5}, "invalid_input"),
        ({"user": "demo-a", "model_id": SYS, "conversation_id": "c", "turn": 1, "extra": 1}, "invalid_input"),
        ([1], "invalid_input"),
    ],
)
def test_demo_turn_bad_input_is_400_and_records_nothing(demo_client, meter, demo_meter, body, code):
    r = demo_client.post("/demo/turn", json=body)
    assert_error(r, 400, code)
    for m in (meter, demo_meter):
        assert m.get_token_stats("demo-a")["models"] == {} and m.get_token_stats("alice")["models"] == {}


def test_the_last_message_of_a_conversation_is_served_and_the_next_is_refused(demo_client, demo_meter):
    assert turn(demo_client, 50).get_json()["type"] == "reply"
    err = assert_error(turn(demo_client, 51), 400, "conversation_too_long")
    assert "start a new conversation" in err["message"]
    assert turn(demo_client, 1, conversation="c2").get_json()["type"] == "reply"
    assert demo_meter.get_token_stats("demo-a")["models"][SYS]["calls"] == 3 + 4


def test_the_demo_never_touches_a_real_user_whose_id_starts_with_demo(demo_client, meter, demo_meter, redis_server):
    """``demo.smith@corp.com`` is a real user: before, the open demo page spent their credit."""
    real = "demo.smith@corp.com"
    record(demo_client, user=real, input_tokens=2_000_000, output_tokens=0, request_id="real-1")
    meter.set_monthly_credit(real, "3")
    raw = redis_server.client()
    before = {k: raw.dump(k) for k in raw.scan_iter(match="apitest:*")}
    for n in range(1, 4):
        assert turn(demo_client, n, user=real).get_json()["type"] == "reply"
    assert {k: raw.dump(k) for k in raw.scan_iter(match="apitest:*")} == before
    assert meter.get_token_stats(real)["monthly_used"] == 2.0 and meter.get_token_stats(real)["monthly_credit"] == 3.0
    demo_stats = demo_meter.get_token_stats(real)
    assert demo_stats["models"][SYS]["calls"] == 10 and demo_stats["monthly_credit"] == 5.0
    assert all(k.startswith(b"apitest-demo:{demo.smith@corp.com}:") for k in raw.scan_iter(match="apitest-demo*"))
    shown = demo_client.get(f"/demo/users/{real}/token-stats").get_json()
    assert shown == demo_stats and shown != meter.get_token_stats(real)


@pytest.mark.parametrize("user", ["alice", "de", "demo%7Bx%7D", "d" * 129])
def test_demo_stats_are_for_demo_users_only(demo_client, user):
    assert_error(demo_client.get(f"/demo/users/{user}/token-stats"), 400, "invalid_input")


def test_a_prefix_too_long_for_the_demo_is_refused_at_start(redis_server, clock):
    settings = api_settings(QUOTA_DEMO="1")
    meter = Meter.from_url(redis_server.url, settings=settings.quota, clock=clock, prefix="p" * 28)
    with pytest.raises(ConfigError, match="too long for the demo"):
        create_app(settings, meter=meter)
    meter.close()


def test_demo_is_off_in_production_by_default(client):
    assert_error(client.get("/demo"), 404, "not_found")
    assert_error(client.post("/demo/turn", json={}), 404, "not_found")
    assert_error(client.get("/demo/users/demo/token-stats"), 404, "not_found")
    assert get_quota(client.application).demo_meter is None


# --- settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["QUOTA_ADMIN_TOKEN", "QUOTA_SERVICE_TOKEN", "QUOTA_SECRET_KEY"])
def test_production_refuses_to_start_without_a_secret(missing):
    env = {"QUOTA_ADMIN_TOKEN": ADMIN, "QUOTA_SERVICE_TOKEN": SERVICE, "QUOTA_SECRET_KEY": SECRET}
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        ApiSettings.from_env(env)
    with pytest.raises(ConfigError, match="shorter"):
        ApiSettings.from_env({**env, missing: "short"})


def test_settings_rules():
    with pytest.raises(ConfigError, match="must differ"):
        ApiSettings.from_env({"QUOTA_ADMIN_TOKEN": ADMIN, "QUOTA_SERVICE_TOKEN": ADMIN, "QUOTA_SECRET_KEY": SECRET})
    with pytest.raises(ConfigError, match="QUOTA_ENV"):
        ApiSettings.from_env({"QUOTA_ENV": "staging"})
    with pytest.raises(ConfigError, match="QUOTA_DEMO"):
        api_settings(QUOTA_DEMO="maybe")
    dev = ApiSettings.from_env({"QUOTA_ENV": "development"})
    assert dev.development and dev.demo_enabled and len(set([dev.admin_token, dev.service_token, dev.secret_key])) == 3
    assert set(dev.generated) == {"QUOTA_ADMIN_TOKEN", "QUOTA_SERVICE_TOKEN", "QUOTA_SECRET_KEY"}
    assert dev.admin_token not in repr(dev)
    assert not api_settings().demo_enabled


def test_create_app_without_redis_url_refuses():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        create_app(api_settings())
