"""Model prices: which models are system models, and what a call costs in nano-CNY.

A model is a *system* model if and only if it is in the system table; only system models draw
on the monthly credit. Any other id is a *custom* model: counted, never limited, priced from the
custom table or a price passed with the call, else free. An id starting with ``system_`` that is
not in the system table is an :class:`UnknownModel` error, never a custom model, so a typo can
not bypass the credit.

Prices are given in CNY per 1,000 tokens, as in the seed, and must be whole nano-CNY per token
(a multiple of 0.000001 CNY per 1k tokens). Then ``cost_nano = in * p_in + out * p_out`` is exact.

The TOML file (``QUOTA_PRICES_FILE``)::

    replace_defaults = false          # true: the file's [system] table replaces the built-in one

    [system.system_deepseek]
    name = "DeepSeek Chat（系统提供）"
    cost_per_1k_input = "0.001"       # strings or numbers; strings avoid any float doubt
    cost_per_1k_output = "0.002"

    [custom.custom_gpt4o]
    name = "My GPT-4o"
    cost_per_1k_input = "0.0175"
    cost_per_1k_output = "0.07"
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigError, InvalidInput, UnknownModel
from ._keys import MODEL_RE, validate_model_id
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


@dataclass(frozen=True)
class ModelPrice:
    """A model's price, in whole nano-CNY per token."""

    model_id: str
    name: str
    input_nano_per_token: int
    output_nano_per_token: int
    is_system: bool

    def cost_nano(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.input_nano_per_token + output_tokens * self.output_nano_per_token

    def as_config(self) -> dict[str, Any]:
        """The seed's ``SYSTEM_MODEL_COSTS`` entry shape, with exact Decimal prices."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "cost_per_1k_input": nano_to_decimal(self.input_nano_per_token * 1000),
            "cost_per_1k_output": nano_to_decimal(self.output_nano_per_token * 1000),
            "is_system": self.is_system,
        }

    def as_json(self) -> dict[str, Any]:
        data = self.as_config()
        data["cost_per_1k_input"] = nano_to_json(self.input_nano_per_token * 1000)
        data["cost_per_1k_output"] = nano_to_json(self.output_nano_per_token * 1000)
        return data


def _parse_entry(model_id: str, entry: Any, *, is_system: bool) -> ModelPrice:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"price of {model_id!r} must be a table with cost_per_1k_input/output")
    try:
        validate_model_id(model_id)
        if is_system != fold_model_id(model_id).startswith(SYSTEM_PREFIX):
            kind = "system" if is_system else "custom"
            rule = "must" if is_system else "must not"
            raise InvalidInput(f"{kind} model id {model_id!r} {rule} start with {SYSTEM_PREFIX!r}")
        unknown = set(entry) - {"name", "cost_per_1k_input", "cost_per_1k_output"}
        if unknown:
            raise InvalidInput(f"unknown keys {sorted(unknown)} in the price of {model_id!r}")
        for needed in ("cost_per_1k_input", "cost_per_1k_output"):
            if needed not in entry:
                raise InvalidInput(f"the price of {model_id!r} needs {needed}")
        name = entry.get("name", model_id)
        if not isinstance(name, str):
            raise InvalidInput(f"the name of {model_id!r} must be a string")
        return ModelPrice(
            model_id=model_id,
            name=name,
            input_nano_per_token=per_1k_to_nano_per_token(entry["cost_per_1k_input"], what="cost_per_1k_input"),
            output_nano_per_token=per_1k_to_nano_per_token(entry["cost_per_1k_output"], what="cost_per_1k_output"),
            is_system=is_system,
        )
    except InvalidInput as exc:
        raise ConfigError(f"price table: {exc}") from None


class PriceTable:
    """The system and custom price tables. Immutable once built."""

    def __init__(
        self,
        system: Mapping[str, Any] | None = None,
        custom: Mapping[str, Any] | None = None,
    ) -> None:
        system = DEFAULT_SYSTEM_MODELS if system is None else system
        self._system = {mid: _parse_entry(mid, e, is_system=True) for mid, e in system.items()}
        self._custom = {mid: _parse_entry(mid, e, is_system=False) for mid, e in (custom or {}).items()}

    @classmethod
    def from_toml(cls, path: str | Path) -> PriceTable:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"price file {str(path)!r} (QUOTA_PRICES_FILE) does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"price file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "prices") -> PriceTable:
        unknown = set(data) - {"replace_defaults", "system", "custom"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        replace = data.get("replace_defaults", False)
        if not isinstance(replace, bool):
            raise ConfigError(f"{source}: replace_defaults must be true or false")
        system = {} if replace else dict(DEFAULT_SYSTEM_MODELS)
        system.update(data.get("system", {}))
        return cls(system=system, custom=data.get("custom", {}))

    @property
    def system_models(self) -> dict[str, ModelPrice]:
        return dict(self._system)

    @property
    def custom_models(self) -> dict[str, ModelPrice]:
        return dict(self._custom)

    def is_system(self, model_id: str) -> bool:
        return model_id in self._system

    def lookup(self, model_id: object) -> ModelPrice:
        """The price of ``model_id``; a custom model without a price costs 0.

        Raises InvalidInput for a malformed id and UnknownModel for an id that poses as a system
        model without being exactly one: it starts with ``system_`` or equals a system id once
        case and Unicode compatibility forms are folded (``SYSTEM_DEEPSEEK``, ``ｓｙｓｔｅｍ_x``).
        Taking such an id as a free custom model would let a respelling bypass the credit.
        """
        if isinstance(model_id, str):
            price = self._system.get(model_id) or self._custom.get(model_id)
            if price is not None:
                return price
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

    def with_call_price(self, model_id: object, price: Mapping[str, Any]) -> ModelPrice:
        """A custom model priced by the caller for one call. System models keep the table's price."""
        base = self.lookup(model_id)  # a valid id from here on: base.model_id is model_id
        if base.is_system:
            raise InvalidInput(f"{model_id!r} is a system model; its price comes from the price table")
        if not isinstance(price, Mapping):
            raise InvalidInput("price must be a dict with cost_per_1k_input and cost_per_1k_output")
        try:
            return _parse_entry(base.model_id, {"name": base.name, **price}, is_system=False)
        except ConfigError as exc:
            raise InvalidInput(str(exc).removeprefix("price table: ")) from None

    def get_model_cost_config(self, model_id: object) -> dict[str, Any]:
        """The seed's per-model config: name, cost_per_1k_input/output (Decimal CNY), is_system."""
        return self.lookup(model_id).as_config()

    def as_json(self) -> dict[str, Any]:
        return {
            "currency": "CNY",
            "unit": "per 1k tokens",
            "system": {mid: p.as_json() for mid, p in sorted(self._system.items())},
            "custom": {mid: p.as_json() for mid, p in sorted(self._custom.items())},
        }
