"""The example Django Channels consumer, driven by WebsocketCommunicator through a whole month.

Real pieces: Channels' consumer machinery, the official openai client against the loopback stub,
the harness Redis. Each streamed chat costs 0.7 CNY (300k in, 200k out), each summary or naming
call 0.2 CNY (100k in, 50k out) on system_deepseek (0.001 / 0.002 CNY per 1k tokens).
"""

from __future__ import annotations

import openai
import pytest
import redis.asyncio as aredis

from .django_settings import configure

configure()  # one Django configuration for the session, shared with tests/test_django.py

from channels.testing import WebsocketCommunicator  # noqa: E402 - needs settings first

from examples.channels_chat.consumer import ChatConsumer  # noqa: E402
from examples.stub_llm import StubLLM  # noqa: E402
from quota import AsyncMeter  # noqa: E402

NANO = 10**9


class FakeUser:
    is_authenticated = True

    def __init__(self, username: str):
        self.username = username
        self.pk = username  # the consumer meters str(user.pk) (QUOTA["USER_ID"]'s default)

    def get_username(self) -> str:
        return self.username


def with_user(app, user):
    """What AuthMiddlewareStack does in production: put the user in the scope."""

    async def wrapped(scope, receive, send):
        return await app({**scope, "user": user}, receive, send)

    return wrapped


async def send_message(
    comm: WebsocketCommunicator, text: str, model_id: str = "system_deepseek", warnings: list | None = None
) -> tuple[list, dict]:
    """The reply's deltas and its last event; ``quota_warning`` events (alerts, pushed mid-reply) go to
    ``warnings``."""
    await comm.send_json_to({"type": "message", "text": text, "model_id": model_id})
    deltas = []
    while True:
        event = await comm.receive_json_from(timeout=10)
        if event["type"] == "delta":
            deltas.append(event["text"])
        elif event["type"] == "quota_warning" and warnings is not None:
            warnings.append((len(deltas), event))
        else:
            return deltas, event


@pytest.fixture
async def setup(redis_server, clock):
    redis_server.client().flushall()
    meter = AsyncMeter(aredis.Redis(host="127.0.0.1", port=redis_server.port), clock=clock, monthly_credit=5)
    with StubLLM(pieces=["好的，", "this is ", "the answer."]) as stub:
        llm = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
        # custom_llm: the client for users' own models (custom_mykey, tests.django_settings.custom_models)
        app = with_user(ChatConsumer.as_asgi(meter=meter, llm=llm, custom_llm=llm), FakeUser("alice"))
        yield meter, app, stub
    await meter.aclose()


async def test_a_whole_month_through_the_consumer(setup, clock):
    meter, app, stub = setup
    clock.set(2026, 1, 3, 9, 0, 0)
    comm = WebsocketCommunicator(app, "/ws/chat/")
    connected, _ = await comm.connect()
    assert connected

    # (calls made by the turn, monthly_used after it) — summaries at 6+ messages, a name once
    expected = [
        (["chat", "name"], 0.9),
        (["chat"], 1.6),
        (["chat", "summary"], 2.5),
        (["chat"], 3.2),
        (["chat", "summary"], 4.1),
        (["chat"], 4.8),
        (["chat", "summary"], 5.7),
    ]  # starts at 4.8 < 5: allowed, and finishes past 5
    warned = {}
    for day, (calls, used) in enumerate(expected, start=4):
        clock.set(2026, 1, day, 12, 0, 0)
        warnings: list = []
        deltas, done = await send_message(comm, f"question {day}", warnings=warnings)
        assert "".join(deltas) == "好的，this is the answer."  # the reply always streams whole
        assert (done["type"], done["calls"], done["monthly_used"]) == ("reply_done", calls, used)
        assert [w["threshold"] for _, w in warnings] == done["alerts"]
        warned.update({w["threshold"]: (used, w) for _, w in warnings})
    assert done["title"] == "好的，this is the answer."
    # 80% (4 CNY) was crossed by the reply that ended at 4.1, 100% by the chat call of the last one (5.5),
    # each pushed once, at once (before reply_done), with the bilingual notice
    assert {t: used for t, (used, _) in warned.items()} == {80: 4.1, 100: 5.7}
    warning = warned[80][1]
    assert (warning["code"], warning["monthly_credit"], warning["resets_at"]) == (
        "quota_warning",
        5.0,
        "2026-02-01T00:00:00Z",
    )
    assert "80%" in warning["message"] and "额度" in warning["message"]

    clock.set(2026, 1, 20)
    deltas, refused = await send_message(comm, "one more")  # the next message is refused
    assert deltas == []
    assert refused["type"] == "quota_exceeded"
    assert (refused["monthly_used"], refused["monthly_credit"]) == (5.7, 5.0)
    assert refused["resets_at"] == "2026-02-01T00:00:00Z" and "custom" in refused["message"]
    requests_before = len(stub.requests)

    _, custom = await send_message(comm, "with my own key", model_id="custom_mykey")
    assert custom["type"] == "reply_done" and custom["calls"] == ["chat"]
    assert len(stub.requests) == requests_before + 1  # the refused turn called no LLM

    stats = await meter.get_token_stats("alice")
    sysm = stats["models"]["system_deepseek"]
    assert (sysm["calls"], sysm["input_tokens"], sysm["output_tokens"]) == (
        7 + 3 + 1,
        7 * 300_000 + 4 * 100_000,
        7 * 200_000 + 4 * 50_000,
    )
    assert sysm["cost"] == 5.7 and stats["monthly_used"] == 5.7 and stats["exceeded"]
    assert stats["models"]["custom_mykey"]["input_tokens"] == 300_000  # counted, never limited

    clock.set(2026, 2, 1, 0, 0, 0)  # the next UTC month
    _, feb = await send_message(comm, "new month")
    assert feb["type"] == "reply_done" and feb["monthly_used"] == 0.9  # chat + the due summary
    stats = await meter.get_token_stats("alice")
    assert stats["current_month"] == "2026-02" and stats["monthly_used"] == 0.9
    assert stats["history"]["2026-01"]["system_deepseek"]["cost"] == 5.7
    await comm.disconnect()


async def test_an_anonymous_socket_is_closed(setup):
    meter, app, _ = setup

    class Anonymous:
        is_authenticated = False

    comm = WebsocketCommunicator(with_user(ChatConsumer.as_asgi(meter=meter, llm=None), Anonymous()), "/ws/chat/")
    connected, code = await comm.connect()
    assert not connected and code == 4401
