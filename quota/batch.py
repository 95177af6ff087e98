"""Pipelined batches as a sans-I/O plan, driven by the sync and the async client alike.

``plan_batch`` is a generator: it yields the I/O steps a batch needs (send a pipeline of EVALSHA
to a node, load scripts on a node, send one call through the main client) and receives each
step's outcome. The plan holds every rule (group by node, reload after NOSCRIPT, reroute what a
cluster redirected); the clients in ``meter.py`` and ``aio.py`` only perform the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Hashable, Sequence

from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .core import ScriptCall
from .scripts import LuaScript

# Replies that mean "this call did not run there; send it again through the cluster client".
REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, RedisConnectionError, RedisTimeoutError)
MAX_RELOADS = 3


@dataclass(frozen=True)
class SendPipeline:
    """EVALSHA ``calls`` in one pipeline on ``node`` (None: the standalone server). The outcome
    is the list of replies (errors inline), or one exception when the pipeline failed whole."""

    node: Hashable | None
    calls: list[ScriptCall]


@dataclass(frozen=True)
class LoadScripts:
    node: Hashable | None
    scripts: frozenset[LuaScript]


@dataclass(frozen=True)
class SendOne:
    """One call through the main client, which follows redirects; outcome: reply or exception."""

    call: ScriptCall


Step = SendPipeline | LoadScripts | SendOne


def evalsha_args(call: ScriptCall) -> tuple[Any, ...]:
    return (call.script.sha, len(call.keys), *call.keys, *call.args)


def group_by(calls: Sequence[ScriptCall], node_of: Callable[[str], Hashable]) -> dict[Hashable, list[int]]:
    """Indexes of ``calls`` grouped by the node that owns their first key."""
    groups: dict[Hashable, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(node_of(call.keys[0]), []).append(index)
    return groups


def plan_batch(
    calls: Sequence[ScriptCall], node_of: Callable[[str], Hashable] | None = None
) -> Generator[Step, Any, list[Any]]:
    """The steps of one batch; returns one reply (or exception) per call, in order.

    Standalone (``node_of`` None): one pipeline; a pipeline that fails whole raises. Cluster:
    one pipeline per node, and every call a node did not run (MOVED, ASK, TRYAGAIN, node away)
    is sent again through the cluster client. Calls whose script was missing (NOSCRIPT after a
    restart, failover or SCRIPT FLUSH) are resent after loading it. Every record carries a
    request id, so a call that did run and is sent again is never counted twice.
    """
    replies: list[Any] = [None] * len(calls)
    groups = group_by(calls, node_of) if node_of else {None: list(range(len(calls)))}
    for node, pending in groups.items():
        for attempt in range(MAX_RELOADS + 1):
            outcome = yield SendPipeline(node, [calls[i] for i in pending])
            if isinstance(outcome, Exception):
                if node_of is None:
                    raise outcome
                outcome = [outcome] * len(pending)
            for index, reply in zip(pending, outcome):
                replies[index] = reply
            pending = [i for i in pending if isinstance(replies[i], NoScriptError)]
            if not pending or attempt == MAX_RELOADS:
                break
            yield LoadScripts(node, frozenset(calls[i].script for i in pending))
    if node_of is not None:
        for index, reply in enumerate(replies):
            if isinstance(reply, REROUTE):
                replies[index] = yield SendOne(calls[index])
    return replies
