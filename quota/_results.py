"""What the operations return: small slotted dataclasses holding integer nano-CNY.

They are plain records, meant to be read (not frozen: a frozen dataclass costs about 1 us more
to build, and one is built per record on the hot path).

Amounts are kept as ``*_nano`` ints; the properties without the suffix give exact ``Decimal``
CNY, and ``as_dict()`` gives JSON-ready data (float CNY without noise, e.g. 2.35).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ._events import quota_warning_event
from ._keys import iso_z, next_month_start
from ._money import nano_to_decimal, nano_to_json


class _MonthTotals:
    """Decimal views of a month's ``monthly_used_nano`` and ``monthly_credit_nano``."""

    __slots__ = ()
    monthly_used_nano: int
    monthly_credit_nano: int

    @property
    def monthly_used(self) -> Decimal:
        return nano_to_decimal(self.monthly_used_nano)

    @property
    def monthly_credit(self) -> Decimal:
        return nano_to_decimal(self.monthly_credit_nano)

    @property
    def remaining_nano(self) -> int:
        return max(self.monthly_credit_nano - self.monthly_used_nano, 0)

    @property
    def remaining(self) -> Decimal:
        return nano_to_decimal(self.remaining_nano)

    def _totals_json(self) -> dict[str, float]:
        return {
            "monthly_used": nano_to_json(self.monthly_used_nano),
            "monthly_credit": nano_to_json(self.monthly_credit_nano),
            "remaining": nano_to_json(self.remaining_nano),
        }


@dataclass(slots=True)
class UsageResult(_MonthTotals):
    """The outcome of one ``update_token_usage``."""

    user: str
    model_id: str
    month: str
    input_tokens: int
    output_tokens: int
    cost_nano: int
    monthly_used_nano: int
    monthly_credit_nano: int
    is_system: bool
    duplicate: bool
    request_id: str
    estimated: bool = False
    hold_remaining_nano: int | None = None  # what is left of the turn's hold; None: no live hold
    # The alert thresholds (percents of the credit) this record's system spend reached first this month,
    # ascending; each has one quota.threshold_crossed event in the outbox (docs/ALERTS.md). Mostly ().
    alerts: tuple[int, ...] = ()
    # The purpose the call was counted under ("other" once the model has 8 this month); None: no purpose.
    purpose: str | None = None
    # The parts of input_tokens (the total input) priced as cache hits and as cache writes.
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    # What this call's system cost drew from the user's grants: the part beyond the month's credit
    # (lua/lib/grants.lua). 0 mostly.
    grants_drawn_nano: int = 0

    @property
    def cost(self) -> Decimal:
        return nano_to_decimal(self.cost_nano)

    @property
    def resets_at(self) -> str:
        return iso_z(next_month_start(self.month))

    @property
    def warning(self) -> dict[str, Any] | None:
        """The ``quota_warning`` event for the browser when this record crossed a threshold (the
        highest it crossed), else None: push it at once, as the ``quota_exceeded`` event is."""
        if not self.alerts:
            return None
        return quota_warning_event(self.alerts[-1], self.monthly_used_nano, self.monthly_credit_nano, self.resets_at)

    @property
    def exceeded(self) -> bool:
        """The system-model spend has reached the credit (after this record)."""
        return self.monthly_used_nano >= self.monthly_credit_nano

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "model_id": self.model_id,
            "month": self.month,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost": nano_to_json(self.cost_nano),
            **self._totals_json(),
            "exceeded": self.exceeded,
            "duplicate": self.duplicate,
            "is_system": self.is_system,
            "estimated": self.estimated,
            "request_id": self.request_id,
            "alerts": list(self.alerts),
            "purpose": self.purpose,
            "grants_drawn": nano_to_json(self.grants_drawn_nano),
        }


