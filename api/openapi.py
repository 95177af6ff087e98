"""The OpenAPI 3.1 document served at ``/openapi.json``.

Written by hand, next to the views, and held to them by tests/test_openapi.py: every route in
``app.url_map`` must be here and every response the test client gets must validate against the
schema documented for its path, method and status.
"""

from __future__ import annotations

from typing import Any

import quota
from quota._audit import ACTIONS as AUDIT_ACTIONS
from quota._config import ALERT_PERCENT_RANGE
from quota._core import EXCEEDED_CODES
from quota._keys import (
    GRANT_ID_RE,
    MAX_PURPOSES,
    MODEL_RE,
    MONTH_RE,
    PREFIX_RE,
    PURPOSE_RE,
    REQUEST_ID_RE,
    USER_RE,
)
from quota._report import CSV_HEADER, MAX_PAGE
from quota._report import SORTS as REPORT_SORTS
from quota._usage import MAX_TOKENS

from .demo_agent import CONVERSATION_RE, DEMO_USER_PREFIX, MAX_MESSAGE_CHARS, MAX_TURNS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _pattern(regex: Any) -> str:
    return f"^{regex.pattern}$"


MONEY = {"type": "number", "minimum": 0, "description": "CNY"}
HELD = MONEY | {"description": "CNY reserved by turns in progress (live turn holds, docs/INTEGRATION.md)"}
AVAILABLE = MONEY | {
    "description": "CNY a new turn could still reserve, never below 0: what the month's credit still covers, "
    "plus the live grants, less the holds (docs/PRICING.md)"
}
GRANT_ID = {"type": "string", "pattern": _pattern(GRANT_ID_RE)}
NULLABLE_MONEY = {"type": ["number", "null"], "minimum": 0, "description": "CNY"}
NULLABLE_MS_TIMESTAMP = {"type": ["string", "null"], "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"}
TOKENS = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
SIGNED_TOKENS = {"type": "integer", "minimum": -MAX_TOKENS, "maximum": MAX_TOKENS}
SIGNED_MONEY = {"type": "number", "description": "CNY, signed"}
USER = {"type": "string", "pattern": _pattern(USER_RE)}
MODEL = {"type": "string", "pattern": _pattern(MODEL_RE)}
MONTH = {"type": "string", "pattern": _pattern(MONTH_RE)}
TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T00:00:00Z$"}
MS_TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"}
PERCENT = {"type": "integer", "minimum": ALERT_PERCENT_RANGE[0], "maximum": ALERT_PERCENT_RANGE[1]}
ALERTS = {"type": "array", "items": PERCENT}
PURPOSE = {"type": "string", "pattern": _pattern(PURPOSE_RE)}
# <prefix>:<user>:<YYYY-MM>:<threshold>:<crossed|cleared>:<seq> (quota._notify.parse_event_id)
EVENT_ID_PATTERN = rf"^{PREFIX_RE.pattern}:{USER_RE.pattern}:{MONTH_RE.pattern}:\d{{1,4}}:(crossed|cleared):\d{{1,18}}$"
PRICE_VALUE = {"type": ["number", "string"], "description": "CNY per 1k tokens"}
CACHE_TOKENS = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_TOKENS,
    "description": "a part of input_tokens (the total input) priced at the model's cache rate (docs/PRICING.md)",
}
# USER_RE's characters, starting with the demo prefix (api.demo_agent.validate_demo_user)
DEMO_USER = {
    "type": "string",
    "pattern": rf"^{DEMO_USER_PREFIX}[A-Za-z0-9_.@+\-]{{0,{128 - len(DEMO_USER_PREFIX)}}}$",
    "description": f"a demo user: starts with {DEMO_USER_PREFIX!r}, lives under the demo's own key prefix",
}


TOKEN_STATS_REQUIRED = [
    "user",
    "current_month",
    "monthly_credit",
    "monthly_used",
    "last_reset",
    "remaining",
    "percent_used",
    "held",
    "available",
    "exceeded",
    "resets_at",
    "currency",
    "models",
    "history",
]


def _object(
    properties: dict[str, Any], required: list[str] | None = None, *, extra: bool = False, **more: Any
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
        **more,
    }


SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "examples": ["invalid_input", "forbidden"]},
                    "message": {"type": "string"},
                    "results": {
                        "type": "array",
                        "description": "batch_failed only: per record, its result or error",
                        "items": {"anyOf": [_ref("UsageResult"), _ref("Error")]},
                    },
                },
                ["code", "message"],
            ),
        }
    ),
    "UsageRecord": _object(
        {
            "user": USER,
            "model_id": MODEL,
            "input_tokens": TOKENS,
            "output_tokens": TOKENS,
            "request_id": {
                "type": ["string", "null"],
                "pattern": _pattern(REQUEST_ID_RE),
                "description": "idempotency key: a repeated id counts once (within QUOTA_DEDUPE_TTL_S); "
                "null is the same as leaving it out",
            },
            "price": _object(
                {
                    "cost_per_1k_input": PRICE_VALUE,
                    "cost_per_1k_output": PRICE_VALUE,
                    "cost_per_1k_cached_input": PRICE_VALUE,
                    "cost_per_1k_cache_write": PRICE_VALUE,
                },
                ["cost_per_1k_input", "cost_per_1k_output"],
                description="custom models only: the price of this call; null is the same as leaving it out",
            )
            | {"type": ["object", "null"]},
            "estimated": {"type": "boolean", "description": "the token counts are estimates"},
            "purpose": PURPOSE
            | {
                "type": ["string", "null"],
                "description": "what the call was for (chat, tool, summary, naming, or your own word), "
                f"also counted per model and purpose: at most {MAX_PURPOSES} per model and month, "
                "further ones count as other; a request_id repeated with another purpose is a conflict (409); "
                "null is the same as leaving it out",
            },
            "cached_input_tokens": CACHE_TOKENS
            | {"description": "cache hits among input_tokens (the total input); with cache_write_tokens at most it"},
            "cache_write_tokens": CACHE_TOKENS | {"description": "cache writes among input_tokens (Anthropic)"},
        },
        ["user", "model_id", "input_tokens", "output_tokens"],
    ),
    "UsageResult": _object(
        {
            "user": USER,
            "model_id": MODEL,
            "month": MONTH,
            "input_tokens": TOKENS,
            "output_tokens": TOKENS,
            "cached_input_tokens": CACHE_TOKENS,
            "cache_write_tokens": CACHE_TOKENS,
            "cost": MONEY,
            "monthly_used": MONEY,
            "monthly_credit": MONEY,
            "remaining": MONEY,
            "exceeded": {"type": "boolean"},
            "duplicate": {"type": "boolean"},
            "is_system": {"type": "boolean"},
            "estimated": {"type": "boolean"},
            "request_id": {"type": "string"},
            "alerts": ALERTS
            | {
                "description": "the alert thresholds this record's system spend reached first this month "
                "(each has a quota.threshold_crossed webhook event, docs/ALERTS.md); mostly empty"
            },
            "purpose": PURPOSE
            | {
                "type": ["string", "null"],
                "description": "the purpose the call was counted under (other past the per-model bound; "
                "for a duplicate, the one given); null without a purpose",
            },
            "grants_drawn": MONEY
            | {"description": "what this call's system cost drew from grants (the part beyond the month's credit)"},
        }
    ),
    "UsageBatchResult": _object({"results": {"type": "array", "items": _ref("UsageResult")}}),
    "QuotaExceededEvent": _object(
        {
            "type": {"const": "quota_exceeded"},
            "code": {
                "enum": list(EXCEEDED_CODES),
                "description": "quota_exceeded: the credit is used up (wait for resets_at, top up, or use a custom "
                "model); credit_held: the rest of the credit is held by replies in progress (try again when they end)",
            },
            "model_id": MODEL,
            "monthly_used": MONEY,
            "monthly_credit": MONEY,
            "resets_at": TIMESTAMP,
            "held": MONEY | {"description": "CNY reserved by replies in progress (turn holds)"},
            "grants": MONEY
            | {
                "description": "present when the user has or used grants: what is left of the live ones; "
                "monthly_credit and monthly_used then count the grants too"
            },
            "message": {"type": "string", "description": "a friendly notice, Chinese then English"},
        },
        ["type", "code", "model_id", "monthly_used", "monthly_credit", "resets_at", "held", "message"],
    ),
    "QuotaWarningEvent": _object(
        {
            "type": {"const": "quota_warning"},
            "code": {"const": "quota_warning"},
            "threshold": PERCENT,
            "monthly_used": MONEY,
            "monthly_credit": MONEY,
            "resets_at": TIMESTAMP,
            "message": {"type": "string", "description": "a friendly notice, Chinese then English"},
        }
    ),
    "QuotaCheck": _object(
        {
            "user": USER,
            "model_id": MODEL,
            "month": MONTH,
            "is_system": {"type": "boolean"},
            "allowed": {"type": "boolean"},
            "monthly_used": MONEY,
            "monthly_credit": MONEY,
            "remaining": MONEY,
            "held": HELD,
            "grants": MONEY | {"description": "what is left of the user's live grants"},
            "available": AVAILABLE,
            "resets_at": TIMESTAMP,
            "event": _ref("QuotaExceededEvent"),
        },
        [
            "user",
            "model_id",
            "month",
            "is_system",
            "allowed",
            "monthly_used",
            "monthly_credit",
            "remaining",
            "resets_at",
        ],
    ),
    "CreditRequest": _object(
        {
            "credit": {"type": ["number", "string"], "description": "CNY, at most 9 decimals; a string keeps it exact"},
            "month": MONTH | {"type": ["string", "null"], "description": "default (or null): the current UTC month"},
        },
        ["credit"],
    ),
    "CreditResult": _object(
        {
            "user": USER,
            "month": MONTH,
            "monthly_credit": MONEY,
            "monthly_used": MONEY,
            "remaining": MONEY,
            "cleared_alerts": ALERTS
            | {
                "description": "alerted thresholds the new credit brought the spend back under, highest first "
                "(each has a quota.threshold_cleared event and alerts again)"
            },
        }
    ),
    "StatsGrant": _object(
        {
            "grant_id": GRANT_ID,
            "amount": MONEY,
            "remaining": MONEY,
            "expires_at": NULLABLE_MS_TIMESTAMP | {"description": "null: never expires"},
            "reason": {"type": ["string", "null"]},
            "live": {"type": "boolean", "description": "something left and not expired (on the meter's clock)"},
        }
    ),
    "Grant": _object(
        {
            "user": USER,
            "grant_id": GRANT_ID,
            "amount": MONEY,
            "remaining": MONEY,
            "expires_at": NULLABLE_MS_TIMESTAMP | {"description": "null: never expires"},
            "reason": {"type": ["string", "null"]},
            "created_at": MS_TIMESTAMP,
            "revoked_at": NULLABLE_MS_TIMESTAMP,
            "live": {"type": "boolean"},
            "created": {"type": "boolean", "description": "POST only: this request made it (201)"},
            "revoked": {"type": "boolean", "description": "DELETE only: the grant is revoked"},
        },
        ["user", "grant_id", "amount", "remaining", "expires_at", "reason", "created_at", "revoked_at", "live"],
    ),
    "GrantList": _object(
        {
            "user": USER,
            "grants": {
                "type": "array",
                "items": _object(
                    {
                        "grant_id": GRANT_ID,
                        "amount": MONEY,
                        "remaining": MONEY,
                        "expires_at": NULLABLE_MS_TIMESTAMP,
                        "reason": {"type": ["string", "null"]},
                        "created_at": MS_TIMESTAMP,
                        "revoked_at": NULLABLE_MS_TIMESTAMP,
                        "live": {"type": "boolean"},
                    }
                ),
            },
        }
    ),
    "GrantRequest": _object(
        {
            "amount": {"type": ["number", "string"], "description": "CNY, above 0 and below 1,000,000"},
            "expires_at": {
                "type": ["string", "null"],
                "description": "ISO 8601 instant with its offset (2026-03-01T00:00:00Z); null: until spent",
            },
            "grant_id": GRANT_ID
            | {
                "type": ["string", "null"],
                "description": "idempotency key: the same id and content again changes nothing (200), another "
                "content is 409; null or absent: a new id",
            },
            "reason": {"type": ["string", "null"], "maxLength": 200},
        },
        ["amount"],
    ),
    "PlanRequest": _object(
        {
            "credit": {
                "type": ["number", "string", "null"],
                "description": "CNY every month uses unless it has its own credit; null: back to the default",
            }
        }
    ),
    "PlanResult": _object(
        {
            "user": USER,
            "plan_credit": NULLABLE_MONEY,
            "plan_credit_before": NULLABLE_MONEY,
            "cleared_alerts": ALERTS
            | {
                "description": "alerted thresholds of this month (when it has no credit of its own) the new plan "
                "brought the spend back under, highest first"
            },
        },
    ),
    "AuditEntry": _object(
        {
            "id": {"type": "integer"},
            "at": MS_TIMESTAMP,
            "actor": {"type": "string", "description": "library, cli, or api:<token role>"},
            "action": {"enum": list(AUDIT_ACTIONS)},
            "user": USER,
            "month": MONTH | {"type": ["string", "null"]},
            "grant_id": GRANT_ID | {"type": ["string", "null"]},
            "status": {"enum": ["pending", "done", "unchanged", "failed"]},
            "reason": {"type": ["string", "null"]},
            "finished_at": NULLABLE_MS_TIMESTAMP,
            "requested": NULLABLE_MONEY,
            "requested_nano": {"type": ["integer", "null"]},
            "before": NULLABLE_MONEY,
            "before_nano": {"type": ["integer", "null"]},
            "after": NULLABLE_MONEY,
            "after_nano": {"type": ["integer", "null"]},
            "model_id": {"type": ["string", "null"], "description": "adjust: the model corrected"},
            "adjustment_id": {"type": ["string", "null"], "description": "adjust: the adjustment's id"},
            "details": {
                "type": ["object", "null"],
                "description": "adjust: the signed input_tokens, output_tokens and calls (before and after are the "
                "model's cost that month, requested the signed cost)",
                "additionalProperties": {"type": "integer"},
            },
        }
    ),
    "AuditList": _object({"user": USER, "entries": {"type": "array", "items": _ref("AuditEntry")}}),
    "ModelStats": _object(
        {
            "input_tokens": TOKENS | {"maximum": 2**63 - 1},
            "output_tokens": TOKENS | {"maximum": 2**63 - 1},
            "cached_input_tokens": CACHE_TOKENS | {"maximum": 2**63 - 1},
            "cache_write_tokens": CACHE_TOKENS | {"maximum": 2**63 - 1},
            "cost": MONEY,
            "calls": {"type": "integer", "minimum": 0},
            "estimated_calls": {"type": "integer", "minimum": 0},
            "is_system": {"type": "boolean"},
            "name": {"type": "string"},
            "purposes": {
                "type": "object",
                "description": "calls and cost of this model by the records' purpose (records without one "
                f"are not in it); at most {MAX_PURPOSES} purposes and other",
                "propertyNames": PURPOSE,
                "additionalProperties": _object({"calls": {"type": "integer", "minimum": 0}, "cost": MONEY}),
            },
            "adjustments": _object(
                {"count": {"type": "integer", "minimum": 1}, "cost": SIGNED_MONEY},
                description="present only when the month was corrected (quota adjust): how many adjustments, "
                "and their signed cost, which the other amounts already include",
            ),
        },
        [
            "input_tokens",
            "output_tokens",
            "cost",
            "calls",
            "estimated_calls",
            "is_system",
            "name",
            "purposes",
        ],
    ),
    "AdjustmentRequest": _object(
        {
            "model_id": MODEL,
            "adjustment_id": {
                "type": "string",
                "pattern": _pattern(REQUEST_ID_RE),
                "description": "the adjustment's own id: sent again with the same content it counts once",
            },
            "reason": {"type": "string", "minLength": 1, "maxLength": 200},
            "cost": {"type": ["number", "string"], "description": "signed CNY (negative: take away), default 0"},
            "input_tokens": SIGNED_TOKENS,
            "output_tokens": SIGNED_TOKENS,
            "calls": {"type": "integer", "minimum": -(10**9) + 1, "maximum": 10**9 - 1},
            "month": MONTH | {"type": ["string", "null"], "description": "default (or null): the current UTC month"},
            "actor": {"type": "string", "description": "who asked (kept after api:admin)"},
        },
        ["model_id", "adjustment_id", "reason"],
    ),
    "Adjustment": _object(
        {
            "user": USER,
            "month": MONTH,
            "model_id": MODEL,
            "adjustment_id": {"type": "string", "pattern": _pattern(REQUEST_ID_RE)},
            "input_tokens": SIGNED_TOKENS,
            "output_tokens": SIGNED_TOKENS,
            "cost": SIGNED_MONEY,
            "cost_nano": {"type": "string", "pattern": r"^-?\d+$", "description": "the exact signed cost, nano-CNY"},
            "calls": {"type": "integer"},
            "reason": {"type": "string"},
            "actor": {"type": "string"},
            "at": {"type": "string", "description": "when it was made (UTC)"},
            "is_system": {"type": "boolean"},
            "duplicate": {"type": "boolean", "description": "this id was used before for the same adjustment"},
            "monthly_used": MONEY,
            "model_cost": {**MONEY, "description": "the model's cost this month after it"},
        }
    ),
    "AdjustmentList": _object({"user": USER, "adjustments": {"type": "array", "items": _ref("Adjustment")}}),
    "HistoryModelStats": _object(
        {
            "input": {"type": "integer", "minimum": 0},
            "output": {"type": "integer", "minimum": 0},
            "cached_input": {"type": "integer", "minimum": 0, "description": "cache hits among input"},
            "cache_write": {"type": "integer", "minimum": 0, "description": "cache writes among input"},
            "cost": MONEY,
            "calls": {"type": "integer", "minimum": 0},
            "is_system": {"type": "boolean"},
        }
    ),
    "TokenStats": _object(
        {
            "user": USER,
            "current_month": MONTH,
            "monthly_credit": MONEY,
            "monthly_used": MONEY,
            "last_reset": TIMESTAMP,
            "remaining": MONEY,
            "percent_used": {"type": "number", "minimum": 0},
            "held": HELD,
            "available": AVAILABLE,
            "exceeded": {"type": "boolean"},
            "plan_credit": NULLABLE_MONEY
            | {"description": "the user's plan: the credit of every month without its own; null: the default"},
            "grants_remaining": MONEY | {"description": "what is left of the user's live grants"},
            "grants_drawn": MONEY | {"description": "what this month's system spend drew from grants"},
            "grants": {
                "type": "array",
                "items": _ref("StatsGrant"),
                "description": "every grant of the user: live ones first, in the order they are spent",
            },
            "alerted_threshold": PERCENT
            | {
                "type": ["integer", "null"],
                "description": "the highest alert threshold (percent of the credit) reached this month; null: none",
            },
            "resets_at": TIMESTAMP,
            "currency": {"const": "CNY"},
            "models": {
                "type": "object",
                "propertyNames": {"pattern": _pattern(MODEL_RE)},
                "additionalProperties": _ref("ModelStats"),
            },
            "history": {
                "type": "object",
                "propertyNames": {"pattern": _pattern(MONTH_RE)},
                "additionalProperties": {"type": "object", "additionalProperties": _ref("HistoryModelStats")},
                "description": "earlier months, newest first; empty months are left out",
            },
            "history_unavailable": {
                "const": True,
                "description": "present only when the SQL history did not answer: `history` then holds only "
                "the months still in Redis (the live month is complete)",
            },
        },
        TOKEN_STATS_REQUIRED,
    ),
    "ModelPrice": _object(
        {
            "model_id": MODEL,
            "name": {"type": "string"},
            "cost_per_1k_input": MONEY,
            "cost_per_1k_output": MONEY,
            "cost_per_1k_cached_input": MONEY | {"description": "CNY per 1k cache-hit input tokens"},
            "cost_per_1k_cache_write": MONEY | {"description": "CNY per 1k cache-write input tokens"},
            "is_system": {"type": "boolean"},
            "effective_from": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "the UTC instant this price takes effect; null: in force since forever",
            },
        }
    ),
    "PriceTable": _object(
        {
            "currency": {"const": "CNY"},
            "unit": {"const": "per 1k tokens"},
            "system": {"type": "object", "additionalProperties": _ref("ModelPrice")},
            "custom": {"type": "object", "additionalProperties": _ref("ModelPrice")},
            "upcoming": {
                "type": "array",
                "items": _ref("ModelPrice"),
                "description": "price changes still to come, soonest first (docs/PRICING.md)",
            },
        },
        description="the prices in force now (system, custom) and the changes to come (upcoming)",
    ),
    "Health": _object(
        {
            "status": {"enum": ["ok", "degraded"], "description": "degraded: Redis answers, the history does not"},
            "redis": {"const": "ok"},
            "history": {"enum": ["ok", "unavailable", "none"], "description": "the SQL history store"},
        }
    ),
    "ModelTotals": _object(
        {
            "is_system": {"type": "boolean"},
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "cost": MONEY,
            "calls": {"type": "integer", "minimum": 0},
            "estimated_calls": {"type": "integer", "minimum": 0},
            "users": {"type": "integer", "minimum": 0},
            "cached_input_tokens": {"type": "integer", "minimum": 0},
            "cache_write_tokens": {"type": "integer", "minimum": 0},
        }
    ),
    "MonthSummary": _object(
        {
            "month": MONTH,
            "current": {"type": "boolean", "description": "the live month (read from Redis)"},
            "currency": {"const": "CNY"},
            "users": {"type": "integer", "minimum": 0},
            "cost": MONEY,
            "system_cost": MONEY,
            "custom_cost": MONEY,
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "calls": {"type": "integer", "minimum": 0},
            "users_over_80": {"type": "integer", "minimum": 0, "description": "at or above 80 % of their credit"},
            "users_over_100": {
                "type": "integer",
                "minimum": 0,
                "description": "at or above their credit: refused on system models",
            },
            "models": {"type": "object", "additionalProperties": _ref("ModelTotals"), "description": "by cost"},
            "sources": {"type": "array", "items": {"enum": ["redis", "sql"]}},
            "unreadable": {"type": "integer", "minimum": 0, "description": "hashes left out (logged)"},
            "computed_at": {"type": ["string", "null"], "description": "when the month was read (UTC)"},
        }
    ),
    "UserRow": _object(
        {
            "user": USER,
            "cost": MONEY,
            "system_cost": MONEY,
            "custom_cost": MONEY,
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "cached_input_tokens": {"type": "integer", "minimum": 0, "description": "of input_tokens: cache hits"},
            "cache_write_tokens": {"type": "integer", "minimum": 0, "description": "of input_tokens: cache writes"},
            "calls": {"type": "integer", "minimum": 0},
            "monthly_used": MONEY,
            "monthly_credit": {**MONEY, "description": "the month's credit: its own, else the plan, else the default"},
            "credit_set": {"type": "boolean", "description": "a credit was set for this month (a top-up)"},
            "percent_used": {"type": "number", "minimum": 0},
            "exceeded": {"type": "boolean"},
        }
    ),
    "MonthOverview": _object(
        {
            "summary": _ref("MonthSummary"),
            "top": {"type": "array", "items": _ref("UserRow")},
            "near": {"type": "array", "items": _ref("UserRow")},
        }
    ),
    "MonthUsersPage": _object(
        {
            "month": MONTH,
            "sort": {"enum": list(REPORT_SORTS)},
            "users": {"type": "array", "items": _ref("UserRow")},
            "next_cursor": {"type": ["string", "null"], "description": "pass as cursor= for the next page"},
            "total_users": {"type": "integer", "minimum": 0},
            "computed_at": {"type": ["string", "null"]},
        }
    ),
    "TokenRevocation": _object(
        {
            "user": USER,
            "tokens_valid_after": {
                "type": "string",
                "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
                "description": "UTC: tokens issued at or before this instant are refused",
            },
            "tokens_valid_after_ms": {"type": "integer", "minimum": 0, "description": "the same, Unix milliseconds"},
        }
    ),
    "AlertEvent": _object(
        {
            "id": {
                "type": "string",
                "pattern": EVENT_ID_PATTERN,
                "description": "the webhook-id: <prefix>:<user>:<month>:<threshold>:<kind>:<seq>",
            },
            "user": USER,
            "field": {"type": "string", "description": "its field in <prefix>:{<user>}:outbox"},
            "type": {"enum": ["quota.threshold_crossed", "quota.threshold_cleared"]},
            "month": MONTH,
            "threshold": PERCENT,
            "monthly_used": MONEY,
            "monthly_credit": MONEY,
            "created_at": MS_TIMESTAMP,
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": MS_TIMESTAMP | {"type": ["string", "null"], "description": "null for a dead letter"},
            "last_error": {"type": ["string", "null"]},
            "dead_at": MS_TIMESTAMP,
        },
        [
            "id",
            "user",
            "field",
            "type",
            "month",
            "threshold",
            "monthly_used",
            "monthly_credit",
            "created_at",
            "attempts",
            "next_attempt_at",
            "last_error",
        ],
    ),
    "AlertList": _object(
        {"state": {"enum": ["pending", "dead"]}, "events": {"type": "array", "items": _ref("AlertEvent")}}
    ),
    "DemoTurnRequest": _object(
        {
            "user": DEMO_USER,
            "model_id": MODEL,
            "conversation_id": {"type": "string", "pattern": _pattern(CONVERSATION_RE)},
            "turn": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TURNS,
                "description": f"the message's number in the conversation; past {MAX_TURNS}: 400 conversation_too_long",
            },
            "message": {
                "type": "string",
                "maxLength": MAX_MESSAGE_CHARS,
                "description": "longer: 400 message_too_long",
            },
        },
        ["user", "model_id", "conversation_id", "turn"],
    ),
    "DemoCall": _object(
        {
            "purpose": {"enum": ["chat", "tool", "summary", "naming"]},
            "input_tokens": TOKENS,
            "output_tokens": TOKENS,
            "cost": MONEY,
            "duplicate": {"type": "boolean"},
            "request_id": {"type": "string"},
        }
    ),
    "DemoTurnResult": {
        "oneOf": [
            _object(
                {
                    "type": {"const": "reply"},
                    "reply": {"type": "string"},
                    "calls": {"type": "array", "items": _ref("DemoCall"), "minItems": 3, "maxItems": 4},
                    "model_id": MODEL,
                    "is_system": {"type": "boolean"},
                    "monthly_used": MONEY,
                    "monthly_credit": MONEY,
                    "remaining": MONEY,
                    "exceeded": {"type": "boolean"},
                    "warnings": {
                        "type": "array",
                        "items": _ref("QuotaWarningEvent"),
                        "description": "a quota_warning event per alert threshold a call of this turn crossed",
                    },
                }
            ),
            _object(
                {"type": {"const": "quota_exceeded"}, "event": _ref("QuotaExceededEvent"), "check": _ref("QuotaCheck")}
            ),
        ]
    },
}

