"""The token statistics panel (``/panel``). The page needs no token: it reads the user and token
from the URL *fragment* (``/panel#user=alice&token=...``), which browsers never send to the
server, so the token stays out of every access log, then calls ``/v1`` with it."""

from __future__ import annotations

from flask import Blueprint, render_template

from .ext import get_quota

bp = Blueprint("pages", __name__)


@bp.get("/panel")
def panel() -> str:
    settings = get_quota().settings
    return render_template("panel.html", refresh_s=settings.panel_refresh_s)
