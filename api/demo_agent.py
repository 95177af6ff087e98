"""A simulated chat agent for ``/demo``: no LLM, deterministic fake token counts, real metering.

One user message is one *turn* (``meter.turn``): the admission runs first (the seed's check point, "when the
user sends a new message"); if it is refused the turn ends with the ``quota_exceeded`` event and
nothing is recorded. Otherwise the agent makes and records its calls: a chat call, a tool call,
a history summary, and on the conversation's first message a naming call. The reply always
finishes even when it crosses the credit; the *next* message is the one refused. A call that
crosses an alert threshold (80% and 100% of the credit by default) adds its ``quota_warning``
event to the reply's ``warnings``, which the page shows at once.

Every call has the request id ``demo:<conversation>:<turn>:<purpose>`` and its token counts are
a function of that id, so a retried turn (a double click, a lost response) counts once.

The demo needs no token, so it runs on a meter of its own (:func:`demo_meter_for`): key prefix
``<prefix>-demo``, no history store. A demo user is never a real user, even one whose id starts
with ``demo`` (``demo.smith@corp.com``): the page can not spend, or read, anyone's real credit.
A conversation holds at most :data:`MAX_TURNS` messages of at most :data:`MAX_MESSAGE_CHARS`
characters, so one conversation id makes at most ``4 * MAX_TURNS`` request-id keys.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

from quota import ConfigError, InvalidInput, Meter, QuotaExceeded, StorageUnavailable
from quota._demo import fake_tokens
from quota._keys import validate_prefix, validate_user

DEMO_USER_PREFIX = "demo"  # the demo page only runs for users whose id starts with this
DEMO_KEY_SUFFIX = "-demo"  # the demo's Redis keys: <prefix>-demo:{<user>}:...
CONVERSATION_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_TURNS = 50  # messages per conversation
MAX_MESSAGE_CHARS = 2000


class DemoLimit(InvalidInput):
    """A demo conversation or message over its bound: a 400 with its own ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def demo_prefix(prefix: str) -> str:
    """The key prefix of the demo's meter, beside the real one (``quota`` -> ``quota-demo``)."""
    try:
        return validate_prefix(prefix + DEMO_KEY_SUFFIX)
    except InvalidInput:
        raise ConfigError(
            f"QUOTA_PREFIX {prefix!r} is too long for the demo's prefix {prefix + DEMO_KEY_SUFFIX!r} "
            "(at most 32 characters): shorten it or turn the demo off (QUOTA_DEMO=0)"
        ) from None


def demo_meter_for(meter: Meter) -> Meter:
    """A meter on the same Redis client and clock with the demo's own prefix and no history.

    Why a second meter rather than a check on user ids: with one key space, ``demo*`` was a
    rule on names, and a real user may well be called ``demo.smith@corp.com``; with a prefix of
    its own the demo has no key it could share with a real user. The client is shared, so
    closing the real meter closes this one too; it is never closed by itself.
    """
    settings = replace(meter.settings, prefix=demo_prefix(meter.settings.prefix))
    return Meter(meter.client, settings=settings, clock=meter.core.clock, history=None)


def validate_demo_user(user: Any) -> str:
    user = validate_user(user)
    if not user.startswith(DEMO_USER_PREFIX):
        raise InvalidInput(f"the demo only runs for users whose id starts with {DEMO_USER_PREFIX!r}")
    return user


def validate_turn_request(body: Any) -> tuple[str, Any, str, int, str]:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = set(body) - {"user", "model_id", "conversation_id", "turn", "message"}
    if unknown:
        raise InvalidInput(f"unknown keys {sorted(unknown)}")
    user = validate_demo_user(body.get("user"))
    model_id = body.get("model_id")
    conversation = body.get("conversation_id")
    if not isinstance(conversation, str) or not CONVERSATION_RE.fullmatch(conversation):
        raise InvalidInput("conversation_id must be 1 to 40 characters of A-Z a-z 0-9 _ -")
    turn = body.get("turn")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise InvalidInput(f"turn must be an int from 1 to {MAX_TURNS}")
    if turn > MAX_TURNS:
        raise DemoLimit(
            "conversation_too_long", f"a demo conversation holds at most {MAX_TURNS} messages: start a new conversation"
        )
    message = body.get("message", "")
    if not isinstance(message, str):
        raise InvalidInput("message must be a string")
    if len(message) > MAX_MESSAGE_CHARS:
        raise DemoLimit(
            "message_too_long",
            f"a demo message has at most {MAX_MESSAGE_CHARS} characters, this one has {len(message)}",
        )
    return user, model_id, conversation, turn, message  # model_id is validated by the meter


def fake_reply(message: str, turn: int) -> str:
    topic = message.strip()[:60] or "…"
    return (
        f"(simulated agent, turn {turn}) I looked up “{topic}” with a tool, summarised the "
        "conversation so far and wrote this reply. No real model was called; the token counts are made up "
        "but every call was metered for real."
    )


def run_turn(meter: Meter, body: Any) -> dict[str, Any]:
    """Run one turn on ``meter`` (the demo's: :func:`demo_meter_for`); returns the ``reply`` or
    ``quota_exceeded`` event (raises InvalidInput on bad input, DemoLimit over a bound)."""
    user, model_id, conversation, turn, message = validate_turn_request(body)
    purposes = ["chat", "tool", "summary"] + (["naming"] if turn == 1 else [])
    calls = []
    warnings: list[dict[str, Any]] = []  # quota_warning events: a call crossed an alert threshold
    result = None
    try:
        # A turn, as a worker runs one: admission reserves a hold on the credit (quota.Turn), so
        # that several tabs sending at once cannot all spend the same last yuan.
        with meter.turn(user, model_id) as metered:
            for purpose in purposes:
                request_id = f"demo:{conversation}:{turn}:{purpose}"
                tokens_in, tokens_out = fake_tokens(random.Random(request_id), purpose)
                recorded = metered.record(
                    input_tokens=tokens_in, output_tokens=tokens_out, request_id=request_id, purpose=purpose
                )
                result = recorded.result
                if result is None:  # Redis away: spooled, counted when it is back
                    raise StorageUnavailable(recorded.error or "Redis is unavailable")
                if recorded.warning is not None:
                    warnings.append(recorded.warning)
                calls.append(
                    {
                        "purpose": purpose,
                        **{
                            k: v
                            for k, v in result.as_dict().items()
                            if k in ("input_tokens", "output_tokens", "cost", "duplicate", "request_id")
                        },
                    }
                )
    except QuotaExceeded as exc:
        check = meter.check_quota_available(user, model_id)
        return {"type": "quota_exceeded", "event": exc.event, "check": check.as_dict()}
    assert result is not None
    usage = result.as_dict()
    return {
        "type": "reply",
        "reply": fake_reply(message, turn),
        "calls": calls,
        "model_id": result.model_id,
        "is_system": result.is_system,
        "monthly_used": usage["monthly_used"],
        "monthly_credit": usage["monthly_credit"],
        "remaining": usage["remaining"],
        "exceeded": usage["exceeded"],
        "warnings": warnings,
    }
