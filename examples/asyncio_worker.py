"""A plain asyncio agent worker: jobs from a queue, each one a metered turn.

Run it against a local Redis and the loopback stub LLM (no API key, no network)::

    python -m examples.asyncio_worker

or against real services: ``REDIS_URL=redis://... OPENAI_BASE_URL=https://api.deepseek.com
OPENAI_API_KEY=... python -m examples.asyncio_worker --real``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import openai

from quota import AsyncMeter, QuotaExceeded


@dataclass
class Job:
    user: str
    model_id: str
    messages: list[dict[str, str]]


async def handle(meter: AsyncMeter, llm: Any, job: Job, provider_model: str = "deepseek-chat") -> dict[str, Any]:
    """One user message: the check, then the streamed reply, counted however the stream ends."""
    try:
        async with meter.turn(job.user, job.model_id) as turn:
            stream = await llm.chat.completions.create(
                model=provider_model,
                messages=job.messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            text = []
            async for chunk in turn.stream(stream, prompt=job.messages):
                text.extend(c.delta.content or "" for c in chunk.choices)
    except QuotaExceeded as exc:
        return exc.event
    return {"type": "reply", "text": "".join(text), "record": turn.records[-1].as_dict()}


async def worker(
    meter: AsyncMeter, llm: Any, jobs: asyncio.Queue[Job | None], results: asyncio.Queue[dict[str, Any]]
) -> None:
    while (job := await jobs.get()) is not None:
        await results.put(await handle(meter, llm, job))


async def main(real: bool) -> None:
    from quota.testing import redis_url_or_local

    from .stub_llm import StubLLM

    url, local = redis_url_or_local()
    stub = None if real else StubLLM(stream_usage=(1200, 800)).start()
    try:
        spool = os.path.join(tempfile.gettempdir(), "quota-example-worker.spool")
        meter = AsyncMeter.from_url(url, spool=spool)
        llm = openai.AsyncOpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL") if real else stub.base_url,
            api_key=os.environ.get("OPENAI_API_KEY", "stub"),
        )
        jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for i in range(3):
            await jobs.put(Job("demo-user", "system_deepseek", [{"role": "user", "content": f"hello {i}"}]))
        await jobs.put(None)
        await worker(meter, llm, jobs, results)
        while not results.empty():
            print(json.dumps(await results.get(), ensure_ascii=False))
        print(json.dumps(await meter.get_token_stats("demo-user"), ensure_ascii=False)[:400])
        await meter.aclose()
    finally:
        if stub is not None:
            stub.stop()
        if local is not None:
            local.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use OPENAI_BASE_URL/OPENAI_API_KEY instead of the stub")
    asyncio.run(main(parser.parse_args().real))
