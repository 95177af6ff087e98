"""``/v1``: the JSON API used by agent workers, front ends and ops. Every route needs a token."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from flask import Blueprint, current_app, g, jsonify, request

from quota import BatchError, InvalidInput, RequestConflict, StorageUnavailable
from quota._audit import AuditSink
from quota._core import RECORD_FIELDS, RECORD_REQUIRED
from quota._keys import validate_user
from quota._notify import parse_event_id, read_events, redeliver
from quota._tokens import iso_ms, revoke_user_tokens, tokens_valid_after_ms

from .auth import Action, Principal, authenticate, authorize
from .errors import ApiError, error_body, quota_error_status
from .ext import get_quota
from .jsonio import QuotaJSONProvider

bp = Blueprint("v1", __name__, url_prefix="/v1")

USAGE_FIELDS = frozenset(RECORD_FIELDS)  # what Meter.update_token_usage_many takes, from the core
USAGE_REQUIRED = RECORD_REQUIRED


@bp.before_request
def require_token() -> None:
    ext = get_quota()
    meter = ext.meter
    g.principal = authenticate(
        request.headers.get("Authorization"),
        ext.settings,
        valid_after_ms=lambda user: tokens_valid_after_ms(meter.client, meter.settings.prefix, user),
    )


def json_provider() -> QuotaJSONProvider:
    return cast(QuotaJSONProvider, current_app.json)  # create_app sets it


def principal() -> Principal:
    return g.principal


def json_body() -> Any:
    """The request's JSON: 415 unless it is ``application/json``, 400 when it does not parse."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
    return request.get_json()  # werkzeug's BadRequest -> 400 bad_request via the error handler


def path_user(user: str) -> str:
    try:
        return validate_user(user)
    except InvalidInput as exc:
        raise ApiError(400, "invalid_input", str(exc)) from None


