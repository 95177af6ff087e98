"""Settings, read from the environment in one place.

| variable                 | default                          | meaning                                  |
|--------------------------|----------------------------------|------------------------------------------|
| REDIS_URL                | (none: `quota demo/serve` start a local server) | where the live months are |
| QUOTA_PREFIX             | quota                            | key prefix                               |
| QUOTA_MONTHLY_CREDIT     | 5                                | default monthly credit, CNY              |
| QUOTA_DEDUPE_TTL_S       | 86400                            | how long a request_id is remembered      |
| QUOTA_PRICES_FILE        | (built-in table)                 | TOML price file, see quota._prices        |
| QUOTA_HISTORY_URL        | sqlite:///quota-history.db       | SQL history store                        |
| QUOTA_HISTORY_MONTHS     | 12                               | months of history in get_token_stats     |
| QUOTA_HOLD_TTL_S         | 600                              | a turn hold dies this long after last use |
| QUOTA_TURN_HOLD          | auto                             | a turn's hold, CNY, or `auto` (learned)  |
| QUOTA_TURN_HOLD_DEFAULT  | 0.1                              | `auto` before a user's first turn on a model, CNY |
| QUOTA_TURN_HOLD_FLOOR    | 0.01                             | `auto` never holds less, CNY             |
| QUOTA_TURN_HOLD_CAP      | 1                                | `auto` never holds more, CNY             |
| QUOTA_MAX_CONNECTIONS    | 50                               | connections per node; more callers queue |
| QUOTA_POOL_TIMEOUT_S     | 5                                | seconds a caller waits for a connection  |
| QUOTA_REPORT_CACHE_S     | 30                               | a month report is reused this long (0: never) |
| QUOTA_REPORT_REDIS_SHARE | 1                                | share of Redis a live report may take |
| QUOTA_ALERT_THRESHOLDS   | 80,100                           | alert at these percents of the credit (`off`) |
| QUOTA_AUTO_PIPELINE      | on                               | AsyncMeter sends concurrent calls together (`off`) |
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from ._errors import ConfigError
from ._keys import validate_prefix
from ._money import cny_to_nano
from ._prices import PriceTable

N = TypeVar("N", int, float)

DEFAULT_CREDIT_NANO = 5_000_000_000
DEFAULT_DEDUPE_TTL_S = 24 * 3600
DEFAULT_HISTORY_URL = "sqlite:///quota-history.db"
DEFAULT_HOLD_TTL_S = 600
DEFAULT_TURN_HOLD_NANO = 100_000_000  # 0.1 CNY: about 5 large DeepSeek calls
DEFAULT_TURN_HOLD_FLOOR_NANO = 10_000_000  # 0.01 CNY
DEFAULT_TURN_HOLD_CAP_NANO = 1_000_000_000  # 1 CNY
MAX_HOLD_NANO = 10**16  # 10 million CNY; holds stay exact below 2^53 in Lua

# Connection pools (see quota._connect): a caller beyond MAX_CONNECTIONS busy connections waits up
# to POOL_TIMEOUT_S for one instead of failing. 50 per node is half of redis-py's own default (100,
# which it fails past): an event loop or a worker seldom gains from more than a few dozen
# concurrent commands on one node, and a fleet of workers must stay under Redis's maxclients.
DEFAULT_MAX_CONNECTIONS = 50
MAX_CONNECTIONS_RANGE = (1, 10_000)
DEFAULT_POOL_TIMEOUT_S = 5.0
POOL_TIMEOUT_S_RANGE = (0.01, 600.0)
# A month report (quota._report) reads every user-month of the month: the meter keeps it this long
# so that the pages of one listing, a summary and its CSV link do not each read a million hashes.
DEFAULT_REPORT_CACHE_S = 30.0
REPORT_CACHE_S_RANGE = (0.0, 86_400.0)
# How much of Redis's time a live month report may take: after each page it pauses long enough
# that its round trips fill at most this share of the time (1: no pause). A report costs Redis
# about 3 µs per user-month (bench/report.py), so at 1 a million user-months take some 30 % of
# a Redis core for 10 s; at 0.2 a fifth of it for about 15 s.
DEFAULT_REPORT_REDIS_SHARE = 1.0
REPORT_REDIS_SHARE_RANGE = (0.01, 1.0)

# Threshold alerts (docs/ALERTS.md): whole percents of the month's credit. Above 100 is allowed (records
# are never refused, so spend can pass the credit); at most MAX_ALERT_THRESHOLDS, each once.
DEFAULT_ALERT_THRESHOLDS = (80, 100)
ALERT_PERCENT_RANGE = (1, 1000)
MAX_ALERT_THRESHOLDS = 10


def _number_env(
    env: Mapping[str, str], name: str, parse: Callable[[str], N], what: str, default: N, low: N, high: N
) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:  # nan fails this too
        shown = raw if parse is float else value  # as written (0.010), or the whole number it is
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {shown!r}")
    return value


def int_env(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    """A whole-number setting from ``env``, within ``low``..``high``."""
    return _number_env(env, name, int, "a whole number", default, low, high)


def float_env(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """A real-number setting (seconds, say) from ``env``; ``nan`` and ``inf`` fail the range check."""
    return _number_env(env, name, float, "a number", default, low, high)


def bool_env(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A switch from ``env``: on/off, true/false, yes/no, 1/0 (any case); unset or empty: ``default``."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false, yes/no), got {raw!r}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'monthly_credit'?)`` when a known name is close to ``name``, else ``""``.
    The one rule for every "unknown option" message (Meter options, Django's QUOTA keys)."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_pool_settings(max_connections: object, pool_timeout_s: object) -> None:
    """Refuse pool settings redis-py would misread: it turns ``max_connections=0`` into its default
    of 100 and waits forever on ``timeout=None``. Used for options given in code; the environment's
    values are checked by ``int_env``/``float_env`` against the same ranges."""
    low, high = MAX_CONNECTIONS_RANGE
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not low <= max_connections <= high:
        raise ConfigError(f"max_connections must be a whole number between {low} and {high}, got {max_connections!r}")
    low_s, high_s = POOL_TIMEOUT_S_RANGE
    if (
        isinstance(pool_timeout_s, bool)
        or not isinstance(pool_timeout_s, (int, float))
        or not low_s <= pool_timeout_s <= high_s
    ):
        raise ConfigError(
            f"pool_timeout_s must be a number of seconds between {low_s:g} and {high_s:g}, got {pool_timeout_s!r}"
        )


@dataclass(frozen=True)
class Settings:
    prefix: str = "quota"
    credit_nano: int = DEFAULT_CREDIT_NANO
    dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S
    history_months: int = 12
    prices: PriceTable = field(default_factory=PriceTable)
    redis_url: str | None = None
    history_url: str = DEFAULT_HISTORY_URL
    hold_ttl_s: int = DEFAULT_HOLD_TTL_S
    turn_hold_nano: int | None = None  # None: "auto"
    turn_hold_default_nano: int = DEFAULT_TURN_HOLD_NANO
    turn_hold_floor_nano: int = DEFAULT_TURN_HOLD_FLOOR_NANO
    turn_hold_cap_nano: int = DEFAULT_TURN_HOLD_CAP_NANO
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S
    report_cache_s: float = DEFAULT_REPORT_CACHE_S
    report_redis_share: float = DEFAULT_REPORT_REDIS_SHARE
    alert_thresholds: tuple[int, ...] = DEFAULT_ALERT_THRESHOLDS  # (): no alerts
    # AsyncMeter: calls made concurrently on one event loop go out as one pipeline per node
    # (quota/_async/_pipeline.py). The sync Meter has no event loop and sends each call alone.
    auto_pipeline: bool = True

    def __post_init__(self) -> None:
        check_pool_settings(self.max_connections, self.pool_timeout_s)
        low, high = REPORT_CACHE_S_RANGE
        if isinstance(self.report_cache_s, bool) or not low <= self.report_cache_s <= high:
            raise ConfigError(f"report_cache_s must be from {low:g} to {high:g} seconds, got {self.report_cache_s!r}")
        low, high = REPORT_REDIS_SHARE_RANGE
        if isinstance(self.report_redis_share, bool) or not low <= self.report_redis_share <= high:
            raise ConfigError(f"report_redis_share must be from {low:g} to {high:g}, got {self.report_redis_share!r}")
        given: object = self.alert_thresholds
        if isinstance(given, list):  # a list given in code: kept as a tuple (hashable, frozen)
            object.__setattr__(self, "alert_thresholds", tuple(given))
        check_alert_thresholds(self.alert_thresholds)
        if not isinstance(self.auto_pipeline, bool):
            raise ConfigError(f"auto_pipeline must be True or False, got {self.auto_pipeline!r}")
        if not 1 <= self.hold_ttl_s <= 7 * 86400:
            raise ConfigError(f"hold_ttl_s must be from 1 to {7 * 86400} seconds, got {self.hold_ttl_s}")
        for name in ("turn_hold_nano", "turn_hold_default_nano", "turn_hold_floor_nano", "turn_hold_cap_nano"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_HOLD_NANO:
                raise ConfigError(f"{name} must be from 0 to {MAX_HOLD_NANO}, got {value}")
        if self.turn_hold_floor_nano > self.turn_hold_cap_nano:
            raise ConfigError("the turn hold floor (QUOTA_TURN_HOLD_FLOOR) is above its cap (QUOTA_TURN_HOLD_CAP)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
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
            hold_ttl_s=int_env(env, "QUOTA_HOLD_TTL_S", DEFAULT_HOLD_TTL_S, low=1, high=7 * 86400),
            turn_hold_nano=turn_hold_env(env),
            turn_hold_default_nano=cny_env(env, "QUOTA_TURN_HOLD_DEFAULT", DEFAULT_TURN_HOLD_NANO),
            turn_hold_floor_nano=cny_env(env, "QUOTA_TURN_HOLD_FLOOR", DEFAULT_TURN_HOLD_FLOOR_NANO),
            turn_hold_cap_nano=cny_env(env, "QUOTA_TURN_HOLD_CAP", DEFAULT_TURN_HOLD_CAP_NANO),
            max_connections=int_env(
                env,
                "QUOTA_MAX_CONNECTIONS",
                DEFAULT_MAX_CONNECTIONS,
                low=MAX_CONNECTIONS_RANGE[0],
                high=MAX_CONNECTIONS_RANGE[1],
            ),
            pool_timeout_s=float_env(
                env,
                "QUOTA_POOL_TIMEOUT_S",
                DEFAULT_POOL_TIMEOUT_S,
                low=POOL_TIMEOUT_S_RANGE[0],
                high=POOL_TIMEOUT_S_RANGE[1],
            ),
            report_cache_s=float_env(
                env,
                "QUOTA_REPORT_CACHE_S",
                DEFAULT_REPORT_CACHE_S,
                low=REPORT_CACHE_S_RANGE[0],
                high=REPORT_CACHE_S_RANGE[1],
            ),
            report_redis_share=float_env(
                env,
                "QUOTA_REPORT_REDIS_SHARE",
                DEFAULT_REPORT_REDIS_SHARE,
                low=REPORT_REDIS_SHARE_RANGE[0],
                high=REPORT_REDIS_SHARE_RANGE[1],
            ),
            alert_thresholds=alert_thresholds_env(env),
            auto_pipeline=bool_env(env, "QUOTA_AUTO_PIPELINE", True),
        )


def cny_env(env: Mapping[str, str], name: str, default_nano: int) -> int:
    """An amount in CNY from the environment, as nano-CNY."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default_nano
    try:
        return cny_to_nano(raw, what=name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def turn_hold_env(env: Mapping[str, str]) -> int | None:
    """QUOTA_TURN_HOLD: ``auto`` (None) or an amount in CNY."""
    raw = env.get("QUOTA_TURN_HOLD")
    if raw is None or raw.strip().lower() in ("", "auto"):
        return None
    return cny_env(env, "QUOTA_TURN_HOLD", 0)


def check_alert_thresholds(thresholds: object) -> None:
    """Refuse what the scripts could not keep: the thresholds must be a strictly ascending tuple of
    whole percents in ALERT_PERCENT_RANGE, at most MAX_ALERT_THRESHOLDS of them."""
    low, high = ALERT_PERCENT_RANGE
    if (
        not isinstance(thresholds, tuple)
        or len(thresholds) > MAX_ALERT_THRESHOLDS
        or any(isinstance(t, bool) or not isinstance(t, int) or not low <= t <= high for t in thresholds)
        or list(thresholds) != sorted(set(thresholds))
    ):
        raise ConfigError(
            f"alert_thresholds must be at most {MAX_ALERT_THRESHOLDS} distinct whole percents from {low} to {high}, "
            f"ascending, e.g. (80, 100); got {thresholds!r}"
        )


def alert_thresholds_env(env: Mapping[str, str]) -> tuple[int, ...]:
    """QUOTA_ALERT_THRESHOLDS: percents of the credit, e.g. ``80,100`` (sorted here; ``%`` signs and
    spaces allowed), or ``off`` / ``none`` for no alerts. Unset or empty: the default, 80,100."""
    raw = env.get("QUOTA_ALERT_THRESHOLDS")
    if raw is None or not raw.strip():
        return DEFAULT_ALERT_THRESHOLDS
    if raw.strip().lower() in ("off", "none", "0"):
        return ()
    parts = [p.strip().removesuffix("%").strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ConfigError(f"QUOTA_ALERT_THRESHOLDS must be whole percents like 80,100 (or off), got {raw!r}")
    values = sorted(int(p) for p in parts)
    if len(set(values)) != len(values):
        raise ConfigError(f"QUOTA_ALERT_THRESHOLDS lists a percent twice: {raw!r}")
    thresholds = tuple(values)
    try:
        check_alert_thresholds(thresholds)
    except ConfigError as exc:
        raise ConfigError(f"QUOTA_ALERT_THRESHOLDS: {exc}") from None
    return thresholds
