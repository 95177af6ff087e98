"""``@require_quota(model)``: a view body that runs inside a quota turn.

::

    @require_quota("system_deepseek")
    def summarize(request):                       # or: async def summarize(request)
        reply = llm.chat.completions.create(...)
        request.quota_turn.record(reply)          # await request.quota_turn.record(reply) when async
        return JsonResponse({"text": reply.choices[0].message.content})

For the logged-in user (their id by ``QUOTA["USER_ID"]``) the turn is admitted before the view
runs and ends when it returns. Refused before the view runs, so no LLM is called:

- over the monthly credit: **402** with the ``quota_exceeded`` event as the JSON body (and the
  ``quota_exceeded`` signal);
- a model the user may not use: **400** ``{"type": "error", "code": "model_not_allowed", ...}``;
- Redis away with ``ON_UNAVAILABLE="deny"``: **503** ``quota_unavailable``;
- not logged in: **401** ``not_authenticated``.

``model`` is either a fixed id chosen in code, or a callable ``(request, *args, **kwargs) ->
requested id`` (e.g. read from the request) whose result goes through ``QUOTA["MODEL_RESOLVER"]``,
so that a request can never pick an unpriced or misrouted id. ``hold`` is the turn's hold (CNY or
``"auto"``; default ``TURN_HOLD``). The turn ends when the view returns: a streaming response
must not record after that (stream inside the view, or use ``QuotaConsumerMixin``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse

from quota import QuotaError, QuotaExceeded, StorageUnavailable, UnknownModel

from .hooks import error_event, quota_user_id, resolve_model
from .meters import get_async_meter, get_meter
from .signals import asend_exceeded, asend_usage, send_exceeded, send_usage

NOT_AUTHENTICATED = {"type": "error", "code": "not_authenticated", "message": "Log in first."}
STATUS = {QuotaExceeded: 402, StorageUnavailable: 503, UnknownModel: 400}


def require_quota(model: str | Callable[..., Any], *, hold: Any = None) -> Callable[[Callable[..., Any]], Any]:
    """Run the decorated view (sync or async) inside a quota turn: ``request.quota_turn``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                user = await _auser(request)
                if not getattr(user, "is_authenticated", False):
                    return JsonResponse(NOT_AUTHENTICATED, status=401)
                try:
                    user_id, model_id = await sync_to_async(_identify)(request, user, model, args, kwargs)
                    stack = AsyncExitStack()
                    turn = await stack.enter_async_context(get_async_meter().turn(user_id, model_id, hold=hold))
                except QuotaExceeded as exc:
                    await asend_exceeded(view, user, user_id, model_id, exc.event)
                    return _refused(exc)
                except (UnknownModel, StorageUnavailable) as exc:
                    return _refused(exc)
                request.quota_turn = turn
                try:
                    async with stack:
                        return await view(request, *args, **kwargs)
                finally:
                    await asend_usage(view, user, user_id, turn)

            return async_view

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                return JsonResponse(NOT_AUTHENTICATED, status=401)
            try:
                user_id, model_id = _identify(request, user, model, args, kwargs)
                stack = ExitStack()
                turn = stack.enter_context(get_meter().turn(user_id, model_id, hold=hold))
            except QuotaExceeded as exc:
                send_exceeded(view, user, user_id, model_id, exc.event)
                return _refused(exc)
            except (UnknownModel, StorageUnavailable) as exc:
                return _refused(exc)
            request.quota_turn = turn
            try:
                with stack:
                    return view(request, *args, **kwargs)
            finally:
                send_usage(view, user, user_id, turn)

        return sync_view

    return decorate


def _identify(
    request: HttpRequest, user: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, str]:
    """The quota user id, and the model id: fixed in code, or requested and then resolved."""
    user_id = quota_user_id(user)
    model_id = resolve_model(user, model(request, *args, **kwargs)) if callable(model) else model
    return user_id, model_id


def _refused(exc: QuotaError) -> JsonResponse:
    body = exc.event if isinstance(exc, QuotaExceeded) else error_event(exc)
    status = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
    return JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})


async def _auser(request: HttpRequest) -> Any:
    """``request.user`` from async code (Django 5.0+ ``auser``; before, the lazy user in a thread)."""
    if hasattr(request, "auser"):
        return await request.auser()
    return await sync_to_async(lambda: (request.user, request.user.is_authenticated)[0])()
