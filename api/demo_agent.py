"""A simulated chat agent for ``/demo``: no LLM, deterministic fake token counts, real metering.

One user message is one *turn* (``meter.turn``): the admission runs first (the seed's check point, "when the
user sends a new message"); if it is refused the turn ends with the ``quota_exceeded`` event and
nothing is recorded. Otherwise the agent makes and records its calls: a chat call, a tool call,
a history summary, and on the conversation's first message a naming call. The reply always
finishes even when it crosses the credit; the *next* message is the one refused.

Every call has the request id ``demo:<conversation>:<turn>:<purpose>`` and its token counts are
a function of that id, so a retried turn (a double click, a lost response) counts once.
"""

from __future__ import annotations

import random
import re
from typing import Any

from quota.demo import fake_tokens
from quota.errors import InvalidInput, QuotaExceeded, StorageUnavailable
from quota.keys import validate_user
from quota.meter import Meter

DEMO_USER_PREFIX = "demo"  # the open demo page may only spend the credit of these users
CONVERSATION_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_TURN = 10_000
MAX_MESSAGE_CHARS = 2000


def validate_turn_request(body: Any) -> tuple[str, str, str, int, str]:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = set(body) - {"user", "model_id", "conversation_id", "turn", "message"}
    if unknown:
        raise InvalidInput(f"unknown keys {sorted(unknown)}")
    user = validate_user(body.get("user"))
    if not user.startswith(DEMO_USER_PREFIX):
        raise InvalidInput(f"the demo only runs for users whose id starts with {DEMO_USER_PREFIX!r}")
    model_id = body.get("model_id")
    conversation = body.get("conversation_id")
    if not isinstance(conversation, str) or not CONVERSATION_RE.fullmatch(conversation):
        raise InvalidInput("conversation_id must be 1 to 40 characters of A-Z a-z 0-9 _ -")
    turn = body.get("turn")
    if isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= MAX_TURN:
        raise InvalidInput(f"turn must be an int from 1 to {MAX_TURN}")
    message = body.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise InvalidInput(f"message must be a string of at most {MAX_MESSAGE_CHARS} characters")
    return user, model_id, conversation, turn, message  # model_id is validated by the meter


def fake_reply(message: str, turn: int) -> str:
    topic = message.strip()[:60] or "…"
    return (f"(simulated agent, turn {turn}) I looked up “{topic}” with a tool, summarised the "
            "conversation so far and wrote this reply. No real model was called; the token counts are made up "
            "but every call was metered for real.")


def run_turn(meter: Meter, body: Any) -> dict[str, Any]:
    """Run one turn; returns the ``reply`` or ``quota_exceeded`` event (raises InvalidInput on bad input)."""
    user, model_id, conversation, turn, message = validate_turn_request(body)
    purposes = ["chat", "tool", "summary"] + (["naming"] if turn == 1 else [])
    calls = []
    result = None
    try:
        # A turn, as a worker runs one: admission reserves a hold on the credit (quota.turn), so
        # that several tabs sending at once cannot all spend the same last yuan.
        with meter.turn(user, model_id) as metered:
            for purpose in purposes:
                request_id = f"demo:{conversation}:{turn}:{purpose}"
                tokens_in, tokens_out = fake_tokens(random.Random(request_id), purpose)
                recorded = metered.record(input_tokens=tokens_in, output_tokens=tokens_out, request_id=request_id)
                result = recorded.result
                if result is None:        # Redis away: spooled, counted when it is back
                    raise StorageUnavailable(recorded.error or "Redis is unavailable")
                calls.append({"purpose": purpose, **{k: v for k, v in result.as_dict().items() if k in (
                    "input_tokens", "output_tokens", "cost", "duplicate", "request_id")}})
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
    }
