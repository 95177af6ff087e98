"""The month report for operators: who spent what in one month. Pure, no I/O.

The meter reads the month (``AsyncMeter.month_report``: the live month from Redis by SCAN and
pipelined HGETALL on every primary, an archived one from SQL merged with whatever of it is still
in Redis) and feeds each user-month to a :class:`MonthReportBuilder`; what comes out is a
:class:`MonthData`: a summary (totals, per model, users near or over the credit) and one compact
row per user, kept in columns (about 150 bytes a user: 150 MB for a million) so that it can be
cached for a short while, sorted by any column and paged with a keyset cursor.

Definitions (docs/OPERATIONS.md, "Weekly questions"):

- *system cost*: the cost of the user's system models this month; *custom cost*: of the others.
- *share of credit used*: ``system_used_nano`` (what the check compares) over the month's credit
  (the top-up when set, else the user's plan, else the default, as the check has it); "over
  80 %" counts users at or above 80 %, "over 100 %" users at or above 100 % (their next message
  on a system model is refused).
- Which model is a system model is the price table's word now, for archived months too.
"""

from __future__ import annotations

import base64
import binascii
import csv
import heapq
import io
import json
import logging
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._errors import InvalidInput
from ._keys import FIELD_CREDIT, FIELD_USED, iso_z
from ._money import nano_to_decimal, nano_to_json
from ._prices import PriceTable
from ._stats import ArchiveRow, MonthUsage, merge_month, parts_from_rows, percent

log = logging.getLogger("quota.report")

NEAR_PERCENT = 80  # "near the credit": at or above this share
# The live read's SCAN COUNT (buckets examined per call) adapts so that a page brings about
# PAGE_KEYS user-months (one pipeline of that many HGETALLs) whatever else the keyspace holds
# (request ids, other months): from 200 up to 2000, which costs Redis about 1 ms per SCAN call
# (0.5 µs a key with MATCH and TYPE, Redis 7.0 here: bench/report.py). No call nears 10 ms.
SCAN_COUNT_MIN, SCAN_COUNT_MAX, PAGE_KEYS = 200, 2000, 200
SORTS = ("cost", "system_cost", "custom_cost", "share", "tokens", "calls", "user")
MAX_PAGE = 1000

_USED = FIELD_USED.encode()
_CREDIT = FIELD_CREDIT.encode()
# per-model suffixes, as bytes (a raw HGETALL reply) -> index into a model accumulator
# index into a model's totals (see MonthReportBuilder._models); 5 is the users, 6 is_system
_SUFFIX_INDEX = {
    b"input": 0,
    b"output": 1,
    b"cost_nano": 2,
    b"calls": 3,
    b"estimated_calls": 4,
    b"cached_input": 7,
    b"cache_write": 8,
}
# codes of a field (MonthReportBuilder._field_kind): a model field is its index, | 8 for a system model
_F_USED, _F_CREDIT, _F_IGNORED, _F_SYSTEM = -1, -2, -3, 16  # a field's code: index | _F_SYSTEM


@dataclass(frozen=True, slots=True)
class UserRow:
    """One user's month, summed over models."""

    user: str
    system_cost_nano: int
    custom_cost_nano: int
    input_tokens: int
    output_tokens: int
    calls: int
    system_used_nano: int  # what the check compares with the credit
    credit_nano: int  # the month's credit: the top-up when set, else the plan, else the default
    credit_set: bool  # the month has its own credit (a top-up), not the plan's or the default
    cached_input_tokens: int = 0  # parts of input_tokens priced at the cache rates (issue 12)
    cache_write_tokens: int = 0

    @property
    def cost_nano(self) -> int:
        return self.system_cost_nano + self.custom_cost_nano

    @property
    def percent_used(self) -> float:
        return percent(self.system_used_nano, self.credit_nano)

    @property
    def exceeded(self) -> bool:
        return self.system_used_nano >= self.credit_nano

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "cost": nano_to_json(self.cost_nano),
            "system_cost": nano_to_json(self.system_cost_nano),
            "custom_cost": nano_to_json(self.custom_cost_nano),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "calls": self.calls,
            "monthly_used": nano_to_json(self.system_used_nano),
            "monthly_credit": nano_to_json(self.credit_nano),
            "credit_set": self.credit_set,
            "percent_used": self.percent_used,
            "exceeded": self.exceeded,
        }


