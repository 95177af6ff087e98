"""The API's settings, read from the environment in one place.

| variable               | default            | meaning                                                   |
|------------------------|--------------------|-----------------------------------------------------------|
| QUOTA_ENV              | production         | ``development`` makes up missing secrets (per process)    |
| QUOTA_ADMIN_TOKEN      | (required)         | bearer token that may do everything                       |
| QUOTA_SERVICE_TOKEN    | (required)         | bearer token of agent workers: record, check, read        |
| QUOTA_SECRET_KEY       | (required)         | signs per-user tokens (``quota token USER``)              |
| QUOTA_ADMIN_TOKEN_PREVIOUS, QUOTA_SERVICE_TOKEN_PREVIOUS | unset | the token being rotated out: accepted too  |
| QUOTA_MAX_BODY_BYTES   | 1048576            | larger request bodies get 413                             |
| QUOTA_MAX_BATCH        | 1000               | most records in one ``POST /v1/usage``                    |
| QUOTA_DEMO             | on in development  | serve ``/demo`` and ``POST /demo/turn``                   |
| QUOTA_PANEL_REFRESH_S  | 5                  | how often the panel polls the API                         |

plus the library's own (``REDIS_URL``, ``QUOTA_PREFIX``, ``QUOTA_MONTHLY_CREDIT``, ... see
``quota._config``). Outside development mode a missing or short secret is a ``ConfigError``: the
server refuses to start rather than run with a guessable token.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from quota import ConfigError, Settings
from quota._config import int_env
from quota._tokens import MIN_SECRET_CHARS

SECRET_NAMES = ("QUOTA_ADMIN_TOKEN", "QUOTA_SERVICE_TOKEN", "QUOTA_SECRET_KEY")
# Rotation: the value being replaced stays valid beside the new one until it is removed.
PREVIOUS_NAMES = ("QUOTA_ADMIN_TOKEN_PREVIOUS", "QUOTA_SERVICE_TOKEN_PREVIOUS")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


@dataclass(frozen=True)
class ApiSettings:
    admin_token: str
    service_token: str
    secret_key: str
    development: bool = False
    max_body_bytes: int = 1 << 20
    max_batch: int = 1000
    demo_enabled: bool = False
    panel_refresh_s: int = 5
    quota: Settings = field(default_factory=Settings)
    generated: tuple[str, ...] = ()  # names of secrets made up in development mode
    history_url_set: bool = True  # QUOTA_HISTORY_URL was given (else the default SQLite file)
    admin_token_previous: str | None = None  # rotation: the admin token being replaced
    service_token_previous: str | None = None

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return (
            f"ApiSettings(development={self.development}, demo_enabled={self.demo_enabled}, "
            f"max_body_bytes={self.max_body_bytes}, max_batch={self.max_batch}, secrets=<hidden>)"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        mode = (env.get("QUOTA_ENV") or "production").strip().lower()
        if mode not in ("production", "development"):
            raise ConfigError(f"QUOTA_ENV must be production or development, got {mode!r}")
        development = mode == "development"
        values: dict[str, str] = {}
        generated = []
        for name in SECRET_NAMES:
            value = env.get(name) or ""
            if not value and development:
                value = secrets.token_urlsafe(32)
                generated.append(name)
            if len(value) < MIN_SECRET_CHARS:
                problem = "is not set" if not value else f"is shorter than {MIN_SECRET_CHARS} characters"
                raise ConfigError(
                    f"{name} {problem}: set {', '.join(SECRET_NAMES)} (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`), or run in development mode (QUOTA_ENV=development "
                    "or `quota serve --dev`)"
                )
            values[name] = value
        for name in PREVIOUS_NAMES:
            value = env.get(name) or ""
            if value and len(value) < MIN_SECRET_CHARS:
                raise ConfigError(f"{name} is shorter than {MIN_SECRET_CHARS} characters")
            values[name] = value
        admin = {values["QUOTA_ADMIN_TOKEN"], values["QUOTA_ADMIN_TOKEN_PREVIOUS"]} - {""}
        service = {values["QUOTA_SERVICE_TOKEN"], values["QUOTA_SERVICE_TOKEN_PREVIOUS"]} - {""}
        if admin & service:
            raise ConfigError(
                "QUOTA_ADMIN_TOKEN and QUOTA_SERVICE_TOKEN must differ (their _PREVIOUS values included): "
                "a token must name one role"
            )
        return cls(
            admin_token=values["QUOTA_ADMIN_TOKEN"],
            service_token=values["QUOTA_SERVICE_TOKEN"],
            secret_key=values["QUOTA_SECRET_KEY"],
            development=development,
            max_body_bytes=int_env(env, "QUOTA_MAX_BODY_BYTES", 1 << 20, low=1024, high=1 << 30),
            max_batch=int_env(env, "QUOTA_MAX_BATCH", 1000, low=1, high=100_000),
            demo_enabled=_flag(env, "QUOTA_DEMO", development),
            panel_refresh_s=int_env(env, "QUOTA_PANEL_REFRESH_S", 5, low=1, high=3600),
            quota=Settings.from_env(env),
            generated=tuple(generated),
            history_url_set=bool(env.get("QUOTA_HISTORY_URL")),
            admin_token_previous=values["QUOTA_ADMIN_TOKEN_PREVIOUS"] or None,
            service_token_previous=values["QUOTA_SERVICE_TOKEN_PREVIOUS"] or None,
        )
