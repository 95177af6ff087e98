"""The sans-I/O core shared by ``Meter`` and ``AsyncMeter``.

Each operation is split in two pure halves: *prepare* validates the arguments, prices the call
and builds a :class:`ScriptCall` (which script, KEYS, ARGV); *parse* turns the script's reply into
a result. The clients (``quota/_async/meter.py``, and ``quota/_sync/meter.py`` generated from it)
only send the call and await the reply, so every rule lives here once, and tests and benchmarks
can exercise it without Redis.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar

from . import _scripts as scripts
from ._config import MAX_HOLD_NANO, Settings
from ._errors import InvalidInput, QuotaError, RequestConflict, UnknownGrant
from ._events import quota_warning_event  # noqa: F401 - beside quota_exceeded_event, quota._core's public names
from ._keys import (
    SUFFIX_HOLD_ESTIMATE,
    KeySchema,
    add_months,
    iso_z,
    month_of,
    month_start,
    next_month_start,
    utc,
    validate_grant_id,
    validate_month,
    validate_purpose,
    validate_request_id,
    validate_user,
)
from ._money import cny_to_nano, nano_to_decimal, nano_to_json
from ._prices import ModelPrice
from ._results import CreditResult, Grant, PlanResult, QuotaCheck, UsageResult, available_nano
from ._scripts import LuaScript
from ._stats import HistoryMemo, MonthUsage, build_history, build_token_stats, flat_pairs_to_dict, merge_month
from ._usage import validate_cache_tokens, validate_tokens

Clock = Callable[[], datetime]
R = TypeVar("R")  # what a ScriptCall's reply parses into

RECORD_FIELDS = (
    "user",
    "model_id",
    "input_tokens",
    "output_tokens",
    "request_id",
    "price",
    "estimated",
    "purpose",
    "cached_input_tokens",
    "cache_write_tokens",
)
RECORD_REQUIRED = frozenset(RECORD_FIELDS[:4])  # the rest are optional
# The ARGV index (1-based) of cached_input_tokens in record.lua, cache_write_tokens after it; sent only
# when either is non-zero, after the hold's arguments ("" without a hold). One number on each side.
RECORD_CACHE_ARG = 14


def utc_now() -> datetime:
    return datetime.now(UTC)


def _new_id_prefix() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = "q" + secrets.token_urlsafe(12) + "."
    _ID_COUNTER = itertools.count()


_ID_PREFIX = ""
_ID_COUNTER = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # a forked worker must not repeat its parent's ids


def auto_request_id() -> str:
    """A request id unique across processes and time: 96 random bits drawn once per process
    (again after a fork), then a counter. As unique as a random id per call, without a system
    call per record on the hot path."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


class LiveMonths(NamedTuple):
    """What ``stats.lua`` read in one snapshot: the live holds, this month, and the months before it.

    The past months are kept as the script returned them (``past_raw``: one flat field/value list
    per month) and parsed only when the history is built (``past()``): a ``HistoryMemo`` reuses
    the history it built from the same replies, which is most reads (``MeterCore.token_stats``)."""

    held_nano: int
    current: MonthUsage
    past_months: tuple[str, ...]  # the months before ``current``, newest first
    past_raw: list[Any]  # their hashes as stats.lua returned them
    plan_nano: int | None = None  # the user's plan credit (issue 12); None: no plan
    grants: tuple[Grant, ...] = ()  # every grant of the user, live or not, in draw-down order (parse_grants)

    def past(self) -> list[MonthUsage]:
        """The past months, parsed, newest first."""
        return [MonthUsage.from_hash(m, flat_pairs_to_dict(list(r))) for m, r in zip(self.past_months, self.past_raw)]


class ScriptCall(NamedTuple, Generic[R]):
    """One script invocation, ready to send: ``EVALSHA script.sha len(keys) *keys *args``;
    ``parse`` turns its reply into an ``R`` (a ``ScriptCall[UsageResult]`` for a record).

    A record's call also carries what it was priced as: the model (its canonical id, whether it is
    a system model) and the cost, so that nothing reads them back out of ``args`` by position.
    A NamedTuple: one is built per record on the hot path, and it is the cheapest record type.
    """

    script: LuaScript
    keys: tuple[str, ...]
    args: tuple[str, ...]
    parse: Callable[[Any], R]
    model: ModelPrice | None = None  # record calls: the priced model (see priced_model)
    cost_nano: int = 0  # record calls: what the call costs


