"""Turn raw user-month hashes into the seed's ``get_token_stats`` structure. Pure, no I/O."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ._keys import (
    FIELD_ALERTED,
    FIELD_CREDIT,
    FIELD_DUMP_GEN,
    FIELD_GRANTS_DRAWN,
    FIELD_ORIGIN,
    FIELD_USED,
    FIRST_GENERATION,
    MODEL_SUFFIXES,
    SUFFIX_ADJ_COST,
    SUFFIX_ADJUSTMENTS,
    SUFFIX_CACHE_WRITE,
    SUFFIX_CACHED,
    SUFFIX_CALLS,
    SUFFIX_COST,
    SUFFIX_ESTIMATED,
    SUFFIX_INPUT,
    SUFFIX_OUTPUT,
    SUFFIX_PURPOSE_CALLS,
    SUFFIX_PURPOSE_COST,
    iso_z,
    month_start,
    next_month_start,
)
from ._money import nano_to_decimal, nano_to_json
from ._prices import PriceTable
from ._results import Grant, available_nano


@dataclass
class ModelUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0
    calls: int = 0
    estimated_calls: int = 0
    # per purpose (issue 15): purpose -> [calls, cost_nano]; not kept by the SQL archive (docs/HISTORY.md)
    purposes: dict[str, list[int]] = field(default_factory=dict)
    # parts of input_tokens priced at the cache rates (issue 12)
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    # corrections (quota adjust): how many, and their signed cost; the counters above include them
    adjustments: int = 0
    adjusted_cost_nano: int = 0

    def add(self, other: ModelUsage) -> None:
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_nano += other.cost_nano
        self.calls += other.calls
        self.estimated_calls += other.estimated_calls
        self.adjustments += other.adjustments
        self.adjusted_cost_nano += other.adjusted_cost_nano
        for purpose, (calls, cost) in other.purposes.items():
            mine = self.purposes.setdefault(purpose, [0, 0])
            mine[0] += calls
            mine[1] += cost


@dataclass
class MonthUsage:
    """One user's month: what the hash holds, parsed. ``credit_nano`` None means "never set".

    ``archive_gen`` is the hash's ``dump_gen`` (written by dumps of older releases), else the one
    the dump archives it as: its origin, field ``o``, for a hash made after its month, else
    ``FIRST_GENERATION``; or, for a month
    loaded from the SQL history, the generation that row was archived from; see ``merge_month``.
    """

    month: str
    credit_nano: int | None = None
    system_used_nano: int = 0
    models: dict[str, ModelUsage] = field(default_factory=dict)
    archive_gen: int | None = None
    alerted_pct: int = 0  # the highest alert threshold reached and not cleared this month (0: none)
    grants_drawn_nano: int = 0  # what the month's system spend drew from grants (lua/lib/grants.lua)

    @classmethod
    def from_hash(cls, month: str, raw: Mapping[Any, Any]) -> MonthUsage:
        """Parse a user-month hash (bytes or str field names). Every value must be an integer
        (``ValueError`` otherwise); fields that are not usage (``dump_seq``...) are skipped."""
        usage = cls(month)
        plans = _FIELD_PLANS
        origin = None
        for key, value in raw.items():
            number = int(value)
            plan = plans.get(key)
            if plan is None:
                plan = _field_plan(key)
            kind = plan[0]
            if kind == _MODEL:
                model = usage.models.get(plan[1])
                if model is None:
                    model = usage.models[plan[1]] = ModelUsage()
                setattr(model, plan[2], number)
            elif kind == _USED:
                usage.system_used_nano = number
            elif kind == _CREDIT:
                usage.credit_nano = number
            elif kind == _GEN:
                usage.archive_gen = number
            elif kind == _ALERTED:
                usage.alerted_pct = number
            elif kind == _GRANTS:
                usage.grants_drawn_nano = number
            elif kind == _ORIGIN:
                origin = number
            elif kind == _PURPOSE:
                model = usage.models.setdefault(plan[1], ModelUsage())
                model.purposes.setdefault(plan[2][2:], [0, 0])[_PURPOSE_INDEX[plan[2][:2]]] = number
        if usage.archive_gen is None:  # the generation the dump will archive it as (snapshot_month.lua)
            usage.archive_gen = FIRST_GENERATION if origin is None else origin
        return usage

    @property
    def is_empty(self) -> bool:
        return not self.models and self.system_used_nano == 0

    def add(self, other: MonthUsage) -> None:
        """Add ``other``'s counters; its credit, when set, replaces this one (a credit is set, not added)."""
        if other.credit_nano is not None:
            self.credit_nano = other.credit_nano
        self.system_used_nano += other.system_used_nano
        self.grants_drawn_nano += other.grants_drawn_nano
        for model_id, usage in other.models.items():
            self.models.setdefault(model_id, ModelUsage()).add(usage)


