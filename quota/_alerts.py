"""Threshold alerts as webhooks, with no I/O: the events in the outbox, the webhook's body and
signature, the retry schedule, and the script calls of the notifier (docs/ALERTS.md).

The record script decides a crossing and writes the event into the user's outbox in the same step
(``quota/lua/lib/alerts.lua``); ``quota notify`` (``quota._notify``) claims due events under a
lease, POSTs them signed as the Standard Webhooks specification says, and settles each one:
delivered, retried after a backoff, or dead after 24 hours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from . import _scripts as scripts
from ._config import float_env
from ._core import ScriptCall
from ._errors import ConfigError
from ._keys import KeySchema, iso_z, next_month_start
from ._money import nano_to_json

EVENT_TYPES = {"crossed": "quota.threshold_crossed", "cleared": "quota.threshold_cleared"}
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # Standard Webhooks: between 24 and 64 bytes
MAX_SECRET_BYTES = 64

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_BASE_S = 5.0  # the first retry comes after 2.5 to 5 s; each next one waits twice as long
DEFAULT_RETRY_CAP_S = 3600.0  # ... at most an hour
DEFAULT_RETRY_WINDOW_S = 24 * 3600  # then the event is dead (quota:{<user>}:outbox_dead)
DEFAULT_LEASE_S = 60.0  # a notifier that died mid-delivery gives its events up this long after the claim


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEvent:
    """One event of a user's outbox (or dead-letter list), as ``lib/alerts.lua`` wrote it.

    ``field`` is its name in the outbox, ``<month>:<threshold>:<kind>:<seq>``; with the key prefix and
    the user it makes the ``webhook-id`` (:attr:`webhook_id`), the same on every attempt.
    """

    prefix: str
    field: str
    kind: str  # crossed | cleared
    user: str
    month: str
    threshold: int
    seq: int
    used_nano: int
    credit_nano: int
    at_ms: int  # when the script decided it (the server's clock)
    attempts: int = 0
    due_ms: int = 0
    lease_ms: int = 0
    since_ms: int = 0  # the start of its 24 h of retries (a redelivery starts a new one)
    error: str = ""
    dead_ms: int | None = None  # dead letters only: when it died

    @classmethod
    def from_json(cls, prefix: str, field: Any, text: Any) -> AlertEvent:
        data = json.loads(_text(text))
        return cls(
            prefix=prefix,
            field=_text(field) if field is not None else str(data["field"]),
            kind=str(data["kind"]),
            user=str(data["user"]),
            month=str(data["month"]),
            threshold=int(data["threshold"]),
            seq=int(data["seq"]),
            used_nano=int(data["used_nano"]),
            credit_nano=int(data["credit_nano"]),
            at_ms=int(data["at_ms"]),
            attempts=int(data.get("attempts", 0)),
            due_ms=int(data.get("due_ms", 0)),
            lease_ms=int(data.get("lease_ms", 0)),
            since_ms=int(data.get("since_ms", data["at_ms"])),
            error=str(data.get("error", "")),
            dead_ms=int(data["dead_ms"]) if data.get("dead_ms") is not None else None,
        )

    @property
    def type(self) -> str:
        return EVENT_TYPES[self.kind]

    @property
    def webhook_id(self) -> str:
        """Stable per (user, month, threshold, crossing): a receiver dedupes on it."""
        return f"{self.prefix}:{self.user}:{self.field}"

    def payload(self) -> dict[str, Any]:
        """The webhook's body (JSON): what happened, when, to whom."""
        return {
            "type": self.type,
            "timestamp": iso_ms(self.at_ms),
            "data": {
                "user": self.user,
                "month": self.month,
                "threshold": self.threshold,
                "monthly_used": nano_to_json(self.used_nano),
                "monthly_credit": nano_to_json(self.credit_nano),
                "resets_at": iso_z(next_month_start(self.month)),
            },
        }

    def body(self) -> bytes:
        return json.dumps(self.payload(), ensure_ascii=False, separators=(",", ":")).encode()

    def as_dict(self) -> dict[str, Any]:
        """What the API and ``quota notify --status`` show of it."""
        out: dict[str, Any] = {
            "id": self.webhook_id,
            "user": self.user,
            "field": self.field,
            "type": self.type,
            "month": self.month,
            "threshold": self.threshold,
            "monthly_used": nano_to_json(self.used_nano),
            "monthly_credit": nano_to_json(self.credit_nano),
            "created_at": iso_ms(self.at_ms),
            "attempts": self.attempts,
            "next_attempt_at": iso_ms(max(self.due_ms, self.lease_ms)) if self.dead_ms is None else None,
            "last_error": self.error or None,
        }
        if self.dead_ms is not None:
            out["dead_at"] = iso_ms(self.dead_ms)
        return out


def iso_ms(ms: int) -> str:
    """Unix milliseconds as ``2026-01-15T12:00:00.123Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- signing (https://www.standardwebhooks.com) ---------------------------------------------------


def parse_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (24 to 64 bytes); ConfigError otherwise."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigError("QUOTA_WEBHOOK_SECRET must look like whsec_<base64> (see `quota notify --new-secret`)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("QUOTA_WEBHOOK_SECRET: the part after whsec_ is not base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"QUOTA_WEBHOOK_SECRET must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, it holds {len(key)}"
        )
    return key


def new_secret() -> str:
    """A fresh secret in the form receivers' libraries expect: ``whsec_`` and 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def signature(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(key, msg_id, timestamp_s, body),
    }


