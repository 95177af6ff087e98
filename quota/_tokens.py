"""Per-user API tokens: signed, self-contained, with the user, an expiry and the issue time inside.

A user token is ``itsdangerous.URLSafeSerializer(secret).dumps({"u": user, "exp": epoch_s,
"iat_ms": epoch_ms})`` with HMAC-SHA256: anyone can read the payload (it is base64 JSON, not
encrypted), nobody without ``QUOTA_SECRET_KEY`` can forge or alter it, and the server needs no
token store. The expiry is carried in the token (chosen at minting) rather than passed at
verification, so a token says by itself how long it is good for. Rotating ``QUOTA_SECRET_KEY``
revokes every user token at once.

One user's tokens are revoked without touching the key by a "valid after" instant in Redis,
``<prefix>:{<user>}:tokens_valid_after`` (milliseconds; under the user's hash tag, beside their
months): a token issued at or before it is refused, one minted afterwards works
(:func:`revoke_user_tokens`, ``quota token --revoke USER``, ``POST /v1/users/USER/tokens/revoke``).
The issue time is in milliseconds so that a token minted a moment after a revocation is not
caught by it; a token from before issue times were carried has none and counts as revoked as
soon as its user has a revocation. The key expires when every token it could refuse has
expired anyway (:data:`MAX_TTL_S` after it was set). Revocation compares clocks: the server's,
or the CLI's, that set it and the one that minted the token; keep them in sync (NTP).

Why itsdangerous: it is Flask's own signing library (the Pallets project; Flask's session cookie
uses it), so the API adds no dependency, its signature check is constant-time
(``hmac.compare_digest``), and unlike a JWT library it has no algorithm negotiation to get wrong:
the one algorithm is fixed here.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from ._errors import ConfigError, InvalidInput
from ._keys import KeySchema, validate_user

SALT = "quota.user-token.v1"
MIN_SECRET_CHARS = 16
MAX_TTL_S = 400 * 86400
_TTL_RE = re.compile(r"(\d{1,9})\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# What dumps() makes: [.]payload.signature in unpadded URL-safe base64 (a leading "." when zlib
# shortened the payload). itsdangerous' decoder drops non-ASCII characters and accepts padding, so
# without this check "<token>令" or "<token>==" verified as the token itself.
_TOKEN_RE = re.compile(r"\.?[A-Za-z0-9_-]{1,1024}\.[A-Za-z0-9_-]{1,128}")


VALID_AFTER_SUFFIX = "tokens_valid_after"


class InvalidToken(InvalidInput):
    """The token is malformed, not signed with our secret, expired or revoked (``expired`` and
    ``revoked`` say which)."""

    def __init__(self, message: str, *, expired: bool = False, revoked: bool = False) -> None:
        super().__init__(message)
        self.expired = expired
        self.revoked = revoked


@dataclass(frozen=True)
class UserToken:
    user: str
    expires_at_s: int  # Unix time, seconds
    issued_at_ms: int | None = None  # Unix time, milliseconds; None in tokens minted before it was carried


def parse_ttl(text: str) -> int:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` -> seconds (1 s to 400 days)."""
    match = _TTL_RE.fullmatch(str(text).strip().lower())
    if not match:
        raise InvalidInput(f"ttl must look like 90s, 15m, 1h or 7d, got {text!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= MAX_TTL_S:
        raise InvalidInput(f"ttl must be from 1 s to 400 days, got {text!r}")
    return seconds


@lru_cache(maxsize=8)
def _serializer(secret_key: str) -> URLSafeSerializer:
    """One serializer per key, built once: building it per request cost more than the check."""
    if len(secret_key) < MIN_SECRET_CHARS:
        raise InvalidInput(f"the secret key must have at least {MIN_SECRET_CHARS} characters")
    return URLSafeSerializer(secret_key, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})


def mint_user_token(secret_key: str, user: str, ttl_s: int, *, now_s: float | None = None) -> str:
    """A token that lets ``user`` read their own stats and quota for ``ttl_s`` seconds."""
    user = validate_user(user)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise InvalidInput(f"ttl_s must be an int from 1 to {MAX_TTL_S}")
    now = time.time() if now_s is None else now_s
    return _serializer(secret_key).dumps({"u": user, "exp": int(now) + ttl_s, "iat_ms": int(now * 1000)})


