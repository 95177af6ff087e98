"""/openapi.json is valid OpenAPI 3.1, documents every route, and matches what the routes answer.

A recording client sends a scenario touching every endpoint and most error paths; every response
must be documented for its path, method and status, carry the documented content type, and
validate against the documented schema; every request body that got a 200 must validate against
the documented request schema (so the document neither rejects what the API accepts nor hides a
status the API gives).
"""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from quota._alerts import OutboxCalls
from quota._core import RECORD_FIELDS, quota_exceeded_event
from quota_server import create_app, get_quota

from .api_support import ADMIN, SERVICE, api_settings, bearer, make_meter, user_token

SYS = "system_deepseek"


@pytest.fixture
def app(redis_server, clock):
    redis_server.client().flushall()
    settings = api_settings(QUOTA_DEMO="1")
    meter = make_meter(redis_server.url, clock, settings)
    yield create_app(settings, meter=meter)
    meter.close()


def rule_to_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def path_template(doc: dict, path: str) -> str | None:
    for template in doc["paths"]:
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            return template
    return None


def schema_with_components(schema: dict, doc: dict) -> dict:
    return {**schema, "components": doc["components"]}


def test_document_is_valid_openapi(app):
    doc = app.test_client().get("/openapi.json").get_json()
    validate_spec(doc)
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_documented_usage_record_has_the_core_fields(app):
    """POST /v1/usage takes what the core takes (quota._core.RECORD_FIELDS), and says so."""
    record = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["UsageRecord"]
    assert set(record["properties"]) == set(RECORD_FIELDS)


