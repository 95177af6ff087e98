"""``quota notify`` (issue 11): the outbox delivered to a loopback receiver, signed as Standard Webhooks
says (checked with the ``standardwebhooks`` package), retried, taken over after a crash, dead-lettered,
disabled by 410 Gone. On a real Redis and the real cluster (``real_backend``): fakeredis takes 0.5 s to
answer the 16,384 probes of one sweep, and proves nothing the scripts' own tests (test_alerts.py) do not."""

from __future__ import annotations

import base64
import json
import random
import time

import pytest
from standardwebhooks import Webhook

from quota import Meter
from quota._alerts import AlertEvent, OutboxCalls, WebhookSettings, backoff_s, outcome_of, parse_secret, signature
from quota._errors import ConfigError
from quota._notify import Notifier, disabled_key, parse_event_id, read_events, read_stats, redeliver, server_ms
from quota.testing import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"quota-test-secret-32-bytes-long!").decode()
SYS = "system_deepseek"
FAST = {"retry_base_s": 0.05, "retry_cap_s": 0.2, "timeout_s": 2.0, "lease_s": 30.0}


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def meter(real_backend, clock):
    m = Meter(real_backend.sync_client(), clock=clock, prefix="quota", monthly_credit=5)
    yield m
    m.close()


@pytest.fixture
def raw(real_backend):
    client = real_backend.sync_client()
    yield client
    client.close()


def notifier(meter, receiver, **options) -> Notifier:
    return Notifier(meter, WebhookSettings(receiver.url, SECRET, **{**FAST, **options}), poll_s=0.05)


def cross(meter, user: str, cny: int = 5) -> None:
    """Spend ``cny`` CNY of the 5: 4 crosses 80%, 5 crosses 80% and 100% in one record."""
    meter.update_token_usage(user, SYS, input_tokens=cny * 1_000_000, output_tokens=0, request_id=f"{user}-x")


def verified(received) -> list[dict]:
    """Every request's body, each checked with the standardwebhooks package (raises if one fails)."""
    return [Webhook(SECRET).verify(r.body, r.headers) for r in received]


def test_events_arrive_signed_and_the_outbox_empties(meter, receiver, raw):
    cross(meter, "alice")
    cross(meter, "bob", 4)
    report = notifier(meter, receiver).run_once(10)
    assert (report.delivered, report.failed, report.pending) == (3, 0, 0)
    bodies = verified(receiver.received)
    assert sorted((b["data"]["user"], b["data"]["threshold"]) for b in bodies) == [
        ("alice", 80),
        ("alice", 100),
        ("bob", 80),
    ]
    alice_100 = next(b for b in bodies if b["data"] == {**b["data"], "user": "alice", "threshold": 100})
    assert alice_100["type"] == "quota.threshold_crossed" and alice_100["timestamp"].endswith("Z")
    assert alice_100["data"] == {
        "user": "alice",
        "month": "2026-01",
        "threshold": 100,
        "monthly_used": 5.0,
        "monthly_credit": 5.0,
        "resets_at": "2026-02-01T00:00:00Z",
    }
    ids = sorted(r.headers["webhook-id"] for r in receiver.received)
    assert ids == [
        "quota:alice:2026-01:100:crossed:2",
        "quota:alice:2026-01:80:crossed:1",
        "quota:bob:2026-01:80:crossed:1",
    ]
    assert raw.exists("quota:{alice}:outbox") + raw.exists("quota:{bob}:outbox") == 0
    assert raw.zcard(meter.core.keys.outbox_index_key("alice")) == 0
    stats = read_stats(meter)
    assert (stats["emitted"], stats["delivered"], stats["pending"], stats["oldest_pending_ms"]) == (3, 3, 0, 0)


def test_a_cleared_threshold_is_delivered_too(meter, receiver):
    cross(meter, "alice")
    meter.set_monthly_credit("alice", 10)
    notifier(meter, receiver).run_once(10)
    kinds = sorted((b["type"], b["data"]["threshold"]) for b in verified(receiver.received))
    assert kinds == [
        ("quota.threshold_cleared", 80),
        ("quota.threshold_cleared", 100),
        ("quota.threshold_crossed", 80),
        ("quota.threshold_crossed", 100),
    ]


