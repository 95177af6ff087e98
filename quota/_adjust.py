"""Corrections: an audited, signed adjustment of one user's month for one model. Sans-I/O.

A wrong record can not be taken back by sending it again (its request id is spent), and editing the
hash by hand (HINCRBY) leaves no trace. An adjustment is the way: its own id (sent twice, it counts
once; reused for something else, it is a ``RequestConflict``), a reason, an actor and an instant,
and signed amounts that are added to the month's counters by ``adjust.lua`` in one atomic step,
which refuses (and changes nothing) when a counter would go below zero. Reversing a wrong record
is its negation: ``cost=-<its cost>``, the negated tokens, ``calls=-1``; on a system model the
cost also moves ``system_used_nano``, the use of the credit.

Where it shows: the month hash counts, per model, the adjustments and their signed cost (stats
show them as ``models.<id>.adjustments``; the dump archives them with the month); the record
itself (id, reason, amounts, actor, instant) is kept under the user's hash tag in
``<prefix>:{<user>}:adj:<YYYY-MM>`` (``Meter.adjustments`` lists them), logged by
:func:`audit_adjustment`, and written to the audit trail of credit changes (quota/_audit.py, action
``adjust``: :func:`audit_entry` before it, :func:`audit_outcome` after it, the model's cost before and
after), so that an adjustment whose audit row can not be written is not made.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import _scripts as scripts
from ._audit import ADJUST, AuditEntry
from ._errors import InvalidInput
from ._keys import iso_z, validate_month, validate_request_id, validate_user
from ._money import cny_to_nano, nano_to_json
from ._usage import MAX_TOKENS

if TYPE_CHECKING:
    from ._core import MeterCore, ScriptCall

audit_log = logging.getLogger("quota.audit")

MAX_REASON = 200
MAX_COST_NANO = 10**17 - 1  # 100,000,000 CNY: adjust.lua takes at most 17 digits
MAX_CALLS = 10**9 - 1
_TEXT_RE = re.compile(r"[^\x00-\x1f\x7f]+")  # printable: no control characters, no newline


@dataclass(frozen=True)
class Adjustment:
    """One correction as it was made (``duplicate``: this id was used before, for the same one,
    and nothing changed now). Amounts are signed; ``monthly_used_nano`` is the month's system-model
    spend after it."""

    user: str
    month: str
    model_id: str
    adjustment_id: str
    input_tokens: int
    output_tokens: int
    cost_nano: int
    calls: int
    reason: str
    actor: str
    at: str
    is_system: bool
    duplicate: bool = False
    monthly_used_nano: int = 0
    model_cost_nano: int = 0  # the model's cost this month after it (what the audit row's after is)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost"] = nano_to_json(self.cost_nano)
        out["cost_nano"] = str(self.cost_nano)  # exact, past 2^53 too
        out["monthly_used"] = nano_to_json(self.monthly_used_nano)
        out["model_cost"] = nano_to_json(self.model_cost_nano)
        del out["monthly_used_nano"], out["model_cost_nano"]
        return out


def signed_cny_to_nano(amount: object, what: str = "cost") -> int:
    """A signed CNY amount in exact nano-CNY (``"-0.12"`` -> ``-120000000``)."""
    negative = False
    if isinstance(amount, str) and amount.strip().startswith("-"):
        negative, amount = True, amount.strip()[1:]
    elif isinstance(amount, (int, float, Decimal)) and not isinstance(amount, bool) and amount < 0:
        negative, amount = True, -amount
    nano = cny_to_nano(amount, what=what)
    if nano > MAX_COST_NANO:
        raise InvalidInput(f"{what} must be below 100,000,000 CNY either way")
    return -nano if negative else nano


def signed_count(value: object, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an int from -{limit} to {limit}, got {type(value).__name__}")
    if abs(value) > limit:
        raise InvalidInput(f"{what} must be from -{limit} to {limit}, got {value}")
    return value


def validate_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not _TEXT_RE.fullmatch(value) or len(value) > limit or not value.strip():
        raise InvalidInput(f"{what} must be 1 to {limit} printable characters (no newline)")
    return value


def adjust_call(
    core: MeterCore,
    user: object,
    model_id: object,
    *,
    adjustment_id: object,
    reason: object,
    cost: object = 0,
    input_tokens: object = 0,
    output_tokens: object = 0,
    calls: object = 0,
    month: object = None,
    actor: object = None,
) -> ScriptCall[Adjustment]:
    """The ``adjust.lua`` call for one correction (everything validated here first)."""
    from ._core import ScriptCall

    user = validate_user(user)
    model = core.prices.lookup(model_id)  # a system model must be known; any valid id is custom
    rid = validate_request_id(adjustment_id)
    why = validate_text(reason, "reason", MAX_REASON)
    who = "library" if actor is None else validate_text(actor, "actor", 128)
    month = core.current_month() if month is None else validate_month(month)
    cost_nano = signed_cny_to_nano(cost)
    tokens_in = signed_count(input_tokens, "input_tokens", MAX_TOKENS)
    tokens_out = signed_count(output_tokens, "output_tokens", MAX_TOKENS)
    n_calls = signed_count(calls, "calls", MAX_CALLS)
    if not (cost_nano or tokens_in or tokens_out or n_calls):
        raise InvalidInput("an adjustment must change something: cost, input_tokens, output_tokens or calls")
    content = json.dumps(
        {
            "model_id": model.model_id,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_nano": cost_nano,
            "calls": n_calls,
            "reason": why,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    details = json.dumps({"actor": who, "at": iso_z(core.clock())}, sort_keys=True, separators=(",", ":"))

    def parse(reply: Any) -> Adjustment:
        applied, used, record, model_cost = reply
        adj = parse_record(user, month, rid, record, model.is_system, int(used), duplicate=int(applied) == 0)
        return replace(adj, model_cost_nano=int(model_cost))

    return ScriptCall(
        scripts.ADJUST,
        (core.keys.month_key(user, month), core.keys.adjustments_key(user, month)),
        (
            model.model_id,
            str(tokens_in),
            str(tokens_out),
            str(cost_nano),
            str(n_calls),
            "1" if model.is_system else "0",
            rid,
            content,
            details,
        ),
        parse,
    )


def parse_record(
    user: str, month: str, adjustment_id: str, record: Any, is_system: bool, used_nano: int = 0, duplicate: bool = False
) -> Adjustment:
    """An ``Adjustment`` from what the adjustments hash stores: ``<content JSON>\\n<details JSON>``."""
    text = record.decode() if isinstance(record, bytes) else str(record)
    content, _, details = text.partition("\n")
    fields: dict[str, Any] = {**json.loads(content), **json.loads(details or "{}")}
    return Adjustment(
        user=user,
        month=month,
        model_id=fields["model_id"],
        adjustment_id=adjustment_id,
        input_tokens=int(fields["input_tokens"]),
        output_tokens=int(fields["output_tokens"]),
        cost_nano=int(fields["cost_nano"]),
        calls=int(fields["calls"]),
        reason=fields["reason"],
        actor=fields.get("actor", ""),
        at=fields.get("at", ""),
        is_system=is_system,
        duplicate=duplicate,
        monthly_used_nano=used_nano,
    )


def adjustments_from_hash(user: str, month: str, raw: Mapping[Any, Any], is_system: Any) -> list[Adjustment]:
    """Every adjustment of ``raw`` (an HGETALL of the adjustments hash), oldest first."""
    out = []
    for rid, record in raw.items():
        adj = parse_record(user, month, rid.decode() if isinstance(rid, bytes) else str(rid), record, False)
        out.append(replace(adj, is_system=bool(is_system(adj.model_id))))
    return sorted(out, key=lambda a: (a.at, a.adjustment_id))


def audit_entry(call: ScriptCall[Adjustment], user: str, month: str, at: datetime) -> AuditEntry:
    """The audit row (step 1, pending) of the adjustment ``call`` (``adjust_call``) will make: read
    back from its validated arguments, so that the row says what Redis is sent."""
    content, details = json.loads(call.args[7]), json.loads(call.args[8])
    return AuditEntry(
        at,
        details["actor"],
        ADJUST,
        user,
        month,
        requested_nano=content["cost_nano"],
        reason=content["reason"],
        model_id=content["model_id"],
        adjustment_id=call.args[6],
        details={name: content[name] for name in ("input_tokens", "output_tokens", "calls")},
    )


def audit_outcome(adj: Adjustment) -> tuple[int | None, int | None, bool]:
    """Step 2 of the audit row: the model's cost this month before and after, and whether it changed
    (a repeated id changes nothing: ``unchanged``, before = after)."""
    if adj.duplicate:
        return adj.model_cost_nano, adj.model_cost_nano, False
    return adj.model_cost_nano - adj.cost_nano, adj.model_cost_nano, True


def audit_adjustment(adj: Adjustment) -> None:
    """Log one adjustment with its id, reason and actor (``quota.audit``, INFO; the JSON log option
    keeps the fields), beside its row in the audit trail (``audit_entry``)."""
    what = "repeated (no change)" if adj.duplicate else "applied"
    audit_log.info(
        "adjustment %s %s: %s %s %s cost %s nano-CNY, tokens %+d/%+d, calls %+d, by %s: %s",
        adj.adjustment_id,
        what,
        adj.user,
        adj.month,
        adj.model_id,
        f"{adj.cost_nano:+d}",
        adj.input_tokens,
        adj.output_tokens,
        adj.calls,
        adj.actor,
        adj.reason,
        extra={"adjustment": adj.as_dict()},
    )
