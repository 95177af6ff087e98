"""``/demo``, ``POST /demo/turn`` and ``GET /demo/users/<user>/token-stats``: the simulated chat,
on only when ``QUOTA_DEMO`` is (default: development mode).

None of them needs a token, so they run on the demo's own meter (``get_quota().demo_meter``, key
prefix ``<prefix>-demo``, see ``api.demo_agent``): the open page can spend and show only demo users'
credit, never a real user's, whatever the id (``demo.smith@corp.com`` included). The stats route
lets the panel follow the demo (``/panel#demo=1&user=demo``) without a user token.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request

from quota import InvalidInput, Meter

from .demo_agent import DEMO_USER_PREFIX, DemoLimit, run_turn, validate_demo_user
from .errors import ApiError
from .ext import get_quota

bp = Blueprint("demo", __name__)


def demo_meter() -> Meter:
    """The demo's own meter: there is one whenever this blueprint is registered (create_app)."""
    meter = get_quota().demo_meter
    if meter is None:
        raise RuntimeError("the demo blueprint is registered without the demo's meter")
    return meter


@bp.get("/demo")
def page() -> str:
    return render_template(
        "demo.html",
        system_models=sorted(get_quota().meter.prices.system_models),
        custom_model="custom_demo",
        user_prefix=DEMO_USER_PREFIX,
    )


@bp.post("/demo/turn")
def turn():  # noqa: ANN201
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
    try:
        result = run_turn(demo_meter(), request.get_json())  # InvalidInput -> 400 via the error handler
    except DemoLimit as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    if result["type"] == "quota_exceeded":
        get_quota().metrics.record_check(False)
    else:
        get_quota().metrics.record_check(True)
        for call in result["calls"]:
            get_quota().metrics.record_usage(result["is_system"], call["duplicate"])
    return jsonify(result)


@bp.get("/demo/users/<user>/token-stats")
def token_stats(user: str):  # noqa: ANN201
    """A demo user's statistics, as ``/v1`` gives a real user's (no history store behind)."""
    try:
        user = validate_demo_user(user)
    except InvalidInput as exc:
        raise ApiError(400, "invalid_input", str(exc)) from None
    return jsonify(demo_meter().get_token_stats(user))