def panel_url(base_url: str, user: str, token: str) -> str:
    """``<base_url>/panel#user=<user>&token=<token>``, the user id percent-encoded
    (``urllib.parse.quote(user, safe="")``: ``alice+work@corp.com`` -> ``alice%2Bwork%40corp.com``,
    which the panel decodes back, "+" included). Both ride in the fragment, which browsers never
    send to a server, so the token stays out of access logs."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(
            f"base_url must be the service's http(s) URL, like https://quota.example.com, got {base_url!r}"
        )
    return f"{base_url.rstrip('/')}/panel#user={quote(user, safe='')}&token={token}"


def panel_link(
    base_url: str, user: str, *, secret_key: str | None = None, ttl_s: int = 3600, now_s: float | None = None
) -> str:
    """A link that opens ``user``'s token statistics panel on the quota service at ``base_url``
    for ``ttl_s`` seconds: a fresh token (:func:`mint_user_token`) in the panel URL's fragment.

    ``secret_key`` defaults to ``QUOTA_SECRET_KEY`` from the environment, the variable the
    service itself signs with (``ConfigError`` when it is unset). Mint links in your backend for
    the user who is logged in there; the token reads that user's statistics and nothing else.
    """
    if secret_key is None:
        secret_key = os.environ.get("QUOTA_SECRET_KEY") or ""
        if not secret_key:
            raise ConfigError("QUOTA_SECRET_KEY is not set: pass secret_key= (the quota service's signing key)")
    return panel_url(base_url, user, mint_user_token(secret_key, user, ttl_s, now_s=now_s))


def verify_user_token(secret_key: str, token: str, *, now_s: float | None = None) -> UserToken:
    """The token's user and expiry; raises :class:`InvalidToken` when it is not valid now."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise InvalidToken("the token is not valid")
    try:
        payload = _serializer(secret_key).loads(token)
    except BadSignature:
        raise InvalidToken("the token is not valid") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("u"), str)
        or not _is_int(payload.get("exp"))
        or not (payload.get("iat_ms") is None or _is_int(payload["iat_ms"]))
    ):
        raise InvalidToken("the token is not valid")
    now = time.time() if now_s is None else now_s
    if now >= payload["exp"]:
        raise InvalidToken("the token has expired; mint a new one with `quota token USER`", expired=True)
    return UserToken(payload["u"], payload["exp"], payload.get("iat_ms"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- revocation -------------------------------------------------------------------------------------


def valid_after_key(prefix: str, user: str) -> str:
    """``<prefix>:{<user>}:tokens_valid_after``: the user's hash tag, so it lives with their keys."""
    return f"{KeySchema(prefix).prefix}:{{{validate_user(user)}}}:{VALID_AFTER_SUFFIX}"


def check_not_revoked(token: UserToken, valid_after_ms: int | None) -> None:
    """Raise :class:`InvalidToken` (``revoked``) when ``token`` was issued at or before
    ``valid_after_ms`` (the user's revocation instant; None: never revoked)."""
    if valid_after_ms is None:
        return
    if token.issued_at_ms is None or token.issued_at_ms <= valid_after_ms:
        raise InvalidToken("the token was revoked; mint a new one with `quota token USER`", revoked=True)


def revoke_user_tokens(client: Any, prefix: str, user: str, *, now_s: float | None = None) -> int:
    """Revoke every token of ``user`` issued until now; the instant (Unix ms) stored.

    ``client`` is a sync redis-py client (standalone or cluster). Tokens minted afterwards work.
    Raises ``StorageUnavailable`` when Redis does not answer.
    """
    from ._connect import describe_client, storage_errors  # redis-py only when revoking

    key = valid_after_key(prefix, user)
    at_ms = int((time.time() if now_s is None else now_s) * 1000)
    with storage_errors(describe_client(client)):
        client.set(key, at_ms, px=(MAX_TTL_S + 86400) * 1000)  # then every token it refuses has expired
    return at_ms


def iso_ms(at_ms: int) -> str:
    """``2026-01-15T12:00:00.123Z``: a revocation instant as the API and the CLI show it."""
    at = datetime.fromtimestamp(at_ms // 1000, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def tokens_valid_after_ms(client: Any, prefix: str, user: str) -> int | None:
    """The user's revocation instant (Unix ms), or None when their tokens were never revoked.

    One GET per request made with a user token; admin and service tokens never read it."""
    from ._connect import describe_client, storage_errors

    with storage_errors(describe_client(client)):
        raw = client.get(valid_after_key(prefix, user))
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:  # not ours to guess: treat every token as revoked until an admin resets it
        return 2**63 - 1
