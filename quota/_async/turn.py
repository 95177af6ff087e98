"""``AsyncTurn`` and ``AsyncMeteredStream``: the I/O of a turn, and the driver of the spool replay.

Hand-written for asyncio; ``quota/_sync/turn.py`` (``Turn``, ``MeteredStream``) is generated from
it by ``scripts/unasync.py``. Every rule is elsewhere: what a turn decides in
``quota._turn_rules.TurnRules``, how the spool is replayed in ``quota._replay``; what differs beyond
``async``/``await`` (shielding from cancellation, threads, the background replay) in ``._compat``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from .._errors import QuotaError, RequestConflict, StorageUnavailable
from .._money import nano_to_decimal
from .._replay import ReplayReport, SendRecords, plan_replay
from .._results import QuotaCheck
from .._runner import AsyncScriptRunner
from .._turn_rules import Pending, Recorded, TurnRules
from .._usage import StreamTally, estimate_prompt_tokens
from ._compat import close_source, in_background, shield, shielded_admission, start_task, to_thread

log = logging.getLogger("quota.turn")


class AsyncTurn:
    """``async with ameter.turn(user, model_id) as turn:`` — see :class:`quota.Turn` and docs/INTEGRATION.md.

    Under asyncio a record runs shielded: if the task is cancelled while a record is on its way,
    the record still completes. Streams cut short by a cancellation are counted the same way.
    """

    def __init__(
        self,
        meter: AsyncScriptRunner,
        user: str,
        model_id: str,
        *,
        on_unavailable: str | None = None,
        hold: object = None,
        on_warning: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.meter = meter
        self.rules = TurnRules(meter.core, meter.turn_options, user, model_id, on_unavailable, hold)
        self.on_warning = on_warning

    @property
    def check(self) -> QuotaCheck | None:
        return self.rules.check

    @property
    def degraded(self) -> bool:
        return self.rules.degraded

    @property
    def records(self) -> list[Recorded]:
        return self.rules.records

    @property
    def hold(self) -> Decimal:
        """The part of the credit this turn reserved when it started (0 for custom models)."""
        return nano_to_decimal(self.rules.hold_nano)

    async def __aenter__(self) -> AsyncTurn:
        begin = self.rules.begin_call()
        try:
            if begin is None:
                self.rules.checked(await self.meter.run(self.rules.check_call()))
            else:
                # Shielded: a turn cancelled while its hold is being taken gives the hold back
                # as soon as the admission completes (__aexit__ never runs for it).
                reply = await shielded_admission(self.meter.run(begin), self._abandoned, self.meter.turn_options)
                self.rules.admitted(reply)
        except StorageUnavailable as exc:
            self.rules.unavailable(exc)
        return self

    async def _abandoned(self, reply: tuple[QuotaCheck, int]) -> None:
        end = self.rules.abandoned_call(reply)
        if end is not None:
            try:
                await self.meter.run(end)
            except QuotaError as error:
                self.rules.ended(error)

    async def can_continue(self) -> bool:
        """May an agent loop take another step (a tool call, a retry)? True while this turn's hold
        has money left, or while the credit is not used up by spend and other turns' holds.
        Advisory: the worker decides how to finish the reply; records are never refused."""
        verdict = self.rules.can_continue_locally()
        if verdict is not None:
            return verdict
        try:
            check = await self.meter.run(self.rules.check_call())
        except StorageUnavailable as exc:
            return self.rules.can_continue_after(exc)
        return self.rules.can_continue_after(check)

    async def __aexit__(self, *exc: object) -> None:
        for stream in list(self.rules.streams):
            await stream.aclose()
        end = self.rules.end_call()
        if end is not None:
            try:
                await shield(self.meter.run(end))  # a cancelled turn still gives its hold back
            except QuotaError as error:
                self.rules.ended(error)
            else:
                self.rules.ended(None)
        if self.meter.turn_options.replay_due():
            in_background(self.meter.turn_options, _replay_quietly, self.meter)  # the reply is done

    async def record(
        self,
        usage: Any = None,
        /,
        *,
        model_id: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        request_id: str | None = None,
        price: Mapping[str, Any] | None = None,
        estimated: bool | None = None,
        purpose: str | None = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> Recorded:
        """Count one LLM call of this turn (any model; default the turn's). Never raises for the credit.

        ``usage`` is a response, a usage object/dict or a :class:`~quota._usage.Usage`; or pass
        ``input_tokens`` and ``output_tokens``. Bad input raises ``InvalidInput`` and changes nothing.
        ``purpose`` (``"chat"``, ``"tool"``, ``"summary"``...) is also counted per model and purpose.
        The cache tokens come from the usage (OpenAI, DeepSeek, Anthropic shapes), or go with
        ``input_tokens`` as ``cached_input_tokens`` / ``cache_write_tokens`` (parts of the input).
        """
        pending = self.rules.prepare(
            usage,
            model_id=model_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id,
            price=price,
            estimated=estimated,
            purpose=purpose,
            cached_input_tokens=cached_input_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        recorded = await shield(self._send(pending))
        if self.on_warning is not None and recorded.warning is not None:
            await self._warn(recorded.warning)
        return recorded

    async def _warn(self, event: dict[str, Any]) -> None:
        """Hand a ``quota_warning`` event (a threshold this record crossed) to ``on_warning``, at once;
        its failure is logged, never the record's."""
        try:
            await self.on_warning(event)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a browser gone away must not fail the count
            log.warning("on_warning failed for a quota_warning event", exc_info=True)

    async def _send(self, pending: Pending) -> Recorded:
        try:
            try:
                result = await self.meter.run(pending.call)
            except RequestConflict:
                pending = self.rules.rekeyed(pending)
                result = await self.meter.run(pending.call)
        except StorageUnavailable as exc:
            spool = self.meter.turn_options.spool
            try:
                if spool.durable:
                    await to_thread(spool.append, pending.entry)  # it fsyncs: under asyncio, in a thread
                else:
                    spool.append(pending.entry)
            except OSError as spool_error:
                return self.rules.lost(pending, exc, spool_error)
            return self.rules.spooled(pending, exc)
        return self.rules.counted(pending, result)

    def stream(
        self,
        stream: Any,
        *,
        prompt: Any = None,
        model_id: str | None = None,
        price: Mapping[str, Any] | None = None,
        purpose: str | None = None,
    ) -> AsyncMeteredStream:
        """Wrap a streaming response: chunks pass through, and the call is counted when the stream
        ends, fails, is closed, or is left behind when the turn ends (estimated if no usage came).

        ``prompt`` (the messages sent) lets a stream cut short before its usage arrived be
        estimated on the input side too; without it the input of such a stream counts as 0.
        """
        model = self.rules.stream_model(model_id, price, purpose)
        wrapped = AsyncMeteredStream(self, stream, StreamTally(estimate_prompt_tokens(prompt)), model, price, purpose)
        self.rules.streams.append(wrapped)
        return wrapped


class AsyncMeteredStream:
    """A stream that counts itself once. ``recorded`` holds the outcome once it is counted."""

    def __init__(
        self, turn: AsyncTurn, source: Any, tally: StreamTally, model_id: str, price: Any, purpose: str | None = None
    ) -> None:
        self.turn = turn
        self.purpose = purpose
        self.source = source
        self.tally = tally
        self.model_id = model_id
        self.price = price
        self.recorded: Recorded | None = None
        self._iter = aiter(source)
        self._recording: Awaitable[Recorded] | None = None  # the count, started once (under asyncio, a task)

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        if self._recording is not None:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._iter)
        except BaseException:  # the end, a broken connection, KeyboardInterrupt, the task cancelled
            await shield(self._finish())
            raise
        self.tally.feed(chunk)
        return chunk

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (the browser left): count what came, and close the HTTP response."""
        first = self._recording is None
        await shield(self._finish())
        if first:
            try:
                await close_source(self.source)
            except Exception:  # noqa: BLE001 - the call is counted; a close error is noise
                log.debug("closing the stream failed", exc_info=True)

    def _finish(self) -> Awaitable[Recorded]:
        """Count this stream, once: the count starts at the first call; later callers get the same."""
        if self._recording is None:
            if self in self.turn.rules.streams:
                self.turn.rules.streams.remove(self)
            self._recording = start_task(self._record())
        return self._recording

    async def _record(self) -> Recorded:
        self.recorded = await self.turn.record(
            self.tally, model_id=self.model_id, price=self.price, purpose=self.purpose
        )
        return self.recorded


async def replay(meter: AsyncScriptRunner) -> ReplayReport:
    """Send spooled records to Redis, oldest first, until none is left or Redis fails again.

    Drives the plan of ``quota._replay``: records go through ``run_many``, file steps run through
    ``_compat.to_thread``. A replay stopped by an error closes the plan, which releases its claim."""
    plan = plan_replay(meter.core, meter.turn_options, meter.where)
    outcome: object  # what the step did, sent back into the plan
    try:
        step = next(plan)
        while True:
            if isinstance(step, SendRecords):
                try:
                    outcome = await meter.run_many(step.calls)
                except StorageUnavailable as exc:
                    outcome = exc
            else:
                outcome = await to_thread(step.run)
            step = plan.send(outcome)
    except StopIteration as done:
        report: ReplayReport = done.value  # the plan's return value
        return report
    finally:
        plan.close()


async def _replay_quietly(meter: AsyncScriptRunner) -> None:
    try:
        await replay(meter)
    except Exception:  # noqa: BLE001 - the turn is over; the next one tries again
        log.exception("spool replay failed")
