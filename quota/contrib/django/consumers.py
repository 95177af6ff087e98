"""``QuotaConsumerMixin``: a Channels consumer whose replies run in quota turns.

::

    class ChatConsumer(QuotaConsumerMixin, AsyncJsonWebsocketConsumer):
        quota_default_model_id = "system_deepseek"

        async def receive_json(self, content, **kwargs):
            done = await self.quota_reply(content.get("model_id"), self.reply)
            if done is not None:                       # None: refused, the browser got the event
                await self.send_json({"type": "reply_done", "text": done.result})

        async def reply(self, turn, model_id):         # model_id: resolved on the server
            stream = await llm.chat.completions.create(..., stream=True,
                                                       stream_options={"include_usage": True})
            async for chunk in turn.stream(stream, prompt=messages, purpose="chat"): ...

``quota_reply`` takes the id the browser asked for, resolves it on the server
(``QUOTA["MODEL_RESOLVER"]``), meters the scope's user by ``QUOTA["USER_ID"]``, and runs the reply
in a turn of the event loop's AsyncMeter (``get_async_meter()``, or ``quota_meter`` when set).
While the reply runs, a record that crosses an alert threshold (80% and 100% of the credit by default,
``QUOTA_ALERT_THRESHOLDS``) sends the browser a ``quota_warning`` event at once (docs/ALERTS.md).
Instead of the reply the browser gets one event and the socket stays open: ``quota_exceeded``
(over the credit; the ``quota_exceeded`` signal is sent), ``error`` ``model_not_allowed`` /
``unknown_model`` (an id the user may not use), ``quota_unavailable`` (Redis away under
``ON_UNAVAILABLE="deny"``), ``not_authenticated``. In none of these cases is the LLM called.

The mixin also keeps the socket open on a frame that is not JSON (``bad_request``), where
``AsyncJsonWebsocketConsumer`` would raise and close it. It imports nothing from Channels.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from quota import QuotaExceeded, StorageUnavailable, UnknownModel

from .decorators import NOT_AUTHENTICATED
from .hooks import error_event, quota_user_id, resolve_model
from .meters import get_async_meter
from .signals import asend_exceeded, asend_usage

BAD_REQUEST = {"type": "error", "code": "bad_request", "message": "Send a JSON object."}


@dataclass(frozen=True)
class MeteredReply:
    """A reply that ran: its turn (``turn.records``: every call counted), the model id that was
    metered, and what the reply function returned."""

    turn: Any
    model_id: str
    result: Any


class QuotaConsumerMixin:
    quota_meter: Any = None  # an AsyncMeter; None: get_async_meter() (one per event loop)
    quota_default_model_id: str | None = None  # the id used when the browser sends none

    if TYPE_CHECKING:
        # What the mixin uses of the Channels consumer it is mixed into (AsyncWebsocketConsumer;
        # decode_json: AsyncJsonWebsocketConsumer, used only when receive_json is there), declared
        # for the type checker only: Channels has no type information, and nothing is imported.
        scope: dict[str, Any]

        async def send(
            self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
        ) -> None: ...

        @classmethod
        async def decode_json(cls, text_data: str) -> Any: ...

    async def quota_send(self, event: dict[str, Any]) -> None:
        """Send one event to the browser (``send_json`` on a JSON consumer, else a text frame)."""
        send_json = getattr(self, "send_json", None)
        if send_json is not None:
            await send_json(event)
        else:
            await self.send(text_data=json.dumps(event, ensure_ascii=False))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if not hasattr(self, "receive_json"):
            # The consumer after this mixin in the MRO has receive; the mixin's own base (object) does not.
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)  # type: ignore[misc]
            return
        try:
            if text_data is None:
                raise ValueError("a binary frame")
            content = await self.decode_json(text_data)
        except (ValueError, RecursionError):
            await self.quota_send(BAD_REQUEST)
            return
        await self.receive_json(content, **kwargs)

    async def quota_reply(
        self, requested_model_id: Any, reply: Callable[[Any, str], Awaitable[Any]], *, hold: Any = None
    ) -> MeteredReply | None:
        """Run ``await reply(turn, model_id)`` in a quota turn of the scope's user; None when
        refused (the browser was sent the event, the LLM was not called)."""
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.quota_send(NOT_AUTHENTICATED)
            return None
        requested = requested_model_id if requested_model_id not in (None, "") else self.quota_default_model_id
        try:
            user_id, model_id = await sync_to_async(_identify)(user, requested)
        except UnknownModel as exc:
            await self.quota_send(error_event(exc))
            return None
        meter = self.quota_meter if self.quota_meter is not None else get_async_meter()
        stack = AsyncExitStack()
        try:
            turn = await stack.enter_async_context(
                meter.turn(user_id, model_id, hold=hold, on_warning=self.quota_send)  # quota_warning, at once
            )
        except QuotaExceeded as exc:
            await asend_exceeded(type(self), user, user_id, model_id, exc.event)
            await self.quota_send(exc.event)
            return None
        except (UnknownModel, StorageUnavailable) as exc:
            await self.quota_send(error_event(exc))
            return None
        try:
            async with stack:
                result = await reply(turn, model_id)
        finally:
            await asend_usage(type(self), user, user_id, turn)
        return MeteredReply(turn, model_id, result)


def _identify(user: Any, requested: Any) -> tuple[str, str]:
    return quota_user_id(user), resolve_model(user, requested)