# What a hash field means, decided once per field name and kept (``MonthUsage.from_hash``): the
# same few dozen names recur in every user's hash, and deciding cost more than the rest of the
# parse (a dump or a stats read parses thousands of hashes). (kind, model_id, attribute/suffix).
_SKIP, _CREDIT, _USED, _GEN, _ALERTED, _ORIGIN, _GRANTS, _MODEL, _PURPOSE = range(9)
_FIELD_PLANS: dict[Any, tuple[int, str, str]] = {}
_FIELD_PLANS_MAX = 10_000  # names beyond this are decided every time (model ids are bounded anyway)


_MONTH_FIELDS = {
    FIELD_CREDIT: _CREDIT,
    FIELD_USED: _USED,
    FIELD_DUMP_GEN: _GEN,
    FIELD_ALERTED: _ALERTED,
    FIELD_ORIGIN: _ORIGIN,
    FIELD_GRANTS_DRAWN: _GRANTS,
}


def _field_plan(key: Any) -> tuple[int, str, str]:
    name = key.decode() if isinstance(key, bytes) else str(key)
    plan: tuple[int, str, str] = (_SKIP, "", "")
    if name in _MONTH_FIELDS:
        plan = (_MONTH_FIELDS[name], "", "")
    else:
        model_id, _, suffix = name.rpartition(":")
        if model_id and suffix in MODEL_SUFFIXES:
            plan = (_MODEL, model_id, _SUFFIX_ATTR[suffix])
        elif model_id and suffix[:2] in _PURPOSE_INDEX and len(suffix) > 2:
            plan = (_PURPOSE, model_id, suffix)
    if len(_FIELD_PLANS) < _FIELD_PLANS_MAX and isinstance(key, (bytes, str)):
        _FIELD_PLANS[key] = plan
    return plan


def merge_month(month: str, live: MonthUsage | None, archived: Iterable[MonthUsage]) -> MonthUsage:
    """One month from the Redis hash (``live``) and its archived generations, each counted once.

    The archive holds one snapshot per generation of the hash (see docs/HISTORY.md): normally
    one, more when a late write re-created the hash after the dump deleted it. The live hash
    supersedes the archived snapshot of its own generation (it is the same hash, possibly with
    more in it); other generations are separate counts and are added. An archived part without
    a generation is taken as a plain snapshot of the month, which the live hash supersedes.
    ``archived`` is oldest first, so the newest credit wins.
    """
    total = MonthUsage(month)
    present = live if live is not None and not (live.is_empty and live.credit_nano is None) else None
    for part in archived:
        if present is not None and (part.archive_gen is None or part.archive_gen == present.archive_gen):
            continue
        total.add(part)
    if live is not None:
        total.add(live)
    return total


# One row of a month read from the SQL archive (HistoryStore.iter_month_rows), model by model:
# (user, generation, credit_nano or None, system_used_nano, model_id or None, input, output,
#  cost_nano, calls, estimated_calls, cached_input, cache_write); a generation without models has
# one row with model_id None.
ArchiveRow = tuple[str, int, int | None, int, str | None, int, int, int, int, int, int, int]


def parts_from_rows(month: str, rows: Iterable[ArchiveRow]) -> list[MonthUsage]:
    """One user's archive rows (in generation order) -> one ``MonthUsage`` per generation."""
    parts: list[MonthUsage] = []
    part: MonthUsage | None = None
    for _user, gen, credit, used, model_id, tin, tout, cost, calls, est, cached, write in rows:
        if part is None or part.archive_gen != gen:
            part = MonthUsage(month, credit_nano=credit, system_used_nano=used, archive_gen=gen)
            parts.append(part)
        if model_id is not None:
            part.models[model_id] = ModelUsage(
                tin, tout, cost, calls, est, cached_input_tokens=cached or 0, cache_write_tokens=write or 0
            )
    return parts


_SUFFIX_ATTR = {
    SUFFIX_INPUT: "input_tokens",
    SUFFIX_OUTPUT: "output_tokens",
    SUFFIX_COST: "cost_nano",
    SUFFIX_CALLS: "calls",
    SUFFIX_ESTIMATED: "estimated_calls",
    SUFFIX_CACHED: "cached_input_tokens",
    SUFFIX_CACHE_WRITE: "cache_write_tokens",
    SUFFIX_ADJUSTMENTS: "adjustments",
    SUFFIX_ADJ_COST: "adjusted_cost_nano",
}


