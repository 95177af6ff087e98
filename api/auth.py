"""Bearer-token access control.

Three kinds of caller:

| token                        | role    | may                                                      |
|------------------------------|---------|----------------------------------------------------------|
| ``QUOTA_ADMIN_TOKEN``        | admin   | everything, including ``PUT /v1/users/<u>/credit``,      |
|                              |         | grants, ``PUT /v1/users/<u>/plan``, ``.../audit``,       |
|                              |         | ``POST /v1/users/<u>/tokens/revoke``, ``/v1/alerts`` and |
|                              |         | ``/v1/admin/...`` (month reports)                        |
| ``QUOTA_SERVICE_TOKEN``      | service | record usage, check and read any user, list the models   |
| ``quota token USER`` (signed)| user    | read USER's own token-stats, quota and grants, no more   |

No or an invalid token gives 401 (``token_expired``, ``token_revoked`` when that is why); a
valid token asking for more than its role allows gives 403. A user token is checked against its
user's revocation instant in Redis (one GET; see ``quota._tokens``).
Static tokens are compared with ``hmac.compare_digest`` (constant time); each role also accepts
its ``_PREVIOUS`` token while one is set, so a token can be rotated without a moment in which
workers holding the old one are refused. Tokens are never logged
and never accepted in a URL, so they cannot end up in an access log.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from quota._tokens import InvalidToken, check_not_revoked, verify_user_token

from .errors import ApiError
from .settings import ApiSettings


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    USER = "user"


class Action(StrEnum):
    READ_USER = "read_user"  # token-stats and quota of one user
    RECORD = "record"
    SET_CREDIT = "set_credit"  # also grants and plans (issue 12)
    READ_AUDIT = "read_audit"  # a user's credit changes (admin only)
    LIST_MODELS = "list_models"
    REVOKE_TOKENS = "revoke_tokens"  # a user's tokens (admin only)
    READ_REPORTS = "read_reports"  # month reports of every user (admin only)
    MANAGE_ALERTS = "manage_alerts"  # the alert outbox: list pending and dead events, redeliver (admin only)
    ADJUST = "adjust"  # corrections of a user's month, and their list (admin only)


ALLOWED = {
    Role.ADMIN: set(Action),
    Role.SERVICE: {Action.READ_USER, Action.RECORD, Action.LIST_MODELS},
    Role.USER: {Action.READ_USER},
}


@dataclass(frozen=True)
class Principal:
    role: Role
    user: str | None = None  # for Role.USER: whose token it is

    def allows(self, action: Action, user: str | None = None) -> bool:
        if action not in ALLOWED[self.role]:
            return False
        return self.role is not Role.USER or user == self.user


def _same(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode())


def bearer_token(header: str | None) -> str:
    if not header:
        raise ApiError(
            401,
            "unauthorized",
            "this route needs a bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="quota"'},
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="quota", error="invalid_request"'},
        )
    return token


def authenticate(
    header: str | None,
    settings: ApiSettings,
    *,
    now_s: float | None = None,
    valid_after_ms: Callable[[str], int | None] | None = None,
) -> Principal:
    """The caller behind an ``Authorization`` header, or ApiError(401).

    ``valid_after_ms(user)`` gives a user's revocation instant (Unix ms, or None); it is asked
    only for a user token whose signature and expiry are good, so a forged token costs no read.
    """
    token = bearer_token(header)
    raw = token.encode("utf-8", "surrogateescape")
    # Check every static token every time (the current and the previous of both roles; an unset
    # previous one is the current one again), so timing does not tell which one came close.
    is_admin = _same(raw, settings.admin_token) | _same(raw, settings.admin_token_previous or settings.admin_token)
    is_service = _same(raw, settings.service_token) | _same(
        raw, settings.service_token_previous or settings.service_token
    )
    if is_admin:
        return Principal(Role.ADMIN)
    if is_service:
        return Principal(Role.SERVICE)
    try:
        user_token = verify_user_token(settings.secret_key, token, now_s=time.time() if now_s is None else now_s)
        if valid_after_ms is not None:
            check_not_revoked(user_token, valid_after_ms(user_token.user))
    except InvalidToken as exc:
        code = "token_expired" if exc.expired else "token_revoked" if exc.revoked else "unauthorized"
        raise ApiError(
            401,
            code,
            str(exc) if exc.expired or exc.revoked else "the token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="quota", error="invalid_token"'},
        ) from None
    return Principal(Role.USER, user_token.user)


def authorize(principal: Principal, action: Action, user: str | None = None) -> None:
    """ApiError(403) unless ``principal`` may do ``action`` (on ``user``'s data)."""
    if principal.allows(action, user):
        return
    if principal.role is Role.USER and action is Action.READ_USER:
        message = "a user token may only read its own user's data"
    else:
        message = f"a {principal.role.value} token may not {action.value.replace('_', ' ')}"
    raise ApiError(403, "forbidden", message)
