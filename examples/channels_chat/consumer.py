"""The seed's call sites in a Django Channels chat consumer.

``process_message()`` opens a quota turn when the user's message arrives: over the monthly credit
on a system model it sends the ``quota_exceeded`` event and stops. Otherwise the reply streams to
the browser, and every LLM call of the reply is counted through the same turn: the chat stream,
``summarize()`` (history compression) and ``generate_name_if_needed()`` (the conversation title).
None of them can be stopped by the credit: the reply in progress always finishes.

Wire it in ``asgi.py``::

    meter = AsyncMeter.from_url(spool="/var/lib/chat/quota.spool")
    llm = openai.AsyncOpenAI(base_url="https://api.deepseek.com", api_key=...)
    application = ProtocolTypeRouter({"websocket": AuthMiddlewareStack(URLRouter([
        path("ws/chat/", ChatConsumer.as_asgi(meter=meter, llm=llm)),
    ]))})

Browser -> server: ``{"type": "message", "text": "...", "model_id": "system_deepseek"}``.
Server -> browser: ``delta`` events while the reply streams, then ``reply_done``; or the
``quota_exceeded`` event; or ``error`` with code ``quota_unavailable`` (policy "deny" only).
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from quota import QuotaExceeded, StorageUnavailable

SUMMARIZE_AT = 6          # messages of history before they are summarised into one
KEEP_AFTER_SUMMARY = 2    # the latest messages kept word for word


class ChatConsumer(AsyncJsonWebsocketConsumer):
    meter: Any = None                       # a quota.AsyncMeter, set with as_asgi(meter=...)
    llm: Any = None                         # an openai.AsyncOpenAI on an OpenAI-compatible endpoint
    provider_models: dict[str, str] = {"system_deepseek": "deepseek-chat"}
    default_model: str = "system_deepseek"

    def __init__(self, *args: Any, meter: Any = None, llm: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.meter = meter if meter is not None else type(self).meter
        self.llm = llm if llm is not None else type(self).llm

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.close(code=4401)
            return
        self.user_id = str(user.get_username() if hasattr(user, "get_username") else user.username)
        self.history: list[dict[str, str]] = []
        self.title: str | None = None
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "message" and isinstance(content.get("text"), str):
            await self.process_message(content["text"], content.get("model_id") or self.default_model)
        else:
            await self.send_json({"type": "error", "code": "bad_request"})

    async def process_message(self, text: str, model_id: str) -> None:
        try:
            async with self.meter.turn(self.user_id, model_id) as turn:   # the check, once
                reply = await self.stream_reply(turn, text, model_id)
                calls = ["chat"]
                if await self.summarize(turn, model_id):
                    calls.append("summary")
                if await self.generate_name_if_needed(turn, model_id):
                    calls.append("name")
        except QuotaExceeded as exc:
            await self.send_json(exc.event)                 # the front end shows exc.event["message"]
            return
        except StorageUnavailable:                          # only with on_unavailable="deny"
            await self.send_json({"type": "error", "code": "quota_unavailable",
                                  "message": "Usage metering is unavailable; please retry shortly."})
            return
        last = turn.records[-1].result if turn.records and turn.records[-1].result else None
        await self.send_json({
            "type": "reply_done", "text": reply, "title": self.title, "calls": calls,
            "monthly_used": last.as_dict()["monthly_used"] if last else None,
        })

    async def stream_reply(self, turn: Any, text: str, model_id: str) -> str:
        self.history.append({"role": "user", "content": text})
        stream = await self.llm.chat.completions.create(
            model=self.provider(model_id), messages=self.history, stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        async for chunk in turn.stream(stream, prompt=self.history):   # counted however it ends
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    await self.send_json({"type": "delta", "text": choice.delta.content})
        reply = "".join(parts)
        self.history.append({"role": "assistant", "content": reply})
        return reply

    async def summarize(self, turn: Any, model_id: str) -> bool:
        """Fold old history into one summary message; this call is counted like any other."""
        if len(self.history) < SUMMARIZE_AT:
            return False
        old, keep = self.history[:-KEEP_AFTER_SUMMARY], self.history[-KEEP_AFTER_SUMMARY:]
        response = await self.llm.chat.completions.create(
            model=self.provider(model_id),
            messages=[{"role": "system", "content": "Summarize this conversation briefly."}, *old],
        )
        await turn.record(response)
        summary = response.choices[0].message.content or ""
        self.history = [{"role": "system", "content": f"Summary so far: {summary}"}, *keep]
        return True

    async def generate_name_if_needed(self, turn: Any, model_id: str) -> bool:
        """Name the conversation after its first exchange; counted through the same turn."""
        if self.title is not None:
            return False
        response = await self.llm.chat.completions.create(
            model=self.provider(model_id),
            messages=[{"role": "system", "content": "Name this conversation in a few words."},
                      *self.history[-2:]],
        )
        await turn.record(response)
        self.title = (response.choices[0].message.content or "").strip()[:60] or "Chat"
        return True

    def provider(self, model_id: str) -> str:
        """The provider's model name for a quota model id (custom models: the same name)."""
        return self.provider_models.get(model_id, model_id)