_PURPOSE_INDEX = {SUFFIX_PURPOSE_CALLS: 0, SUFFIX_PURPOSE_COST: 1}


def flat_pairs_to_dict(flat: list[Any]) -> dict[Any, Any]:
    """An HGETALL reply as a flat list (as a script returns it) -> dict."""
    return dict(zip(flat[0::2], flat[1::2]))


def percent(used_nano: int, credit_nano: int) -> float:
    return float(exact_percent(used_nano, credit_nano))


def exact_percent(used_nano: int, credit_nano: int) -> Decimal:
    """``used`` as a percentage of ``credit``, to 0.01 (half up); 100 when over a credit of 0."""
    if credit_nano <= 0:
        return Decimal(100 if used_nano > 0 else 0)
    return (Decimal(used_nano) * 100 / Decimal(credit_nano)).quantize(Decimal("0.01"), ROUND_HALF_UP)


class BuiltHistory(dict[str, Any]):
    """The ``history`` part of the stats, built (``build_history``) and kept by a ``HistoryMemo``:
    ``build_token_stats`` hands out a copy, so that no caller can change what is kept."""


def build_history(history: Iterable[MonthUsage], prices: PriceTable, exact: bool = False) -> BuiltHistory:
    """The ``history`` part of the stats: month -> model -> counters; ``history`` newest first,
    empty months left out."""
    money = nano_to_decimal if exact else nano_to_json
    history_out = BuiltHistory()
    for month in history:
        if month.is_empty:
            continue
        history_out[month.month] = {
            model_id: {
                "input": usage.input_tokens,
                "output": usage.output_tokens,
                "cached_input": usage.cached_input_tokens,
                "cache_write": usage.cache_write_tokens,
                "cost": money(usage.cost_nano),
                "calls": usage.calls,
                "is_system": prices.is_system(model_id),
            }
            for model_id, usage in sorted(month.models.items())
        }
    return history_out


def copy_history(history: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a built history down to its counters (whose values are numbers and bools)."""
    return {month: {model_id: dict(fields) for model_id, fields in models.items()} for month, models in history.items()}


class HistoryMemo:
    """The built history of a user's token stats, kept with what it was built from: the raw
    replies of the past months' hashes (``stats.lua``) and the archived parts (an ``ArchiveCache``
    entry, by identity). A stats read whose past months come back unchanged, at the same archive
    state, reuses it instead of parsing, merging and building twelve months again: most of a
    token-stats request's client CPU (bench/api.py), since past months rarely change (a late or
    replayed record, a correction, a dump).

    Why it is exact: the raw replies are compared in full (``==`` of the lists of bytes), not by a
    hash; the archived parts are the very list the archive cache holds for the same epoch, so a new
    read of the archive (a dump, an expired entry) is a miss. At most ``max_entries`` users and
    month ranges (the oldest put is dropped first: about 50 KB each for a year of three models);
    safe to share between threads (each entry is one immutable tuple, replaced whole).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[Any, ...], tuple[list[Any], Any, BuiltHistory]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # for tests and benchmarks

    def get(self, key: tuple[Any, ...], raw: list[Any], archived: Any) -> BuiltHistory | None:
        """What was put under ``key`` from the same ``raw`` replies and the same ``archived`` object."""
        found = self._entries.get(key)
        if found is not None and found[1] is archived and found[0] == raw:
            self.hits += 1
            return found[2]
        self.misses += 1
        return None

    def put(self, key: tuple[Any, ...], raw: list[Any], archived: Any, history: BuiltHistory) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (raw, archived, history)


