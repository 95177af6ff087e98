"""Model prices: which models are system models, and what a call costs in nano-CNY.

A model is a *system* model if and only if it is in the system table; only system models draw
on the monthly credit. Any other id is a *custom* model: counted, never limited, priced from the
custom table or a price passed with the call, else free. An id starting with ``system_`` that is
not in the system table is an :class:`UnknownModel` error, never a custom model, so a typo can
not bypass the credit.

Prices are given in CNY per 1,000 tokens, as in the seed, and must be whole nano-CNY per token
(a multiple of 0.000001 CNY per 1k tokens). Then every cost is exact:

    cost_nano = (input - cached - cache_write) * p_in + cached * p_cached
                + cache_write * p_write + output * p_out

``input`` is the call's *total* input; ``cached`` (cache hits) and ``cache_write`` (Anthropic's
cache creation) are the parts of it priced at ``cost_per_1k_cached_input`` and
``cost_per_1k_cache_write``, which default to the input price: a table without them prices every
call as before (docs/PRICING.md).

An entry may carry ``effective_from`` (a UTC instant, ISO 8601 with ``Z`` or an offset): a call is
priced by the model's entry in force at the call's instant (:meth:`PriceTable.lookup` ``at=``),
so a price change takes effect at its instant and a record replayed from the spool later keeps
the price of its own instant. An entry without ``effective_from`` is in force since forever. The
file is validated at load: two entries of one model may not take effect at the same instant, and
a system model's first entry may not carry ``effective_from`` (a call before it would have no
price: a system model is priced at every instant).

The TOML file (``QUOTA_PRICES_FILE``)::

    replace_defaults = false          # true: the file's [system] table replaces the built-in one

    [system.system_deepseek]
    name = "DeepSeek Chat（系统提供）"
    cost_per_1k_input = "0.001"       # strings or numbers; strings avoid any float doubt
    cost_per_1k_output = "0.002"
    cost_per_1k_cached_input = "0.0001"   # optional; default: cost_per_1k_input

    [custom.custom_gpt4o]
    name = "My GPT-4o"
    cost_per_1k_input = "0.0175"
    cost_per_1k_output = "0.07"

A model with dated prices is an array of tables, one per entry (the file's entries of a model
replace the built-in ones)::

    [[system.system_deepseek]]
    cost_per_1k_input = "0.001"
    cost_per_1k_output = "0.002"

    [[system.system_deepseek]]
    effective_from = "2026-12-16T00:00:00Z"
    cost_per_1k_input = "0.0005"      # an entry without a name keeps the previous entry's
    cost_per_1k_output = "0.002"
"""

from __future__ import annotations

import bisect
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._errors import ConfigError, InvalidInput, UnknownModel
from ._keys import MODEL_RE, iso_z, validate_model_id
from ._money import cny_to_nano, nano_to_decimal, nano_to_json

SYSTEM_PREFIX = "system_"
MAX_PRICE_NANO_PER_TOKEN = 10**7  # 10 CNY per 1k tokens: far above any real price, and keeps cost_nano < 1e17

DEFAULT_SYSTEM_MODELS: dict[str, dict[str, Any]] = {
    "system_deepseek": {
        "name": "DeepSeek Chat（系统提供）",
        "cost_per_1k_input": "0.001",
        "cost_per_1k_output": "0.002",
    },
}


def fold_model_id(model_id: str) -> str:
    """The form two ids are compared in to tell whether one poses as a system id: Unicode NFKC
    (fullwidth ``ｓｙｓｔｅｍ`` becomes ``system``), then case-folded (``System_`` is ``system_``)."""
    return unicodedata.normalize("NFKC", model_id).casefold()