@dataclass(slots=True)
class ModelTotals:
    """One model over every user of the month."""

    is_system: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0
    calls: int = 0
    estimated_calls: int = 0
    users: int = 0
    cached_input_tokens: int = 0  # parts of input_tokens priced at the cache rates (issue 12)
    cache_write_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "is_system": self.is_system,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost": nano_to_json(self.cost_nano),
            "calls": self.calls,
            "estimated_calls": self.estimated_calls,
            "users": self.users,
        }


@dataclass
class MonthSummary:
    """The month at a glance. ``sources`` says where it was read (``redis``, ``sql``);
    ``unreadable`` counts hashes with a field that is not an integer (left out, logged)."""

    month: str
    current: bool
    users: int = 0
    system_cost_nano: int = 0
    custom_cost_nano: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    users_over_80: int = 0  # at or above NEAR_PERCENT of their credit (those over 100 % included)
    users_over_100: int = 0  # at or above their credit: refused on system models
    models: dict[str, ModelTotals] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    unreadable: int = 0
    computed_at: datetime | None = None

    @property
    def cost_nano(self) -> int:
        return self.system_cost_nano + self.custom_cost_nano

    def as_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "current": self.current,
            "currency": "CNY",
            "users": self.users,
            "cost": nano_to_json(self.cost_nano),
            "system_cost": nano_to_json(self.system_cost_nano),
            "custom_cost": nano_to_json(self.custom_cost_nano),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "calls": self.calls,
            "users_over_80": self.users_over_80,
            "users_over_100": self.users_over_100,
            "models": {m: t.as_dict() for m, t in sorted(self.models.items(), key=lambda i: (-i[1].cost_nano, i[0]))},
            "sources": list(self.sources),
            "unreadable": self.unreadable,
            "computed_at": iso_z(self.computed_at) if self.computed_at else None,
        }


