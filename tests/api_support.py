"""Shared helpers for the API tests (no tests here): settings, a live server, auth headers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import make_server

from quota import Meter
from quota._tokens import mint_user_token
from quota_server import create_app
from quota_server.settings import ApiSettings

ADMIN = "admin-token-for-tests-0123456789"
SERVICE = "service-token-for-tests-012345678"
SECRET = "secret-key-for-tests-0123456789abcdef"

BASE_ENV = {"QUOTA_ADMIN_TOKEN": ADMIN, "QUOTA_SERVICE_TOKEN": SERVICE, "QUOTA_SECRET_KEY": SECRET}


def api_settings(**env: str) -> ApiSettings:
    """Production-mode settings with the test secrets; keyword args are extra environment."""
    return ApiSettings.from_env({**BASE_ENV, "QUOTA_MONTHLY_CREDIT": "5", **env})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_token(user: str, ttl_s: int = 3600, **kw: Any) -> str:
    return mint_user_token(SECRET, user, ttl_s, **kw)


def make_meter(url: str, clock: Any, settings: ApiSettings) -> Meter:
    return Meter.from_url(url, settings=settings.quota, clock=clock, prefix="apitest")


@dataclass
class LiveServer:
    """The app on a free loopback port, served by werkzeug in a thread."""

    app: Any
    meter: Meter

    def __post_init__(self) -> None:
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.meter.close()


def live_server(redis_url: str, clock: Any, **env: str) -> LiveServer:
    settings = api_settings(**env)
    meter = make_meter(redis_url, clock, settings)
    return LiveServer(create_app(settings, meter=meter), meter)
