"""Every error leaves the API as ``{"error": {"code": "...", "message": "..."}}``.

| status | codes                                                                    |
|--------|--------------------------------------------------------------------------|
| 400    | bad_request (malformed JSON), invalid_body, invalid_input, unknown_model |
| 401    | unauthorized, token_expired                                              |
| 403    | forbidden                                                                |
| 404    | not_found (also: an unknown grant id)                                    |
| 405    | method_not_allowed                                                       |
| 409    | request_conflict (a request_id reused with other content), batch_failed  |
| 413    | payload_too_large                                                        |
| 415    | unsupported_media_type (a body that is not ``application/json``)         |
| 503    | storage_unavailable, batch_failed                                        |
| 500    | internal (a bug; logged with its traceback, never shown)                 |
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from quota import InvalidInput, QuotaError, RequestConflict, StorageUnavailable, UnknownGrant, UnknownModel

from .ext import get_quota

log = logging.getLogger("quota.api")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "storage_unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status and machine-readable code, raised by views."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra or {}


def quota_error_status(exc: QuotaError) -> tuple[int, str]:
    """HTTP status and code of a library error."""
    if isinstance(exc, RequestConflict):
        return 409, "request_conflict"
    if isinstance(exc, UnknownModel):
        return 400, "unknown_model"
    if isinstance(exc, UnknownGrant):
        return 404, "not_found"
    if isinstance(exc, InvalidInput):
        return 400, "invalid_input"
    if isinstance(exc, StorageUnavailable):
        return 503, "storage_unavailable"
    return 500, "internal"


# What a caller without an admin or service token reads when Redis is away (/healthz, the demo, a
# user's panel): the library's message names the host and port, which is for operators only.
PUBLIC_STORAGE_MESSAGE = "the storage is unavailable; try again later"


def shows_storage_details() -> bool:
    """Did an admin or service token authenticate this request? (``g.principal`` is set by
    ``/v1``'s token check; routes without a token have none.)"""
    from .auth import Role  # auth imports this module

    principal = g.get("principal")
    return principal is not None and principal.role in (Role.ADMIN, Role.SERVICE)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def register_error_handlers(app: Flask) -> None:
    def respond(
        status: int, code: str, message: str, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
    ) -> Response:
        response = jsonify(error_body(code, message, **(extra or {})))
        response.status_code = status
        response.headers.update(headers or {})
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return respond(exc.status, exc.code, exc.message, exc.headers, exc.extra)

    @app.errorhandler(QuotaError)
    def quota_error(exc: QuotaError) -> Response:
        status, code = quota_error_status(exc)
        if status == 503:
            get_quota(app).metrics.storage_errors.inc()
            log.warning("storage unavailable: %s", exc)
            if not shows_storage_details():
                return respond(status, code, PUBLIC_STORAGE_MESSAGE)
        elif status == 500:
            log.exception("unexpected library error")
            return respond(500, "internal", "internal error")
        return respond(status, code, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        valid_methods = getattr(exc, "valid_methods", None)  # a 405 (MethodNotAllowed) lists them
        headers = {"Allow": ", ".join(valid_methods)} if valid_methods else None
        message = exc.description or exc.name
        if status == 413:
            message = f"the request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        return respond(status, HTTP_CODES.get(status, "http_error"), message, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return respond(500, "internal", "internal error")
