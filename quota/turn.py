"""A turn: the check when a user's message arrives, and every LLM call of the reply counted.

::

    with meter.turn(user, "system_deepseek") as turn:      # QuotaExceeded(event) when over
        reply = client.chat.completions.create(...)
        turn.record(reply)                                 # never raises for the credit
        for chunk in turn.stream(client.chat.completions.create(..., stream=True), prompt=messages):
            ...

``async with ameter.turn(...)`` is the same on :class:`quota.AsyncMeter`.

The rules live once, in :class:`TurnRules` (what the check means when Redis is away, which request
id a call gets, what goes to the spool) and :class:`ReplayPlan` (how spooled records are sent back
and acknowledged); :class:`Turn` and :class:`AsyncTurn` only do the I/O, as ``Meter`` and
``AsyncMeter`` do for ``quota.core``.

When Redis cannot be reached (``StorageUnavailable``) a record goes to the spool with its request
id and its instant, and is replayed later with both: the month is the month the call was made, and
a record that did reach Redis before the error (a reply lost on the way back) is counted once,
because ``record.lua`` remembers request ids for ``dedupe_ttl_s`` (24 h by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping

from .connect import error_of
from .core import MeterCore, ScriptCall
from .errors import InvalidInput, QuotaError, QuotaExceeded, RequestConflict, StorageUnavailable
from .keys import validate_request_id, validate_user
from .money import nano_to_decimal
from .runner import AsyncScriptRunner, ScriptRunner
from .results import QuotaCheck, UsageResult
from .spool import MemorySpool, Spool, SpoolEntry, open_spool
from .usage import StreamTally, Usage, estimate_prompt_tokens, usage_from

log = logging.getLogger("quota.turn")

ON_UNAVAILABLE = ("allow", "deny")
REPLAY_BATCH = 500
REPLAY_RETRY_S = 5.0


# --- options and metrics -------------------------------------------------------------------------

@dataclass
class TurnMetrics:
    """Counters a worker can export (e.g. as Prometheus counters). Monotonic, per process."""

    checks_unavailable_allowed: int = 0   # Redis away, system model, policy "allow": let through
    checks_unavailable_denied: int = 0    # Redis away, system model, policy "deny": refused
    checks_unavailable_custom: int = 0    # Redis away, custom model: always allowed
    records_counted: int = 0
    records_duplicate: int = 0
    records_estimated: int = 0            # counted (or spooled) from an estimate
    records_spooled: int = 0
    records_lost: int = 0                 # Redis away AND the spool refused the write (disk full)
    records_rekeyed: int = 0              # a provider id reused for a different call
    records_replayed: int = 0
    records_dead: int = 0                 # spooled records Redis refuses for good
    replay_failures: int = 0
    holds_taken: int = 0                  # turns admitted with a hold (turn_begin.lua)
    holds_released: int = 0               # holds given back at the turn's end
    holds_release_failed: int = 0         # Redis away at the turn's end: the hold dies at its expiry

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class TurnOptions:
    """What a meter does for turns: where the spool is, and the check's policy when Redis is away.

    ``on_unavailable="allow"`` (default) lets a new message through on a system model when the
    check cannot reach Redis, logged and counted in ``metrics``; ``"deny"`` raises
    ``StorageUnavailable`` instead. Custom models are never limited, so they always pass.
    """

    def __init__(self, spool: Any = None, on_unavailable: str = "allow", *,
                 replay_batch: int = REPLAY_BATCH, replay_retry_s: float = REPLAY_RETRY_S):
        if on_unavailable not in ON_UNAVAILABLE:
            raise InvalidInput(f"on_unavailable must be 'allow' or 'deny', got {on_unavailable!r}")
        self.spool: Spool | MemorySpool = open_spool(spool)
        self.on_unavailable = on_unavailable
        self.replay_batch = replay_batch
        self.replay_retry_s = replay_retry_s
        self.metrics = TurnMetrics()
        self._next_replay = 0.0
        self._lock = threading.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        if not self.spool.durable:
            log.info("quota: no spool file configured; records made while Redis is away are kept in "
                     "memory only (pass spool=PATH for a durable spool)")

    async def wait_background(self) -> None:
        """Let background replays started by turns finish (``AsyncMeter.aclose`` calls this)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def replay_due(self) -> bool:
        return time.monotonic() >= self._next_replay and self.spool.has_pending()

    def replay_failed(self) -> None:
        self.metrics.replay_failures += 1
        self._next_replay = time.monotonic() + self.replay_retry_s


