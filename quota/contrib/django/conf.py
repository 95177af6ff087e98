"""The ``QUOTA`` setting: one dict in settings.py, the single source of the app's configuration.

::

    QUOTA = {
        "REDIS_URL": "redis://localhost:6379/0",
        "MONTHLY_CREDIT": "5",                       # CNY
        "PRICES_FILE": BASE_DIR / "prices.toml",
        "SPOOL": "/var/lib/chat/quota.spool",
        "USER_ID": "accounts.quota.user_id",         # optional hooks, dotted paths
        "CUSTOM_MODELS": "accounts.quota.custom_models",
    }

Three kinds of keys:

- **Library settings**: the environment variables of ``quota._config`` without ``QUOTA_``
  (``REDIS_URL`` keeps its name): ``PREFIX``, ``MONTHLY_CREDIT``, ``HOLD_TTL_S``, ``TURN_HOLD``,
  ``MAX_CONNECTIONS``, ... The list is read from ``quota.Settings.from_env`` itself (the names it
  looks up, :data:`ENV_NAMES`), so it cannot drift from the library; the values are parsed and
  validated by ``Settings.from_env``, exactly as the environment's would be. The process
  environment is **not** read: a project that wants it writes ``os.environ[...]`` into QUOTA.
- **Meter options**: ``SPOOL`` (a path; default none: records made while Redis is away are kept
  in memory) and ``ON_UNAVAILABLE`` (``"allow"``/``"deny"``), passed to ``Meter.from_url``.
- **Hooks** (dotted paths to callables): ``USER_ID`` (user -> quota user id, default
  ``str(user.pk)``), ``MODEL_RESOLVER`` ((user, requested id) -> the id to meter) and
  ``CUSTOM_MODELS`` (user -> the ids of the user's own models); see :mod:`.hooks`.

An unknown key (``"CREDIT"``) is an error that names the known ones: reported by the system
check (``quota.E001``), raised as :class:`QuotaSettingsError` by the first ``get_meter()``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from quota import ConfigError, Settings
from quota._config import did_you_mean

SETTING = "QUOTA"
ENV_PREFIX = "QUOTA_"


class QuotaSettingsError(ImproperlyConfigured, ConfigError):
    """``settings.QUOTA`` is invalid. Both a Django ``ImproperlyConfigured`` and a
    ``quota.ConfigError``; ``check_id`` is the system check that reports it."""

    def __init__(self, message: str, *, check_id: str = "quota.E002", hint: str | None = None) -> None:
        super().__init__(message)
        self.check_id = check_id
        self.hint = hint


class _ReadLog(dict[str, Any]):
    """An empty environment that notes every name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def _note(self, key: object) -> None:
        if isinstance(key, str) and key not in self.names:
            self.names.append(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return default

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return False


def _library_env_names() -> list[str]:
    """The environment variables ``Settings.from_env`` reads, in its order: asked of the library
    itself (an empty environment that notes what is looked up), never listed here by hand."""
    log = _ReadLog()
    Settings.from_env(log)
    return log.names


# QUOTA key -> the environment variable it stands for: "MONTHLY_CREDIT" -> "QUOTA_MONTHLY_CREDIT".
ENV_NAMES: dict[str, str] = {name.removeprefix(ENV_PREFIX): name for name in _library_env_names()}
# Meter options that are not Settings (keyword arguments of Meter.from_url). Should the library
# one day read them from the environment too, they go that way instead (see ``load``).
METER_OPTIONS: dict[str, str] = {"SPOOL": "spool", "ON_UNAVAILABLE": "on_unavailable"}
HOOK_DEFAULTS: dict[str, str | None] = {
    "USER_ID": "quota.contrib.django.hooks.default_user_id",
    "MODEL_RESOLVER": "quota.contrib.django.hooks.default_model_resolver",
    "CUSTOM_MODELS": None,
}


def known_keys() -> list[str]:
    return sorted({*ENV_NAMES, *METER_OPTIONS, *HOOK_DEFAULTS})


@dataclass(frozen=True)
class QuotaSettings:
    """``settings.QUOTA``, parsed: the library's ``Settings``, the meter options and the hooks."""

    settings: Settings
    meter_options: dict[str, Any] = field(default_factory=dict)
    user_id: Callable[[Any], str] = str
    model_resolver: Callable[[Any, Any], str] = str
    custom_models: Callable[[Any], Any] | None = None

    @property
    def redis_url(self) -> str | None:
        return self.settings.redis_url


_lock = threading.Lock()
_cached: QuotaSettings | None = None


def quota_settings() -> QuotaSettings:
    """``settings.QUOTA`` parsed once per process (again after ``override_settings(QUOTA=...)``)."""
    global _cached
    found = _cached
    if found is None:
        with _lock:
            found = _cached = _cached or load(getattr(django_settings, SETTING, None))
    return found


def reset() -> None:
    """Forget the parsed settings (the ``setting_changed`` receiver calls this)."""
    global _cached
    with _lock:
        _cached = None


def load(raw: Any) -> QuotaSettings:
    """Parse a ``QUOTA`` dict; raises :class:`QuotaSettingsError` naming the key at fault."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise QuotaSettingsError(f"settings.QUOTA must be a dict, got {type(raw).__name__}", check_id="quota.E001")
    unknown = sorted(str(k) for k in raw if k not in ENV_NAMES and k not in METER_OPTIONS and k not in HOOK_DEFAULTS)
    if unknown:
        raise QuotaSettingsError(
            _unknown_message(unknown),
            check_id="quota.E001",
            hint="QUOTA's keys are quota's environment variables without QUOTA_ (docs/DJANGO.md, 'Settings')",
        )
    env = {
        ENV_NAMES[key]: text
        for key, value in raw.items()
        if key in ENV_NAMES and (text := _env_text(key, value)) is not None
    }
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        raise QuotaSettingsError(_in_quota_terms(str(exc))) from None
    options = {
        option: raw[key]
        for key, option in METER_OPTIONS.items()
        if key in raw and key not in ENV_NAMES and raw[key] is not None
    }
    if "SPOOL" in raw and raw["SPOOL"] is not None and not isinstance(raw["SPOOL"], (str, os.PathLike)):
        raise QuotaSettingsError(f"QUOTA['SPOOL'] must be a path, got {type(raw['SPOOL']).__name__}")
    hooks = {key: _hook(key, raw.get(key) or default) for key, default in HOOK_DEFAULTS.items()}
    return QuotaSettings(settings, options, hooks["USER_ID"], hooks["MODEL_RESOLVER"], hooks["CUSTOM_MODELS"])


def _unknown_message(unknown: list[str]) -> str:
    parts = []
    for key in unknown:
        hint = did_you_mean(key, known_keys())
        if not hint and key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX) in ENV_NAMES:
            hint = did_you_mean(key.removeprefix(ENV_PREFIX), [key.removeprefix(ENV_PREFIX)])
        parts.append(f"{key!r}{hint}")
    return f"settings.QUOTA has unknown key(s) {', '.join(parts)}; the known keys are {', '.join(known_keys())}"


def _env_text(key: str, value: Any) -> str | None:
    """A QUOTA value as the environment would hold it; None leaves the library's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal, os.PathLike)):
        raise QuotaSettingsError(f"QUOTA[{key!r}] must be a string or a number, got {type(value).__name__}")
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


_ENV_NAME_RE = re.compile(r"\b(?:QUOTA_[A-Z0-9_]+|REDIS_URL)\b")


def _in_quota_terms(message: str) -> str:
    """The library's message about ``QUOTA_MONTHLY_CREDIT`` in the terms of this setting."""
    by_env = {env: key for key, env in ENV_NAMES.items()}
    return _ENV_NAME_RE.sub(lambda m: f"QUOTA[{by_env[m.group(0)]!r}]" if m.group(0) in by_env else m.group(0), message)


def _hook(key: str, path: Any) -> Any:
    if path is None:
        return None
    if callable(path):
        return path
    if not isinstance(path, str):
        raise QuotaSettingsError(
            f"QUOTA[{key!r}] must be a dotted path to a callable, got {type(path).__name__}", check_id="quota.E003"
        )
    try:
        hook = import_string(path)
    except ImportError as exc:
        raise QuotaSettingsError(
            f"QUOTA[{key!r}] = {path!r} cannot be imported: {exc}", check_id="quota.E003"
        ) from None
    if not callable(hook):
        raise QuotaSettingsError(f"QUOTA[{key!r}] = {path!r} is not callable", check_id="quota.E003")
    return hook