ERRORS = {
    400: "bad input: malformed JSON (bad_request), wrong shape (invalid_body), a bad value "
    "(invalid_input), an unknown system model (unknown_model), or in the demo a conversation or "
    "message over its bound (conversation_too_long, message_too_long); nothing was changed",
    401: "no token, or a token that is not valid (unauthorized), has expired (token_expired) or was "
    "revoked (token_revoked)",
    403: "the token may not do this (forbidden)",
    404: "no such dead event (not_found)",
    409: "a request_id was reused with other content (request_conflict); in a batch, batch_failed "
    "with per-record results",
    413: "the body is larger than QUOTA_MAX_BODY_BYTES (payload_too_large)",
    415: "the body is not application/json (unsupported_media_type)",
    503: "Redis is unavailable (storage_unavailable); in a batch, batch_failed with per-record results",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), ERRORS[s]) for s in statuses}


def _user_param() -> dict[str, Any]:
    return {"name": "user", "in": "path", "required": True, "schema": USER}


def _month_param() -> dict[str, Any]:
    return {"name": "month", "in": "path", "required": True, "schema": MONTH}


BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
LIMIT: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "description": "at most this many (default 1000)",
}


def _paths(demo: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/users/{user}/token-stats": {
            "get": {
                "operationId": "getTokenStats",
                "tags": ["stats"],
                "security": BEARER,
                "summary": "A user's token statistics: this month, per model, and the history by month",
                "description": "Admin, service, or the user's own token.",
                "parameters": [
                    _user_param(),
                    {
                        "name": "months",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 120},
                        "description": "months of history (default QUOTA_HISTORY_MONTHS)",
                    },
                ],
                "responses": {"200": _json(_ref("TokenStats"), "the seed's structure"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/users/{user}/quota": {
            "get": {
                "operationId": "checkQuota",
                "tags": ["stats"],
                "security": BEARER,
                "summary": "May the user start a new message on this model? 200 either way",
                "description": "Admin, service, or the user's own token. When denied, `event` is the "
                "quota_exceeded event for the chat front end.",
                "parameters": [_user_param(), {"name": "model_id", "in": "query", "required": True, "schema": MODEL}],
                "responses": {"200": _json(_ref("QuotaCheck"), "the check"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/usage": {
            "post": {
                "operationId": "recordUsage",
                "tags": ["usage"],
                "security": BEARER,
                "summary": "Record one LLM call, or a batch of them",
                "description": "Admin or service token. An object gives one result; a list (at most "
                "QUOTA_MAX_BATCH records, all validated before any is sent) gives {results}. "
                "Recording never refuses for the credit: the check is GET .../quota.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {"oneOf": [_ref("UsageRecord"), {"type": "array", "items": _ref("UsageRecord")}]}
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("UsageResult"), _ref("UsageBatchResult")]},
                        "the result, or {results} for a list",
                    ),
                    **_errors(400, 401, 403, 409, 413, 415, 503),
                },
            }
        },
        "/v1/users/{user}/credit": {
            "put": {
                "operationId": "setCredit",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "Set a user's credit (CNY) for a month (default: this UTC month)",
                "description": "Admin token only.",
                "parameters": [_user_param()],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CreditRequest")}}},
                "responses": {
                    "200": _json(_ref("CreditResult"), "the month's credit and use"),
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/v1/users/{user}/grants": {
            "get": {
                "operationId": "listGrants",
                "tags": ["stats"],
                "security": BEARER,
                "summary": "A user's grants: live ones first, in the order they are spent",
                "description": "Admin, service, or the user's own token.",
                "parameters": [_user_param()],
                "responses": {"200": _json(_ref("GrantList"), "the grants"), **_errors(400, 401, 403, 503)},
            },
            "post": {
                "operationId": "grantCredit",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "Give a user credit beyond the monthly credit, until it expires or is spent",
                "description": "Admin token only. Audited. Idempotent by grant_id: 201 for a new grant, 200 for "
                "a repeat of the same content, 409 for another content under the same id.",
                "parameters": [_user_param()],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("GrantRequest")}}},
                "responses": {
                    "201": _json(_ref("Grant"), "the new grant"),
                    "200": _json(_ref("Grant"), "the grant as it is (a repeat)"),
                    **_errors(400, 401, 403, 409, 413, 415, 503),
                },
            },
        },
        "/v1/users/{user}/grants/{grant_id}": {
            "delete": {
                "operationId": "revokeGrant",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "Revoke a grant: what is left of it is taken back (idempotent)",
                "description": "Admin token only. Audited. What was spent from it stays spent.",
                "parameters": [
                    _user_param(),
                    {"name": "grant_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("Grant"), "the revoked grant"),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/users/{user}/plan": {
            "put": {
                "operationId": "setPlan",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "Set (or clear, with null) a user's plan: the credit of every month without its own",
                "description": "Admin token only. Audited.",
                "parameters": [_user_param()],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("PlanRequest")}}},
                "responses": {
                    "200": _json(_ref("PlanResult"), "the plan now and before"),
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/v1/users/{user}/audit": {
            "get": {
                "operationId": "getAudit",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "A user's credit changes (monthly credit, plan, grants), newest first",
                "description": "Admin token only. From the history database (QUOTA_HISTORY_URL).",
                "parameters": [
                    _user_param(),
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": _json(_ref("AuditList"), "the entries"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/users/{user}/tokens/revoke": {
            "post": {
                "operationId": "revokeUserTokens",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "Revoke every token of a user issued until now, without rotating QUOTA_SECRET_KEY",
                "description": "Admin token only. No body. Tokens minted afterwards (quota token USER) work; "
                "other users' tokens are untouched. Same as `quota token --revoke USER`.",
                "parameters": [_user_param()],
                "responses": {
                    "200": _json(_ref("TokenRevocation"), "the user's new revocation instant"),
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/v1/alerts/pending": {
            "get": {
                "operationId": "listPendingAlerts",
                "tags": ["alerts"],
                "security": BEARER,
                "summary": "Threshold alert events waiting for the webhook (new, or between retries), oldest first",
                "description": "Admin token only. Same as `quota notify --status` (docs/ALERTS.md).",
                "parameters": [LIMIT],
                "responses": {"200": _json(_ref("AlertList"), "the events"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/alerts/dead": {
            "get": {
                "operationId": "listDeadAlerts",
                "tags": ["alerts"],
                "security": BEARER,
                "summary": "Threshold alert events given up on after 24 hours of retries (dead letters), oldest first",
                "description": "Admin token only.",
                "parameters": [LIMIT],
                "responses": {"200": _json(_ref("AlertList"), "the dead letters"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/alerts/dead/{event_id}/redeliver": {
            "post": {
                "operationId": "redeliverAlert",
                "tags": ["alerts"],
                "security": BEARER,
                "summary": "Put one dead letter back in its outbox, due now, with a new 24 hours of retries",
                "description": "Admin token only. No body. Same as `quota notify --redeliver EVENT_ID`.",
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": EVENT_ID_PATTERN},
                        "description": "the event's id (its webhook-id)",
                    }
                ],
                "responses": {
                    "200": _json(_ref("AlertEvent"), "the event, pending again"),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "tags": ["stats"],
                "security": BEARER,
                "summary": "The price table",
                "description": "Admin or service token.",
                "responses": {"200": _json(_ref("PriceTable"), "system and custom models"), **_errors(401, 403)},
            }
        },
        "/v1/admin/months/{month}/summary": {
            "get": {
                "operationId": "getMonthSummary",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "A month at a glance: totals, per model, users at 80 % and 100 % of their credit",
                "description": "Admin token only. The live month is read from Redis without blocking it and kept "
                "QUOTA_REPORT_CACHE_S seconds; a past month comes from the SQL history merged with Redis.",
                "parameters": [_month_param()],
                "responses": {"200": _json(_ref("MonthSummary"), "the summary"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/admin/months/{month}/overview": {
            "get": {
                "operationId": "getMonthOverview",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "The summary, the top spenders and the users near the credit, from one read",
                "description": "Admin token only. `top` users by cost (default 20); `near`: the users at 80 % of "
                "their credit or more, highest share first (at most `near`, default 50). What /admin shows.",
                "parameters": [
                    _month_param(),
                    {
                        "name": "top",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "near",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE},
                    },
                ],
                "responses": {"200": _json(_ref("MonthOverview"), "the overview"), **_errors(400, 401, 403, 503)},
            }
        },
        "/v1/admin/months/{month}/users": {
            "get": {
                "operationId": "listMonthUsers",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "The month's users, a page at a time in a chosen order, or all of them as CSV",
                "description": "Admin token only. JSON: up to `limit` users after `cursor` (from the previous "
                "page's next_cursor), highest first (sort=user: by user id). format=csv: every user, one row "
                f"per user and model ({', '.join(CSV_HEADER)}), streamed, in no particular order; "
                "ids starting with + - @ get a leading apostrophe (no spreadsheet formulas).",
                "parameters": [
                    _month_param(),
                    {"name": "sort", "in": "query", "required": False, "schema": {"enum": list(REPORT_SORTS)}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"]}},
                ],
                "responses": {
                    "200": {
                        "description": "a page of users (JSON), or the CSV export",
                        "content": {
                            JSON: {"schema": _ref("MonthUsersPage")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/v1/admin/users/{user}/adjustments": {
            "post": {
                "operationId": "adjustUserMonth",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "An audited correction of a user's month: signed amounts, its own id and a reason",
                "description": "Admin token only. Reversing a wrong record is its negation (negative cost and "
                "tokens, calls -1); on a system model the cost also moves the month's use of the credit. 201: made; "
                "200: this id was used for the same adjustment before (nothing changed); 409: used for another "
                "one; 400: a counter would go below zero (nothing changed). Same as `quota adjust`.",
                "parameters": [_user_param()],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("AdjustmentRequest")}}},
                "responses": {
                    "201": _json(_ref("Adjustment"), "the adjustment, made"),
                    "200": _json(_ref("Adjustment"), "the adjustment, made before (nothing changed)"),
                    **_errors(400, 401, 403, 409, 413, 415, 503),
                },
            },
            "get": {
                "operationId": "listUserAdjustments",
                "tags": ["admin"],
                "security": BEARER,
                "summary": "A user's adjustments of a month (default: this UTC month), oldest first",
                "description": "Admin token only. Same as `quota adjust USER - --list`.",
                "parameters": [
                    _user_param(),
                    {"name": "month", "in": "query", "required": False, "schema": MONTH},
                ],
                "responses": {"200": _json(_ref("AdjustmentList"), "the adjustments"), **_errors(400, 401, 403, 503)},
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["ops"],
                "security": [],
                "summary": "Is Redis reachable? And the history store?",
                "description": "503 while Redis does not answer; 200 with status degraded while only the SQL "
                "history does not (the live month is served, past months from Redis only). Never says where "
                "either is: the log does.",
                "responses": {"200": _json(_ref("Health"), "Redis answers"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["ops"],
                "security": [],
                "summary": "Prometheus metrics: requests, latency, records, checks and denials, storage errors, "
                "alert events (emitted, delivered, failed, dead, pending, oldest pending age)",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["ops"],
                "security": [],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/panel": {
            "get": {
                "operationId": "panel",
                "tags": ["pages"],
                "security": [],
                "summary": "The token statistics panel; open it as /panel#user=<user>&token=<token>",
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
    }
    paths["/admin"] = {
        "get": {
            "operationId": "adminPage",
            "tags": ["pages"],
            "security": [],
            "summary": "The operator's view of a month; open it as /admin#token=<admin token>",
            "responses": {
                "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    }
    if demo:
        paths["/demo"] = {
            "get": {
                "operationId": "demoPage",
                "tags": ["demo"],
                "security": [],
                "summary": "The demo chat (only when QUOTA_DEMO is on)",
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        }
        paths["/demo/turn"] = {
            "post": {
                "operationId": "demoTurn",
                "tags": ["demo"],
                "security": [],
                "summary": "One turn of the simulated agent: check, then record its calls",
                "description": "Only for users whose id starts with 'demo', on the demo's own key prefix "
                "(<prefix>-demo): never a real user's credit. A refused turn records nothing. "
                f"At most {MAX_TURNS} messages per conversation (400 conversation_too_long) "
                f"of at most {MAX_MESSAGE_CHARS} characters (400 message_too_long).",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("DemoTurnRequest")}}},
                "responses": {
                    "200": _json(_ref("DemoTurnResult"), "the reply, or the quota_exceeded event"),
                    **_errors(400, 409, 413, 415, 503),
                },  # 409: a turn number reused with other content
            }
        }
        paths["/demo/users/{user}/token-stats"] = {
            "get": {
                "operationId": "getDemoTokenStats",
                "tags": ["demo"],
                "security": [],
                "summary": "A demo user's token statistics (the panel opened as /panel#demo=1&user=<user>)",
                "description": "No token: only demo users, on the demo's own key prefix.",
                "parameters": [{"name": "user", "in": "path", "required": True, "schema": DEMO_USER}],
                "responses": {"200": _json(_ref("TokenStats"), "the seed's structure"), **_errors(400, 503)},
            }
        }
    return paths


def openapi_document(*, demo: bool = False) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quota",
            "version": quota.__version__,
            "description": "Per-user, per-model LLM token and cost metering on Redis. Amounts are CNY. "
            'Every error is {"error": {"code", "message"}}.',
        },
        "paths": _paths(demo),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "QUOTA_ADMIN_TOKEN, QUOTA_SERVICE_TOKEN, or a user token from `quota token USER`",
                }
            },
        },
    }