def build_token_stats(
    user: str,
    current: MonthUsage,
    history: Iterable[MonthUsage] | BuiltHistory,
    prices: PriceTable,
    default_credit_nano: int,
    *,
    held_nano: int = 0,
    exact: bool = False,
    plan_nano: int | None = None,
    grants: Sequence[Grant] = (),
) -> dict[str, Any]:
    """The seed's structure, plus extra keys; ``history`` newest first, empty months left out
    (or already built: ``build_history``, of the same ``exact``).

    ``held`` is what live turn holds reserve; ``available`` what a new turn could still reserve
    (credit - used - held, never below 0; with grants, see quota._results.available_nano). ``plan_nano``
    is the user's plan credit (the month's credit when it has none of its own); ``grants`` every grant
    of the user, in draw-down order (quota._core.parse_grants). Amounts (and ``percent_used``) are JSON numbers
    (floats whose repr is the exact amount), or with ``exact`` ``Decimal`` CNY: the same
    structure, nothing rounded."""
    money = nano_to_decimal if exact else nano_to_json
    credit = current.credit_nano if current.credit_nano is not None else default_credit_nano
    if current.credit_nano is None and plan_nano is not None:
        credit = plan_nano
    used = current.system_used_nano
    drawn = current.grants_drawn_nano
    live_grants = sum(g.remaining_nano for g in grants if g.live)
    models: dict[str, Any] = {}
    for model_id, usage in sorted(current.models.items()):
        is_system = prices.is_system(model_id)
        models[model_id] = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cost": money(usage.cost_nano),
            "calls": usage.calls,
            "estimated_calls": usage.estimated_calls,
            "is_system": is_system,
            "name": _name(prices, model_id),
            "purposes": {
                purpose: {"calls": calls, "cost": money(cost)}
                for purpose, (calls, cost) in sorted(usage.purposes.items())
            },
        }
        if usage.adjustments:  # corrected by `quota adjust`: how often, and by how much (signed)
            models[model_id]["adjustments"] = {"count": usage.adjustments, "cost": money(usage.adjusted_cost_nano)}
    history_out = copy_history(history) if isinstance(history, BuiltHistory) else build_history(history, prices, exact)
    return {
        "user": user,
        "current_month": current.month,
        "monthly_credit": money(credit),
        "monthly_used": money(used),
        "last_reset": iso_z(month_start(current.month)),
        "plan_credit": None if plan_nano is None else money(plan_nano),
        "remaining": money(max(credit - (used - drawn), 0)),
        "held": money(held_nano),
        "available": money(max(available_nano(credit, used, drawn, live_grants, held_nano), 0)),
        "percent_used": exact_percent(used, credit) if exact else percent(used, credit),
        "exceeded": used - drawn >= credit,
        # issue 12: what is left of the live grants, what this month's spend drew from grants, and every
        # grant (live first, in draw-down order)
        "grants_remaining": money(live_grants),
        "grants_drawn": money(drawn),
        "grants": [
            {
                "grant_id": g.grant_id,
                "amount": money(g.amount_nano),
                "remaining": money(g.remaining_nano),
                "expires_at": g.as_dict()["expires_at"],
                "reason": g.reason,
                "live": g.live,
            }
            for g in grants
        ],
        # the highest alert threshold (percent of the credit) the spend reached this month, None before any
        "alerted_threshold": current.alerted_pct or None,
        "resets_at": iso_z(next_month_start(current.month)),
        "currency": "CNY",
        "models": models,
        "history": history_out,
    }


def _name(prices: PriceTable, model_id: str) -> str:
    """The name the model's latest price entry gives, else its id."""
    entries = prices.schedule(model_id)
    return entries[-1].name if entries else model_id


class ArchiveCache:
    """Archived months read from the SQL history, kept per user and months asked, under the
    archive epoch they were read at (``archive_epoch.lua``; ``quota dump`` sets it to a fresh
    random value after each commit), for at most ``max_age_s``. A token-stats read then costs one
    Redis round trip and no SQL while no dump has written since.

    Why it is exact: the epoch is read in the same pipeline as the live months, after them; the
    dump commits a snapshot, changes the epoch, and only then deletes the hash from Redis.
    So an archived generation the cached read lacks is either still in Redis (the live hash
    supersedes its generation anyway, ``merge_month``) or its deletion came after a change
    that this read's epoch shows, and the archive is read again. An epoch read before the SQL
    read can only make the cached read newer than its epoch: it is read again one dump later.
    At most ``max_entries`` (the oldest put is dropped first); thread-safe.
    """

    def __init__(self, max_entries: int = 10_000, max_age_s: float = 60.0) -> None:
        self.max_entries = max_entries
        # A bound on what a Redis restored from a backup could bring back: its older epoch value,
        # under which an entry read before the restore may still be kept (docs/HISTORY.md).
        self.max_age_s = max_age_s
        self._entries: dict[tuple[str, tuple[str, ...]], tuple[str, float, list[MonthUsage]]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # for tests and benchmarks

    def get(self, user: str, months: list[str], epoch: str | None) -> list[MonthUsage] | None:
        """The archived parts of ``user``'s ``months`` read at ``epoch``, or None (not kept, or
        kept at another epoch; None epoch: unknown). Callers must not change what they get."""
        found = self._entries.get((user, tuple(months)))
        if epoch is not None and found is not None and found[0] == epoch and time.monotonic() < found[1]:
            self.hits += 1
            return found[2]
        self.misses += 1
        return None

    def put(self, user: str, months: list[str], epoch: str | None, parts: list[MonthUsage]) -> None:
        """Keep ``parts``, read after ``epoch`` was (None: unknown, not kept)."""
        if epoch is None or self.max_entries <= 0:
            return
        key = (user, tuple(months))
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (epoch, time.monotonic() + self.max_age_s, parts)
