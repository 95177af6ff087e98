"""The official ``openai`` client against a loopback OpenAI-compatible stub: every call counted.

Streaming and not, with and without ``stream_options={"include_usage": True}``, a stream the
client leaves early, and a worker task cancelled mid-stream.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from examples.stub_llm import StubLLM
from quota._usage import estimate_prompt_tokens, estimate_tokens

MESSAGES = [{"role": "user", "content": "请介绍一下你自己 please"}]
PIECES = ["你好，", "this is ", "a stub ", "reply."]


@pytest.fixture
def stub():
    with StubLLM(pieces=list(PIECES), stream_usage=(3000, 2000), plain_usage=(1000, 500)) as server:
        yield server


def system(meter, user: str) -> dict:
    return meter.get_token_stats(user, months=0)["models"]["system_deepseek"]


def test_plain_completion_counted_with_the_response_id(meter, stub):
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with meter.turn("u1", "system_deepseek") as turn:
        response = client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
        rec = turn.record(response)
        again = turn.record(response)  # recorded twice by mistake: once
    assert (rec.status, again.status) == ("counted", "duplicate")
    assert rec.request_id == response.id == "chatcmpl-stub-1"
    assert rec.result.cost_nano == 1000 * 1000 + 500 * 2000
    s = system(meter, "u1")
    assert (s["input_tokens"], s["output_tokens"], s["calls"], s["estimated_calls"]) == (1000, 500, 1, 0)


def test_stream_with_include_usage_is_exact(meter, stub):
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with meter.turn("u2", "system_deepseek") as turn:
        stream = client.chat.completions.create(
            model="deepseek-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        metered = turn.stream(stream, prompt=MESSAGES)
        text = "".join(c.choices[0].delta.content or "" for c in metered if c.choices)
        assert metered.recorded is not None  # counted as soon as the stream ended
    assert text == "".join(PIECES)
    assert stub.requests[-1]["stream_options"] == {"include_usage": True}
    assert metered.recorded.usage == (3000, 2000, "chatcmpl-stub-1", False, 0, 0)
    s = system(meter, "u2")
    assert (s["input_tokens"], s["output_tokens"], s["estimated_calls"]) == (3000, 2000, 0)


def test_stream_without_usage_is_estimated_and_marked(meter, stub):
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with meter.turn("u3", "system_deepseek") as turn:
        stream = client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, stream=True)
        for _ in turn.stream(stream, prompt=MESSAGES):
            pass
    rec = turn.records[-1]
    assert rec.estimated and rec.result.estimated
    assert (rec.usage.input_tokens, rec.usage.output_tokens) == (
        estimate_prompt_tokens(MESSAGES),
        estimate_tokens("".join(PIECES)),
    )
    assert rec.usage.output_tokens == 2 + 6  # 你好 + ceil(22 / 4)
    s = system(meter, "u3")
    assert (s["calls"], s["estimated_calls"], s["output_tokens"]) == (1, 1, 8)


def test_a_stream_the_client_leaves_early_is_counted_with_an_estimate(meter, stub):
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with meter.turn("u4", "system_deepseek") as turn:
        stream = client.chat.completions.create(
            model="deepseek-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        seen = []
        for chunk in turn.stream(stream, prompt=MESSAGES):
            seen.append(chunk.choices[0].delta.content)
            if len(seen) == 3:  # the browser went away
                break
        assert turn.records == []  # not yet: the turn's end counts it
    rec = turn.records[-1]
    assert rec.status == "counted" and rec.estimated
    assert rec.usage.output_tokens == estimate_tokens("".join(PIECES[:2])) > 0
    assert rec.request_id == "chatcmpl-stub-1"
    assert system(meter, "u4")["estimated_calls"] == 1


async def test_async_streams_exact_and_estimated(ameter, stub):
    client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    async with ameter.turn("u5", "system_deepseek") as turn:
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for _ in turn.stream(stream, prompt=MESSAGES):
            pass
        stream = await client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, stream=True)
        async for _ in turn.stream(stream, prompt=MESSAGES):
            break  # left early: counted when the turn ends
        response = await client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
        await turn.record(response)
    statuses = [(r.request_id, r.status, r.estimated) for r in turn.records]
    assert statuses == [
        ("chatcmpl-stub-1", "counted", False),
        ("chatcmpl-stub-3", "counted", False),
        ("chatcmpl-stub-2", "counted", True),
    ]
    s = (await ameter.get_token_stats("u5", months=0))["models"]["system_deepseek"]
    assert (s["calls"], s["estimated_calls"]) == (3, 1)
    assert s["input_tokens"] == 3000 + estimate_prompt_tokens(MESSAGES) + 1000


async def test_a_worker_task_cancelled_mid_stream_is_still_counted(ameter):
    with StubLLM(pieces=["你"] * 40, chunk_delay_s=0.05) as slow:
        client = openai.AsyncOpenAI(base_url=slow.base_url, api_key="test", max_retries=0)
        started = asyncio.Event()
        got = []

        async def job() -> None:
            async with ameter.turn("u6", "system_deepseek") as turn:
                stream = await client.chat.completions.create(
                    model="deepseek-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
                async for chunk in turn.stream(stream, prompt=MESSAGES):
                    got.append(chunk.choices[0].delta.content)
                    if len(got) == 4:
                        started.set()

        task = asyncio.create_task(job())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s = (await ameter.get_token_stats("u6", months=0))["models"]["system_deepseek"]
        assert (s["calls"], s["estimated_calls"]) == (1, 1)
        assert s["output_tokens"] == len(got) - 1 >= 3  # one token per 你 received ("" first)
        assert s["input_tokens"] == estimate_prompt_tokens(MESSAGES)


async def test_redis_away_during_a_stream_spools_it(stub, tmp_path, clock):
    from quota import AsyncMeter
    from quota._spool import Spool
    from quota.testing import free_ports

    meter = AsyncMeter.from_url(
        f"redis://127.0.0.1:{free_ports(1, start=26800)[0]}", clock=clock, spool=tmp_path / "s.spool"
    )
    client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    async with meter.turn("u7", "system_deepseek") as turn:
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for _ in turn.stream(stream):
            pass
    assert turn.records[-1].status == "spooled" and turn.records[-1].usage == (
        3000,
        2000,
        "chatcmpl-stub-1",
        False,
        0,
        0,
    )
    assert Spool(tmp_path / "s.spool").pending_count() == 1
    await meter.aclose()
