"""The rules of a turn, with no I/O: what the check means when Redis is away, which request id a
call gets, what a record's outcome is, what goes to the spool.

:class:`TurnRules` decides; the turns in ``quota/_async/turn.py`` (and the generated
``quota/_sync/turn.py``) only do the I/O, as the meters do for ``quota._core``. :class:`TurnOptions`
is what a meter keeps for its turns (the spool, the policy, the metrics). The replay of the spool
is planned in ``quota._replay``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ._core import MeterCore, ScriptCall, priced_model
from ._errors import InvalidInput, QuotaExceeded, StorageUnavailable
from ._keys import validate_purpose, validate_request_id, validate_user
from ._results import QuotaCheck, UsageResult
from ._spool import MemorySpool, Spool, SpoolEntry, open_spool
from ._usage import StreamTally, Usage, usage_from

log = logging.getLogger("quota.turn")

ON_UNAVAILABLE = ("allow", "deny")
REPLAY_BATCH = 500
REPLAY_RETRY_S = 5.0
_SAID_MEMORY_SPOOL = False  # the memory-spool notice was logged (TurnOptions)


# --- options and metrics -------------------------------------------------------------------------


@dataclass
class TurnMetrics:
    """Counters a worker can export (e.g. as Prometheus counters). Monotonic, per process."""

    checks_unavailable_allowed: int = 0  # Redis away, system model, policy "allow": let through
    checks_unavailable_denied: int = 0  # Redis away, system model, policy "deny": refused
    checks_unavailable_custom: int = 0  # Redis away, custom model: always allowed
    records_counted: int = 0
    records_duplicate: int = 0
    records_estimated: int = 0  # counted (or spooled) from an estimate
    records_spooled: int = 0
    records_lost: int = 0  # Redis away AND the spool refused the write (disk full)
    records_rekeyed: int = 0  # a provider id reused for a different call
    records_replayed: int = 0
    records_dead: int = 0  # spooled records Redis refuses for good
    replay_failures: int = 0
    holds_taken: int = 0  # turns admitted with a hold (turn_begin.lua)
    holds_released: int = 0  # holds given back at the turn's end
    holds_release_failed: int = 0  # Redis away at the turn's end: the hold dies at its expiry

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class TurnOptions:
    """What a meter does for turns: where the spool is, and the check's policy when Redis is away.

    ``on_unavailable="allow"`` (default) lets a new message through on a system model when the
    check cannot reach Redis, logged and counted in ``metrics``; ``"deny"`` raises
    ``StorageUnavailable`` instead. Custom models are never limited, so they always pass.
    """

    def __init__(
        self,
        spool: Any = None,
        on_unavailable: str = "allow",
        *,
        replay_batch: int = REPLAY_BATCH,
        replay_retry_s: float = REPLAY_RETRY_S,
    ) -> None:
        if on_unavailable not in ON_UNAVAILABLE:
            raise InvalidInput(f"on_unavailable must be 'allow' or 'deny', got {on_unavailable!r}")
        self.spool: Spool | MemorySpool = open_spool(spool)
        self.on_unavailable = on_unavailable
        self.replay_batch = replay_batch
        self.replay_retry_s = replay_retry_s
        self.metrics = TurnMetrics()
        self._next_replay = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        global _SAID_MEMORY_SPOOL
        if not self.spool.durable and not _SAID_MEMORY_SPOOL:
            _SAID_MEMORY_SPOOL = True  # once per process: a server builds a meter per role
            log.info(
                "quota: no spool file configured; records made while Redis is away are kept in "
                "memory only (pass spool=PATH for a durable spool)"
            )

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a replay a turn started in the background until it is done (see wait_background)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_background(self) -> None:
        """Let background replays started by turns in the running loop finish (``AsyncMeter.aclose``
        calls this; a task of another loop can not be awaited here, and its loop ends it)."""
        loop = asyncio.get_running_loop()
        while here := [task for task in list(self._background) if task.get_loop() is loop]:
            await asyncio.gather(*here, return_exceptions=True)

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

    @property
    def alerts(self) -> tuple[int, ...]:
        """The alert thresholds this call crossed (``UsageResult.alerts``); () when not counted."""
        return self.result.alerts if self.result is not None else ()

    @property
    def warning(self) -> dict[str, Any] | None:
        """The ``quota_warning`` event to push to the browser when this call crossed a threshold."""
        return self.result.warning if self.result is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "request_id": self.request_id,
            "model_id": self.model_id,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "estimated": self.usage.estimated,
            "result": self.result.as_dict() if self.result is not None else None,
            "error": self.error,
            "alerts": list(self.alerts),
        }


@dataclass
class Pending:
    """A record ready to send: the script call, and the spool entry kept if it cannot be sent."""

    entry: SpoolEntry
    call: ScriptCall[UsageResult]
    usage: Usage


# --- the shared rules ----------------------------------------------------------------------------


def call_for(core: MeterCore, entry: SpoolEntry, turn_id: str | None = None) -> ScriptCall[UsageResult]:
    """The script call for ``entry`` (a rekeyed record, or one replayed from the spool), made at
    ``entry.at`` as a live record is made at the instant it is spooled with: a replayed record
    lands in the month it was made in, with the same request id, whatever the clock says now.
    ``turn_id`` draws a live record's cost from its turn's hold; a replayed record has none (its
    turn is over)."""
    return core.record(
        entry.user,
        entry.model_id,
        entry.input_tokens,
        entry.output_tokens,
        request_id=entry.request_id,
        price=entry.price,
        estimated=entry.estimated,
        turn_id=turn_id,
        at=entry.at,
        purpose=entry.purpose,
        cached_input_tokens=entry.cached_input_tokens,
        cache_write_tokens=entry.cache_write_tokens,
    )


def rekeyed_id(request_id: str, entry: SpoolEntry) -> str:
    """A request id for a call whose provider id was already used for different content.

    Deterministic in the content, so replaying the rekeyed record stays idempotent.
    """
    content = f"{entry.model_id}|{entry.input_tokens}|{entry.output_tokens}|{entry.estimated}|{entry.at.isoformat()}"
    if entry.purpose is not None:
        content += f"|{entry.purpose}"
    if entry.cached_input_tokens or entry.cache_write_tokens:
        content += f"|k{entry.cached_input_tokens}:{entry.cache_write_tokens}"
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{request_id[:100]}.c{digest}"


def _price_text(price: Mapping[str, Any] | None) -> dict[str, str] | None:
    if price is None:
        return None
    if not isinstance(price, Mapping):
        raise InvalidInput("price must be a dict with cost_per_1k_input and cost_per_1k_output")
    return {str(k): (repr(v) if isinstance(v, float) else str(v)) for k, v in price.items()}


class TurnRules:
    """Everything a turn decides, with no I/O: shared by ``Turn`` and ``AsyncTurn``."""

    def __init__(
        self,
        core: MeterCore,
        options: TurnOptions,
        user: object,
        model_id: object,
        on_unavailable: str | None = None,
        hold: object = None,
    ) -> None:
        self.core = core
        self.options = options
        self.user = validate_user(user)
        self.model = core.prices.lookup(model_id)  # UnknownModel before anything happens
        policy = options.on_unavailable if on_unavailable is None else on_unavailable
        if policy not in ON_UNAVAILABLE:
            raise InvalidInput(f"on_unavailable must be 'allow' or 'deny', got {policy!r}")
        self.policy = policy
        self.hold_arg = core.hold_arg(hold)  # InvalidInput before anything happens
        self.turn_id = "turn-" + secrets.token_urlsafe(12)
        self.check: QuotaCheck | None = None
        self.degraded = False  # the check could not reach Redis
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

    def begin_call(self) -> ScriptCall[tuple[QuotaCheck, int]] | None:
        """The admission to run when the turn starts: turn_begin.lua (check and hold) for a system
        model; None for a custom model, which is never limited (the plain check runs instead)."""
        if not self.model.is_system:
            return None
        return self.core.turn_begin(self.user, self.model, self.turn_id, self.hold_arg)

    def check_call(self) -> ScriptCall[QuotaCheck]:
        """The plain check (``check_quota_available``): a custom model's admission, and
        ``can_continue`` once the hold is spent."""
        return self.core.check(self.user, self.model.model_id)

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

    def end_call(self) -> ScriptCall[bool] | None:
        """turn_end.lua when this turn still holds part of the credit, else None. Called once."""
        if not self.holding:
            return None
        self.holding = False
        return self.core.turn_end(self.user, self.model, self.turn_id, self.cost_nano)

    def abandoned_call(self, reply: tuple[QuotaCheck, int]) -> ScriptCall[bool] | None:
        """turn_end.lua for an admission that went through after its turn was cancelled (the turn
        never learned of its hold): give the hold back at once, and learn nothing from it."""
        check, _ = reply
        if not check.allowed:
            return None
        return self.core.turn_end(self.user, self.model, self.turn_id, 0, learn=False)

    def ended(self, exc: Exception | None) -> None:
        if exc is None:
            self.metrics.holds_released += 1
            return
        self.metrics.holds_release_failed += 1
        log.warning(
            "could not release the hold of turn %s for %s (it expires in %d s): %s",
            self.turn_id,
            self.user,
            self.core.settings.hold_ttl_s,
            exc,
        )

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

    def usage_of(
        self,
        usage: Any,
        input_tokens: int | None,
        output_tokens: int | None,
        estimated: bool | None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> Usage:
        if usage is None:
            if input_tokens is None or output_tokens is None:
                raise InvalidInput("record needs a response, a usage, or input_tokens and output_tokens")
            found = Usage(input_tokens, output_tokens, None, False, cached_input_tokens or 0, cache_write_tokens or 0)
        elif any(n is not None for n in (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens)):
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

    def prepare(
        self,
        usage: Any = None,
        *,
        model_id: object = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        request_id: object = None,
        price: Mapping[str, Any] | None = None,
        estimated: bool | None = None,
        purpose: object = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> Pending:
        """Validate and price one call (InvalidInput here changes nothing) and build its call."""
        found = self.usage_of(usage, input_tokens, output_tokens, estimated, cached_input_tokens, cache_write_tokens)
        purpose_text = validate_purpose(purpose)
        if request_id is not None:
            rid = validate_request_id(request_id)
        else:
            rid = found.request_id or self.next_request_id()
        model = self.model.model_id if model_id is None else model_id
        price_text = _price_text(price)
        at = self.core.clock()
        call = self.core.record(
            self.user,
            model,
            found.input_tokens,
            found.output_tokens,
            request_id=rid,
            price=price_text,
            estimated=found.estimated,
            turn_id=self.turn_id if self.holding else None,
            at=at,
            purpose=purpose_text,
            cached_input_tokens=found.cached_input_tokens,
            cache_write_tokens=found.cache_write_tokens,
        )
        # The spool keeps what the call was priced as: the canonical model id, and its cost.
        entry = SpoolEntry(
            self.user,
            priced_model(call).model_id,
            found.input_tokens,
            found.output_tokens,
            rid,
            found.estimated,
            at,
            call.cost_nano,
            price_text,
            purpose_text,
            found.cached_input_tokens,
            found.cache_write_tokens,
        )
        return Pending(entry, call, found._replace(request_id=rid))

    def rekeyed(self, pending: Pending) -> Pending:
        rid = rekeyed_id(pending.entry.request_id, pending.entry)
        log.warning(
            "request id %s was already counted for a different call; counting this one as %s",
            pending.entry.request_id,
            rid,
        )
        self.metrics.records_rekeyed += 1
        entry = replace(pending.entry, request_id=rid)
        return Pending(
            entry,
            call_for(self.core, entry, self.turn_id if self.holding else None),
            pending.usage._replace(request_id=rid),
        )

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
        return self._done(
            Recorded(
                "duplicate" if result.duplicate else "counted",
                pending.entry.request_id,
                pending.entry.model_id,
                pending.usage,
                result,
            )
        )

    def spooled(self, pending: Pending, exc: Exception) -> Recorded:
        self.metrics.records_spooled += 1
        self.cost_nano += pending.call.cost_nano if priced_model(pending.call).is_system else 0
        self.metrics.records_estimated += pending.usage.estimated
        log.warning("Redis unavailable, record %s spooled to %r: %s", pending.entry.request_id, self.options.spool, exc)
        return self._done(
            Recorded("spooled", pending.entry.request_id, pending.entry.model_id, pending.usage, None, str(exc))
        )

    def lost(self, pending: Pending, exc: Exception, spool_error: Exception) -> Recorded:
        self.metrics.records_lost += 1
        log.error(
            "record LOST: Redis unavailable (%s) and the spool %r refused it (%s): %s",
            exc,
            self.options.spool,
            spool_error,
            pending.entry.to_line().decode().strip(),
        )
        return self._done(
            Recorded(
                "lost",
                pending.entry.request_id,
                pending.entry.model_id,
                pending.usage,
                None,
                f"{exc}; spool: {spool_error}",
            )
        )

    def _done(self, recorded: Recorded) -> Recorded:
        self.records.append(recorded)
        return recorded

    def stream_model(self, model_id: object, price: Mapping[str, Any] | None, purpose: object = None) -> str:
        """Validate a stream's model, price and purpose up front, so that recording it cannot fail later."""
        validate_purpose(purpose)
        model = self.model.model_id if model_id is None else model_id
        return self.core.price_for(model, price).model_id