def per_1k_to_nano_per_token(price: object, *, what: str) -> int:
    """CNY per 1k tokens -> whole nano-CNY per token, or ConfigError/InvalidInput if inexact."""
    try:
        nano_per_1k = cny_to_nano(price, what=what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if nano_per_1k % 1000:
        raise InvalidInput(
            f"{what} {price!r} must be a multiple of 0.000001 CNY per 1k tokens "
            "(whole nano-CNY per token), so that every cost is exact"
        )
    per_token = nano_per_1k // 1000
    if per_token > MAX_PRICE_NANO_PER_TOKEN:
        raise InvalidInput(f"{what} {price!r} is above the limit of 10 CNY per 1k tokens")
    return per_token


PRICE_KEYS = ("cost_per_1k_input", "cost_per_1k_output", "cost_per_1k_cached_input", "cost_per_1k_cache_write")
_ENTRY_KEYS = frozenset({"name", "effective_from", *PRICE_KEYS})
_SINCE_FOREVER = datetime.min.replace(tzinfo=UTC)  # where an entry without effective_from starts


@dataclass(frozen=True)
class ModelPrice:
    """A model's price, in whole nano-CNY per token. The cached-input and cache-write prices
    default to the input price, so a price without them costs what it always did.
    ``effective_from`` is the UTC instant this entry takes effect (None: since forever)."""

    model_id: str
    name: str
    input_nano_per_token: int
    output_nano_per_token: int
    is_system: bool
    cached_input_nano_per_token: int = -1  # -1 (not given): the input price
    cache_write_nano_per_token: int = -1  # -1 (not given): the input price
    effective_from: datetime | None = None

    def __post_init__(self) -> None:
        if self.cached_input_nano_per_token < 0:
            object.__setattr__(self, "cached_input_nano_per_token", self.input_nano_per_token)
        if self.cache_write_nano_per_token < 0:
            object.__setattr__(self, "cache_write_nano_per_token", self.input_nano_per_token)

    def cost_nano(
        self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """``input_tokens`` is the total input, of which ``cached_tokens`` and ``cache_write_tokens``
        are parts (the caller checks they fit: quota._usage.validate_cache_tokens)."""
        cost = input_tokens * self.input_nano_per_token + output_tokens * self.output_nano_per_token
        if cached_tokens:
            cost += cached_tokens * (self.cached_input_nano_per_token - self.input_nano_per_token)
        if cache_write_tokens:
            cost += cache_write_tokens * (self.cache_write_nano_per_token - self.input_nano_per_token)
        return cost

    def as_config(self) -> dict[str, Any]:
        """The seed's ``SYSTEM_MODEL_COSTS`` entry shape, with exact Decimal prices, plus the cache
        prices and ``effective_from`` (an ISO 8601 instant, or None: since forever)."""
        data: dict[str, Any] = {"model_id": self.model_id, "name": self.name}
        for key, per_token in zip(PRICE_KEYS, self._per_token()):
            data[key] = nano_to_decimal(per_token * 1000)
        data["is_system"] = self.is_system
        data["effective_from"] = None if self.effective_from is None else iso_z(self.effective_from)
        return data

    def as_json(self) -> dict[str, Any]:
        data = self.as_config()
        for key, per_token in zip(PRICE_KEYS, self._per_token()):
            data[key] = nano_to_json(per_token * 1000)
        return data

    def _per_token(self) -> tuple[int, int, int, int]:
        """The four prices in the order of PRICE_KEYS."""
        return (
            self.input_nano_per_token,
            self.output_nano_per_token,
            self.cached_input_nano_per_token,
            self.cache_write_nano_per_token,
        )


def parse_instant(value: object, *, what: str) -> datetime:
    """A UTC instant from an ISO 8601 string with ``Z`` or an offset (or a TOML offset
    date-time); InvalidInput for a local time, which would mean a different instant per machine."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{what} {value!r} is not an ISO 8601 instant like 2026-12-16T00:00:00Z") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise InvalidInput(f"{what} must be an ISO 8601 instant like 2026-12-16T00:00:00Z, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput(f"{what} {str(value)!r} needs Z or an offset (+08:00): a local time is ambiguous")
    return moment.astimezone(UTC)


def _parse_entry(model_id: str, entry: Any, *, is_system: bool, name: str | None = None) -> ModelPrice:
    """One price entry; ``name`` is the model's previous entry's name (an entry without one keeps it)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"price of {model_id!r} must be a table with cost_per_1k_input/output")
    try:
        validate_model_id(model_id)
        if is_system != fold_model_id(model_id).startswith(SYSTEM_PREFIX):
            kind = "system" if is_system else "custom"
            rule = "must" if is_system else "must not"
            raise InvalidInput(f"{kind} model id {model_id!r} {rule} start with {SYSTEM_PREFIX!r}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise InvalidInput(f"unknown keys {sorted(unknown)} in the price of {model_id!r}")
        for needed in PRICE_KEYS[:2]:
            if needed not in entry:
                raise InvalidInput(f"the price of {model_id!r} needs {needed}")
        name = entry.get("name", name or model_id)
        if not isinstance(name, str):
            raise InvalidInput(f"the name of {model_id!r} must be a string")
        per_token = {key: per_1k_to_nano_per_token(entry[key], what=key) for key in PRICE_KEYS if key in entry}
        since = entry.get("effective_from")
        return ModelPrice(
            model_id=model_id,
            name=name,
            input_nano_per_token=per_token["cost_per_1k_input"],
            output_nano_per_token=per_token["cost_per_1k_output"],
            is_system=is_system,
            cached_input_nano_per_token=per_token.get("cost_per_1k_cached_input", -1),
            cache_write_nano_per_token=per_token.get("cost_per_1k_cache_write", -1),
            effective_from=None if since is None else parse_instant(since, what=f"effective_from of {model_id!r}"),
        )
    except InvalidInput as exc:
        raise ConfigError(f"price table: {exc}") from None


class PriceSchedule:
    """One model's price entries, oldest first: the entry in force at an instant is the last one
    that took effect at or before it. Immutable once built."""

    __slots__ = ("entries", "only", "_starts")

    def __init__(self, model_id: str, entries: Any, *, is_system: bool) -> None:
        raw = list(entries) if isinstance(entries, list) else [entries]
        if not raw:
            raise ConfigError(f"price table: {model_id!r} has an empty list of prices")
        parsed: list[ModelPrice] = []
        for entry in raw:  # in file order, so that an entry without a name keeps the one before
            parsed.append(_parse_entry(model_id, entry, is_system=is_system, name=parsed[-1].name if parsed else None))
        parsed.sort(key=_start)
        for before, after in zip(parsed, parsed[1:]):
            if _start(before) == _start(after):
                when = "since forever (no effective_from)" if after.effective_from is None else iso_z(_start(after))
                raise ConfigError(f"price table: two prices of {model_id!r} take effect at the same instant, {when}")
        if is_system and parsed[0].effective_from is not None:
            raise ConfigError(
                f"price table: system model {model_id!r} would have no price before "
                f"{iso_z(parsed[0].effective_from)}: its first price must have no effective_from "
                "(in force since forever), so that every call on a system model is priced"
            )
        self.entries: tuple[ModelPrice, ...] = tuple(parsed)
        self._starts = [_start(p) for p in parsed]
        # The common case, one price since forever: the hot path pays no search.
        self.only = parsed[0] if len(parsed) == 1 and parsed[0].effective_from is None else None

    def at(self, moment: datetime) -> ModelPrice | None:
        """The entry in force at ``moment`` (aware); None before the first one (custom models only)."""
        if self.only is not None:
            return self.only
        index = bisect.bisect_right(self._starts, moment) - 1
        return self.entries[index] if index >= 0 else None

    def upcoming(self, moment: datetime) -> list[ModelPrice]:
        """The entries that take effect after ``moment``, in order."""
        return list(self.entries[bisect.bisect_right(self._starts, moment) :])


def _start(price: ModelPrice) -> datetime:
    return _SINCE_FOREVER if price.effective_from is None else price.effective_from


def utc_now() -> datetime:
    return datetime.now(UTC)


class PriceTable:
    """The system and custom price tables, each a :class:`PriceSchedule` per model. Immutable once
    built. Methods that take ``at`` (an aware datetime) answer for that instant; without it, for now."""

    def __init__(
        self,
        system: Mapping[str, Any] | None = None,
        custom: Mapping[str, Any] | None = None,
    ) -> None:
        system = DEFAULT_SYSTEM_MODELS if system is None else system
        self._system = {mid: PriceSchedule(mid, e, is_system=True) for mid, e in system.items()}
        self._custom = {mid: PriceSchedule(mid, e, is_system=False) for mid, e in (custom or {}).items()}

    @classmethod
    def from_toml(cls, path: str | Path) -> PriceTable:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"price file {str(path)!r} (QUOTA_PRICES_FILE) does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"price file {str(path)!r} is not valid TOML: {exc}") from None
        try:
            return cls.from_mapping(data, source=str(path))
        except ConfigError as exc:
            raise ConfigError(f"price file {str(path)!r}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "prices") -> PriceTable:
        unknown = set(data) - {"replace_defaults", "system", "custom"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        replace = data.get("replace_defaults", False)
        if not isinstance(replace, bool):
            raise ConfigError(f"{source}: replace_defaults must be true or false")
        system = {} if replace else dict(DEFAULT_SYSTEM_MODELS)
        system.update(data.get("system", {}))  # a model's entries in the file replace the built-in ones
        return cls(system=system, custom=data.get("custom", {}))

    def _in_force(self, table: dict[str, PriceSchedule], at: datetime | None) -> dict[str, ModelPrice]:
        moment = utc_now() if at is None else at
        found = {mid: schedule.at(moment) for mid, schedule in table.items()}
        return {mid: price for mid, price in found.items() if price is not None}

    @property
    def system_models(self) -> dict[str, ModelPrice]:
        """The system prices in force now (see :meth:`in_force` for another instant)."""
        return self._in_force(self._system, None)

    @property
    def custom_models(self) -> dict[str, ModelPrice]:
        """The custom prices in force now; a custom model whose first price is still to come is left out."""
        return self._in_force(self._custom, None)

    def in_force(self, at: datetime | None = None) -> tuple[dict[str, ModelPrice], dict[str, ModelPrice]]:
        """``(system, custom)``: the prices in force at ``at`` (default now)."""
        return self._in_force(self._system, at), self._in_force(self._custom, at)

    def upcoming(self, at: datetime | None = None) -> list[ModelPrice]:
        """Every price that takes effect after ``at`` (default now), soonest first."""
        moment = utc_now() if at is None else at
        later = [p for table in (self._system, self._custom) for s in table.values() for p in s.upcoming(moment)]
        return sorted(later, key=lambda p: (_start(p), p.model_id))

    def schedule(self, model_id: str) -> tuple[ModelPrice, ...]:
        """Every price entry of ``model_id``, oldest first (empty for a model without one)."""
        found = self._system.get(model_id) or self._custom.get(model_id)
        return found.entries if found is not None else ()

    def is_system(self, model_id: str) -> bool:
        return model_id in self._system

    def lookup(self, model_id: object, at: datetime | None = None) -> ModelPrice:
        """The price of ``model_id`` in force at ``at`` (default now); a custom model without a
        price (at that instant) costs 0.

        Raises InvalidInput for a malformed id and UnknownModel for an id that poses as a system
        model without being exactly one: it starts with ``system_`` or equals a system id once
        case and Unicode compatibility forms are folded (``SYSTEM_DEEPSEEK``, ``ｓｙｓｔｅｍ_x``).
        Taking such an id as a free custom model would let a respelling bypass the credit.
        """
        if isinstance(model_id, str):
            schedule = self._system.get(model_id) or self._custom.get(model_id)
            if schedule is not None:
                price = schedule.only or schedule.at(utc_now() if at is None else at)
                if price is not None:
                    return price
                return ModelPrice(model_id, schedule.entries[0].name, 0, 0, is_system=False)  # not priced yet
            # Every system id starts with ``system_``, so this also catches each respelling of one.
            # A malformed id (a newline, a space) stays InvalidInput, below.
            folded = fold_model_id(model_id)
            if folded.startswith(SYSTEM_PREFIX) and MODEL_RE.fullmatch(folded):
                known = ", ".join(sorted(self._system)) or "none"
                shown = model_id if len(model_id) <= 40 else model_id[:40] + "..."
                raise UnknownModel(
                    f"unknown system model {shown!r}: system model ids are exact and case-sensitive; "
                    f"add it to the price file (QUOTA_PRICES_FILE) or use a known one ({known})"
                )
        model_id = validate_model_id(model_id)
        return ModelPrice(model_id, model_id, 0, 0, is_system=False)

    def with_call_price(self, model_id: object, price: Mapping[str, Any], at: datetime | None = None) -> ModelPrice:
        """A custom model priced by the caller for one call. System models keep the table's price."""
        base = self.lookup(model_id, at)  # a valid id from here on: base.model_id is model_id
        if base.is_system:
            raise InvalidInput(f"{model_id!r} is a system model; its price comes from the price table")
        if not isinstance(price, Mapping):
            raise InvalidInput("price must be a dict with cost_per_1k_input and cost_per_1k_output")
        if "effective_from" in price:
            raise InvalidInput("a price passed with a call has no effective_from: it is the call's own")
        try:
            return _parse_entry(base.model_id, {"name": base.name, **price}, is_system=False)
        except ConfigError as exc:
            raise InvalidInput(str(exc).removeprefix("price table: ")) from None

    def get_model_cost_config(self, model_id: object) -> dict[str, Any]:
        """The seed's per-model config: name, cost_per_1k_input/output (Decimal CNY), is_system."""
        return self.lookup(model_id).as_config()

    def as_json(self, at: datetime | None = None) -> dict[str, Any]:
        """The prices in force at ``at`` (default now) by model, and the ``upcoming`` changes
        (each entry with its ``model_id`` and ``effective_from``), soonest first."""
        moment = utc_now() if at is None else at
        system, custom = self.in_force(moment)
        return {
            "currency": "CNY",
            "unit": "per 1k tokens",
            "system": {mid: p.as_json() for mid, p in sorted(system.items())},
            "custom": {mid: p.as_json() for mid, p in sorted(custom.items())},
            "upcoming": [p.as_json() for p in self.upcoming(moment)],
        }