# --- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recorded:
    """What ``turn.record`` did with one call.

    ``status`` is ``"counted"``, ``"duplicate"`` (this request id was counted before),
    ``"spooled"`` (Redis was away; kept in the spool, replayed later) or ``"lost"`` (Redis away
    and the spool could not be written: logged at ERROR, counted in ``records_lost``).
    """

    status: str
    request_id: str
    model_id: str
    usage: Usage
    result: UsageResult | None = None
    error: str | None = None

    @property
    def spooled(self) -> bool:
        return self.status == "spooled"

    @property
    def estimated(self) -> bool:
        return self.usage.estimated

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "request_id": self.request_id, "model_id": self.model_id,
            "input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens,
            "estimated": self.usage.estimated,
            "result": self.result.as_dict() if self.result is not None else None,
            "error": self.error,
        }


@dataclass(frozen=True)
class ReplayReport:
    """What one replay sent. ``pending`` tells whether records are still waiting."""

    sent: int = 0
    dead: int = 0
    pending: bool = False
    error: str | None = None


@dataclass
class Pending:
    """A record ready to send: the script call, and the spool entry kept if it cannot be sent."""

    entry: SpoolEntry
    call: ScriptCall
    usage: Usage


# --- the shared rules ----------------------------------------------------------------------------

class _PinnedClock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def call_for(core: MeterCore, entry: SpoolEntry, turn_id: str | None = None) -> ScriptCall:
    """The script call for ``entry``, built by the core as it would have been at ``entry.at``.

    Live records and replayed ones go through this one function, so a replayed record lands in
    the month it was made in, with the same request id, whatever the clock says now. ``turn_id``
    draws a live record's cost from its turn's hold; a replayed record has none (its turn is over).
    """
    pinned = MeterCore(core.settings, _PinnedClock(entry.at))
    return pinned.record(entry.user, entry.model_id, entry.input_tokens, entry.output_tokens,
                         request_id=entry.request_id, price=entry.price, estimated=entry.estimated,
                         turn_id=turn_id)


def rekeyed_id(request_id: str, entry: SpoolEntry) -> str:
    """A request id for a call whose provider id was already used for different content.

    Deterministic in the content, so replaying the rekeyed record stays idempotent.
    """
    content = f"{entry.model_id}|{entry.input_tokens}|{entry.output_tokens}|{entry.estimated}|{entry.at.isoformat()}"
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{request_id[:100]}.c{digest}"


def _price_text(price: Mapping[str, Any] | None) -> dict[str, str] | None:
    if price is None:
        return None
    if not isinstance(price, Mapping):
        raise InvalidInput("price must be a dict with cost_per_1k_input and cost_per_1k_output")
    return {str(k): (repr(v) if isinstance(v, float) else str(v)) for k, v in price.items()}


