"""``/demo`` and ``POST /demo/turn``: the simulated chat, on only when ``QUOTA_DEMO`` is (default:
development mode). The turn endpoint needs no token but only spends the credit of ``demo*``
users, so an open demo page can not burn a real user's credit."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from .demo_agent import DEMO_USER_PREFIX, run_turn
from .errors import ApiError

bp = Blueprint("demo", __name__)


@bp.get("/demo")
def page() -> str:
    ext = current_app.extensions["quota"]
    return render_template("demo.html", system_models=sorted(ext.meter.prices.system_models),
                           custom_model="custom_demo", user_prefix=DEMO_USER_PREFIX)


@bp.post("/demo/turn")
def turn():  # noqa: ANN201
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
    ext = current_app.extensions["quota"]
    result = run_turn(ext.meter, request.get_json())  # InvalidInput -> 400 via the error handler
    if result["type"] == "quota_exceeded":
        ext.metrics.record_check(False)
    else:
        ext.metrics.record_check(True)
        for call in result["calls"]:
            ext.metrics.record_usage(result["is_system"], call["duplicate"])
    return jsonify(result)