class MonthReportBuilder:
    """Collects user-months into a :class:`MonthData`. Feed it raw hashes (``add_hash``: the fast
    path of the live scan, about 2 µs for a one-model hash where ``MonthUsage.from_hash`` took
    10) or parsed months (``add_usage``: archived months merged with Redis)."""

    def __init__(self, month: str, prices: PriceTable, default_credit_nano: int, *, current: bool) -> None:
        self.month = month
        self.prices = prices
        self.default_credit_nano = default_credit_nano
        self.summary = MonthSummary(month, current)
        self.users: list[str] = []
        self.columns = {name: array("q") for name in _COLUMNS}
        c = self.columns
        self._system_cost, self._custom_cost, self._input, self._output = (
            c["system_cost"],
            c["custom_cost"],
            c["input"],
            c["output"],
        )
        self._calls, self._used, self._credit = c["calls"], c["used"], c["credit"]
        self._cached, self._cache_write = c["cached"], c["cache_write"]
        self.credit_set = bytearray()
        # model id (bytes) -> [input, output, cost, calls, estimated calls, users, is_system, cached, cache write]
        self._models: dict[bytes, list[int]] = {}
        # field name as Redis gave it -> (code, the model's totals): see add_hash
        self._fields: dict[Any, tuple[int, list[int] | None]] = {}
        # user -> plan credit, for the merged users of an archived month (add_archived, add_usage)
        self.plans: dict[str, int] = {}

    def add_hash(self, user: str, raw: Mapping[Any, Any], plan_nano: int | None = None) -> bool:
        """Add one user-month from its HGETALL reply; False (nothing added) when a field is not
        an integer. Bookkeeping fields (``dump_gen``, ``hold_est_nano``, ...) are ignored.
        ``plan_nano`` is the user's plan (``<prefix>:{<user>}:plan``): the credit of a month
        without its own.

        The hot loop of a live report (a million hashes): each field name is classified once
        and remembered (``_fields``: model fields repeat from user to user), so a field costs a
        dict lookup and an ``int()``."""
        fields = self._fields
        used, credit = 0, None
        values: list[tuple[int, list[int], int]] = []
        try:
            for name, value in raw.items():
                kind = fields.get(name)
                if kind is None:
                    kind = fields[name] = self._field_kind(name)
                code, totals = kind
                if code >= 0:
                    values.append((code, totals, int(value)))  # type: ignore[arg-type]
                elif code == _F_USED:
                    used = int(value)
                elif code == _F_CREDIT:
                    credit = int(value)
        except ValueError:
            return False
        if not values and not used and credit is None:
            return True  # nothing of this month (only bookkeeping fields)
        system_cost = custom_cost = tokens_in = tokens_out = calls = cached = write = 0
        for code, totals, value in values:  # all parsed: nothing is added from a bad hash
            index = code & 15
            totals[index] += value
            if index == 2:
                if code & _F_SYSTEM:
                    system_cost += value
                else:
                    custom_cost += value
            elif index == 0:
                tokens_in += value
            elif index == 1:
                tokens_out += value
            elif index == 3:
                calls += value
                totals[5] += 1  # one more user of the model
            elif index == 7:
                cached += value
            elif index == 8:
                write += value
        self._add_row(
            user, used, credit, system_cost, custom_cost, tokens_in, tokens_out, calls, plan_nano, cached, write
        )
        return True

    def _field_kind(self, name: Any) -> tuple[int, list[int] | None]:
        raw = name.encode() if isinstance(name, str) else bytes(name)
        if raw == _USED:
            return _F_USED, None
        if raw == _CREDIT:
            return _F_CREDIT, None
        model, _, suffix = raw.rpartition(b":")
        index = _SUFFIX_INDEX.get(suffix)
        if index is None or not model:
            return _F_IGNORED, None
        totals = self._model_totals(model)
        return index | (_F_SYSTEM if totals[6] else 0), totals

    def _model_totals(self, model: bytes) -> list[int]:
        totals = self._models.get(model)
        if totals is None:
            totals = self._models[model] = [0, 0, 0, 0, 0, 0, int(self.prices.is_system(model.decode())), 0, 0]
        return totals

    def add_archived(self, rows: list[ArchiveRow], live: dict[str, MonthUsage]) -> None:
        """Add the users of ``rows`` (``HistoryStore.iter_month_rows``: whole users, in user
        order), each merged with its live hash from ``live`` (popped: what is left there after the
        archive has no archived part). The usual user, one generation and nothing left in Redis,
        is added straight from its rows, without an object per row."""
        month, start, count = self.month, 0, len(rows)
        while start < count:
            user, gen = rows[start][0], rows[start][1]
            end, single = start + 1, True
            while end < count and rows[end][0] == user:
                single = single and rows[end][1] == gen
                end += 1
            mine = live.pop(user, None) if live else None
            if mine is None and single:
                self._add_rows(user, rows, start, end)
            else:
                merged = merge_month(month, mine, parts_from_rows(month, rows[start:end]))
                self.add_usage(user, merged, self.plans.get(user))
            start = end

    def _add_rows(self, user: str, rows: list[ArchiveRow], start: int, end: int) -> None:
        _, _, credit, used, first_model, *_ = rows[start]
        if credit is None and not used and first_model is None:
            return  # an empty archived month (no model, no spend, no credit): add_usage skips it too
        system_cost = custom_cost = tokens_in = tokens_out = calls = cached_in = cache_write = 0
        for i in range(start, end):
            _, _, _, _, model_id, tin, tout, cost, n, est, cached, write = rows[i]
            if model_id is None:
                continue
            totals = self._model_totals(model_id.encode())
            totals[7] += cached
            totals[8] += write
            totals[0] += tin
            totals[1] += tout
            totals[2] += cost
            totals[3] += n
            totals[4] += est
            totals[5] += 1
            tokens_in += tin
            tokens_out += tout
            calls += n
            cached_in += cached
            cache_write += write
            if totals[6]:
                system_cost += cost
            else:
                custom_cost += cost
        self._add_row(  # an archived credit is the one in force then, the plan's included (the dump)
            user, used, credit, system_cost, custom_cost, tokens_in, tokens_out, calls, None, cached_in, cache_write
        )

    def add_usage(self, user: str, usage: MonthUsage, plan_nano: int | None = None) -> None:
        """Add one parsed user-month (e.g. archived generations merged with the live hash);
        ``plan_nano`` as in ``add_hash``."""
        if usage.is_empty and usage.credit_nano is None:
            return
        system_cost = custom_cost = tokens_in = tokens_out = calls = cached = write = 0
        for model_id, u in usage.models.items():
            totals = self._model_totals(model_id.encode())
            for i, value in enumerate((u.input_tokens, u.output_tokens, u.cost_nano, u.calls, u.estimated_calls)):
                totals[i] += value
            totals[7] += u.cached_input_tokens
            totals[8] += u.cache_write_tokens
            totals[5] += 1
            tokens_in += u.input_tokens
            tokens_out += u.output_tokens
            calls += u.calls
            cached += u.cached_input_tokens
            write += u.cache_write_tokens
            if totals[6]:
                system_cost += u.cost_nano
            else:
                custom_cost += u.cost_nano
        self._add_row(
            user,
            usage.system_used_nano,
            usage.credit_nano,
            system_cost,
            custom_cost,
            tokens_in,
            tokens_out,
            calls,
            plan_nano,
            cached,
            write,
        )

    def _add_row(
        self,
        user: str,
        used: int,
        credit: int | None,
        system_cost: int,
        custom_cost: int,
        tokens_in: int,
        tokens_out: int,
        calls: int,
        plan_nano: int | None = None,
        cached: int = 0,
        cache_write: int = 0,
    ) -> None:
        if credit is not None:
            effective = credit
        else:
            effective = self.default_credit_nano if plan_nano is None else plan_nano
        self.users.append(user)
        self._system_cost.append(system_cost)
        self._custom_cost.append(custom_cost)
        self._input.append(tokens_in)
        self._output.append(tokens_out)
        self._calls.append(calls)
        self._used.append(used)
        self._credit.append(effective)
        self._cached.append(cached)
        self._cache_write.append(cache_write)
        self.credit_set.append(credit is not None)
        s = self.summary
        s.users += 1
        s.system_cost_nano += system_cost
        s.custom_cost_nano += custom_cost
        s.input_tokens += tokens_in
        s.output_tokens += tokens_out
        s.calls += calls
        if used * 100 >= NEAR_PERCENT * effective:
            s.users_over_80 += 1
            if used >= effective:
                s.users_over_100 += 1

    def finish(self, *, sources: Iterable[str], unreadable: int, now: datetime) -> MonthData:
        s = self.summary
        s.sources, s.unreadable, s.computed_at = tuple(sources), unreadable, now
        for model, t in sorted(self._models.items()):
            s.models[model.decode()] = ModelTotals(bool(t[6]), t[0], t[1], t[2], t[3], t[4], t[5], t[7], t[8])
        return MonthData(s, self.users, self.columns, self.credit_set)


