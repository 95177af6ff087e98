"""Routes for operators and tools, no token needed: health, metrics, the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .ext import get_quota
from .openapi import openapi_document

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    """200 when Redis answers PING, else 503 ``storage_unavailable`` (via the error handler).

    Needs no token, so the answer says only ok or unavailable: where Redis is (host, port) goes
    to the log, never to an anonymous caller."""
    get_quota().meter.ping()
    return jsonify({"status": "ok", "redis": "ok"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format. No user ids in any label, so nothing here is per-user data."""
    body, content_type = get_quota().metrics.exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():  # noqa: ANN201
    return jsonify(openapi_document(demo=get_quota().settings.demo_enabled))