def test_a_receiver_answering_500_three_times_gets_the_same_id_each_time(meter, receiver):
    answers = iter([500, 500, 500])
    receiver.answer = lambda headers, body: next(answers, 200)
    cross(meter, "alice", 4)
    report = notifier(meter, receiver).run_once(10)
    assert (report.delivered, report.failed, report.pending) == (1, 3, 0)
    assert [r.status for r in receiver.received] == [500, 500, 500, 200]
    assert {r.headers["webhook-id"] for r in receiver.received} == {"quota:alice:2026-01:80:crossed:1"}
    assert len({r.headers["webhook-signature"] for r in receiver.received}) >= 1
    verified(receiver.received)
    waits = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:])]
    assert all(w >= 0.02 for w in waits), waits  # backed off: at least half the 0.05 s base


def test_a_receiver_down_then_up_gets_everything(meter, receiver):
    cross(meter, "alice")
    receiver.stop()
    n = notifier(meter, receiver)
    first = n.run_once(0)  # connection refused: both events scheduled for a retry
    assert first.failed == 2 and first.pending == 2
    pending = read_events(meter, dead=False)
    assert {e.attempts for e in pending} == {1} and all("Connection" in e.error for e in pending)
    receiver.start()
    assert n.run_once(10).pending == 0
    assert sorted(b["data"]["threshold"] for b in verified(receiver.received)) == [80, 100]


def test_an_event_past_its_retry_window_is_dead_and_can_be_redelivered(meter, receiver, raw):
    receiver.answer = lambda headers, body: 503
    cross(meter, "alice", 4)
    report = notifier(meter, receiver, retry_window_s=0.01).run_once(10)
    assert (report.dead, report.pending) == (1, 0)
    dead = read_events(meter, dead=True)
    assert [e.webhook_id for e in dead] == ["quota:alice:2026-01:80:crossed:1"] and dead[0].error == "HTTP 503"
    assert read_events(meter, dead=False) == [] and raw.llen("quota:{alice}:outbox_dead") == 1
    assert read_stats(meter)["dead"] == 1
    receiver.answer = lambda headers, body: 200
    user, field = parse_event_id("quota", dead[0].webhook_id)
    again = redeliver(meter, user, field)
    assert again.attempts == 0 and again.webhook_id == dead[0].webhook_id
    assert redeliver(meter, user, field) is None  # no longer dead
    notifier(meter, receiver).run_once(10)
    assert receiver.delivered()[-1].headers["webhook-id"] == dead[0].webhook_id
    assert raw.exists("quota:{alice}:outbox_dead") + raw.exists("quota:{alice}:outbox") == 0


def test_410_gone_disables_the_endpoint_until_enabled(meter, receiver, raw):
    receiver.answer = lambda headers, body: 410
    cross(meter, "alice")
    n = notifier(meter, receiver)
    report = n.run_once(5)
    assert len(receiver.received) == 1 and report.pending == 2  # one request, then it stopped
    assert {e.attempts for e in read_events(meter, dead=False)} == {0}  # released: not an attempt
    assert n.run_once(1).pending == 2 and len(receiver.received) == 1  # disabled: nothing sent
    raw.delete(disabled_key(meter.core.keys, n.webhook))  # `quota notify --enable`
    receiver.answer = lambda headers, body: 204
    assert notifier(meter, receiver).run_once(5).pending == 0 and len(receiver.delivered()) == 2


def test_a_crashed_notifiers_claim_is_taken_over_after_its_lease(meter, receiver):
    cross(meter, "alice", 4)
    calls = OutboxCalls(meter.core.keys)
    _, claimed = meter.run(calls.claim("alice", "dead-notifier", 300, 10))  # then it died: no settle
    assert [e.attempts for e in claimed] == [1]
    n = notifier(meter, receiver)
    assert n.run_once(0).pending == 1 and receiver.received == []  # leased: nobody else sends it
    assert n.run_once(5).pending == 0  # the lease ended: taken over
    assert [r.headers["webhook-id"] for r in receiver.received] == [claimed[0].webhook_id]
    late = meter.run(calls.settle(claimed[0], "dead-notifier", "retry", delay_ms=1, window_ms=10**6))
    assert late == "gone"  # the dead notifier's late answer changes nothing


def test_two_notifiers_send_each_event_once(meter, receiver):
    for i in range(20):
        cross(meter, f"u{i}")
    first, second = notifier(meter, receiver), notifier(meter, receiver)
    import threading

    done = [threading.Thread(target=n.run_once, args=(10,)) for n in (first, second)]
    for t in done:
        t.start()
    for t in done:
        t.join()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == len(set(ids)) == 40


