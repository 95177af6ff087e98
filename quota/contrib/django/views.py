"""The token statistics panel on the project's own login: the page, and the logged-in user's stats.

The page is the service's panel (``api/static/panel.js``, ``i18n.js``, ``quota.css``, served as
static files ``quota/...`` by :class:`.staticfiles.PanelFinder`); its ``<body data-stats-url>``
points panel.js at :func:`stats`, which the session cookie authenticates: no second service, no
token in a URL. The stats view has no user in its URL: a user reads their own, and nobody else's.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from quota import StorageUnavailable

from .hooks import quota_user_id
from .meters import get_meter

PANEL_REFRESH_S = 5


@require_GET
@login_required
def panel(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "quota/panel.html",
        {
            "stats_url": reverse("quota:stats"),
            "refresh_s": PANEL_REFRESH_S,
            "who": request.user.get_username(),
        },
    )


@require_GET
@never_cache
def stats(request: HttpRequest) -> JsonResponse:
    """``get_token_stats`` of the logged-in user, as the service's ``/v1/users/<user>/token-stats``;
    errors as the service's (``{"error": {"code", "message"}}``), which panel.js shows."""
    if not request.user.is_authenticated:
        return _error(401, "not_authenticated", "Your session has ended: log in again.")
    try:
        data = get_meter().get_token_stats(quota_user_id(request.user))
    except StorageUnavailable:
        return _error(503, "storage_unavailable", "Usage statistics are unavailable right now.")
    return JsonResponse(data, json_dumps_params={"ensure_ascii": False})


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)
