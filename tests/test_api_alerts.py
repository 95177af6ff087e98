"""The API's side of threshold alerts (issue 11): a record's ``alerts``, the outbox listed and a dead
letter redelivered (admin only), and the alert figures on ``/metrics`` after a notifier ran."""

from __future__ import annotations

import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quota._alerts import OutboxCalls, WebhookSettings
from quota._notify import Notifier
from quota.testing import WebhookReceiver
from quota_server import create_app

from .api_support import ADMIN, SERVICE, api_settings, bearer, make_meter

SYS = "system_deepseek"
HOOK_SECRET = "whsec_" + base64.b64encode(b"api-alerts-test-secret-32-bytes!").decode()


@pytest.fixture
def meter(redis_server, clock):
    redis_server.client().flushall()
    m = make_meter(redis_server.url, clock, api_settings())
    yield m
    m.close()


@pytest.fixture
def client(meter):
    return create_app(api_settings(), meter=meter).test_client()


def spend(client, user: str, cny: float):
    body = {"user": user, "model_id": SYS, "input_tokens": int(cny * 1_000_000), "output_tokens": 0}
    response = client.post("/v1/usage", json=body, headers=bearer(SERVICE))
    assert response.status_code == 200
    return response.get_json()


def metrics(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if "alerts" in s.name}


def test_records_report_their_alerts_and_the_outbox_is_listed(client):
    assert spend(client, "alice", 3.9)["alerts"] == []
    assert spend(client, "alice", 0.2)["alerts"] == [80]
    assert spend(client, "bob", 6)["alerts"] == [80, 100]
    listed = client.get("/v1/alerts/pending", headers=bearer(ADMIN))
    assert listed.status_code == 200 and listed.get_json()["state"] == "pending"
    events = listed.get_json()["events"]
    assert sorted((e["user"], e["threshold"], e["type"]) for e in events) == [
        ("alice", 80, "quota.threshold_crossed"),
        ("bob", 80, "quota.threshold_crossed"),
        ("bob", 100, "quota.threshold_crossed"),
    ]
    assert {e["id"] for e in events} >= {"apitest:alice:2026-01:80:crossed:1"}
    assert all(e["attempts"] == 0 and e["last_error"] is None for e in events)
    credit = client.put("/v1/users/bob/credit", json={"credit": 100}, headers=bearer(ADMIN))
    assert credit.get_json()["cleared_alerts"] == [100, 80]
    assert client.get("/v1/alerts/pending", headers=bearer(SERVICE)).status_code == 403


def test_a_dead_letter_is_listed_and_redelivered(client, meter):
    spend(client, "alice", 4)
    outbox = OutboxCalls(meter.core.keys)
    _, [event] = meter.run(outbox.claim("alice", "t", 60_000, 10))
    assert meter.run(outbox.settle(event, "t", "dead", error="HTTP 500")) == "dead"
    assert client.get("/v1/alerts/pending", headers=bearer(ADMIN)).get_json()["events"] == []
    [dead] = client.get("/v1/alerts/dead", headers=bearer(ADMIN)).get_json()["events"]
    assert (dead["id"], dead["last_error"], dead["next_attempt_at"]) == (event.webhook_id, "HTTP 500", None)
    assert dead["dead_at"].endswith("Z")
    again = client.post(f"/v1/alerts/dead/{dead['id']}/redeliver", headers=bearer(ADMIN))
    assert again.status_code == 200 and again.get_json()["attempts"] == 0
    assert client.post(f"/v1/alerts/dead/{dead['id']}/redeliver", headers=bearer(ADMIN)).status_code == 404
    assert len(client.get("/v1/alerts/pending", headers=bearer(ADMIN)).get_json()["events"]) == 1


def test_metrics_show_what_the_notifiers_did(client, meter):
    before = metrics(client)
    assert before["quota_alerts_delivered_total"] == 0 and before["quota_alerts_census_age_seconds"] == float("inf")
    spend(client, "alice", 5)
    answers = iter([500])
    with WebhookReceiver(answer=lambda h, b: next(answers, 204)) as receiver:
        webhook = WebhookSettings(receiver.url, HOOK_SECRET, retry_base_s=0.05, retry_cap_s=0.1, timeout_s=2)
        assert Notifier(meter, webhook).run_once(10).pending == 0
    after = metrics(client)
    assert after["quota_alerts_emitted_total"] == 2 and after["quota_alerts_delivered_total"] == 2
    assert after["quota_alerts_failed_total"] == 1 and after["quota_alerts_dead_total"] == 0
    assert after["quota_alerts_pending"] == 0 and after["quota_alerts_oldest_pending_age_seconds"] == 0
    assert after["quota_alerts_census_age_seconds"] < 60