def test_the_signature_is_the_spec_example():
    """The example of the Standard Webhooks specification, signed by our code."""
    key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize("secret", ["nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets_are_refused(secret):
    with pytest.raises(ConfigError, match="QUOTA_WEBHOOK_SECRET"):
        WebhookSettings("http://127.0.0.1:1/x", secret)


def test_settings_from_the_environment():
    with pytest.raises(ConfigError, match="QUOTA_WEBHOOK_URL"):
        WebhookSettings.from_env({})
    with pytest.raises(ConfigError, match="http"):
        WebhookSettings.from_env({"QUOTA_WEBHOOK_URL": "ftp://x", "QUOTA_WEBHOOK_SECRET": SECRET})
    s = WebhookSettings.from_env(
        {
            "QUOTA_WEBHOOK_URL": "https://u:p@h.example/x?t=1",
            "QUOTA_WEBHOOK_SECRET": SECRET,
            "QUOTA_WEBHOOK_RETRY_BASE_S": "1",
        }
    )
    assert s.retry_base_s == 1 and s.endpoint == "https://h.example/x" and "p@" not in repr(s)


def test_outcomes_and_backoff():
    assert [outcome_of(s) for s in (200, 204, 299, 410, 500, 404, 301, None)] == [
        "delivered",
        "delivered",
        "delivered",
        "gone",
        "retry",
        "retry",
        "retry",
        "retry",
    ]
    rng = random.Random(1)
    waits = [backoff_s(n, 5, 3600, rng) for n in range(1, 20)]
    assert 2.5 <= waits[0] <= 5 and 5 <= waits[1] <= 10 and all(1800 <= w <= 3600 for w in waits[12:])


def test_an_event_reads_back_as_written(meter):
    cross(meter, "alice", 4)
    event = read_events(meter, dead=False)[0]
    assert isinstance(event, AlertEvent) and event.as_dict()["created_at"].endswith("Z")
    assert json.loads(event.body()) == event.payload()
    assert abs(event.at_ms - server_ms(meter)) < 60_000 and event.attempts == 0
    assert time.time() * 1000 - event.at_ms < 60_000


def test_the_command_line(meter, receiver, real_backend, monkeypatch):
    """``quota notify``: --new-secret, --once (exit 0, or 3 with events left), --status, --redeliver,
    --enable (the same code the API and the long-running worker use)."""
    from click.testing import CliRunner

    from quota.cli import main

    runner = CliRunner()
    made = runner.invoke(main, ["notify", "--new-secret"])
    assert made.exit_code == 0 and parse_secret(made.output.strip())
    env = {
        "QUOTA_PREFIX": "quota",
        "QUOTA_WEBHOOK_URL": receiver.url,
        "QUOTA_WEBHOOK_SECRET": SECRET,
        "QUOTA_WEBHOOK_RETRY_WINDOW_S": "1",
        "QUOTA_WEBHOOK_RETRY_BASE_S": "0.05",
        "QUOTA_HISTORY_URL": "sqlite://",
    }
    url = ["--url", real_backend.url]
    assert runner.invoke(main, ["notify", "--once", *url], env={"QUOTA_HISTORY_URL": "sqlite://"}).exit_code == 2
    cross(meter, "alice", 4)
    receiver.answer = lambda headers, body: 500
    left = runner.invoke(main, ["notify", "--once", "--max-wait", "0", *url], env=env)
    assert left.exit_code == 3 and "1 still pending" in left.output, left.output
    dead = runner.invoke(main, ["notify", "--once", "--max-wait", "5", *url], env=env)
    assert dead.exit_code == 0 and "dead 1" in dead.output, dead.output
    status = runner.invoke(main, ["notify", "--status", *url], env=env)
    assert "dead: 1" in status.output and "quota:alice:2026-01:80:crossed:1" in status.output
    back = runner.invoke(main, ["notify", "--redeliver", "quota:alice:2026-01:80:crossed:1", *url], env=env)
    assert back.exit_code == 0 and json.loads(back.output)["attempts"] == 0
    assert runner.invoke(main, ["notify", "--redeliver", "nope", *url], env=env).exit_code == 2
    receiver.answer = lambda headers, body: 410
    gone = runner.invoke(main, ["notify", "--once", "--max-wait", "5", *url], env=env)
    assert gone.exit_code == 3
    receiver.answer = lambda headers, body: 204
    enabled = runner.invoke(main, ["notify", "--enable", *url], env=env)
    assert enabled.exit_code == 0 and "enabled" in enabled.output
    done = runner.invoke(main, ["notify", "--once", *url], env=env)
    assert done.exit_code == 0 and "delivered 1" in done.output, done.output