class TurnRules:
    """Everything a turn decides, with no I/O: shared by :class:`Turn` and :class:`AsyncTurn`."""

    def __init__(self, core: MeterCore, options: TurnOptions, user: object, model_id: object,
                 on_unavailable: str | None = None, hold: object = None):
        self.core = core
        self.options = options
        self.user = validate_user(user)
        self.model = core.prices.lookup(model_id)      # UnknownModel before anything happens
        policy = options.on_unavailable if on_unavailable is None else on_unavailable
        if policy not in ON_UNAVAILABLE:
            raise InvalidInput(f"on_unavailable must be 'allow' or 'deny', got {policy!r}")
        self.policy = policy
        self.hold_arg = core.hold_arg(hold)            # InvalidInput before anything happens
        self.turn_id = "turn-" + secrets.token_urlsafe(12)
        self.check: QuotaCheck | None = None
        self.degraded = False                           # the check could not reach Redis
        self.records: list[Recorded] = []
        self.streams: list[Any] = []
        self._seq = 0
        # The turn's hold (system models; see turn_begin.lua): what was reserved, what is left of
        # it after the records so far, and the system cost this turn has counted.
        self.holding = False
        self.hold_nano = 0
        self.hold_remaining_nano = 0
        self.cost_nano = 0

    @property
    def metrics(self) -> TurnMetrics:
        return self.options.metrics

    # the check ---------------------------------------------------------------------------------

    def begin_call(self) -> ScriptCall | None:
        """The admission to run when the turn starts: turn_begin.lua (check and hold) for a system
        model; None for a custom model, which is never limited (the plain check runs instead)."""
        if not self.model.is_system:
            return None
        return self.core.turn_begin(self.user, self.model, self.turn_id, self.hold_arg)

    def admitted(self, reply: tuple[QuotaCheck, int]) -> None:
        check, hold_nano = reply
        if check.allowed:
            self.holding = True
            self.hold_nano = self.hold_remaining_nano = hold_nano
            self.metrics.holds_taken += 1
        self.checked(check)

    def checked(self, check: QuotaCheck) -> None:
        self.check = check
        if not check.allowed:
            raise QuotaExceeded(check.event or {"type": "quota_exceeded"})

    def end_call(self) -> ScriptCall | None:
        """turn_end.lua when this turn still holds part of the credit, else None. Called once."""
        if not self.holding:
            return None
        self.holding = False
        return self.core.turn_end(self.user, self.model, self.turn_id, self.cost_nano)

    def ended(self, exc: Exception | None) -> None:
        if exc is None:
            self.metrics.holds_released += 1
            return
        self.metrics.holds_release_failed += 1
        log.warning("could not release the hold of turn %s for %s (it expires in %d s): %s",
                    self.turn_id, self.user, self.core.settings.hold_ttl_s, exc)

    def can_continue_locally(self) -> bool | None:
        """``can_continue`` when no I/O is needed: True for a custom model or while this turn's
        hold has money left; None when only Redis can tell (the hold is spent)."""
        if not self.model.is_system or (self.holding and self.hold_remaining_nano > 0):
            return True
        return None

    def can_continue_after(self, check: QuotaCheck | StorageUnavailable) -> bool:
        if isinstance(check, StorageUnavailable):
            return self.policy == "allow"
        return check.allowed

    def unavailable(self, exc: StorageUnavailable) -> None:
        """The check could not reach Redis: allow or deny as the policy says (custom: allow)."""
        self.degraded = True
        if not self.model.is_system:
            self.metrics.checks_unavailable_custom += 1
            log.warning("quota check skipped for %s on custom model %s: %s", self.user, self.model.model_id, exc)
            return
        if self.policy == "deny":
            self.metrics.checks_unavailable_denied += 1
            log.warning("quota check failed for %s on %s, denied by policy: %s", self.user, self.model.model_id, exc)
            raise exc
        self.metrics.checks_unavailable_allowed += 1
        log.warning("quota check failed for %s on %s, allowed by policy: %s", self.user, self.model.model_id, exc)

    # records -----------------------------------------------------------------------------------

    def next_request_id(self) -> str:
        self._seq += 1
        return f"{self.turn_id}.{self._seq}"

    def usage_of(self, usage: Any, input_tokens: int | None, output_tokens: int | None,
                 estimated: bool | None) -> Usage:
        if usage is None:
            if input_tokens is None or output_tokens is None:
                raise InvalidInput("record needs a response, a usage, or input_tokens and output_tokens")
            found = Usage(input_tokens, output_tokens, None, False)
        elif input_tokens is not None or output_tokens is not None:
            raise InvalidInput("give either a response/usage or input_tokens/output_tokens, not both")
        elif isinstance(usage, StreamTally):
            found = usage.usage()
        else:
            found = usage_from(usage)
        if estimated is not None:
            if not isinstance(estimated, bool):
                raise InvalidInput("estimated must be True or False")
            found = found._replace(estimated=estimated)
        return found

    def prepare(self, usage: Any = None, *, model_id: object = None, input_tokens: int | None = None,
                output_tokens: int | None = None, request_id: object = None,
                price: Mapping[str, Any] | None = None, estimated: bool | None = None) -> Pending:
        """Validate and price one call (InvalidInput here changes nothing) and build its call."""
        found = self.usage_of(usage, input_tokens, output_tokens, estimated)
        if request_id is not None:
            rid = validate_request_id(request_id)
        else:
            rid = found.request_id or self.next_request_id()
        model = self.model.model_id if model_id is None else model_id
        probe = SpoolEntry(self.user, model, found.input_tokens, found.output_tokens, rid,  # type: ignore[arg-type]
                           found.estimated, self.core.clock(), 0, _price_text(price))
        call = call_for(self.core, probe, self.turn_id if self.holding else None)
        entry = SpoolEntry(probe.user, call.args[0], probe.input_tokens, probe.output_tokens, rid,
                           probe.estimated, probe.at, int(call.args[3]), probe.price)
        return Pending(entry, call, found._replace(request_id=rid))

    def rekeyed(self, pending: Pending) -> Pending:
        rid = rekeyed_id(pending.entry.request_id, pending.entry)
        log.warning("request id %s was already counted for a different call; counting this one as %s",
                    pending.entry.request_id, rid)
        self.metrics.records_rekeyed += 1
        entry = SpoolEntry(**{**_fields(pending.entry), "request_id": rid})
        return Pending(entry, call_for(self.core, entry, self.turn_id if self.holding else None),
                       pending.usage._replace(request_id=rid))

    def counted(self, pending: Pending, result: UsageResult) -> Recorded:
        if result.duplicate:
            self.metrics.records_duplicate += 1
        else:
            self.metrics.records_counted += 1
            self.metrics.records_estimated += pending.usage.estimated
            if result.is_system:
                self.cost_nano += result.cost_nano
        if result.hold_remaining_nano is not None:
            self.hold_remaining_nano = result.hold_remaining_nano
        return self._done(Recorded("duplicate" if result.duplicate else "counted", pending.entry.request_id,
                                   pending.entry.model_id, pending.usage, result))

    def spooled(self, pending: Pending, exc: Exception) -> Recorded:
        self.metrics.records_spooled += 1
        self.cost_nano += pending.entry.cost_nano if self.core.prices.is_system(pending.entry.model_id) else 0
        self.metrics.records_estimated += pending.usage.estimated
        log.warning("Redis unavailable, record %s spooled to %r: %s", pending.entry.request_id,
                    self.options.spool, exc)
        return self._done(Recorded("spooled", pending.entry.request_id, pending.entry.model_id,
                                   pending.usage, None, str(exc)))

    def lost(self, pending: Pending, exc: Exception, spool_error: Exception) -> Recorded:
        self.metrics.records_lost += 1
        log.error("record LOST: Redis unavailable (%s) and the spool %r refused it (%s): %s",
                  exc, self.options.spool, spool_error, pending.entry.to_line().decode().strip())
        return self._done(Recorded("lost", pending.entry.request_id, pending.entry.model_id, pending.usage,
                                   None, f"{exc}; spool: {spool_error}"))

    def _done(self, recorded: Recorded) -> Recorded:
        self.records.append(recorded)
        return recorded

    def stream_model(self, model_id: object, price: Mapping[str, Any] | None) -> str:
        """Validate a stream's model and price up front, so that recording it cannot fail later."""
        model = self.model.model_id if model_id is None else model_id
        return self.core.price_for(model, price).model_id