@pytest.mark.parametrize("demo", ["0", "1"])
def test_every_route_is_documented_and_every_documented_route_exists(redis_server, clock, demo):
    settings = api_settings(QUOTA_DEMO=demo)
    meter = make_meter(redis_server.url, clock, settings)
    app = create_app(settings, meter=meter)
    doc = app.test_client().get("/openapi.json").get_json()
    served = {
        (rule_to_path(r.rule), m.lower())
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
        for m in r.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    meter.close()


class Recorder:
    """Wraps the test client; keeps every (method, path, request json, response)."""

    def __init__(self, client):
        self.client, self.seen = client, []

    def __call__(self, method, path, **kw):
        response = getattr(self.client, method)(path, **kw)
        self.seen.append((method, path.split("?")[0], kw.get("json"), response))
        return response


def scenario(call) -> None:
    svc, adm, alice = bearer(SERVICE), bearer(ADMIN), bearer(user_token("alice"))
    rec = {"user": "alice", "model_id": SYS, "input_tokens": 1000, "output_tokens": 10}
    call("get", "/healthz")
    call("get", "/metrics")
    call("get", "/openapi.json")
    call("get", "/panel")
    call("get", "/demo")
    call("post", "/v1/usage", json=rec | {"request_id": "r1"}, headers=svc)
    call("post", "/v1/usage", json=rec | {"request_id": "r1"}, headers=svc)
    call("post", "/v1/usage", json=rec | {"request_id": "r1", "input_tokens": 1}, headers=svc)  # 409
    call(
        "post",
        "/v1/usage",
        json=[
            rec,
            rec
            | {
                "model_id": "custom_x",
                "estimated": True,
                "price": {"cost_per_1k_input": "0.5", "cost_per_1k_output": 1},
            },
        ],
        headers=svc,
    )
    call(
        "post",
        "/v1/usage",
        json=[rec | {"request_id": "new"}, rec | {"request_id": "r1", "input_tokens": 2}],
        headers=svc,
    )  # batch 409
    call("post", "/v1/usage", json=rec | {"request_id": "p1", "purpose": "chat"}, headers=svc)  # issue 15
    call("post", "/v1/usage", json=rec | {"request_id": "p1", "purpose": "tool"}, headers=svc)  # 409
    call("post", "/v1/usage", json=rec | {"purpose": "Not OK"}, headers=svc)  # 400
    call("post", "/v1/usage", json=[rec | {"purpose": "summary"}, rec | {"purpose": None}], headers=svc)
    call("post", "/v1/usage", json=rec | {"input_tokens": -1}, headers=svc)
    call("post", "/v1/usage", data="{", content_type="application/json", headers=svc)
    call("post", "/v1/usage", data="x", content_type="text/plain", headers=svc)
    call("post", "/v1/usage", json=rec, headers=alice)
    call("post", "/v1/usage", json=rec)
    call("post", "/v1/usage", data="[" + "1," * 600_000 + "1]", content_type="application/json", headers=svc)
    call("get", "/v1/users/alice/token-stats", headers=alice)
    call("get", "/v1/users/alice/token-stats?months=3", headers=svc)
    call("get", "/v1/users/alice/token-stats?months=-3", headers=svc)
    call("get", "/v1/users/bob/token-stats", headers=alice)
    call("get", "/v1/users/alice/token-stats", headers=bearer(user_token("alice", ttl_s=1, now_s=0)))
    call("get", f"/v1/users/alice/quota?model_id={SYS}", headers=svc)
    call("put", "/v1/users/alice/credit", json={"credit": "0.001"}, headers=adm)
    call("put", "/v1/users/alice/credit", json={"credit": 3, "month": "2026-03"}, headers=adm)
    call("put", "/v1/users/alice/credit", json={"credit": -3}, headers=adm)
    call("put", "/v1/users/alice/credit", json={"credit": 3}, headers=svc)
    call("get", f"/v1/users/alice/quota?model_id={SYS}", headers=alice)  # denied, with the event
    call("get", "/v1/users/alice/quota?model_id=system_nope", headers=svc)
    call("get", "/v1/models", headers=svc)
    call("get", "/v1/models", headers=alice)
    call("post", "/v1/users/alice/tokens/revoke", headers=svc)  # 403
    call("post", "/v1/users/al%7Bice%7D/tokens/revoke", headers=adm)  # 400
    call("post", "/v1/users/alice/tokens/revoke", headers=adm)
    call("get", "/v1/users/alice/token-stats", headers=alice)  # 401 token_revoked
    call("get", "/v1/admin/months/2026-01/summary", headers=adm)
    call("get", "/v1/admin/months/2026-01/summary", headers=svc)  # 403
    call("get", "/v1/admin/months/2026-13/summary", headers=adm)  # 400
    call("get", "/v1/admin/months/2026-01/users?sort=share&limit=1", headers=adm)
    call("get", "/v1/admin/months/2026-01/users?format=csv", headers=adm)
    call("get", "/v1/admin/months/2026-01/users?cursor=nope", headers=adm)  # 400
    call("get", "/v1/admin/months/2026-01/overview?top=2&near=5", headers=adm)
    call(
        "post",
        "/demo/turn",
        json={"user": "demo-x", "model_id": SYS, "conversation_id": "c", "turn": 1, "message": "hi"},
    )
    call("get", "/demo/users/demo-x/token-stats")
    get_quota(call.client.application).demo_meter.set_monthly_credit("demo-x", 0)  # the demo's own keys
    call("post", "/demo/turn", json={"user": "demo-x", "model_id": SYS, "conversation_id": "c", "turn": 2})
    call("post", "/demo/turn", json={"user": "alice", "model_id": SYS, "conversation_id": "c", "turn": 1})
    call("post", "/demo/turn", json={"user": "demo-x", "model_id": SYS, "conversation_id": "c", "turn": 51})
    call("get", "/demo/users/alice/token-stats")
    # threshold alerts: a record that crosses both, the outbox listed, a dead letter redelivered
    call("post", "/v1/usage", json=rec | {"user": "bob", "input_tokens": 6_000_000}, headers=svc)
    call("put", "/v1/users/bob/credit", json={"credit": 100}, headers=adm)  # clears both
    meter = get_quota(call.client.application).meter
    outbox = OutboxCalls(meter.core.keys)
    _, (first, *_) = meter.run(outbox.claim("bob", "test", 60_000, 1))
    meter.run(outbox.settle(first, "test", "dead", error="HTTP 500"))
    call("get", "/v1/alerts/pending", headers=adm)
    call("get", "/v1/alerts/dead?limit=5", headers=adm)
    call("get", "/v1/alerts/dead?limit=0", headers=adm)  # 400
    call("get", "/v1/alerts/pending", headers=svc)  # 403
    call("post", f"/v1/alerts/dead/{first.webhook_id}/redeliver", headers=adm)
    call("post", f"/v1/alerts/dead/{first.webhook_id}/redeliver", headers=adm)  # 404: not dead any more
    call("post", "/v1/alerts/dead/nothing/redeliver", headers=adm)  # 400
    call("get", "/metrics")


def test_responses_match_the_document(app):
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    call = Recorder(client)
    scenario(call)
    statuses = set()
    for method, path, body, response in call.seen:
        template = path_template(doc, path)
        assert template, f"{path} is not documented"
        operation = doc["paths"][template][method]
        documented = operation["responses"].get(str(response.status_code))
        assert documented, f"{method.upper()} {path} answered {response.status_code}, which is not documented"
        statuses.add((template, method, response.status_code))
        media = documented["content"].get(response.mimetype)
        assert media is not None, (path, response.mimetype, list(documented["content"]))
        if response.mimetype == "application/json":
            errors = sorted(
                Draft202012Validator(schema_with_components(media["schema"], doc)).iter_errors(response.get_json()),
                key=str,
            )
            assert not errors, f"{method.upper()} {path} {response.status_code}: {errors[0].message}"
        if response.status_code == 200 and body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert Draft202012Validator(schema_with_components(schema, doc)).is_valid(body), (path, body)
    # the scenario really covered the interesting answers
    for expected in [("/v1/usage", "post", s) for s in (200, 400, 401, 403, 409, 413, 415)] + [
        ("/v1/users/{user}/quota", "get", 200),
        ("/v1/users/{user}/token-stats", "get", 401),
        ("/v1/users/{user}/credit", "put", 403),
        ("/demo/turn", "post", 400),
        ("/demo/users/{user}/token-stats", "get", 200),
        ("/demo/users/{user}/token-stats", "get", 400),
        ("/v1/users/{user}/tokens/revoke", "post", 200),
        ("/v1/users/{user}/tokens/revoke", "post", 403),
        ("/v1/users/{user}/tokens/revoke", "post", 400),
        ("/v1/admin/months/{month}/summary", "get", 200),
        ("/v1/admin/months/{month}/summary", "get", 403),
        ("/v1/admin/months/{month}/users", "get", 200),
        ("/v1/admin/months/{month}/users", "get", 400),
        ("/v1/admin/months/{month}/overview", "get", 200),
        ("/v1/alerts/pending", "get", 200),
        ("/v1/alerts/dead", "get", 200),
        ("/v1/alerts/dead", "get", 400),
        ("/v1/alerts/pending", "get", 403),
        ("/v1/alerts/dead/{event_id}/redeliver", "post", 200),
        ("/v1/alerts/dead/{event_id}/redeliver", "post", 404),
        ("/v1/alerts/dead/{event_id}/redeliver", "post", 400),
    ]:
        assert expected in statuses, expected
    denied = [r.get_json() for m, p, b, r in call.seen if p.endswith("/quota") and r.status_code == 200]
    assert any(d.get("event", {}).get("code") == "quota_exceeded" for d in denied) and any(
        d["type"] == "quota_exceeded"
        for m, p, b, r in call.seen
        if p == "/demo/turn"
        for d in [r.get_json()]
        if "type" in d
    )


def test_both_codes_of_the_quota_exceeded_event_match_the_schema(app):
    """``code``: quota_exceeded (the credit is used up) or credit_held (the rest is held by replies
    in progress); the held one is hard to reach through the API, so it is built as the core does."""
    doc = app.test_client().get("/openapi.json").get_json()
    schema = {"$ref": "#/components/schemas/QuotaExceededEvent"}
    validator = Draft202012Validator(schema_with_components(schema, doc))
    used_up = quota_exceeded_event(SYS, 5_000_000_000, 5_000_000_000, "2026-02-01T00:00:00Z")
    held = quota_exceeded_event(SYS, 4_990_000_000, 5_000_000_000, "2026-02-01T00:00:00Z", held_nano=10_000_000)
    assert (used_up["code"], held["code"]) == ("quota_exceeded", "credit_held")
    for event in (used_up, held):
        validator.validate(event)
    assert doc["components"]["schemas"]["QuotaExceededEvent"]["properties"]["code"]["enum"] == [
        "quota_exceeded",
        "credit_held",
    ]


def test_error_bodies_of_unrouted_requests_match_the_error_schema(app):
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    validator = Draft202012Validator(schema_with_components({"$ref": "#/components/schemas/Error"}, doc))
    for response in (client.get("/nowhere"), client.delete("/v1/usage"), client.post("/healthz")):
        assert response.status_code in (404, 405)
        validator.validate(response.get_json())


def test_schema_would_catch_a_drift(app):
    """The check above can fail: a response with an undocumented key does not validate."""
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    body = client.get("/v1/users/alice/token-stats", headers=bearer(SERVICE)).get_json()
    validator = Draft202012Validator(schema_with_components({"$ref": "#/components/schemas/TokenStats"}, doc))
    assert validator.is_valid(body)
    assert not validator.is_valid(body | {"surprise": 1})
    assert not validator.is_valid({k: v for k, v in body.items() if k != "remaining"})
