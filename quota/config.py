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
| QUOTA_MAX_CONNECTIONS    | 50                               | connections per node; more callers queue |
| QUOTA_POOL_TIMEOUT_S     | 5                                | seconds a caller waits for a connection  |
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

# Connection pools (see quota.connect): a caller beyond MAX_CONNECTIONS busy connections waits up
# to POOL_TIMEOUT_S for one instead of failing. 50 per node is half of redis-py's own default (100,
# which it fails past): an event loop or a worker seldom gains from more than a few dozen
# concurrent commands on one node, and a fleet of workers must stay under Redis's maxclients.
DEFAULT_MAX_CONNECTIONS = 50
MAX_CONNECTIONS_RANGE = (1, 10_000)
DEFAULT_POOL_TIMEOUT_S = 5.0
POOL_TIMEOUT_S_RANGE = (0.01, 600.0)


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


def float_env(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """A number of seconds (or any real setting) from ``env``; ``nan`` and ``inf`` are refused by
    the range check."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def check_pool_settings(max_connections: object, pool_timeout_s: object) -> None:
    """Refuse pool settings redis-py would misread: it turns ``max_connections=0`` into its default
    of 100 and waits forever on ``timeout=None``. Used for options given in code; the environment's
    values are checked by ``int_env``/``float_env`` against the same ranges."""
    low, high = MAX_CONNECTIONS_RANGE
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not low <= max_connections <= high:
        raise ConfigError(f"max_connections must be a whole number between {low} and {high}, got {max_connections!r}")
    low_s, high_s = POOL_TIMEOUT_S_RANGE
    if (isinstance(pool_timeout_s, bool) or not isinstance(pool_timeout_s, (int, float))
            or not low_s <= pool_timeout_s <= high_s):
        raise ConfigError(f"pool_timeout_s must be a number of seconds between {low_s:g} and {high_s:g}, "
                          f"got {pool_timeout_s!r}")


@dataclass(frozen=True)
class Settings:
    prefix: str = "quota"
    credit_nano: int = DEFAULT_CREDIT_NANO
    dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S
    history_months: int = 12
    prices: PriceTable = field(default_factory=PriceTable)
    redis_url: str | None = None
    history_url: str = DEFAULT_HISTORY_URL
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S

    def __post_init__(self) -> None:
        check_pool_settings(self.max_connections, self.pool_timeout_s)

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
            max_connections=int_env(env, "QUOTA_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS,
                                    low=MAX_CONNECTIONS_RANGE[0], high=MAX_CONNECTIONS_RANGE[1]),
            pool_timeout_s=float_env(env, "QUOTA_POOL_TIMEOUT_S", DEFAULT_POOL_TIMEOUT_S,
                                     low=POOL_TIMEOUT_S_RANGE[0], high=POOL_TIMEOUT_S_RANGE[1]),
        )