def _fields(entry: SpoolEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in SpoolEntry.__slots__}  # type: ignore[attr-defined]


class ReplayPlan:
    """One batch of spooled records: the calls to send, and what to acknowledge from the replies.

    Records are acknowledged in order up to the first one that could not be sent, so a replay cut
    short resumes exactly there. A request id reused for a different call is sent again under a
    rekeyed id (:func:`rekeyed_id`); a record Redis refuses for good is put aside as dead.
    """

    def __init__(self, core: MeterCore, metrics: TurnMetrics, batch: list[tuple[SpoolEntry, int]]):
        self.core = core
        self.metrics = metrics
        self.batch = batch
        self.state: list[Any] = []      # per record: ScriptCall to send, or "dead: reason"
        for entry, _ in batch:
            try:
                self.state.append(call_for(core, entry))
            except InvalidInput as exc:
                self.state.append(f"dead: {exc}")
        self.sending = [i for i, s in enumerate(self.state) if isinstance(s, ScriptCall)]

    def calls(self) -> list[ScriptCall]:
        return [self.state[i] for i in self.sending]

    def take(self, errors: list[QuotaError | None]) -> None:
        """``errors`` per sent call (None: it landed). Conflicts become rekeyed calls to send."""
        again = []
        for index, error in zip(self.sending, errors):
            if error is None:
                self.state[index] = "ok"
            elif isinstance(error, RequestConflict):
                entry = self.batch[index][0]
                rekeyed = SpoolEntry(**{**_fields(entry), "request_id": rekeyed_id(entry.request_id, entry)})
                self.metrics.records_rekeyed += 1
                self.batch[index] = (rekeyed, self.batch[index][1])
                self.state[index] = call_for(self.core, rekeyed)
                again.append(index)
            elif isinstance(error, InvalidInput):
                self.state[index] = f"dead: {error}"
            else:
                self.state[index] = error   # storage trouble: stop here, send again later
        self.sending = again

    def commit(self, claim: Any) -> tuple[int, int, Exception | None]:
        """Acknowledge the records done, in order, with one offset write; returns
        (sent, dead, the error that stopped it or None)."""
        sent = dead = 0
        last = None
        error: Exception | None = None
        for (entry, offset), state in zip(self.batch, self.state):
            if state == "ok":
                sent += 1
            elif isinstance(state, str) and state.startswith("dead: "):
                dead += 1
                claim.dead(entry, f"record {entry.request_id} refused: {state[6:]}")
            else:
                error = state if isinstance(state, Exception) else StorageUnavailable("not sent")
                break
            last = offset
        if last is not None:
            claim.ack(last, sent)
        self.metrics.records_replayed += sent
        self.metrics.records_dead += dead
        return sent, dead, error


