"""Signals sent by ``@require_quota`` and ``QuotaConsumerMixin``.

``usage_recorded``: once per LLM call counted in a turn, when the turn ends (a stream is counted
when it ends, so this is the first moment every record of the turn is known). Arguments:
``user`` (the Django user), ``user_id`` (the quota id), ``model_id``, ``recorded`` (a
``quota.Recorded``: ``status`` counted/duplicate/spooled/lost, ``usage``, ``result``).

``quota_exceeded``: a new message was refused because the monthly credit is used up. Arguments:
``user``, ``user_id``, ``model_id``, ``event`` (the ``quota_exceeded`` dict sent to the browser).

The sender is the view function or the consumer class. Receivers are called robustly: one that
raises is logged (logger ``quota.contrib.django``) and does not break the reply, which has been
counted already. From async code, receivers run as Django runs them (``Signal.asend``: sync ones
in a thread), so a receiver may use the ORM.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.dispatch import Signal

log = logging.getLogger("quota.contrib.django")

usage_recorded = Signal()
quota_exceeded = Signal()


def _log_failures(signal_name: str, responses: list[tuple[Any, Any]]) -> None:
    for receiver, response in responses:
        if isinstance(response, Exception):
            log.error("a %s receiver (%r) failed", signal_name, receiver, exc_info=response)


def send_usage(sender: Any, user: Any, user_id: str, turn: Any) -> None:
    for recorded in turn.records:
        _log_failures(
            "usage_recorded",
            usage_recorded.send_robust(
                sender, user=user, user_id=user_id, model_id=recorded.model_id, recorded=recorded
            ),
        )


def send_exceeded(sender: Any, user: Any, user_id: str, model_id: str, event: dict[str, Any]) -> None:
    _log_failures(
        "quota_exceeded", quota_exceeded.send_robust(sender, user=user, user_id=user_id, model_id=model_id, event=event)
    )


async def _asend(signal: Signal, name: str, sender: Any, **kwargs: Any) -> None:
    if hasattr(signal, "asend_robust"):  # Django 5.0+
        _log_failures(name, await signal.asend_robust(sender, **kwargs))
    else:  # Django 4.2: every receiver in a thread
        _log_failures(name, await sync_to_async(signal.send_robust)(sender, **kwargs))


async def asend_usage(sender: Any, user: Any, user_id: str, turn: Any) -> None:
    for recorded in turn.records:
        await _asend(
            usage_recorded,
            "usage_recorded",
            sender,
            user=user,
            user_id=user_id,
            model_id=recorded.model_id,
            recorded=recorded,
        )


async def asend_exceeded(sender: Any, user: Any, user_id: str, model_id: str, event: dict[str, Any]) -> None:
    await _asend(quota_exceeded, "quota_exceeded", sender, user=user, user_id=user_id, model_id=model_id, event=event)
