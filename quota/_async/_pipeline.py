"""Auto-pipelining for ``AsyncMeter``: calls made concurrently on one event loop go out together.

Async-only (the sync ``Meter`` has no event loop to gather calls on; ``quota/_sync/_compat.py``
says so), so ``scripts/unasync.py`` never sees this module. As ioredis' ``enableAutoPipelining``
does: while the loop has a call of this meter on the wire, every call submitted is queued, and
the queue is flushed once per loop iteration (``loop.call_soon``: after every task that was ready
in this iteration has had its turn) as one batch per node. A batch is run by the meter's batch
plan (``quota._batch.plan_batch``: EVAL after NOSCRIPT, MOVED/ASK/TRYAGAIN rerouted through the
cluster client), so each call gets exactly the reply or the error it would have got alone, and
the request id in every record keeps a resend from counting twice.

A call made while nothing is on the wire is sent at once, on its own, as without pipelining:
a lone call's latency does not change (no wait for the next loop iteration).

Cancellation: a caller cancelled before its batch is sent is left out of it; one cancelled after
gets nothing (its call ran, as an unpipelined call cancelled mid-flight may have), and the others
of the batch get their replies as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from .._core import ScriptCall

SendOne = Callable[[ScriptCall[Any]], Awaitable[Any]]  # reply, or raises
SendBatch = Callable[[list[ScriptCall[Any]]], Awaitable[list[Any]]]  # one reply or exception per call
NodeOf = Callable[[ScriptCall[Any]], Hashable]


class AutoPipeline:
    """The queue of one client on one event loop (kept on ``_compat.OnLoop``).

    ``send_one(call)`` sends a call alone (the meter's plain EVALSHA path, with its slot-busy
    resends); ``send_batch(calls)`` sends calls of one node pipelined and returns one reply or
    exception per call; ``node_of(call)`` (a cluster: the node that owns the call's first key;
    None: one group) splits a flush into one batch per node, sent concurrently.
    """

    __slots__ = (
        "_send_one",
        "_send_batch",
        "_node_of",
        "_queue",
        "_on_wire",
        "_tasks",
        "sent_alone",
        "batches",
        "batched",
    )

    def __init__(self, send_one: SendOne, send_batch: SendBatch, node_of: NodeOf | None = None) -> None:
        self._send_one = send_one
        self._send_batch = send_batch
        self._node_of = node_of
        self._queue: list[tuple[ScriptCall[Any], asyncio.Future[Any]]] = []
        self._on_wire = 0  # sends in flight (lone calls and batches)
        self._tasks: set[asyncio.Task[None]] = set()  # running batches (asyncio keeps weak references)
        # What was sent so far, for tests and benchmarks: calls sent alone (nothing else on the
        # wire), batches sent, and the calls those batches carried.
        self.sent_alone = self.batches = self.batched = 0

    @property
    def on_wire(self) -> int:
        """Sends (lone calls and batches) in flight now: for tests and benchmarks."""
        return self._on_wire

    async def submit(self, call: ScriptCall[Any]) -> Any:
        """The raw reply to ``call`` (or its error raised), sent alone or in the next batch."""
        if self._on_wire == 0 and not self._queue:
            self._on_wire += 1
            self.sent_alone += 1
            try:
                return await self._send_one(call)
            finally:
                self._on_wire -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush, loop)
        self._queue.append((call, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        queued, self._queue = self._queue, []
        waiting = [(call, future) for call, future in queued if not future.done()]  # done: cancelled
        if not waiting:
            return
        groups: dict[Hashable, list[tuple[ScriptCall[Any], asyncio.Future[Any]]]] = {}
        node_of = self._node_of
        if node_of is None:
            groups[None] = waiting
        else:
            for item in waiting:
                groups.setdefault(node_of(item[0]), []).append(item)
        for group in groups.values():
            self._on_wire += 1
            self.batches += 1
            self.batched += len(group)
            task = loop.create_task(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, group: list[tuple[ScriptCall[Any], asyncio.Future[Any]]]) -> None:
        try:
            calls = [call for call, _ in group]
            if len(calls) == 1:
                try:
                    replies: list[Any] = [await self._send_one(calls[0])]
                except Exception as exc:  # noqa: BLE001 - handed to its caller
                    replies = [exc]
            else:
                replies = await self._send_batch(calls)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it, then it goes on
            for _, future in group:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._on_wire -= 1
        for (_, future), reply in zip(group, replies):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Wait for the batches on the wire (a closing client must not cut them off)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