def priced_model(call: ScriptCall[Any]) -> ModelPrice:
    """The model a record's call was priced as (``MeterCore.record`` always sets it)."""
    if call.model is None:
        raise TypeError(f"not a record call: {call.script.name}")
    return call.model


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def translate_script_error(message: str) -> QuotaError | None:
    """Map a script's ``QUOTA_*`` error reply to the library's error; None for anything else."""
    for code, cls in (
        ("QUOTA_CONFLICT", RequestConflict),
        ("QUOTA_NOTFOUND", UnknownGrant),
        ("QUOTA_INVALID", InvalidInput),
        ("QUOTA_OVERFLOW", InvalidInput),
    ):
        at = message.find(code)
        if at >= 0:
            return cls(message[at + len(code) :].strip() or code)
    return None


class MeterCore:
    """Validation, pricing, key building and reply parsing for one configuration."""

    def __init__(self, settings: Settings | None = None, clock: Clock | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.clock: Clock = clock or utc_now
        self.keys = KeySchema(self.settings.prefix)
        self.prices = self.settings.prices
        self._credit_arg = str(self.settings.credit_nano)
        self._ttl_arg = str(self.settings.dedupe_ttl_s)
        self._hold_ttl_ms_arg = str(self.settings.hold_ttl_s * 1000)
        self._thresholds_arg = ",".join(str(t) for t in self.settings.alert_thresholds)
        self._month_cache: tuple[datetime, datetime, str] | None = None
        self._stats_months: tuple[str, int, tuple[str, ...]] | None = None  # (current month, count, months)
        self._history = HistoryMemo()  # token_stats: the built history, by the replies it was built from

    # --- helpers ---------------------------------------------------------------------------------

    def current_month(self) -> str:
        """The UTC month of ``clock()``."""
        return self.month_at(self.clock())

    def month_at(self, now: datetime) -> str:
        """The UTC month of the instant ``now``; the bounds of the last month seen are cached, so
        most calls pay two datetime comparisons instead of a conversion and a format."""
        cached = self._month_cache
        if cached is not None and now.tzinfo is not None and cached[0] <= now < cached[1]:
            return cached[2]
        month = month_of(now)
        self._month_cache = (month_start(month), next_month_start(month), month)
        return month

    def price_for(
        self, model_id: object, price: Mapping[str, Any] | None = None, at: datetime | None = None
    ) -> ModelPrice:
        """The price in force at ``at`` (default: the clock's now), or the call's own ``price``."""
        at = self.clock() if at is None else at
        if price is None:
            return self.prices.lookup(model_id, at)
        return self.prices.with_call_price(model_id, price, at)

    # --- update_token_usage ----------------------------------------------------------------------

    def record(
        self,
        user: object,
        model_id: object,
        input_tokens: object,
        output_tokens: object,
        *,
        request_id: object = None,
        price: Mapping[str, Any] | None = None,
        estimated: bool = False,
        turn_id: str | None = None,
        at: datetime | None = None,
        purpose: object = None,
        cached_input_tokens: object = 0,
        cache_write_tokens: object = 0,
    ) -> ScriptCall[UsageResult]:
        """``purpose``: what the call was for (``"chat"``, ``"tool"``...; 1 to 10 of a-z 0-9 _ -),
        also counted per model and purpose (at most 8 per model and month, then ``"other"``).
        ``turn_id``: the turn whose hold this call's system cost is drawn from (quota.Turn).
        ``at``: the instant the call was made (default: ``clock()``), which fixes its month and
        its price (the entry in force then); a record replayed from the spool passes the instant
        it was spooled with. ``cached_input_tokens`` and ``cache_write_tokens`` are parts of
        ``input_tokens`` (the total input) priced at the model's cache rates (quota._prices)."""
        user = validate_user(user)
        instant = self.clock() if at is None else at
        model = self.price_for(model_id, price, instant)
        tokens_in = validate_tokens(input_tokens, "input_tokens")
        tokens_out = validate_tokens(output_tokens, "output_tokens")
        if (
            type(cached_input_tokens) is int
            and type(cache_write_tokens) is int
            and not (cached_input_tokens or cache_write_tokens)
        ):
            cached = cache_write = 0  # the common case, without a call
        else:
            cached, cache_write = validate_cache_tokens(tokens_in, cached_input_tokens, cache_write_tokens)
        if not isinstance(estimated, bool):
            raise InvalidInput("estimated must be True or False")
        purpose_arg = validate_purpose(purpose) or ""
        auto_id = request_id is None
        rid = auto_request_id() if auto_id else validate_request_id(request_id)
        month = self.month_at(instant)
        cost = model.cost_nano(tokens_in, tokens_out, cached, cache_write)
        is_system = model.is_system

        def parse(reply: Any) -> UsageResult:
            # record.lua answers one string (a table reply costs Redis more); a list reads the same
            if isinstance(reply, bytes):
                reply = reply.split(b" ")
            elif isinstance(reply, str):  # decode_responses=True
                reply = reply.split(" ")
            status, used, credit, hold, crossed = reply[:5]
            recorded = int(status) == 1
            # When counted, the script returns the spend *before* this call (see record.lua).
            used_nano = int(used) + (cost if recorded and is_system else 0)
            return UsageResult(
                user=user,
                model_id=model.model_id,
                month=month,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_nano=cost,
                monthly_used_nano=used_nano,
                monthly_credit_nano=int(credit),
                is_system=is_system,
                # An id we made ourselves can only be seen twice through a transport retry of
                # this very call, which counted it once: that is not a caller's duplicate.
                duplicate=(not recorded and not auto_id),
                request_id=rid,
                estimated=estimated,
                hold_remaining_nano=int(hold) if hold else None,
                alerts=_percents(crossed),
                purpose=(_text(reply[5]) or None) if len(reply) > 5 else None,
                cached_input_tokens=cached,
                cache_write_tokens=cache_write,
                grants_drawn_nano=int(reply[6]) if len(reply) > 6 else 0,
            )

        keys: tuple[str, ...] = (
            self.keys.month_key(user, month),
            self.keys.request_key(user, rid),
            self.keys.outbox_key(user),
            self.keys.outbox_index_key(user),
            self.keys.plan_key(user),
            self.keys.grants_key(user),
            self.keys.has_grants_key(user),
        )
        args: tuple[str, ...] = (
            model.model_id,
            str(tokens_in),
            str(tokens_out),
            str(cost),
            "1" if is_system else "0",
            self._credit_arg,
            self._ttl_arg,
            "1" if estimated else "0",
            self._thresholds_arg,
            purpose_arg,
            str(int(instant.timestamp() * 1000)),  # grants live at the call's instant (lua/lib/grants.lua)
        )
        if turn_id is not None:
            keys += (self.keys.holds_key(user),)
            args += (turn_id, self._hold_ttl_ms_arg)
        if cached or cache_write:  # without cache tokens the call is what it was before them
            args += ("",) * (RECORD_CACHE_ARG - 1 - len(args)) + (str(cached), str(cache_write))
        return ScriptCall(scripts.RECORD, keys, args, parse, model, cost)

    def record_many(self, records: object) -> list[ScriptCall[UsageResult]]:
        """Validate every record before any is sent: one bad record changes nothing."""
        if isinstance(records, (str, bytes, Mapping)) or not hasattr(records, "__iter__"):
            raise InvalidInput("records must be a list of dicts")
        calls = []
        for index, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise InvalidInput(f"record {index} must be a dict, got {type(rec).__name__}")
            unknown = set(rec) - set(RECORD_FIELDS)
            missing = RECORD_REQUIRED - set(rec)
            if unknown or missing:
                problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
                raise InvalidInput(f"record {index}: {problem}")
            try:
                calls.append(
                    self.record(
                        rec["user"],
                        rec["model_id"],
                        rec["input_tokens"],
                        rec["output_tokens"],
                        request_id=rec.get("request_id"),
                        price=rec.get("price"),
                        estimated=rec.get("estimated", False),
                        purpose=rec.get("purpose"),
                        cached_input_tokens=rec.get("cached_input_tokens", 0),
                        cache_write_tokens=rec.get("cache_write_tokens", 0),
                    )
                )
            except InvalidInput as exc:
                raise type(exc)(f"record {index}: {exc}") from None
        ids = [c.keys[1] for c in calls]  # the request-id keys
        if len(set(ids)) != len(ids):
            raise InvalidInput("records: the same request_id appears twice for one user in one batch")
        return calls

    # --- check_quota_available -------------------------------------------------------------------

    def check(self, user: object, model_id: object) -> ScriptCall[QuotaCheck]:
        user = validate_user(user)
        now = self.clock()
        model = self.prices.lookup(model_id, now)
        month = self.month_at(now)

        def parse(reply: Any) -> QuotaCheck:
            used, credit, held, grants, drawn = (int(v) for v in reply)
            room = available_nano(credit, used, drawn, grants, held) > 0
            return self._admission(user, model, month, used, credit, held, room, grants, drawn)

        keys = (self.keys.month_key(user, month), self.keys.holds_key(user), *self._grant_keys(user))
        return ScriptCall(scripts.CHECK, keys, (self._credit_arg, self.now_ms_arg()), parse)

    def _grant_keys(self, user: str) -> tuple[str, str]:
        """The plan and grants keys admission reads (lua/lib/grants.lua)."""
        return self.keys.plan_key(user), self.keys.grants_key(user)

    def now_ms_arg(self) -> str:
        """The meter's clock in ms, as the scripts take it: which grants are live."""
        return str(int(self.clock().timestamp() * 1000))

    def _admission(
        self,
        user: str,
        model: ModelPrice,
        month: str,
        used: int,
        credit: int,
        held: int,
        room: bool,
        grants: int = 0,
        drawn: int = 0,
    ) -> QuotaCheck:
        """The check's outcome: custom models always pass; system models when there is ``room``."""
        allowed = (not model.is_system) or room
        resets_at = iso_z(next_month_start(month))
        event = (
            None
            if allowed
            else quota_exceeded_event(
                model.model_id, used, credit, resets_at, held, grants_nano=grants, grants_drawn_nano=drawn
            )
        )
        return QuotaCheck(
            user, model.model_id, month, model.is_system, allowed, used, credit, resets_at, event, held, grants, drawn
        )

    # --- turn holds (quota.Turn; the scripts are turn_begin.lua and turn_end.lua) -----------------

    def hold_arg(self, hold: object) -> str:
        """The ``hold_nano`` argument of turn_begin.lua: ``hold`` in CNY, or the setting's default
        when None (``QUOTA_TURN_HOLD``: an amount, or ``auto``)."""
        if hold is None:
            nano = self.settings.turn_hold_nano
            return "auto" if nano is None else str(nano)
        if isinstance(hold, str) and hold == "auto":
            return "auto"
        try:
            nano = cny_to_nano(hold, what="hold")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if nano > MAX_HOLD_NANO:
            raise InvalidInput(f"hold must be at most {nano_to_decimal(MAX_HOLD_NANO)} CNY")
        return str(nano)

    def turn_begin(
        self, user: str, model: ModelPrice, turn_id: str, hold_arg: str
    ) -> ScriptCall[tuple[QuotaCheck, int]]:
        """Admit a turn on a system model and reserve its hold; parse gives (QuotaCheck, hold_nano)."""
        month = self.current_month()
        settings = self.settings

        def parse(reply: Any) -> tuple[QuotaCheck, int]:
            admitted, used, credit, held, hold, grants, drawn = (int(v) for v in reply)
            return self._admission(user, model, month, used, credit, held, admitted == 1, grants, drawn), hold

        return ScriptCall(
            scripts.TURN_BEGIN,
            (self.keys.month_key(user, month), self.keys.holds_key(user), *self._grant_keys(user)),
            (
                turn_id,
                hold_arg,
                f"{model.model_id}:{SUFFIX_HOLD_ESTIMATE}",
                self._credit_arg,
                self._hold_ttl_ms_arg,
                str(settings.turn_hold_default_nano),
                str(settings.turn_hold_floor_nano),
                str(settings.turn_hold_cap_nano),
                self.now_ms_arg(),
            ),
            parse,
        )

    def turn_end(
        self, user: str, model: ModelPrice, turn_id: str, cost_nano: int, *, learn: bool = True
    ) -> ScriptCall[bool]:
        """Release a turn's hold and teach the "auto" estimate its cost; parse tells whether this
        call released it (False: released before, or dead)."""

        def parse(reply: Any) -> bool:
            return int(reply) == 1

        return ScriptCall(
            scripts.TURN_END,
            (self.keys.holds_key(user), self.keys.month_key(user, self.current_month())),
            (
                turn_id,
                f"{model.model_id}:{SUFFIX_HOLD_ESTIMATE}",
                str(min(cost_nano, 10**17 - 1)),
                str(self.settings.turn_hold_default_nano),
                "1" if learn else "0",
            ),
            parse,
        )

    # --- set_monthly_credit ----------------------------------------------------------------------

    def set_credit(
        self, user: object, credit: object, month: object = None, *, add: bool = False
    ) -> ScriptCall[CreditResult]:
        """Set ``user``'s credit for ``month``; with ``add``, add ``credit`` to it (to the default
        credit while none is set) in one atomic step."""
        user = validate_user(user)
        month = self.current_month() if month is None else validate_month(month)
        try:
            credit_nano = cny_to_nano(credit, what="credit")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if credit_nano >= 10**17:
            raise InvalidInput("credit must be below 100,000,000 CNY")

        def parse(reply: Any) -> CreditResult:
            used, credit_now, cleared = reply[:3]
            before = _text(reply[3]) if len(reply) > 3 else ""
            return CreditResult(
                user, month, int(used), int(credit_now), _percents(cleared), int(before) if before else None
            )

        keys: tuple[str, ...] = (
            self.keys.month_key(user, month),
            self.keys.outbox_key(user),
            self.keys.outbox_index_key(user),
        )
        if add:  # 'add' adds to the plan's credit while the month has none of its own
            keys += (self.keys.plan_key(user),)
        args = (str(credit_nano), self._thresholds_arg) + (("add", self._credit_arg) if add else ())
        return ScriptCall(scripts.SET_CREDIT, keys, args, parse)

    # --- grants and plans (issue 12; lua/lib/grants.lua) -----------------------------------------

    def grant(
        self, user: object, amount: object, *, expires_at: object = None, grant_id: object = None, reason: object = None
    ) -> ScriptCall[Grant]:
        """Give ``user`` ``amount`` CNY beyond the monthly credit, until ``expires_at`` (an aware
        datetime, after the meter's clock; None: until spent); idempotent by ``grant_id`` (default:
        a new one)."""
        user = validate_user(user)
        try:
            amount_nano = cny_to_nano(amount, what="amount")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if not 0 < amount_nano < 10**15:
            raise InvalidInput("a grant's amount must be above 0 and below 1,000,000 CNY")
        now_ms = int(self.clock().timestamp() * 1000)
        expires_ms = 0
        if expires_at is not None:
            if not isinstance(expires_at, datetime):
                raise InvalidInput("expires_at must be an aware datetime or None")
            expires_ms = int(utc(expires_at).timestamp() * 1000)
            if expires_ms <= now_ms:
                raise InvalidInput("expires_at must be in the future (on the meter's clock)")
            if expires_ms >= 10**15:
                raise InvalidInput("expires_at is too far in the future")
        gid = validate_grant_id(grant_id) if grant_id is not None else "g" + secrets.token_hex(8)
        if reason is not None and (not isinstance(reason, str) or len(reason) > 200 or not reason.isprintable()):
            raise InvalidInput("reason must be printable text of at most 200 characters")

        def parse(reply: Any) -> Grant:
            created, value, info = reply
            grant = _grant(user, gid, _text(value), _text(info), now_ms)
            grant.created = int(created) == 1
            return grant

        keys = (self.keys.grants_key(user), self.keys.grant_info_key(user), self.keys.has_grants_key(user))
        args = (gid, str(amount_nano), str(expires_ms), reason or "", str(now_ms))
        return ScriptCall(scripts.GRANT, keys, args, parse)

    def revoke_grant(self, user: object, grant_id: object) -> ScriptCall[tuple[Grant, bool]]:
        """Take back what is left of a grant; parse gives (the grant, whether this call revoked it)."""
        user = validate_user(user)
        gid = validate_grant_id(grant_id)
        now_ms = int(self.clock().timestamp() * 1000)

        def parse(reply: Any) -> tuple[Grant, bool]:
            revoked, value, info = reply
            return _grant(user, gid, _text(value), _text(info), now_ms), int(revoked) == 1

        keys = (self.keys.grants_key(user), self.keys.grant_info_key(user), self.keys.has_grants_key(user))
        return ScriptCall(scripts.REVOKE_GRANT, keys, (gid, str(now_ms)), parse)

    def set_plan(self, user: object, credit: object) -> ScriptCall[PlanResult]:
        """Set ``user``'s plan credit (CNY), or clear it with None."""
        user = validate_user(user)
        nano: int | None = None
        if credit is not None:
            try:
                nano = cny_to_nano(credit, what="credit")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            if nano >= 10**17:
                raise InvalidInput("credit must be below 100,000,000 CNY")

        month = self.current_month()

        def parse(reply: Any) -> PlanResult:
            before, cleared = _text(reply[0]), reply[1]
            return PlanResult(user, nano, int(before) if before else None, month, _percents(cleared))

        keys = (
            self.keys.plan_key(user),
            self.keys.month_key(user, month),
            self.keys.outbox_key(user),
            self.keys.outbox_index_key(user),
        )
        args = ("" if nano is None else str(nano), self._thresholds_arg, self._credit_arg)
        return ScriptCall(scripts.SET_PLAN, keys, args, parse)

    # --- get_token_stats -------------------------------------------------------------------------

    def stats_months(self, months: int | None = None) -> list[str]:
        """The current month and the ``months`` before it, newest first."""
        count = self.settings.history_months if months is None else months
        current = self.current_month()
        cached = self._stats_months
        if cached is not None and cached[0] == current and cached[1] == count:
            return list(cached[2])
        wanted = tuple(add_months(current, -i) for i in range(count + 1))
        self._stats_months = (current, count, wanted)
        return list(wanted)

    def stats(self, user: object, months: int | None = None) -> ScriptCall[LiveMonths]:
        user = validate_user(user)
        wanted = self.stats_months(months)

        now_ms = int(self.clock().timestamp() * 1000)

        def parse(reply: Any) -> LiveMonths:
            held, plan, grants, info, current, *past = reply
            return LiveMonths(
                int(held),
                MonthUsage.from_hash(wanted[0], flat_pairs_to_dict(list(current))),
                tuple(wanted[1:]),
                past,
                int(plan) if _text(plan) else None,
                tuple(parse_grants(user, grants, info, now_ms)),
            )

        keys = (
            self.keys.holds_key(user),
            *self._grant_keys(user),
            self.keys.grant_info_key(user),
            *(self.keys.month_key(user, m) for m in wanted),
        )
        return ScriptCall(scripts.STATS, keys, (), parse)

    def archive_epoch(self) -> ScriptCall[str]:
        """The archive epoch (see archive_epoch.lua): sent right after ``stats`` in one pipeline."""

        def parse(reply: Any) -> str:
            return _text(reply) if reply else "0"

        return ScriptCall(scripts.ARCHIVE_EPOCH, (self.keys.archive_epoch_key(),), (), parse)

    def token_stats(
        self, user: str, live: LiveMonths, archived: list[MonthUsage] | None = None, *, exact: bool = False
    ) -> dict[str, Any]:
        """Merge live months (Redis) with archived ones (SQL): each month once, newest first.

        Nothing is counted twice: the archive holds a full snapshot per generation of a hash,
        and the live hash supersedes the snapshot of its own generation (the dump archived it
        but has not removed the key yet, or a late write reached it since); a generation the
        dump already removed from Redis is added (see ``stats.merge_month``). Read Redis first,
        then the archive: the dump commits to SQL before it deletes from Redis.
        """
        key = (user, live.past_months, exact)
        history = self._history.get(key, live.past_raw, archived)
        if history is None:
            history = build_history(self._merged_history(live, archived), self.prices, exact)
            self._history.put(key, live.past_raw, archived, history)
        return build_token_stats(
            user,
            live.current,
            history,
            self.prices,
            self.settings.credit_nano,
            held_nano=live.held_nano,
            exact=exact,
            plan_nano=live.plan_nano,
            grants=live.grants,
        )

    @staticmethod
    def _merged_history(live: LiveMonths, archived: list[MonthUsage] | None) -> list[MonthUsage]:
        """The past months of ``live`` merged with their archived parts, newest first."""
        parts: dict[str, list[MonthUsage]] = {}
        for part in archived or []:
            parts.setdefault(part.month, []).append(part)
        by_month = {m.month: m for m in live.past()}
        merged = {
            month: merge_month(month, by_month.get(month), parts.get(month, [])) for month in set(parts) | set(by_month)
        }
        limit = len(live.past_months)
        return [merged[m] for m in sorted(merged, reverse=True) if m < live.current.month][:limit]


def _grant(user: str, grant_id: str, value: str, info: str, now_ms: int) -> Grant:
    """One grant from its value (``remaining:amount:expires_ms``) and metadata (JSON, see grant.lua)."""
    remaining, amount, expires = (int(p) for p in value.split(":"))
    meta = json.loads(info) if info else {}
    return Grant(
        user=user,
        grant_id=grant_id,
        amount_nano=amount,
        remaining_nano=remaining,
        expires_at_ms=expires,
        reason=meta.get("reason") or None,
        created_at_ms=int(meta.get("created_ms") or 0),
        revoked_at_ms=int(meta.get("revoked_ms") or 0),
        revoked_nano=int(meta.get("revoked_nano") or 0),
        live=remaining > 0 and (expires == 0 or expires > now_ms),
    )


def parse_grants(user: str, values: Any, infos: Any, now_ms: int) -> list[Grant]:
    """The grants hash and its metadata (flat HGETALL lists) -> grants in draw-down order: live ones
    first, earliest expiry first (none last), then the spent, expired and revoked ones."""
    info = {_text(k): _text(v) for k, v in flat_pairs_to_dict(list(infos)).items()}
    grants = [
        _grant(user, _text(k), _text(v), info.get(_text(k), ""), now_ms)
        for k, v in flat_pairs_to_dict(list(values)).items()
    ]
    grants.sort(key=lambda g: (not g.live, g.expires_at_ms == 0, g.expires_at_ms, g.grant_id))
    return grants


def _percents(reply: Any) -> tuple[int, ...]:
    """A script's list of thresholds (``"80,100"``, ``""``) as ints, in the order given."""
    text = _text(reply)
    return tuple(int(p) for p in text.split(",")) if text else ()


# The ``code`` of a quota_exceeded event (api/openapi.py lists them; docs/API.md says what each means).
CODE_CREDIT_USED = "quota_exceeded"
CODE_CREDIT_HELD = "credit_held"
EXCEEDED_CODES = (CODE_CREDIT_USED, CODE_CREDIT_HELD)


def quota_exceeded_event(
    model_id: str,
    used_nano: int,
    credit_nano: int,
    resets_at: str,
    held_nano: int = 0,
    *,
    grants_nano: int = 0,
    grants_drawn_nano: int = 0,
) -> dict[str, Any]:
    """The ``quota_exceeded`` event a chat front end shows when a new message is refused.

    ``held`` is what replies in progress have reserved (turn holds): a user under the credit can
    be refused while their other replies hold the rest, and the message says so. ``code`` says
    which, for a machine: :data:`CODE_CREDIT_USED` (the credit is used up: wait for the reset, top
    up, or switch to a custom model) or :data:`CODE_CREDIT_HELD` (the rest is held by replies in
    progress: try again when they end).

    With grants (issue 12) the credit shown is the month's credit plus what grants paid and still
    hold, and the spend what both paid: "used up" means the credit and the live grants are spent.
    """
    # What the month's credit and live grants could still pay before the holds: > 0 means "held".
    room = available_nano(credit_nano, used_nano, grants_drawn_nano, grants_nano, 0)
    if grants_nano or grants_drawn_nano:  # shown against everything the user had this month
        credit_nano = credit_nano + grants_drawn_nano + grants_nano
        used_nano = credit_nano - room
    used, credit = nano_to_json(used_nano), nano_to_json(credit_nano)
    used_text, credit_text = nano_to_decimal(used_nano), nano_to_decimal(credit_nano)
    event = {
        "type": "quota_exceeded",
        "code": CODE_CREDIT_HELD if room > 0 else CODE_CREDIT_USED,
        "model_id": model_id,
        "monthly_used": used,
        "monthly_credit": credit,
        "held": nano_to_json(held_nano),
        "resets_at": resets_at,
    }
    if grants_nano or grants_drawn_nano:
        event["grants"] = nano_to_json(grants_nano)
    if room > 0:
        rest_text = nano_to_decimal(room)
        event["message"] = (
            f"本月系统模型额度的剩余部分（{rest_text} 元）已被进行中的回复占用"
            f"（已用 {used_text} / {credit_text} 元），请等这些回复完成后再试。"
            f" The rest of this month's system-model credit ({rest_text} CNY) is reserved by replies "
            f"in progress ({used_text} of {credit_text} CNY used); try again when they have finished."
        )
        return event
    event["message"] = (
        f"本月系统模型额度已用完（已用 {used_text} / {credit_text} 元），将于 {resets_at[:10]} 重置；"
        "当前回复不受影响，您也可以改用自定义模型继续。"
        f" You have used this month's system-model credit ({used_text} of {credit_text} CNY). "
        f"It resets on {resets_at[:10]} (UTC); the reply in progress is not affected, "
        "and custom models keep working."
    )
    return event
