"""A reply lost after the script ran: redis-py retries, the request id makes it count once."""

import pytest
import redis
from redis.connection import Connection

from quota import Meter


@pytest.fixture
def lose_next_replies(monkeypatch):
    """Make the next N replies vanish after the server has executed the command."""
    state = {"left": 0}
    original = Connection.read_response

    def read_response(self, *args, **kwargs):
        reply = original(self, *args, **kwargs)  # the server has run the command
        if state["left"] > 0:
            state["left"] -= 1
            self.disconnect()
            raise redis.ConnectionError("reply lost (test)")
        return reply

    monkeypatch.setattr(Connection, "read_response", read_response)
    return state


def test_lost_reply_is_retried_and_counted_once(redis_server, lose_next_replies):
    redis_server.client().flushall()
    meter = Meter.from_url(redis_server.url)
    lose_next_replies["left"] = 1
    r = meter.update_token_usage("alice", "system_deepseek", 1000, 0)  # auto request id
    assert lose_next_replies["left"] == 0  # the reply really was lost once
    assert r.monthly_used_nano == 1_000_000 and not r.duplicate  # our own retry is not a duplicate
    lose_next_replies["left"] = 1
    r = meter.update_token_usage("alice", "system_deepseek", 1000, 0, request_id="caller-1")
    assert r.monthly_used_nano == 2_000_000
    stats = meter.get_token_stats("alice")
    assert stats["models"]["system_deepseek"]["calls"] == 2


def test_lost_pipeline_reply_is_retried_and_counted_once(redis_server, lose_next_replies):
    redis_server.client().flushall()
    meter = Meter.from_url(redis_server.url)
    lose_next_replies["left"] = 1
    results = meter.update_token_usage_many(
        [dict(user=f"u{i % 3}", model_id="system_deepseek", input_tokens=1000, output_tokens=0) for i in range(30)]
    )
    assert lose_next_replies["left"] == 0
    assert [r.duplicate for r in results] == [False] * 30
    assert sum(meter.get_token_stats(f"u{i}")["models"]["system_deepseek"]["calls"] for i in range(3)) == 30


def test_without_request_ids_a_retry_would_double_count(redis_server, lose_next_replies):
    """The control: the same lost reply with a plain HINCRBY (no id) counts twice. This is the
    failure the request id prevents, shown on the same server."""
    client = redis.Redis.from_url(
        redis_server.url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 2), retry_on_error=[redis.ConnectionError]
    )
    client.delete("control")
    lose_next_replies["left"] = 1
    client.hincrby("control", "calls", 1)
    assert client.hget("control", "calls") == b"2"


def test_the_sync_meter_sends_scripts_on_the_thin_path(redis_server, monkeypatch):
    """``Meter.from_url``'s plain client sends EVALSHA through quota._sync._compat.send_script,
    not redis-py's per-command layers (bench/core.py measures why); the retries above, the
    timeouts (tests/test_storage.py) and the pool's queueing (tests/test_pools.py) run on it."""
    meter = Meter.from_url(redis_server.url, history=None)

    def refused(*args, **kwargs):
        raise AssertionError("the thin path should not go through execute_command")

    monkeypatch.setattr(redis.Redis, "execute_command", refused)
    assert meter.update_token_usage("thin", "system_deepseek", 10, 1).input_tokens == 10
    monkeypatch.undo()
    redis_server.client().script_flush()  # NOSCRIPT: EVAL with the source, thin too
    monkeypatch.setattr(redis.Redis, "execute_command", refused)
    assert meter.update_token_usage("thin", "system_deepseek", 10, 1).monthly_used_nano > 0
    meter.close()
