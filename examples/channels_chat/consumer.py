"""The seed's call sites in a Django Channels chat consumer, safe to copy.

``process_message()`` runs each reply in a quota turn (``QuotaConsumerMixin.quota_reply``): over the
monthly credit on a system model the browser gets the ``quota_exceeded`` event and no LLM is called.
Otherwise the reply streams to the browser, and every LLM call of the reply is counted through the
same turn: the chat stream, ``summarize()`` (history compression) and ``generate_name_if_needed()``
(the conversation title). None of them can be stopped by the credit: the reply in progress always
finishes.

What makes it safe to copy:

- **The server decides what is metered.** The browser's ``model_id`` is only a request: it goes
  through ``QUOTA["MODEL_RESOLVER"]`` (by default: a system model of the price table, or one of the
  user's own models listed by ``QUOTA["CUSTOM_MODELS"]``). Anything else, ``"deepseek-chat"`` or an
  unknown ``"system_gpt5"``, gets an ``error`` event and no LLM call; the socket stays open.
- **System models go to the platform's LLM, custom models to the user's own** (``custom_llm``):
  a custom id is never served by the platform's key. Without a ``custom_llm`` custom models are
  refused (``model_unavailable``).
- **The user id is ``QUOTA["USER_ID"]``** (default ``str(user.pk)``): Django usernames such as
  ``张三`` are not valid quota ids.
- **One AsyncMeter per event loop** (``get_async_meter()``), never one built in asgi.py.

Wire it in ``asgi.py`` (``INSTALLED_APPS`` has ``"quota.contrib.django"``, ``QUOTA`` is set)::

    llm = openai.AsyncOpenAI(base_url="https://api.deepseek.com", api_key=...)
    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
            path("ws/chat/", ChatConsumer.as_asgi(llm=llm)),
        ]))),
    })

Browser -> server: ``{"type": "message", "text": "...", "model_id": "system_deepseek"}`` (``model_id``
optional). Server -> browser: ``delta`` events while the reply streams, then ``reply_done``; a
``quota_warning`` event (``{"type": "quota_warning", "code": "quota_warning", "threshold": 80,
"monthly_used", "monthly_credit", "resets_at", "message"}``) the moment a call of the reply crosses an
alert threshold (the mixin sends it; ``reply_done`` repeats the thresholds in ``alerts``); or the
``quota_exceeded`` event; or ``error`` with a ``code``: ``model_not_allowed``, ``unknown_model``,
``model_unavailable``, ``quota_unavailable`` (``ON_UNAVAILABLE="deny"`` only), ``bad_request``.
examples/django_site/ runs it.
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from quota.contrib.django import QuotaConsumerMixin

SUMMARIZE_AT = 6  # messages of history before they are summarised into one
KEEP_AFTER_SUMMARY = 2  # the latest messages kept word for word


class ChatConsumer(QuotaConsumerMixin, AsyncJsonWebsocketConsumer):
    llm: Any = None  # the platform's openai.AsyncOpenAI, for system models
    custom_llm: Any = None  # the client for users' own models (None: refused)
    # quota's system model id -> the provider's model name. The browser never names a provider model.
    provider_models: dict[str, str] = {"system_deepseek": "deepseek-chat"}
    quota_default_model_id = "system_deepseek"

    def __init__(self, *args: Any, meter: Any = None, llm: Any = None, custom_llm: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.quota_meter = meter if meter is not None else type(self).quota_meter  # None: get_async_meter()
        self.llm = llm if llm is not None else type(self).llm
        self.custom_llm = custom_llm if custom_llm is not None else type(self).custom_llm

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.close(code=4401)
            return
        self.history: list[dict[str, str]] = []
        self.title: str | None = None
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "message" and isinstance(content.get("text"), str):
            await self.process_message(content["text"], content.get("model_id"))
        else:
            await self.send_json(
                {"type": "error", "code": "bad_request", "message": 'Send {"type": "message", "text": "..."}.'}
            )

    async def process_message(self, text: str, requested_model_id: Any) -> None:
        calls: list[str] = []

        async def reply(turn: Any, model_id: str) -> str | None:  # model_id: resolved on the server
            client, provider_model = self.route(model_id)
            if client is None:
                await self.send_json(
                    {"type": "error", "code": "model_unavailable", "message": f"{model_id} cannot be served right now."}
                )
                return None
            answer = await self.stream_reply(turn, text, client, provider_model)
            calls.append("chat")
            if await self.summarize(turn, client, provider_model):
                calls.append("summary")
            if await self.generate_name_if_needed(turn, client, provider_model):
                calls.append("name")
            return answer

        done = await self.quota_reply(requested_model_id, reply)
        if done is None or done.result is None:
            return  # refused: the browser got the event, no LLM call
        last = done.turn.records[-1].result if done.turn.records and done.turn.records[-1].result else None
        await self.send_json(
            {
                "type": "reply_done",
                "text": done.result,
                "title": self.title,
                "calls": calls,
                "monthly_used": last.as_dict()["monthly_used"] if last else None,
                # the thresholds this reply crossed (each was pushed as a quota_warning when it happened)
                "alerts": [t for r in done.turn.records for t in r.alerts],
            }
        )

    def route(self, model_id: str) -> tuple[Any, str]:
        """The client and the provider's model name for a metered id: the platform's LLM for a
        system model, the user's own client for a custom one (its name is the provider's)."""
        if model_id in self.provider_models:
            return self.llm, self.provider_models[model_id]
        return self.custom_llm, model_id

    async def stream_reply(self, turn: Any, text: str, client: Any, provider_model: str) -> str:
        self.history.append({"role": "user", "content": text})
        stream = await client.chat.completions.create(
            model=provider_model,
            messages=self.history,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        async for chunk in turn.stream(stream, prompt=self.history, purpose="chat"):  # counted however it ends
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    await self.send_json({"type": "delta", "text": choice.delta.content})
        answer = "".join(parts)
        self.history.append({"role": "assistant", "content": answer})
        return answer

    async def summarize(self, turn: Any, client: Any, provider_model: str) -> bool:
        """Fold old history into one summary message; this call is counted like any other."""
        if len(self.history) < SUMMARIZE_AT:
            return False
        old, keep = self.history[:-KEEP_AFTER_SUMMARY], self.history[-KEEP_AFTER_SUMMARY:]
        response = await client.chat.completions.create(
            model=provider_model,
            messages=[{"role": "system", "content": "Summarize this conversation briefly."}, *old],
        )
        await turn.record(response, purpose="summary")
        summary = response.choices[0].message.content or ""
        self.history = [{"role": "system", "content": f"Summary so far: {summary}"}, *keep]
        return True

    async def generate_name_if_needed(self, turn: Any, client: Any, provider_model: str) -> bool:
        """Name the conversation after its first exchange; counted through the same turn."""
        if self.title is not None:
            return False
        response = await client.chat.completions.create(
            model=provider_model,
            messages=[{"role": "system", "content": "Name this conversation in a few words."}, *self.history[-2:]],
        )
        await turn.record(response, purpose="naming")
        self.title = (response.choices[0].message.content or "").strip()[:60] or "Chat"
        return True