_COLUMNS = ("system_cost", "custom_cost", "input", "output", "calls", "used", "credit", "cached", "cache_write")


class MonthData:
    """A month's summary and its rows in columns: what the meter caches and pages through."""

    def __init__(
        self, summary: MonthSummary, users: list[str], columns: dict[str, array[int]], credit_set: bytearray
    ) -> None:
        self.summary = summary
        self.users = users
        self.columns = columns
        self.credit_set = credit_set
        self._orders: dict[str, array[int]] = {}

    def __len__(self) -> int:
        return len(self.users)

    def row(self, i: int) -> UserRow:
        c = self.columns
        return UserRow(
            self.users[i],
            c["system_cost"][i],
            c["custom_cost"][i],
            c["input"][i],
            c["output"][i],
            c["calls"][i],
            c["used"][i],
            c["credit"][i],
            bool(self.credit_set[i]),
            c["cached"][i],
            c["cache_write"][i],
        )

    # --- sorting ---------------------------------------------------------------------------------

    def sort_value(self, sort: str) -> Callable[[int], int | float | str]:
        """The value row ``i`` is sorted by (descending, except ``user``)."""
        if sort == "user":
            return self.users.__getitem__
        return self._number(sort)

    def _number(self, sort: str) -> Callable[[int], int | float]:
        c = self.columns
        if sort == "cost":
            sys_cost, cus_cost = c["system_cost"], c["custom_cost"]
            return lambda i: sys_cost[i] + cus_cost[i]
        if sort == "tokens":
            tin, tout = c["input"], c["output"]
            return lambda i: tin[i] + tout[i]
        if sort == "share":
            used, credit = c["used"], c["credit"]
            return lambda i: used[i] / credit[i] if credit[i] else (math.inf if used[i] else 0.0)
        column = c[{"system_cost": "system_cost", "custom_cost": "custom_cost", "calls": "calls"}[sort]]
        return column.__getitem__

    def sort_key(self, sort: str) -> Callable[[int], Any]:
        """Ascending key of row ``i``: highest value first, then the user id; by user id alone."""
        users = self.users
        if sort == "user":
            return users.__getitem__
        value = self._number(sort)
        return lambda i: (-value(i), users[i])

    def order(self, sort: str) -> array[int]:
        """Row indexes in ``sort`` order (computed once per sort while the data is cached)."""
        check_sort(sort)
        found = self._orders.get(sort)
        if found is None:
            found = self._orders[sort] = array("q", sorted(range(len(self)), key=self.sort_key(sort)))
        return found

    def report(self, *, sort: str = "cost", top: int | None = None) -> MonthReport:
        """The summary and the rows in ``sort`` order, the first ``top`` only when given."""
        check_sort(sort)
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
            raise InvalidInput(f"top must be a whole number of users, at least 0, got {top!r}")
        if top is not None and sort not in self._orders and top < len(self) // 16:
            indexes: Iterable[int] = heapq.nsmallest(top, range(len(self)), key=self.sort_key(sort))
        else:
            order = self.order(sort)
            indexes = order if top is None else order[:top]
        return MonthReport(self.summary, sort, (self.row(i) for i in indexes))

    def page(
        self, *, sort: str = "cost", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[UserRow], str | None]:
        """Up to ``limit`` rows after ``cursor`` (from a previous page) in ``sort`` order, and the
        cursor of the next page (None on the last). The cursor names the last row's sort value
        and user, not a position: rows that move between two pages (a record, a refreshed cache)
        make the listing neither repeat nor skip the rows around them."""
        check_sort(sort)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}, got {limit!r}")
        order = self.order(sort)
        start = 0
        if cursor is not None:
            key = decode_cursor(cursor, sort)
            lo, hi = 0, len(order)
            row_key = self.sort_key(sort)
            while lo < hi:  # the first row whose key is after the cursor's
                mid = (lo + hi) // 2
                if row_key(order[mid]) <= key:
                    lo = mid + 1
                else:
                    hi = mid
            start = lo
        rows = [self.row(i) for i in order[start : start + limit]]
        if start + limit >= len(order):
            return rows, None
        last = order[start + limit - 1]
        return rows, encode_cursor(sort, self.sort_value(sort)(last), self.users[last])


