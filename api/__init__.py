"""The quota HTTP service: a Flask app factory, installed as the package ``quota_server`` (the
repository keeps it in ``api/``; pyproject.toml maps the name, so that installing quota adds no
top-level ``api``, the name of many a Django app).

``create_app()`` reads its settings from the environment (``quota_server.settings``) and opens a
``Meter`` on ``REDIS_URL``; tests and ``quota serve`` pass their own. Production::

    gunicorn 'quota_server:create_app()' -w 4 -b 0.0.0.0:8000
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import Flask, g, request
from jinja2 import ChoiceLoader, FileSystemLoader

import quota
from quota import ConfigError, Meter
from quota._notify import read_stats

from .errors import register_error_handlers
from .ext import QuotaExtension, get_quota, init_app
from .headers import register_security_headers
from .jsonio import QuotaJSONProvider
from .metrics import Metrics, method_label, route_label
from .settings import ApiSettings

__all__ = ["QuotaExtension", "create_app", "get_quota"]

log = logging.getLogger("quota.api")
SHARED_TEMPLATES = Path(quota.__file__).parent / "contrib" / "django" / "templates"


def create_app(settings: ApiSettings | None = None, meter: Meter | None = None) -> Flask:
    """Build the app. ``settings`` default: the environment; ``meter`` default: ``REDIS_URL``."""
    settings = settings or ApiSettings.from_env()
    if meter is None:
        if not settings.quota.redis_url:
            raise ConfigError("REDIS_URL is not set (`quota serve` starts a local server when it is unset)")
        meter = Meter.from_url(settings.quota.redis_url, settings=settings.quota)

    app = Flask(__name__)
    # The panel's markup is one file shipped with the library, for this page and Django's
    # (quota/contrib/django/templates/quota/panel_body.html); found on disk, not by importing Django.
    app.jinja_loader = ChoiceLoader(
        [FileSystemLoader(Path(__file__).parent / "templates"), FileSystemLoader(SHARED_TEMPLATES)]
    )
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    # werkzeug answers "/v1//models" with a 308 to an absolute URL built from the Host header:
    # an open redirect to any host a client (or a poisoned cache) names. No route needs it.
    app.url_map.merge_slashes = False
    app.json = QuotaJSONProvider(app)  # unsorted, UTF-8; too-deep bodies are 400, not 500
    demo_meter = None
    if settings.demo_enabled:
        from .demo_agent import demo_meter_for

        demo_meter = demo_meter_for(meter)
    init_app(app, QuotaExtension(settings, meter, Metrics(alert_stats=lambda: read_stats(meter)), demo_meter))
    register_error_handlers(app)
    register_security_headers(app)

    from . import admin, ops, pages, v1

    app.register_blueprint(v1.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(pages.bp)
    if settings.demo_enabled:
        from . import demo

        app.register_blueprint(demo.bp)
    _count_requests(app)
    _log_start(settings, meter)
    return app


def _log_start(settings: ApiSettings, meter: Meter) -> None:
    """Say where the history is (a relative SQLite path resolved once, at start), and warn when a
    production server archives to the default SQLite file because QUOTA_HISTORY_URL is unset."""
    history = meter.history
    where = getattr(history, "where", None) or (repr(history) if history is not None else None)
    if where is None:
        log.info("history: none (expired months are read from Redis only)")
        return
    log.info("history: %s", where)
    if not settings.development and not settings.history_url_set:
        log.warning(
            "QUOTA_HISTORY_URL is not set: expired months are archived to the default %s, a file in the working "
            "directory the server started in, which a redeployment or another working directory loses or splits. "
            "Set QUOTA_HISTORY_URL (postgresql://user:password@host/db, or sqlite:////absolute/path.db)",
            where,
        )


def _count_requests(app: Flask) -> None:
    metrics = get_quota(app).metrics

    @app.before_request
    def start_timer() -> None:
        g.started_s = time.perf_counter()

    @app.after_request
    def count(response):  # noqa: ANN001, ANN202 - flask.Response
        route = route_label(request.url_rule.rule if request.url_rule is not None else None)
        metrics.requests.labels(route, method_label(request.method), str(response.status_code)).inc()
        started = g.get("started_s")
        if started is not None:
            metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response
