"""The audit trail of credit changes (issue 12): what the meters write, and the seam to the store.

Every credit change (``set_monthly_credit``, ``set_plan_credit``, ``grant_credit``, ``revoke_grant``)
and every correction (``adjust``: the model's cost before and after, quota/_adjust.py) is written
to the history store (``quota.history.HistoryStore``: SQLite or PostgreSQL), append-only, in two steps
around the change in Redis:

1. a row with status ``pending`` (the instant, the actor, the action, the user, the month or grant,
   the amount asked for, the reason) is inserted and committed *before* Redis is touched: when that
   fails, the change is not made and ``AuditUnavailable`` says so;
2. after the change, that row (and only a pending row) gets its outcome: ``done`` or ``unchanged``
   (an idempotent repeat) with the amount before and after, or ``failed`` when Redis refused.
   Should step 2 fail (the database went away in between), the change stands and the row stays
   ``pending`` with what was asked: never a change without a row.

Rows are never deleted or rewritten after step 2. A meter without a history store (``Meter(client)``,
``history=None``) changes credit unaudited; ``Meter.from_url`` audits to ``QUOTA_HISTORY_URL`` (the
default SQLite file when unset). See docs/OPERATIONS.md, "Credit changes and their audit trail".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ._errors import InvalidInput

# The actions, as stored.
SET_MONTHLY_CREDIT = "set_monthly_credit"
SET_PLAN_CREDIT = "set_plan_credit"
GRANT = "grant"
REVOKE_GRANT = "revoke_grant"
ADJUST = "adjust"
ACTIONS = (SET_MONTHLY_CREDIT, SET_PLAN_CREDIT, GRANT, REVOKE_GRANT, ADJUST)
# Outcomes of step 2.
PENDING, DONE, UNCHANGED, FAILED = "pending", "done", "unchanged", "failed"

# Who made a change: "library" (the default), "cli", or "api:<role>" (the API's token role).
ACTOR_RE = re.compile(r"[A-Za-z0-9_.:@+\-]{1,64}")
LIBRARY = "library"
CLI = "cli"


def validate_actor(actor: object) -> str:
    if not isinstance(actor, str) or not ACTOR_RE.fullmatch(actor):
        raise InvalidInput(f"invalid actor {actor!r}: use 1 to 64 characters of A-Z a-z 0-9 _ . : @ + -")
    return actor


@dataclass(slots=True)
class AuditEntry:
    """Step 1's row: what is about to change, and who asks."""

    at: datetime
    actor: str
    action: str
    user: str
    month: str | None = None
    grant_id: str | None = None
    requested_nano: int | None = None  # the credit, plan or grant amount asked for (None: clear a plan)
    reason: str | None = None
    # adjust only (schema 6): the model, the adjustment's id, its signed token and call counts
    model_id: str | None = None
    adjustment_id: str | None = None
    details: dict[str, int] | None = None


@runtime_checkable
class AuditSink(Protocol):
    """What a meter needs of its history store to audit (``HistoryStore`` has it)."""

    def audit_begin(self, entry: AuditEntry) -> int:
        """Insert and commit the pending row; its id. ``StorageUnavailable`` when it cannot."""
        ...

    def audit_finish(self, audit_id: int, status: str, before_nano: int | None, after_nano: int | None) -> None:
        """Give the pending row ``audit_id`` its outcome."""
        ...

    def read_audit(self, user: str, limit: int = 100) -> list[dict[str, Any]]:
        """The user's rows, newest first (JSON-ready)."""
        ...