# --- outcomes and retries -------------------------------------------------------------------------

DELIVERED, GONE, RETRY = "delivered", "gone", "retry"


def outcome_of(status: int | None) -> str:
    """2xx: delivered; 410 Gone: the endpoint is gone (the notifier disables it); anything else,
    and no answer at all (None): retry."""
    if status is not None and 200 <= status < 300:
        return DELIVERED
    if status == 410:
        return GONE
    return RETRY


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The wait before the next attempt after ``attempt`` failed ones: exponential (base x 2^(n-1),
    at most ``cap_s``), with half of it random ("equal jitter"), so that events that failed together
    do not all come back together."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how ``quota notify`` delivers (the environment's ``QUOTA_WEBHOOK_*``)."""

    url: str
    secret: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    retry_window_s: float = DEFAULT_RETRY_WINDOW_S
    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"QUOTA_WEBHOOK_URL must be an http:// or https:// URL, got {self.url!r}")
        parse_secret(self.secret)
        if not 0 < self.timeout_s < self.lease_s:
            raise ConfigError("the webhook timeout must be positive and shorter than the lease")
        if not 0 < self.retry_base_s <= self.retry_cap_s or self.retry_window_s <= 0:
            raise ConfigError("the retry base must be positive and at most the cap; the window positive")

    def __repr__(self) -> str:  # never print the secret
        return f"WebhookSettings(url={self.endpoint!r}, secret=<hidden>)"

    @property
    def key(self) -> bytes:
        return parse_secret(self.secret)

    @property
    def endpoint(self) -> str:
        """The URL without credentials or query, for logs."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    @property
    def endpoint_digest(self) -> str:
        """Names the endpoint in Redis (its disabled flag) without writing the URL there."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSettings:
        """QUOTA_WEBHOOK_URL and QUOTA_WEBHOOK_SECRET (required); QUOTA_WEBHOOK_TIMEOUT_S,
        _RETRY_BASE_S, _RETRY_CAP_S, _RETRY_WINDOW_S and _LEASE_S (the defaults above)."""
        env = os.environ if env is None else env
        url, secret = env.get("QUOTA_WEBHOOK_URL") or "", env.get("QUOTA_WEBHOOK_SECRET") or ""
        if not url or not secret:
            raise ConfigError("set QUOTA_WEBHOOK_URL and QUOTA_WEBHOOK_SECRET (whsec_...: `quota notify --new-secret`)")
        week = 7 * 86400.0
        return cls(
            url,
            secret,
            timeout_s=float_env(env, "QUOTA_WEBHOOK_TIMEOUT_S", DEFAULT_TIMEOUT_S, low=0.1, high=300),
            retry_base_s=float_env(env, "QUOTA_WEBHOOK_RETRY_BASE_S", DEFAULT_RETRY_BASE_S, low=0.01, high=3600),
            retry_cap_s=float_env(env, "QUOTA_WEBHOOK_RETRY_CAP_S", DEFAULT_RETRY_CAP_S, low=0.01, high=week),
            retry_window_s=float_env(env, "QUOTA_WEBHOOK_RETRY_WINDOW_S", DEFAULT_RETRY_WINDOW_S, low=1, high=week),
            lease_s=float_env(env, "QUOTA_WEBHOOK_LEASE_S", DEFAULT_LEASE_S, low=1, high=3600),
        )


# --- the notifier's script calls ------------------------------------------------------------------


class OutboxCalls:
    """The script calls of the outbox for one key schema (claim, settle, redeliver)."""

    def __init__(self, keys: KeySchema) -> None:
        self.keys = keys

    def _keys(self, user: str) -> tuple[str, str, str]:
        k = self.keys
        return (k.outbox_key(user), k.outbox_index_key(user), k.dead_key(user))

    def claim(self, user: str, owner: str, lease_ms: int, max_events: int) -> ScriptCall[tuple[int, list[AlertEvent]]]:
        prefix = self.keys.prefix

        def parse(reply: Any) -> tuple[int, list[AlertEvent]]:
            now_ms, *flat = reply
            return int(now_ms), [AlertEvent.from_json(prefix, f, t) for f, t in zip(flat[0::2], flat[1::2])]

        args = (user, owner, str(lease_ms), str(max_events))
        return ScriptCall(scripts.OUTBOX_CLAIM, self._keys(user), args, parse)

    def settle(
        self, event: AlertEvent, owner: str, outcome: str, *, delay_ms: int = 0, window_ms: int = 0, error: str = ""
    ) -> ScriptCall[str]:
        """``outcome``: delivered, retry, dead or release; parse gives what was applied (see the script)."""
        args = (event.user, event.field, owner, outcome, str(delay_ms), str(window_ms), error)
        return ScriptCall(scripts.OUTBOX_SETTLE, self._keys(event.user), args, _text)

    def redeliver(self, user: str, field: str) -> ScriptCall[AlertEvent | None]:
        prefix = self.keys.prefix

        def parse(reply: Any) -> AlertEvent | None:
            return AlertEvent.from_json(prefix, field, reply) if reply else None

        return ScriptCall(scripts.OUTBOX_REDELIVER, self._keys(user), (user, field), parse)
