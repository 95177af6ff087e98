"""The app's one piece of state, and the one way the views reach it (like flaskr's ``get_db``).

``create_app`` builds a :class:`QuotaExtension` and keeps it in ``app.extensions["quota"]``;
every blueprint, error handler and hook reads it with :func:`get_quota`, never by that key.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from quota import Meter

from .metrics import Metrics
from .settings import ApiSettings

EXTENSION = "quota"  # the key in app.extensions


@dataclass
class QuotaExtension:
    """What the views need: the settings, the meter, the Prometheus metrics, the demo's meter."""

    settings: ApiSettings
    meter: Meter
    metrics: Metrics
    demo_meter: Meter | None = None  # the demo's own key prefix (api.demo_agent); None when it is off


def init_app(app: Flask, extension: QuotaExtension) -> None:
    app.extensions[EXTENSION] = extension


def get_quota(app: Flask | None = None) -> QuotaExtension:
    """The extension of ``app`` (default: the app handling the current request)."""
    return (current_app if app is None else app).extensions[EXTENSION]
