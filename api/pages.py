"""The token statistics panel (``/panel``) and the operator's view (``/admin``). The pages need
no token: they read it from the URL *fragment* (``/panel#user=alice&token=...``,
``/admin#token=<admin token>``), which browsers never send to the server, so the token stays out
of every access log, then call ``/v1`` with it."""

from __future__ import annotations

from flask import Blueprint, render_template

from .ext import get_quota

bp = Blueprint("pages", __name__)


@bp.get("/panel")
def panel() -> str:
    settings = get_quota().settings
    return render_template("panel.html", refresh_s=settings.panel_refresh_s)


@bp.get("/admin")
def admin() -> str:
    """One month's totals, model mix, top spenders and users near the credit (``/v1/admin``)."""
    return render_template("admin.html")
