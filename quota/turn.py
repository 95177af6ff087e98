"""A turn: the check when a user's message arrives, and every LLM call of the reply counted.

::

    with meter.turn(user, "system_deepseek") as turn:      # QuotaExceeded(event) when over
        reply = client.chat.completions.create(...)
        turn.record(reply)                                 # never raises for the credit
        for chunk in turn.stream(client.chat.completions.create(..., stream=True), prompt=messages):
            ...

``async with ameter.turn(...)`` is the same on :class:`quota.AsyncMeter`.

The rules live once, with no I/O: :class:`TurnRules` in ``quota.turn_rules`` (what the check
means when Redis is away, which request id a call gets, what goes to the spool) and the replay
plan in ``quota.replay`` (how spooled records are sent back and acknowledged). :class:`AsyncTurn`
(``quota/_async/turn.py``) only does the I/O, as ``AsyncMeter`` does for ``quota.core``;
:class:`Turn` is generated from it (``quota/_sync/turn.py``, by ``scripts/unasync.py``).

When Redis cannot be reached (``StorageUnavailable``) a record goes to the spool with its request
id and its instant, and is replayed later with both: the month is the month the call was made, and
a record that did reach Redis before the error (a reply lost on the way back) is counted once,
because ``record.lua`` remembers request ids for ``dedupe_ttl_s`` (24 h by default).

This module gathers the public names of all three.
"""

from ._async.turn import AsyncMeteredStream, AsyncTurn
from ._async.turn import replay as areplay
from ._sync.turn import MeteredStream, Turn, replay
from .replay import ReplayReport, plan_replay
from .turn_rules import Pending, Recorded, TurnMetrics, TurnOptions, TurnRules, call_for, rekeyed_id

__all__ = [
    "AsyncMeteredStream", "AsyncTurn", "MeteredStream", "Pending", "Recorded", "ReplayReport", "Turn",
    "TurnMetrics", "TurnOptions", "TurnRules", "areplay", "call_for", "plan_replay", "rekeyed_id", "replay",
]
