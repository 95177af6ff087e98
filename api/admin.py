"""``/v1/admin``: the operator's view of a month (admin token only).

- ``GET /v1/admin/months/<YYYY-MM>/summary``: the month's totals, per model, and how many users are
  at 80 % and 100 % of their credit (``Meter.month_report``'s summary);
- ``GET /v1/admin/months/<YYYY-MM>/users?sort=cost&limit=100&cursor=...``: one page of users in
  ``sort`` order and the cursor of the next page;
- ``GET /v1/admin/months/<YYYY-MM>/users?format=csv``: every user, one row per user and model,
  streamed (``text/csv``; memory holds one page of users, whatever the month's size);
- ``GET /v1/admin/months/<YYYY-MM>/overview?top=20&near=50``: the summary, the top spenders and the
  users near the credit in one answer (the admin page);
- ``POST /v1/admin/users/<user>/adjustments``: an audited correction (``Meter.adjust``: signed
  amounts, its own id and a reason); ``GET`` the same path lists a month's adjustments.

The live month is read from Redis without blocking it (SCAN with a small COUNT, pipelined HGETALL)
and the read is kept ``QUOTA_REPORT_CACHE_S`` seconds, so the pages of one listing and its summary
cost one read; a past month comes from the SQL history, merged with what Redis still holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from quota import InvalidInput
from quota._keys import validate_month
from quota._report import MAX_PAGE, NEAR_PERCENT, SORTS, csv_chunks

from .auth import Action, authorize
from .errors import ApiError
from .ext import get_quota
from .v1 import check_keys, int_arg, json_body, path_user, principal, require_token

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
bp.before_request(require_token)
log = logging.getLogger("quota.api")

CSV_TYPE = "text/csv; charset=utf-8"


def path_month(month: str) -> str:
    try:
        return validate_month(month)
    except InvalidInput as exc:
        raise ApiError(400, "invalid_input", str(exc)) from None


@bp.get("/months/<month>/summary")
def month_summary(month: str):  # noqa: ANN201
    authorize(principal(), Action.READ_REPORTS)
    month = path_month(month)
    return jsonify(get_quota().meter.month_data(month).summary.as_dict())


@bp.get("/months/<month>/overview")
def month_overview(month: str):  # noqa: ANN201
    """The summary, the top ``top`` users by cost and the users at 80 % of their credit or more
    (highest share first, at most ``near``), from one read: what the admin page shows. One request
    instead of three matters under gunicorn, where each worker keeps its own cache and three
    requests could make three workers each read a million hashes."""
    authorize(principal(), Action.READ_REPORTS)
    month = path_month(month)
    top = int_arg("top", 0, MAX_PAGE)
    near = int_arg("near", 0, MAX_PAGE)
    data = get_quota().meter.month_data(month)
    by_share = data.report(sort="share", top=50 if near is None else near)
    return jsonify(
        {
            "summary": data.summary.as_dict(),
            "top": [r.as_dict() for r in data.report(sort="cost", top=20 if top is None else top)],
            "near": [r.as_dict() for r in by_share if r.percent_used >= NEAR_PERCENT],
        }
    )


@bp.get("/months/<month>/users")
def month_users(month: str) -> Response:
    authorize(principal(), Action.READ_REPORTS)
    month = path_month(month)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_input", f"format must be json or csv, got {fmt!r}")
    # validated for both formats: a parameter the CSV export does not use is still not a free-for-all
    sort = request.args.get("sort", "cost")
    if sort not in SORTS:
        raise ApiError(400, "invalid_input", f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    limit = int_arg("limit", 1, MAX_PAGE) or 100
    if fmt == "csv":
        return csv_response(month)
    data = get_quota().meter.month_data(month)
    rows, cursor = data.page(sort=sort, limit=limit, cursor=request.args.get("cursor"))
    return jsonify(
        {
            "month": month,
            "sort": sort,
            "users": [r.as_dict() for r in rows],
            "next_cursor": cursor,
            "total_users": len(data),
            "computed_at": data.summary.as_dict()["computed_at"],
        }
    )


def csv_response(month: str) -> Response:
    """Every user of ``month``, one row per user and model, streamed as it is read. The first
    page is read before the answer starts, so that Redis or the database being away is a 503,
    not a 200 cut short; a failure later ends the download early (logged)."""
    meter = get_quota().meter
    pages = meter.month_usage(month)
    chunks = csv_chunks(month, pages, meter.prices, meter.settings.credit_nano)
    first = [next(chunks)]  # the header
    try:
        first.append(next(chunks))
    except StopIteration:
        pass

    def body() -> Iterator[str]:
        yield from first
        try:
            yield from chunks
        except Exception:
            log.exception("the CSV export of %s stopped early", month)
            raise

    response = Response(body(), content_type=CSV_TYPE)
    response.headers["Content-Disposition"] = f'attachment; filename="quota-{month}.csv"'
    return response


ADJUST_FIELDS = frozenset(
    {"model_id", "adjustment_id", "reason", "cost", "input_tokens", "output_tokens", "calls", "month", "actor"}
)
ADJUST_REQUIRED = frozenset({"model_id", "adjustment_id", "reason"})


@bp.post("/users/<user>/adjustments")
def make_adjustment(user: str):  # noqa: ANN201
    """An audited correction of ``user``'s month: 201 when made, 200 when this id was already used
    for the same adjustment (nothing changed), 409 for another one, 400 when a counter would go
    below zero. The actor is ``api:<role>``, with the body's ``actor`` (who asked) after it."""
    authorize(principal(), Action.ADJUST, user)
    user = path_user(user)
    body = check_keys(json_body(), "the body", ADJUST_FIELDS, ADJUST_REQUIRED)
    if isinstance(body.get("cost"), (bool, dict, list)):
        raise ApiError(400, "invalid_input", "cost must be a number (or a decimal string) of CNY")
    who = body.get("actor")
    if who is not None and not isinstance(who, str):
        raise ApiError(400, "invalid_input", "actor must be a string")
    actor = f"api:{principal().role}" + (f":{who}" if who else "")
    result = get_quota().meter.adjust(
        user,
        body["model_id"],
        adjustment_id=body["adjustment_id"],
        reason=body["reason"],
        cost=body.get("cost", 0),
        input_tokens=body.get("input_tokens", 0),
        output_tokens=body.get("output_tokens", 0),
        calls=body.get("calls", 0),
        month=body.get("month"),
        actor=actor,
    )
    return jsonify(result.as_dict()), 200 if result.duplicate else 201


@bp.get("/users/<user>/adjustments")
def list_adjustments(user: str):  # noqa: ANN201
    authorize(principal(), Action.ADJUST, user)
    user = path_user(user)
    month = request.args.get("month")
    adjustments = get_quota().meter.adjustments(user, None if month is None else path_month(month))
    return jsonify({"user": user, "adjustments": [a.as_dict() for a in adjustments]})
