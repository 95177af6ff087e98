"""System checks (``manage.py check``, ``runserver``, ``migrate``, the test runner): tag ``quota``.

- ``quota.E001`` an unknown key in QUOTA (the message names the known ones), ``quota.E002`` a
  value the library refuses, ``quota.E003`` a hook that cannot be imported, ``quota.E004`` no
  ``REDIS_URL``, ``quota.E005`` options ``Meter.from_url`` refuses (URL scheme, spool path);
- ``quota.W001`` Redis does not answer (a warning: the site may start before Redis does);
- ``quota.W002`` the panel's static files are not served (``PanelFinder`` missing from
  ``STATICFILES_FINDERS``); ``quota.E006`` (from the finder) the files are missing.

ASGI servers (daphne, uvicorn) run no checks: run ``manage.py check --deploy`` before starting
them. A broken QUOTA also raises ``QuotaSettingsError`` (same message, same id) at the first
``get_meter()`` / ``get_async_meter()``. A build step without the runtime settings (``collectstatic``
in a container build) passes ``--skip-checks``.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from redis.backoff import NoBackoff
from redis.retry import Retry

from quota import StorageUnavailable

from .conf import QuotaSettingsError
from .meters import build_meter

FINDER = "quota.contrib.django.staticfiles.PanelFinder"
PING_TIMEOUT_S = 0.5  # one try, short: checks run at every manage.py command


@register("quota")
def check_quota_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        meter = build_meter(
            history=None,
            socket_timeout=PING_TIMEOUT_S,
            socket_connect_timeout=PING_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
    except QuotaSettingsError as exc:
        return [Error(str(exc), hint=exc.hint, id=exc.check_id, obj="settings.QUOTA")]
    messages: list[CheckMessage] = []
    try:
        meter.ping()
    except StorageUnavailable as exc:
        messages.append(
            Warning(
                str(exc),
                hint="start Redis, or fix QUOTA['REDIS_URL']; until then every "
                "turn follows QUOTA['ON_UNAVAILABLE'] (default: allow)",
                id="quota.W001",
                obj="settings.QUOTA",
            )
        )
    finally:
        meter.close()
    return messages


@register("quota", "staticfiles")
def check_panel_static(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("django.contrib.staticfiles") and FINDER not in settings.STATICFILES_FINDERS:
        return [
            Warning(
                "the quota panel's JS and CSS are not served as static files",
                hint=f"add {FINDER!r} to STATICFILES_FINDERS (with Django's two default finders)",
                id="quota.W002",
            )
        ]
    return []