class MonthReport:
    """``month_report``'s answer: iterate it for the rows (made as they are read), read
    ``summary`` for the totals. ``sort`` is the order of the rows."""

    def __init__(self, summary: MonthSummary, sort: str, rows: Iterable[UserRow]) -> None:
        self.summary = summary
        self.sort = sort
        self._rows = iter(rows)

    def __iter__(self) -> Iterator[UserRow]:
        return self._rows

    def as_dict(self) -> dict[str, Any]:
        """The summary and the (remaining) rows as JSON-ready data."""
        return {"summary": self.summary.as_dict(), "sort": self.sort, "users": [r.as_dict() for r in self]}


def next_scan_count(count: int, returned: int) -> int:
    """The COUNT for the next SCAN, from the last one's ``count`` and how many keys it returned."""
    if returned <= 0:
        return min(count * 2, SCAN_COUNT_MAX)
    return max(SCAN_COUNT_MIN, min(SCAN_COUNT_MAX, count * PAGE_KEYS // returned))


MAX_PAUSE_S = 1.0


def pause_after(round_trip_s: float, redis_share: float) -> float:
    """Seconds to wait after a page whose round trip took ``round_trip_s``, so that the report's
    round trips (an upper bound of what it asks of Redis) fill at most ``redis_share`` of the
    time: 0 at a share of 1, four times the round trip at 0.2. At most ``MAX_PAUSE_S``."""
    if redis_share >= 1:
        return 0.0
    return min(round_trip_s * (1 - redis_share) / redis_share, MAX_PAUSE_S)


def plan_keys(month_keys: list[Any]) -> list[bytes]:
    """The plan key of each user-month key: ``<prefix>:{<user>}:<YYYY-MM>`` -> ``<prefix>:{<user>}:plan``
    (the same hash tag, so the same slot and node)."""
    return [(k if isinstance(k, bytes) else k.encode())[:-7] + b"plan" for k in month_keys]


def plan_nano(user: str, reply: Any) -> int | None:
    """A plan GET's reply as nano-CNY (None: no plan). set_plan.lua writes only integers; anything
    else (written by hand) is logged and read as no plan."""
    if reply is None or isinstance(reply, Exception):
        return None
    try:
        return int(reply)
    except ValueError:
        log.warning("month report: %s's plan is not an integer (%r); the month reads with the default", user, reply)
        return None


def check_sort(sort: object) -> str:
    if not isinstance(sort, str) or sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    return sort


def encode_cursor(sort: str, value: int | float | str, user: str) -> str:
    raw = json.dumps([sort, repr(value) if isinstance(value, float) else value, user], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> Any:
    """The sort key a cursor stands for; InvalidInput for a cursor that is not one of ours or
    was made for another sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, value, user = json.loads(raw)
        if not isinstance(user, str) or made_for not in SORTS:
            raise ValueError
        if made_for == sort == "share":
            key: Any = (-float(value), user)
        elif made_for == sort == "user":
            key = user
        elif made_for == sort and type(value) is int:
            key = (-value, user)
        elif made_for == sort:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor is not valid: pass the next_cursor of the previous page as it is") from None
    if made_for != sort:
        raise InvalidInput(f"cursor was made for sort={made_for}, not sort={sort}: start again without a cursor")
    return key


# --- CSV: one row per user and model -------------------------------------------------------------

CSV_HEADER = (
    "month",
    "user",
    "model_id",
    "is_system",
    "input_tokens",
    "output_tokens",
    "calls",
    "estimated_calls",
    "cost_cny",
    "user_monthly_used_cny",
    "user_monthly_credit_cny",
    "user_percent_used",
    "cached_input_tokens",  # issue 12: last, so that a reader by position still finds the others
    "cache_write_tokens",
)


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading apostrophe when a spreadsheet would read it as a formula: user and
    model ids may start with ``+``, ``-`` or ``@`` (``=`` is never allowed in them)."""
    return "'" + text if text[:1] in ("+", "-", "@", "=") else text


def csv_chunks(
    month: str, pages: Iterable[list[tuple[str, MonthUsage]]], prices: PriceTable, default_credit_nano: int
) -> Iterator[str]:
    """The CSV export as text: the header, then one chunk per page of ``(user, MonthUsage)``
    (``Meter.month_usage``). Memory holds one page, whatever the month's size."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CSV_HEADER)
    yield buffer.getvalue()
    for page in pages:
        buffer.seek(0)
        buffer.truncate()
        for user, usage in page:
            writer.writerows(csv_rows(month, user, usage, prices, default_credit_nano))
        if buffer.tell():
            yield buffer.getvalue()


def csv_rows(
    month: str, user: str, usage: MonthUsage, prices: PriceTable, default_credit_nano: int
) -> list[tuple[Any, ...]]:
    """The CSV rows of one user-month (CSV_HEADER's columns): one per model, or one with an empty
    model when the month holds only a credit. Amounts are exact decimal CNY."""
    if usage.is_empty and usage.credit_nano is None:
        return []
    credit = default_credit_nano if usage.credit_nano is None else usage.credit_nano
    tail = (nano_to_decimal(usage.system_used_nano), nano_to_decimal(credit), percent(usage.system_used_nano, credit))
    user = spreadsheet_safe(user)
    if not usage.models:
        return [(month, user, "", "", 0, 0, 0, 0, 0, *tail, 0, 0)]
    return [
        (
            month,
            user,
            spreadsheet_safe(model_id),
            "true" if prices.is_system(model_id) else "false",
            u.input_tokens,
            u.output_tokens,
            u.calls,
            u.estimated_calls,
            nano_to_decimal(u.cost_nano),
            *tail,
            u.cached_input_tokens,
            u.cache_write_tokens,
        )
        for model_id, u in sorted(usage.models.items())
    ]


class ReportCache:
    """Month data kept ``ttl_s`` seconds (0: not at all), at most ``MAX_MONTHS`` months, the
    oldest read dropped first. Per meter, so per process: each gunicorn worker keeps its own."""

    MAX_MONTHS = 4

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._kept: dict[str, tuple[float, MonthData]] = {}

    def get(self, month: str) -> MonthData | None:
        found = self._kept.get(month)
        if found is None:
            return None
        if self.clock() >= found[0]:
            del self._kept[month]
            return None
        return found[1]

    def put(self, month: str, data: MonthData) -> None:
        if self.ttl_s <= 0:
            return
        self._kept.pop(month, None)
        while len(self._kept) >= self.MAX_MONTHS:
            del self._kept[next(iter(self._kept))]
        self._kept[month] = (self.clock() + self.ttl_s, data)

    def clear(self) -> None:
        self._kept.clear()