def int_arg(name: str, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:  # not "²" or "٣"
        raise ApiError(400, "invalid_input", f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


@bp.get("/users/<user>/token-stats")
def token_stats(user: str):  # noqa: ANN201
    authorize(principal(), Action.READ_USER, user)
    user = path_user(user)
    months = int_arg("months", 0, 120)
    ext = get_quota()
    stats = ext.meter.get_token_stats(user, months=months)
    if stats.get("history_unavailable"):  # served from Redis alone: counted apart from Redis errors
        ext.metrics.history_errors.inc()
    return json_provider().stats_response(stats, (user, months))


@bp.get("/users/<user>/quota")
def quota(user: str):  # noqa: ANN201
    authorize(principal(), Action.READ_USER, user)
    user = path_user(user)
    model_id = request.args.get("model_id")
    if not model_id:
        raise ApiError(400, "invalid_input", "the query parameter model_id is required")
    ext = get_quota()
    check = ext.meter.check_quota_available(user, model_id)
    ext.metrics.record_check(check.allowed)
    return jsonify(check.as_dict())


def check_record_keys(record: Any, where: str) -> dict[str, Any]:
    return check_keys(record, where, USAGE_FIELDS, USAGE_REQUIRED)


def check_keys(body: Any, where: str, fields: frozenset[str], required: frozenset[str]) -> dict[str, Any]:
    """``body`` when it is a JSON object with only ``fields`` and every one of ``required``; else 400."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", f"{where} must be a JSON object, got {type(body).__name__}")
    unknown, missing = set(body) - fields, required - set(body)
    if unknown or missing:
        problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise ApiError(400, "invalid_body", f"{where}: {problem}")
    return body


@bp.post("/usage")
def record_usage():  # noqa: ANN201
    """One record (object in, result out) or a batch (list in, ``{"results": [...]}`` out)."""
    authorize(principal(), Action.RECORD)
    body = json_body()
    ext = get_quota()
    meter, metrics = ext.meter, ext.metrics
    if isinstance(body, dict):
        record = check_record_keys(body, "the body")
        result = meter.update_token_usage(
            record["user"],
            record["model_id"],
            record["input_tokens"],
            record["output_tokens"],
            request_id=record.get("request_id"),
            price=record.get("price"),
            estimated=record.get("estimated", False),
            purpose=record.get("purpose"),
            cached_input_tokens=record.get("cached_input_tokens", 0),
            cache_write_tokens=record.get("cache_write_tokens", 0),
        )
        metrics.record_usage(result.is_system, result.duplicate, result.cost_nano)
        return jsonify(result.as_dict())
    if not isinstance(body, list):
        raise ApiError(
            400, "invalid_body", f"the body must be a JSON object or a list of them, got {type(body).__name__}"
        )
    if len(body) > ext.settings.max_batch:
        raise ApiError(400, "invalid_body", f"at most {ext.settings.max_batch} records per request, got {len(body)}")
    records = [check_record_keys(r, f"record {i}") for i, r in enumerate(body)]
    try:
        results = meter.update_token_usage_many(records)
    except BatchError as exc:
        return batch_failure(exc)
    for result in results:
        metrics.record_usage(result.is_system, result.duplicate, result.cost_nano)
    return jsonify({"results": [r.as_dict() for r in results]})


def batch_failure(exc: BatchError):  # noqa: ANN201
    """Some records were counted, some not: 409 if only conflicts failed, else 503.

    The body is still an error, with ``results`` (per record: the result or its error) so that a
    worker can resend exactly the failed records; their request ids make that safe.
    """
    out = []
    for item in exc.results:
        if isinstance(item, Exception):
            status, code = quota_error_status(item)
            out.append(error_body(code, str(item)))
        else:
            get_quota().metrics.record_usage(item.is_system, item.duplicate, item.cost_nano)
            out.append(item.as_dict())
    if any(isinstance(e, StorageUnavailable) for e in exc.errors.values()):
        get_quota().metrics.storage_errors.inc()
    only_conflicts = all(isinstance(e, RequestConflict) for e in exc.errors.values())
    response = jsonify(error_body("batch_failed", str(exc), results=out))
    response.status_code = 409 if only_conflicts else 503
    return response


@bp.put("/users/<user>/credit")
def set_credit(user: str):  # noqa: ANN201
    authorize(principal(), Action.SET_CREDIT, user)
    user = path_user(user)
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", f"the body must be a JSON object, got {type(body).__name__}")
    unknown = set(body) - {"credit", "month"}
    if unknown or "credit" not in body:
        problem = f"unknown keys {sorted(unknown)}" if unknown else "missing key 'credit'"
        raise ApiError(400, "invalid_body", f"the body: {problem}")
    if isinstance(body["credit"], (bool, dict, list)) or body["credit"] is None:
        raise ApiError(400, "invalid_input", "credit must be a number (or a decimal string) of CNY")
    meter = get_quota().meter
    return jsonify(meter.set_monthly_credit(user, body["credit"], body.get("month"), actor=actor()).as_dict())


@bp.post("/users/<user>/tokens/revoke")
def revoke_tokens(user: str):  # noqa: ANN201
    """Every token of ``user`` issued until now stops working; tokens minted afterwards work.
    No body; the key is not rotated, other users' tokens are untouched."""
    authorize(principal(), Action.REVOKE_TOKENS, user)
    user = path_user(user)
    meter = get_quota().meter
    at_ms = revoke_user_tokens(meter.client, meter.settings.prefix, user)
    return jsonify({"user": user, "tokens_valid_after": iso_ms(at_ms), "tokens_valid_after_ms": at_ms})


@bp.get("/models")
def models():  # noqa: ANN201
    """The prices in force now (the meter's clock) and the changes to come (``upcoming``)."""
    authorize(principal(), Action.LIST_MODELS)
    meter = get_quota().meter
    return jsonify(meter.prices.as_json(meter.core.clock()))


# --- threshold alerts (issue 11; docs/ALERTS.md) ------------------------------------------------------


@bp.get("/alerts/pending")
def pending_alerts():  # noqa: ANN201
    """The events waiting for the webhook (new, or between retries), oldest first."""
    return alert_list(dead=False)


@bp.get("/alerts/dead")
def dead_alerts():  # noqa: ANN201
    """The events given up on after 24 hours of retries (dead letters), oldest first."""
    return alert_list(dead=True)


def alert_list(*, dead: bool):  # noqa: ANN201
    authorize(principal(), Action.MANAGE_ALERTS)
    limit = int_arg("limit", 1, 10_000) or 1000
    events = read_events(get_quota().meter, dead=dead, limit=limit)
    return jsonify({"state": "dead" if dead else "pending", "events": [e.as_dict() for e in events]})


@bp.post("/alerts/dead/<event_id>/redeliver")
def redeliver_alert(event_id: str):  # noqa: ANN201
    """Put one dead letter back in its user's outbox, due now, with a new 24 h of retries."""
    authorize(principal(), Action.MANAGE_ALERTS)
    meter = get_quota().meter
    try:
        user, field = parse_event_id(meter.settings.prefix, event_id)
        validate_user(user)
    except (ValueError, InvalidInput) as exc:
        raise ApiError(400, "invalid_input", f"not an event id: {exc}") from None
    event = redeliver(meter, user, field)
    if event is None:
        raise ApiError(404, "not_found", f"no dead event {event_id}")
    return jsonify(event.as_dict())


# --- grants, plans and the audit trail (issue 12; docs/PRICING.md) -------------------------------------


def actor() -> str:
    """Who makes a credit change, for the audit trail: the token's role."""
    return f"api:{principal().role.value}"


def json_object(allowed: set[str], required: set[str] | None = None) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` keys and every ``required`` one (check_keys)."""
    return check_keys(json_body(), "the body", frozenset(allowed), frozenset(required or ()))


def cny_field(body: dict[str, Any], name: str) -> Any:
    value = body[name]
    if isinstance(value, (bool, dict, list)) or value is None:
        raise ApiError(400, "invalid_input", f"{name} must be a number (or a decimal string) of CNY")
    return value


def instant_field(body: dict[str, Any], name: str) -> datetime | None:
    """An ISO 8601 instant with its offset (``2026-03-01T00:00:00Z``), or null."""
    value = body.get(name)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_input", f"{name} must be an ISO 8601 instant like 2026-03-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ApiError(400, "invalid_input", f"{name} must carry its UTC offset (Z or +08:00)")
    return moment


@bp.get("/users/<user>/grants")
def list_grants(user: str):  # noqa: ANN201
    authorize(principal(), Action.READ_USER, user)
    user = path_user(user)
    grants = get_quota().meter.get_grants(user)
    return jsonify({"user": user, "grants": [g.as_dict() for g in grants]})


@bp.post("/users/<user>/grants")
def add_grant(user: str):  # noqa: ANN201
    """201 with the new grant; 200 with the existing one for a repeat of the same grant_id and
    content; 409 for a grant_id already used for another grant."""
    authorize(principal(), Action.SET_CREDIT, user)
    user = path_user(user)
    body = json_object({"amount", "expires_at", "grant_id", "reason"}, {"amount"})
    grant = get_quota().meter.grant_credit(
        user,
        cny_field(body, "amount"),
        expires_at=instant_field(body, "expires_at"),
        grant_id=body.get("grant_id"),
        reason=body.get("reason"),
        actor=actor(),
    )
    return jsonify({"user": user, "created": grant.created, **grant.as_dict()}), 201 if grant.created else 200


@bp.delete("/users/<user>/grants/<grant_id>")
def delete_grant(user: str, grant_id: str):  # noqa: ANN201
    """Revoke: what is left of the grant is taken back (idempotent; 404 for an unknown grant)."""
    authorize(principal(), Action.SET_CREDIT, user)
    user = path_user(user)
    grant = get_quota().meter.revoke_grant(user, grant_id, actor=actor())
    return jsonify({"user": user, "revoked": grant.as_dict()["revoked_at"] is not None, **grant.as_dict()})


@bp.put("/users/<user>/plan")
def set_plan(user: str):  # noqa: ANN201
    """``{"credit": 20}`` sets the user's standing monthly credit; ``{"credit": null}`` clears it."""
    authorize(principal(), Action.SET_CREDIT, user)
    user = path_user(user)
    body = json_object({"credit"}, {"credit"})
    credit = None if body["credit"] is None else cny_field(body, "credit")
    return jsonify(get_quota().meter.set_plan_credit(user, credit, actor=actor()).as_dict())


@bp.get("/users/<user>/audit")
def audit_trail(user: str):  # noqa: ANN201
    """The user's credit changes, newest first (``limit``, default 100)."""
    authorize(principal(), Action.READ_AUDIT, user)
    user = path_user(user)
    limit = int_arg("limit", 1, 1000) or 100
    meter = get_quota().meter
    if not isinstance(meter.history, AuditSink):
        raise ApiError(503, "storage_unavailable", "this server has no history database (QUOTA_HISTORY_URL)")
    return jsonify({"user": user, "entries": meter.get_audit(user, limit=limit)})