def _errors_of(meter: ScriptRunner | AsyncScriptRunner, replies: list[Any]) -> list[QuotaError | None]:
    return [error_of(reply, meter.where) for reply in replies]


# --- sync I/O ------------------------------------------------------------------------------------

class Turn:
    """``with meter.turn(user, model_id) as turn:`` — see the module docstring."""

    def __init__(self, meter: ScriptRunner, user: str, model_id: str, *, on_unavailable: str | None = None,
                 hold: object = None):
        self.meter = meter
        self.rules = TurnRules(meter.core, meter.turn_options, user, model_id, on_unavailable, hold)

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

    def __enter__(self) -> "Turn":
        begin = self.rules.begin_call()
        try:
            if begin is None:
                self.rules.checked(self.meter.check_quota_available(self.rules.user, self.rules.model.model_id))
            else:
                self.rules.admitted(self.meter.run(begin))
        except StorageUnavailable as exc:
            self.rules.unavailable(exc)
        return self

    def can_continue(self) -> bool:
        """May an agent loop take another step (a tool call, a retry)? True while this turn's hold
        has money left, or while the credit is not used up by spend and other turns' holds.
        Advisory: the worker decides how to finish the reply; records are never refused."""
        verdict = self.rules.can_continue_locally()
        if verdict is not None:
            return verdict
        try:
            check = self.meter.check_quota_available(self.rules.user, self.rules.model.model_id)
        except StorageUnavailable as exc:
            return self.rules.can_continue_after(exc)
        return self.rules.can_continue_after(check)

    def __exit__(self, *exc: object) -> None:
        for stream in list(self.rules.streams):
            stream.close()
        end = self.rules.end_call()
        if end is not None:
            try:
                self.meter.run(end)
            except QuotaError as error:
                self.rules.ended(error)
            else:
                self.rules.ended(None)
        if self.meter.turn_options.replay_due():
            try:
                replay(self.meter)
            except Exception:  # noqa: BLE001 - the turn is over; the next one tries again
                log.exception("spool replay failed")

    def record(self, usage: Any = None, /, *, model_id: str | None = None, input_tokens: int | None = None,
               output_tokens: int | None = None, request_id: str | None = None,
               price: Mapping[str, Any] | None = None, estimated: bool | None = None) -> Recorded:
        """Count one LLM call of this turn (any model; default the turn's). Never raises for the credit.

        ``usage`` is a response, a usage object/dict or a :class:`~quota.usage.Usage`; or pass
        ``input_tokens`` and ``output_tokens``. Bad input raises ``InvalidInput`` and changes nothing.
        """
        pending = self.rules.prepare(usage, model_id=model_id, input_tokens=input_tokens,
                                     output_tokens=output_tokens, request_id=request_id, price=price,
                                     estimated=estimated)
        return self._send(pending)

    def _send(self, pending: Pending) -> Recorded:
        try:
            try:
                result = self.meter.run(pending.call)
            except RequestConflict:
                pending = self.rules.rekeyed(pending)
                result = self.meter.run(pending.call)
        except StorageUnavailable as exc:
            try:
                self.meter.turn_options.spool.append(pending.entry)
            except OSError as spool_error:
                return self.rules.lost(pending, exc, spool_error)
            return self.rules.spooled(pending, exc)
        return self.rules.counted(pending, result)

    def stream(self, stream: Any, *, prompt: Any = None, model_id: str | None = None,
               price: Mapping[str, Any] | None = None) -> "MeteredStream":
        """Wrap a streaming response: chunks pass through, and the call is counted when the stream
        ends, fails, is closed, or is left behind when the turn ends (estimated if no usage came).

        ``prompt`` (the messages sent) lets a stream cut short before its usage arrived be
        estimated on the input side too; without it the input of such a stream counts as 0.
        """
        model = self.rules.stream_model(model_id, price)
        wrapped = MeteredStream(self, stream, StreamTally(estimate_prompt_tokens(prompt)), model, price)
        self.rules.streams.append(wrapped)
        return wrapped


