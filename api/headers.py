"""Response headers that make the browser enforce what the pages and the API already promise.

- HTML (``/panel``, ``/demo``): a Content-Security-Policy that allows scripts, styles and fetches
  from this origin only and no inline script at all (the pages load ``api/static/*.js``; an
  injected ``<script>`` or ``onclick=`` would not run), ``frame-ancestors 'none'`` (no page may
  frame the panel and click through it), and ``Referrer-Policy: no-referrer``.
- ``/v1``: ``Cache-Control: no-store``: a user's statistics, fetched with their token, must not
  stay in a browser's or a proxy's cache.
- Every response: ``X-Content-Type-Options: nosniff``, so a JSON error or a static file is never
  run as something else.
"""

from __future__ import annotations

from flask import Flask, Response, request

# default-src 'none': anything not listed below (objects, frames, fonts, workers) is refused.
PAGE_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
}


def register_security_headers(app: Flask) -> None:
    """Add the headers above to every response the app gives, errors included."""

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/v1/"):
            response.headers["Cache-Control"] = "no-store"
        if response.mimetype == "text/html":
            response.headers.update(PAGE_HEADERS)
        return response
