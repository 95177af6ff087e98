"""Settings, read from the environment in one place.

| variable                 | default                          | meaning                                  |
|--------------------------|----------------------------------|------------------------------------------|
| REDIS_URL                | (none: `quota demo/serve` start a local server) | where the live months are |
| QUOTA_PREFIX             | quota                            | key prefix                               |
| QUOTA_MONTHLY_CREDIT     | 5                                | default monthly credit, CNY              |
| QUOTA_DEDUPE_TTL_S       | 86400                            | how long a request_id is remembered      |
| QUOTA_PRICES_FILE        | (built-in table)                 | TOML price file, see quota.prices        |
| QUOTA_HISTORY_URL        | sqlite:///quota-history.db       | SQL history store                        |
| QUOTA_HISTORY_MONTHS     | 12                               | months of history in get_token_stats     |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ConfigError
from .keys import validate_prefix
from .money import cny_to_nano
from .prices import PriceTable

DEFAULT_CREDIT_NANO = 5_000_000_000
DEFAULT_DEDUPE_TTL_S = 24 * 3600
DEFAULT_HISTORY_URL = "sqlite:///quota-history.db"


def int_env(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    prefix: str = "quota"
    credit_nano: int = DEFAULT_CREDIT_NANO
    dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S
    history_months: int = 12
    prices: PriceTable = field(default_factory=PriceTable)
    redis_url: str | None = None
    history_url: str = DEFAULT_HISTORY_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        prefix = env.get("QUOTA_PREFIX") or "quota"
        try:
            validate_prefix(prefix)
        except ValueError as exc:
            raise ConfigError(f"QUOTA_PREFIX: {exc}") from None
        credit_raw = env.get("QUOTA_MONTHLY_CREDIT")
        try:
            credit = DEFAULT_CREDIT_NANO if not credit_raw else cny_to_nano(credit_raw, what="QUOTA_MONTHLY_CREDIT")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        prices_file = env.get("QUOTA_PRICES_FILE")
        return cls(
            prefix=prefix,
            credit_nano=credit,
            dedupe_ttl_s=int_env(env, "QUOTA_DEDUPE_TTL_S", DEFAULT_DEDUPE_TTL_S, low=1, high=400 * 86400),
            history_months=int_env(env, "QUOTA_HISTORY_MONTHS", 12, low=0, high=120),
            prices=PriceTable.from_toml(prices_file) if prices_file else PriceTable(),
            redis_url=env.get("REDIS_URL") or None,
            history_url=env.get("QUOTA_HISTORY_URL") or DEFAULT_HISTORY_URL,
        )
