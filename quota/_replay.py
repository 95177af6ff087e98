"""The spool replay as a sans-I/O plan, driven by the sync and the async client alike.

``plan_replay`` is a generator, like ``quota._batch``'s plan: it yields the steps a replay needs
and receives each step's outcome. File steps (:class:`ClaimFile`, :class:`ReadBatch`,
:class:`Commit`, :class:`Finish`) carry a ``run()`` that does them (they read, write and fsync: the
asyncio client runs them in a thread); the one Redis step, :class:`SendRecords`, is sent by the
client (``run_many``). The plan holds every rule:

* one claim covers one spool file: a replay resumed after an outage first finishes the file the
  failed attempt claimed, then claims what was spooled since, and so on until nothing is left or
  Redis fails again;
* records are sent in batches, each made at the instant it was spooled with (its month), with its
  request id, so a record that reached Redis before is counted once;
* a request id reused for a different call is sent again under a rekeyed id; a record Redis
  refuses for good is put aside in the dead file;
* records are acknowledged in order up to the first one that could not be sent, so a replay cut
  short resumes exactly there.

The plan touches the spool itself only for two quick calls, as a turn's end does: whether records
are pending (two stats), and releasing its claim when it stops, however it stops: a client closes
the plan (``plan.close()``) when a step fails, and the claim is released then.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from ._connect import error_of
from ._core import MeterCore, ScriptCall
from ._errors import InvalidInput, RequestConflict, StorageUnavailable
from ._results import UsageResult
from ._spool import MemorySpool, Spool, SpoolClaim, SpoolEntry
from ._turn_rules import TurnOptions, call_for, rekeyed_id

log = logging.getLogger("quota.turn")


@dataclass(frozen=True)
class ReplayReport:
    """What one replay sent. ``pending`` tells whether records are still waiting."""

    sent: int = 0
    dead: int = 0
    pending: bool = False
    error: str | None = None


class RecordState(Enum):
    """Where one spooled record of a batch stands."""

    SENDING = "sending"  # its call is to be sent (again, when rekeyed)
    SENT = "sent"  # Redis has it (counted now, or before: a duplicate)
    DEAD = "dead"  # refused for good: put aside in the dead file
    FAILED = "failed"  # storage trouble: it and the records after it wait for the next replay


# --- the steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimFile:
    """Claim the oldest spooled records; outcome: the claim, or None (nothing, or taken)."""

    spool: Spool | MemorySpool

    def run(self) -> SpoolClaim | None:
        return self.spool.claim()


@dataclass(frozen=True)
class ReadBatch:
    """Read the next ``size`` records of the claim; outcome: ``[(entry, end offset), ...]``."""

    claim: SpoolClaim
    size: int

    def run(self) -> list[tuple[SpoolEntry, int]]:
        return self.claim.batch(self.size)


@dataclass(frozen=True)
class SendRecords:
    """Send ``calls`` pipelined (``run_many``); outcome: one raw reply or exception per call, or
    one ``StorageUnavailable`` when the batch could not be sent at all."""

    calls: list[ScriptCall[Any]]


@dataclass(frozen=True)
class Commit:
    """Put aside the ``dead`` records, then acknowledge the batch up to ``offset`` (None: no
    record of it is done) with ``sent`` records counted, in one offset write."""

    claim: SpoolClaim
    dead: list[tuple[SpoolEntry, str]]
    offset: int | None
    sent: int

    def run(self) -> None:
        for entry, reason in self.dead:
            self.claim.dead(entry, reason)
        if self.offset is not None:
            self.claim.ack(self.offset, self.sent)


@dataclass(frozen=True)
class Finish:
    """Every record of the claimed file is in Redis: drop the file (and release the claim)."""

    claim: SpoolClaim

    def run(self) -> None:
        self.claim.finish()


FileStep = ClaimFile | ReadBatch | Commit | Finish
Step = FileStep | SendRecords


# --- the plan ------------------------------------------------------------------------------------


def plan_replay(core: MeterCore, options: TurnOptions, where: str) -> Generator[Step, Any, ReplayReport]:
    """The steps of one replay of ``options.spool``; returns what it sent. ``where`` names the
    Redis the records go to, in errors."""
    sent = dead = 0
    while True:
        one = yield from _replay_claim(core, options, where)
        sent, dead = sent + one.sent, dead + one.dead
        if one.error is not None or not one.pending or not (one.sent or one.dead):
            return ReplayReport(sent, dead, one.pending, one.error)


def _replay_claim(core: MeterCore, options: TurnOptions, where: str) -> Generator[Step, Any, ReplayReport]:
    """Replay one claimed spool file (see :func:`plan_replay`)."""
    claim = yield ClaimFile(options.spool)
    if claim is None:
        return ReplayReport(pending=options.spool.has_pending())
    sent = dead = 0
    try:
        while True:
            batch = yield ReadBatch(claim, options.replay_batch)
            if not batch:
                yield Finish(claim)
                claim = None
                break
            done, gone, error = yield from _replay_batch(core, options, where, claim, batch)
            sent, dead = sent + done, dead + gone
            if error is not None:
                options.replay_failed()
                log.warning("spool replay stopped after %d records: %s", sent, error)
                return ReplayReport(sent, dead, True, str(error))
    finally:  # the replay stopped early (or a step failed and the client closed the plan)
        if claim is not None:
            claim.release()
    if sent or dead:
        log.info("spool replay sent %d records (%d dead)", sent, dead)
    return ReplayReport(sent, dead, options.spool.has_pending())


@dataclass
class _Record:
    """One spooled record of a batch, as the replay goes."""

    entry: SpoolEntry
    offset: int
    state: RecordState
    error: Exception | None = None  # DEAD: why Redis refused it; FAILED: the storage error


def _replay_batch(
    core: MeterCore, options: TurnOptions, where: str, claim: SpoolClaim, batch: list[tuple[SpoolEntry, int]]
) -> Generator[Step, Any, tuple[int, int, Exception | None]]:
    """Send one batch and acknowledge what landed; returns (sent, dead, the error that stopped it
    or None)."""
    metrics = options.metrics
    records = []
    sending: list[tuple[_Record, ScriptCall[UsageResult]]] = []  # the records to send, with their calls
    for entry, offset in batch:
        try:
            call = call_for(core, entry)
        except InvalidInput as exc:  # a model removed from the price table since, say
            records.append(_Record(entry, offset, RecordState.DEAD, error=exc))
        else:
            records.append(_Record(entry, offset, RecordState.SENDING))
            sending.append((records[-1], call))
    while sending:
        replies = yield SendRecords([call for _, call in sending])
        if isinstance(replies, Exception):
            replies = [replies] * len(sending)
        again = []
        for (record, _), reply in zip(sending, replies):
            error = error_of(reply, where)
            if error is None:
                record.state = RecordState.SENT
            elif isinstance(error, RequestConflict):
                record.entry = replace(record.entry, request_id=rekeyed_id(record.entry.request_id, record.entry))
                rekeyed = call_for(core, record.entry)
                metrics.records_rekeyed += 1
                again.append((record, rekeyed))
            elif isinstance(error, InvalidInput):
                record.state, record.error = RecordState.DEAD, error
            else:
                record.state, record.error = RecordState.FAILED, error  # send again later
        sending = again

    sent = dead = 0
    last = None
    stopped: Exception | None = None
    buried = []
    for record in records:  # in order, up to the first record not done
        if record.state is RecordState.SENT:
            sent += 1
        elif record.state is RecordState.DEAD:
            dead += 1
            buried.append((record.entry, f"record {record.entry.request_id} refused: {record.error}"))
        else:
            stopped = record.error or StorageUnavailable("not sent")
            break
        last = record.offset
    yield Commit(claim, buried, last, sent)
    metrics.records_replayed += sent
    metrics.records_dead += dead
    return sent, dead, stopped
