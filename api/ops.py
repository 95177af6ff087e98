"""Routes for operators and tools, no token needed: health, metrics, the OpenAPI document."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from quota import StorageUnavailable

from .ext import get_quota
from .openapi import openapi_document

bp = Blueprint("ops", __name__)
log = logging.getLogger("quota.api")


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    """200 when Redis answers PING, else 503 ``storage_unavailable`` (via the error handler);
    ``history``: whether the SQL history answers too (``degraded`` when it does not: the live
    month is still served, so a load balancer should keep sending traffic).

    Needs no token, so the answer says only ok or unavailable: where Redis or the database is
    (host, port, file) goes to the log, never to an anonymous caller."""
    ext = get_quota()
    ext.meter.ping()
    body = {"status": "ok", "redis": "ok", "history": "none"}
    history = ext.meter.history
    if history is not None:
        try:
            history.ping()
            body["history"] = "ok"
        except StorageUnavailable as exc:
            ext.metrics.history_errors.inc()
            log.warning("health: the history store is unavailable: %s", exc)
            body |= {"status": "degraded", "history": "unavailable"}
    return jsonify(body)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format. No user ids in any label, so nothing here is per-user data."""
    body, content_type = get_quota().metrics.exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():  # noqa: ANN201
    return jsonify(openapi_document(demo=get_quota().settings.demo_enabled))
