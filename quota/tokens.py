"""Per-user API tokens: signed, self-contained, with the user and an expiry inside.

A user token is ``itsdangerous.URLSafeSerializer(secret).dumps({"u": user, "exp": epoch_s})``
with HMAC-SHA256: anyone can read the payload (it is base64 JSON, not encrypted), nobody without
``QUOTA_SECRET_KEY`` can forge or alter it, and the server needs no token store. The expiry is
carried in the token (chosen at minting) rather than passed at verification, so a token says by
itself how long it is good for. Rotating ``QUOTA_SECRET_KEY`` revokes every user token at once.

Why itsdangerous: it is Flask's own signing library (the Pallets project; Flask's session cookie
uses it), so the API adds no dependency, its signature check is constant-time
(``hmac.compare_digest``), and unlike a JWT library it has no algorithm negotiation to get wrong:
the one algorithm is fixed here.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from functools import lru_cache

from itsdangerous import BadSignature, URLSafeSerializer

from .errors import InvalidInput
from .keys import validate_user

SALT = "quota.user-token.v1"
MIN_SECRET_CHARS = 16
MAX_TTL_S = 400 * 86400
_TTL_RE = re.compile(r"(\d{1,9})\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# What dumps() makes: [.]payload.signature in unpadded URL-safe base64 (a leading "." when zlib
# shortened the payload). itsdangerous' decoder drops non-ASCII characters and accepts padding, so
# without this check "<token>令" or "<token>==" verified as the token itself.
_TOKEN_RE = re.compile(r"\.?[A-Za-z0-9_-]{1,1024}\.[A-Za-z0-9_-]{1,128}")


class InvalidToken(InvalidInput):
    """The token is malformed, not signed with our secret, or expired (``expired`` says which)."""

    def __init__(self, message: str, *, expired: bool = False):
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class UserToken:
    user: str
    expires_at_s: int  # Unix time, seconds


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
    return _serializer(secret_key).dumps({"u": user, "exp": int(now) + ttl_s})


def verify_user_token(secret_key: str, token: str, *, now_s: float | None = None) -> UserToken:
    """The token's user and expiry; raises :class:`InvalidToken` when it is not valid now."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise InvalidToken("the token is not valid")
    try:
        payload = _serializer(secret_key).loads(token)
    except BadSignature:
        raise InvalidToken("the token is not valid") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), str) \
            or isinstance(payload.get("exp"), bool) or not isinstance(payload.get("exp"), int):
        raise InvalidToken("the token is not valid")
    now = time.time() if now_s is None else now_s
    if now >= payload["exp"]:
        raise InvalidToken("the token has expired; mint a new one with `quota token USER`", expired=True)
    return UserToken(payload["u"], payload["exp"])