@dataclass(slots=True)
class QuotaCheck(_MonthTotals):
    """The outcome of ``check_quota_available``: may a new message start on this model?"""

    user: str
    model_id: str
    month: str
    is_system: bool
    allowed: bool
    monthly_used_nano: int
    monthly_credit_nano: int
    resets_at: str
    event: dict[str, Any] | None = None  # the quota_exceeded event when denied
    held_nano: int = 0  # live turn holds (reserved by replies in progress)
    grants_nano: int = 0  # what is left of the user's live grants (issue 12)
    grants_drawn_nano: int = 0  # what this month's system spend drew from grants

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def held(self) -> Decimal:
        return nano_to_decimal(self.held_nano)

    @property
    def available_nano(self) -> int:
        """What a new turn could still reserve, never below 0: what the month's credit still covers
        (credit - (used - drawn from grants)), plus the live grants, less the holds."""
        return max(
            available_nano(
                self.monthly_credit_nano,
                self.monthly_used_nano,
                self.grants_drawn_nano,
                self.grants_nano,
                self.held_nano,
            ),
            0,
        )

    @property
    def available(self) -> Decimal:
        return nano_to_decimal(self.available_nano)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user,
            "model_id": self.model_id,
            "month": self.month,
            "is_system": self.is_system,
            "allowed": self.allowed,
            **self._totals_json(),
            "held": nano_to_json(self.held_nano),
            "grants": nano_to_json(self.grants_nano),
            "available": nano_to_json(self.available_nano),
            "resets_at": self.resets_at,
        }
        if self.event is not None:
            data["event"] = self.event
        return data


@dataclass(slots=True)
class CreditResult(_MonthTotals):
    """The outcome of ``set_monthly_credit``."""

    user: str
    month: str
    monthly_used_nano: int
    monthly_credit_nano: int
    # The alerted thresholds the new credit brought the spend back under, highest first: each got a
    # quota.threshold_cleared event and alerts again when the spend reaches it (docs/ALERTS.md).
    cleared: tuple[int, ...] = ()
    # The month's own credit before this call (None: it had none); what the audit trail records.
    credit_before_nano: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "month": self.month, **self._totals_json(), "cleared_alerts": list(self.cleared)}


def available_nano(credit_nano: int, used_nano: int, drawn_nano: int, grants_nano: int, held_nano: int) -> int:
    """What a new message on a system model may still spend (may be negative): what the month's
    credit still covers, plus the live grants, less the holds (lua/lib/grants.lua, the same rule)."""
    return max(credit_nano - (used_nano - drawn_nano), 0) + grants_nano - held_nano


def _iso_ms(ms: int) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Grant:
    """One credit grant (``Meter.grant_credit``): credit beyond the monthly credit, spent after the
    month's credit, earliest expiry first, until ``expires_at_ms`` (0: never) on the meter's clock."""

    user: str
    grant_id: str
    amount_nano: int
    remaining_nano: int
    expires_at_ms: int  # 0: never expires
    reason: str | None
    created_at_ms: int
    revoked_at_ms: int = 0  # 0: not revoked
    revoked_nano: int = 0  # what the revoke took back
    created: bool = False  # grant_credit: this call made it (False: it existed with the same content)
    live: bool = True  # at the meter's clock when read: remaining > 0 and not expired

    @property
    def amount(self) -> Decimal:
        return nano_to_decimal(self.amount_nano)

    @property
    def remaining(self) -> Decimal:
        return nano_to_decimal(self.remaining_nano)

    @property
    def expires_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.expires_at_ms / 1000, UTC) if self.expires_at_ms else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "amount": nano_to_json(self.amount_nano),
            "remaining": nano_to_json(self.remaining_nano),
            "expires_at": _iso_ms(self.expires_at_ms),
            "reason": self.reason,
            "created_at": _iso_ms(self.created_at_ms),
            "revoked_at": _iso_ms(self.revoked_at_ms),
            "live": self.live,
        }


@dataclass(slots=True)
class PlanResult:
    """The outcome of ``set_plan_credit``: the user's plan credit now and before (None: no plan,
    the default credit applies to every month without its own)."""

    user: str
    plan_credit_nano: int | None
    before_nano: int | None
    month: str = ""  # the current month when it was set
    # The current month's alerted thresholds the new plan brought the spend back under (a month without
    # its own credit), highest first: each got a quota.threshold_cleared event (docs/ALERTS.md).
    cleared: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "plan_credit": None if self.plan_credit_nano is None else nano_to_json(self.plan_credit_nano),
            "plan_credit_before": None if self.before_nano is None else nano_to_json(self.before_nano),
            "cleared_alerts": list(self.cleared),
        }
