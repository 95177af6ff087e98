"""Pipelined batches as a sans-I/O plan, driven by the sync and the async client alike.

``plan_batch`` is a generator: it yields the I/O steps a batch needs (send a pipeline of EVALSHA
to a node, load scripts on a node, send one call through the main client) and receives each
step's outcome. The plan holds every rule (group by node, resend with EVAL after NOSCRIPT, reroute what a
cluster redirected); the clients (``quota/_async/meter.py`` and the generated ``quota/_sync/``)
only perform the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from ._core import ScriptCall

if HIREDIS_AVAILABLE:
    import hiredis

# Replies that mean "this call did not run there; send it again through the cluster client".
REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, RedisConnectionError, RedisTimeoutError)


@dataclass(frozen=True)
class SendPipeline:
    """EVALSHA ``calls`` in one pipeline on ``node`` (None: the standalone server). The outcome
    is the list of replies (errors inline), or one exception when the pipeline failed whole.
    ``with_source``: send EVAL with each script's source instead (the resend after NOSCRIPT)."""

    node: Hashable | None
    calls: list[ScriptCall[Any]]
    with_source: bool = False


@dataclass(frozen=True)
class SendOne:
    """One call through the main client, which follows redirects; outcome: reply or exception."""

    call: ScriptCall[Any]


Step = SendPipeline | SendOne


def evalsha_args(call: ScriptCall[Any]) -> tuple[Any, ...]:
    return (call.script.sha, len(call.keys), *call.keys, *call.args)


def eval_args(call: ScriptCall[Any]) -> tuple[Any, ...]:
    """EVAL with the source: the fallback after NOSCRIPT. Unlike SCRIPT LOAD + EVALSHA it can not
    be undone by a SCRIPT FLUSH (or restart, failover) in between, and it caches the script too."""
    return (call.script.source, len(call.keys), *call.keys, *call.args)


_PACK: Callable[[tuple[Any, ...]], bytes] | None = hiredis.pack_command if HIREDIS_AVAILABLE else None


def pack_scripts(conn: Any, calls: Sequence[ScriptCall[Any]], with_source: bool = False) -> list[bytes]:
    """``EVALSHA`` (``with_source``: ``EVAL``) of each of ``calls``, packed for ``conn``'s
    ``send_packed_command``: the thin send paths of both clients (``_compat.send_script`` and
    ``send_scripts``).

    While ``conn``'s encoder is redis-py's default (UTF-8, strict) and hiredis is installed, every
    command is packed by ``hiredis.pack_command`` (str and int arguments only: what redis-py's
    hiredis packer does, without its per-argument Python pass) into one buffer; otherwise the
    connection packs them (``pack_commands``)."""
    name, args_of = ("EVAL", eval_args) if with_source else ("EVALSHA", evalsha_args)
    encoder = conn.encoder
    if _PACK is not None and encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
        commands = [_PACK((name, *args_of(call))) for call in calls]
        return commands if len(commands) == 1 else [b"".join(commands)]  # one call (the sync meter's): no join
    packed: list[bytes] = conn.pack_commands([(name, *args_of(call)) for call in calls])
    return packed


def pipelined(pipe: Any, calls: Sequence[ScriptCall[Any]], with_source: bool = False) -> Any:
    """``pipe`` (a redis-py pipeline, sync or asyncio) with ``EVALSHA`` (``with_source``: ``EVAL``)
    of each of ``calls`` queued: the send paths' fallback for clients they do not thin."""
    for call in calls:
        if with_source:
            pipe.eval(*eval_args(call))
        else:
            pipe.evalsha(*evalsha_args(call))
    return pipe


def group_by(calls: Sequence[ScriptCall[Any]], node_of: Callable[[str], Hashable]) -> dict[Hashable, list[int]]:
    """Indexes of ``calls`` grouped by the node that owns their first key."""
    groups: dict[Hashable, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(node_of(call.keys[0]), []).append(index)
    return groups


def plan_batch(
    calls: Sequence[ScriptCall[Any]], node_of: Callable[[str], Hashable] | None = None
) -> Generator[Step, Any, list[Any]]:
    """The steps of one batch; returns one reply (or exception) per call, in order.

    Standalone (``node_of`` None): one pipeline; a pipeline that fails whole raises. Cluster:
    one pipeline per node, and every call a node did not run (MOVED, ASK, TRYAGAIN, node away)
    is sent again through the cluster client. Calls whose script was missing (NOSCRIPT after a
    restart, failover or SCRIPT FLUSH) are resent once with EVAL and the source: a SCRIPT LOAD
    followed by EVALSHA could meet another flush in between (tests/faults, scenario 2). Every record carries a
    request id, so a call that did run and is sent again is never counted twice.
    """
    replies: list[Any] = [None] * len(calls)
    groups = group_by(calls, node_of) if node_of else {None: list(range(len(calls)))}
    for node, pending in groups.items():
        for with_source in (False, True):
            outcome = yield SendPipeline(node, [calls[i] for i in pending], with_source)
            if isinstance(outcome, Exception):
                if node_of is None:
                    raise outcome
                outcome = [outcome] * len(pending)
            for index, reply in zip(pending, outcome):
                replies[index] = reply
            pending = [i for i in pending if isinstance(replies[i], NoScriptError)]
            if not pending:
                break
    if node_of is not None:
        for index, reply in enumerate(replies):
            if isinstance(reply, REROUTE):
                replies[index] = yield SendOne(calls[index])
    return replies
