"""Pure helpers for pipelined batches, shared by the sync and async clients."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .core import ScriptCall

# Replies that mean "this call did not run here; send it again through the cluster client".
REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, RedisConnectionError, RedisTimeoutError)
MAX_RELOADS = 3


def group_by(calls: Sequence[ScriptCall], node_of: Callable[[str], Hashable]) -> dict[Hashable, list[int]]:
    """Indexes of ``calls`` grouped by the node that owns their first key."""
    groups: dict[Hashable, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(node_of(call.keys[0]), []).append(index)
    return groups


def missing_scripts(replies: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]


def needs_reroute(reply: Any) -> bool:
    return isinstance(reply, REROUTE)


def evalsha_args(call: ScriptCall) -> tuple[Any, ...]:
    return (call.script.sha, len(call.keys), *call.keys, *call.args)