class MeteredStream:
    """A stream that counts itself once. ``recorded`` holds the outcome once it is counted."""

    def __init__(self, turn: Turn, source: Any, tally: StreamTally, model_id: str, price: Any):
        self.turn = turn
        self.source = source
        self.tally = tally
        self.model_id = model_id
        self.price = price
        self.recorded: Recorded | None = None
        self._iter = iter(source)

    def __iter__(self) -> "MeteredStream":
        return self

    def __next__(self) -> Any:
        if self.recorded is not None:
            raise StopIteration
        try:
            chunk = next(self._iter)
        except BaseException:  # the end, a broken connection, KeyboardInterrupt: count what came
            self._finish()
            raise
        self.tally.feed(chunk)
        return chunk

    def __enter__(self) -> "MeteredStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading (the browser left): count what came, and close the HTTP response."""
        if self.recorded is None:
            self._finish()
            closer = getattr(self.source, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - the call is counted; a close error is noise
                    log.debug("closing the stream failed", exc_info=True)

    def _finish(self) -> None:
        if self.recorded is None:
            self.recorded = self.turn.record(self.tally, model_id=self.model_id, price=self.price)
        if self in self.turn.rules.streams:
            self.turn.rules.streams.remove(self)


def replay(meter: ScriptRunner) -> ReplayReport:
    """Send spooled records to Redis, oldest first, until none is left or Redis fails again.

    One claim covers one file: a replay resumed after an outage first finishes the file claimed
    by the failed attempt, then claims what was spooled since, and so on until nothing is left."""
    sent = dead = 0
    while True:
        one = _replay_claim(meter)
        sent, dead = sent + one.sent, dead + one.dead
        if one.error is not None or not one.pending or not (one.sent or one.dead):
            return ReplayReport(sent, dead, one.pending, one.error)


def _replay_claim(meter: ScriptRunner) -> ReplayReport:
    """Replay one claimed spool file (see :func:`replay`)."""
    options: TurnOptions = meter.turn_options
    claim = options.spool.claim()
    if claim is None:
        return ReplayReport(pending=options.spool.has_pending())
    sent = dead = 0
    try:
        while True:
            batch = claim.batch(options.replay_batch)
            if not batch:
                claim.finish()
                claim = None
                break
            plan = ReplayPlan(meter.core, options.metrics, batch)
            while plan.sending:
                calls = plan.calls()
                try:
                    replies = meter.run_many(calls)
                except StorageUnavailable as exc:
                    replies = [exc] * len(calls)
                plan.take(_errors_of(meter, replies))
            done, gone, error = plan.commit(claim)
            sent, dead = sent + done, dead + gone
            if error is not None:
                options.replay_failed()
                log.warning("spool replay stopped after %d records: %s", sent, error)
                return ReplayReport(sent, dead, True, str(error))
    finally:
        if claim is not None:
            claim.release()
    if sent or dead:
        log.info("spool replay sent %d records (%d dead)", sent, dead)
    return ReplayReport(sent, dead, options.spool.has_pending())


# --- async I/O -----------------------------------------------------------------------------------

class AsyncTurn:
    """``async with ameter.turn(user, model_id) as turn:`` — the asyncio twin of :class:`Turn`.

    A record runs shielded: if the task is cancelled while a record is on its way, the record still
    completes. Streams cut short by a cancellation are counted the same way.
    """

    def __init__(self, meter: AsyncScriptRunner, user: str, model_id: str, *, on_unavailable: str | None = None,
                 hold: object = None):
        self.meter = meter
        self.rules = TurnRules(meter.core, meter.turn_options, user, model_id, on_unavailable, hold)

    check = Turn.check
    degraded = Turn.degraded
    records = Turn.records
    hold = Turn.hold

    async def __aenter__(self) -> "AsyncTurn":
        begin = self.rules.begin_call()
        try:
            if begin is None:
                self.rules.checked(await self.meter.check_quota_available(self.rules.user,
                                                                          self.rules.model.model_id))
            else:
                # Shielded: a turn cancelled while its hold is being taken still learns the hold,
                # so that __aexit__ (which runs only if this returns) or its expiry frees it.
                self.rules.admitted(await asyncio.shield(self.meter.run(begin)))
        except StorageUnavailable as exc:
            self.rules.unavailable(exc)
        return self

    async def can_continue(self) -> bool:
        """As :meth:`Turn.can_continue`."""
        verdict = self.rules.can_continue_locally()
        if verdict is not None:
            return verdict
        try:
            check = await self.meter.check_quota_available(self.rules.user, self.rules.model.model_id)
        except StorageUnavailable as exc:
            return self.rules.can_continue_after(exc)
        return self.rules.can_continue_after(check)

    async def __aexit__(self, *exc: object) -> None:
        for stream in list(self.rules.streams):
            await stream.aclose()
        end = self.rules.end_call()
        if end is not None:
            try:
                await asyncio.shield(self.meter.run(end))   # a cancelled turn still gives its hold back
            except QuotaError as error:
                self.rules.ended(error)
            else:
                self.rules.ended(None)
        options: TurnOptions = self.meter.turn_options
        if options.replay_due():
            task = asyncio.ensure_future(_replay_quietly(self.meter))  # the reply is done: don't wait
            options._background.add(task)
            task.add_done_callback(options._background.discard)

    async def record(self, usage: Any = None, /, *, model_id: str | None = None,
                     input_tokens: int | None = None, output_tokens: int | None = None,
                     request_id: str | None = None, price: Mapping[str, Any] | None = None,
                     estimated: bool | None = None) -> Recorded:
        """As :meth:`Turn.record`."""
        pending = self.rules.prepare(usage, model_id=model_id, input_tokens=input_tokens,
                                     output_tokens=output_tokens, request_id=request_id, price=price,
                                     estimated=estimated)
        return await asyncio.shield(self._send(pending))

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
                    await asyncio.to_thread(spool.append, pending.entry)   # fsync off the loop
                else:
                    spool.append(pending.entry)
            except OSError as spool_error:
                return self.rules.lost(pending, exc, spool_error)
            return self.rules.spooled(pending, exc)
        return self.rules.counted(pending, result)

    def stream(self, stream: Any, *, prompt: Any = None, model_id: str | None = None,
               price: Mapping[str, Any] | None = None) -> "AsyncMeteredStream":
        """As :meth:`Turn.stream`, for async streams (``async for``)."""
        model = self.rules.stream_model(model_id, price)
        wrapped = AsyncMeteredStream(self, stream, StreamTally(estimate_prompt_tokens(prompt)), model, price)
        self.rules.streams.append(wrapped)
        return wrapped


class AsyncMeteredStream:
    def __init__(self, turn: AsyncTurn, source: Any, tally: StreamTally, model_id: str, price: Any):
        self.turn = turn
        self.source = source
        self.tally = tally
        self.model_id = model_id
        self.price = price
        self.recorded: Recorded | None = None
        self._iter = source.__aiter__()
        self._task: asyncio.Future[Recorded] | None = None

    def __aiter__(self) -> "AsyncMeteredStream":
        return self

    async def __anext__(self) -> Any:
        if self._task is not None:
            raise StopAsyncIteration
        try:
            chunk = await self._iter.__anext__()
        except BaseException:  # the end, a broken connection, or the task cancelled mid-stream
            await asyncio.shield(self._finish())
            raise
        self.tally.feed(chunk)
        return chunk

    async def __aenter__(self) -> "AsyncMeteredStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading: count what came (shielded from cancellation) and close the response."""
        first = self._task is None
        await asyncio.shield(self._finish())
        if first:
            closer = getattr(self.source, "close", None) or getattr(self.source, "aclose", None)
            if callable(closer):
                try:
                    result = closer()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:  # noqa: BLE001
                    log.debug("closing the stream failed", exc_info=True)

    def _finish(self) -> "asyncio.Future[Recorded]":
        """One task that records this stream, created once; later callers await the same task."""
        if self._task is None:
            if self in self.turn.rules.streams:
                self.turn.rules.streams.remove(self)
            self._task = asyncio.ensure_future(self._record())
        return self._task

    async def _record(self) -> Recorded:
        self.recorded = await self.turn.record(self.tally, model_id=self.model_id, price=self.price)
        return self.recorded


async def areplay(meter: AsyncScriptRunner) -> ReplayReport:
    """The asyncio twin of :func:`replay`; file work runs in a thread, off the event loop."""
    sent = dead = 0
    while True:
        one = await _areplay_claim(meter)
        sent, dead = sent + one.sent, dead + one.dead
        if one.error is not None or not one.pending or not (one.sent or one.dead):
            return ReplayReport(sent, dead, one.pending, one.error)


async def _areplay_claim(meter: AsyncScriptRunner) -> ReplayReport:
    """Replay one claimed spool file (see :func:`areplay`)."""
    options: TurnOptions = meter.turn_options
    claim = await asyncio.to_thread(options.spool.claim)
    if claim is None:
        return ReplayReport(pending=options.spool.has_pending())
    sent = dead = 0
    try:
        while True:
            batch = await asyncio.to_thread(claim.batch, options.replay_batch)
            if not batch:
                await asyncio.to_thread(claim.finish)
                claim = None
                break
            plan = ReplayPlan(meter.core, options.metrics, batch)
            while plan.sending:
                calls = plan.calls()
                try:
                    replies = await meter.run_many(calls)
                except StorageUnavailable as exc:
                    replies = [exc] * len(calls)
                plan.take(_errors_of(meter, replies))
            done, gone, error = await asyncio.to_thread(plan.commit, claim)
            sent, dead = sent + done, dead + gone
            if error is not None:
                options.replay_failed()
                log.warning("spool replay stopped after %d records: %s", sent, error)
                return ReplayReport(sent, dead, True, str(error))
    finally:
        if claim is not None:
            claim.release()
    if sent or dead:
        log.info("spool replay sent %d records (%d dead)", sent, dead)
    return ReplayReport(sent, dead, options.spool.has_pending())


async def _replay_quietly(meter: AsyncScriptRunner) -> None:
    try:
        await areplay(meter)
    except Exception:  # noqa: BLE001
        log.exception("spool replay failed")


__all__ = [
    "AsyncMeteredStream", "AsyncTurn", "MeteredStream", "Recorded", "ReplayReport", "Turn",
    "TurnMetrics", "TurnOptions", "TurnRules", "ReplayPlan", "areplay", "call_for", "replay",
]
