"""``quota serve``: the API, the panel and the demo on one local server, ready to click.

With ``REDIS_URL`` unset it starts a local Redis-compatible server (its data kept in a data
directory, see ``build``) and runs in development mode (made-up secrets, demo on), so a newcomer
needs nothing but Python. With ``REDIS_URL`` set it runs in production mode unless told ``--dev``
(or ``QUOTA_ENV=development``), and then refuses to start without the secrets. Either way it
serves with werkzeug's threaded server; production deployments run gunicorn
(``gunicorn -c gunicorn.conf.py 'quota_server:create_app()' -w 4``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from quota._tokens import mint_user_token, panel_url, parse_ttl
from quota.testing import RedisServer, local_server

from . import create_app
from .demo_agent import DEMO_USER_PREFIX
from .settings import ApiSettings


@dataclass
class Service:
    server: BaseWSGIServer
    settings: ApiSettings
    local: RedisServer | None
    base_url: str
    user: str
    user_token: str | None  # only in development mode: a production banner lands in logs
    ttl_s: int

    def banner(self) -> list[str]:
        b, mode = self.base_url, "development" if self.settings.development else "production"
        where = (
            f"a local {self.local.kind} at {self.settings.quota.redis_url} (data in {self.local.dir})"
            if self.local
            else "REDIS_URL"
        )
        lines = [
            f"quota serve: {mode} mode, Redis: {where}",
            "",
            f"  API      {b}/v1/   (OpenAPI: {b}/openapi.json, health: {b}/healthz, metrics: {b}/metrics)",
        ]
        if self.user_token:
            lines.append(f"  panel    {panel_url(b, self.user, self.user_token)}")
        else:
            lines.append(f"  panel    {b}/panel#user=<user>&token=<token>   (a token: quota token <user>)")
        if self.settings.demo_enabled:
            demo_user = self.user if self.user.startswith(DEMO_USER_PREFIX) else DEMO_USER_PREFIX
            lines.append(f"  demo     {b}/demo#user={demo_user}   (its panel: {b}/panel#demo=1&user={demo_user})")
        if self.user_token:
            lines += [
                "",
                f"  user token for {self.user!r} (reads only its own stats, valid {self.ttl_s // 3600} h "
                f"{self.ttl_s % 3600 // 60} min):",
                f"    {self.user_token}",
            ]
        names = {"QUOTA_ADMIN_TOKEN": self.settings.admin_token, "QUOTA_SERVICE_TOKEN": self.settings.service_token}
        made_up = [n for n in self.settings.generated if n in names]
        if made_up:
            lines += [
                "",
                "  development secrets, made up for this run only (set them in the environment to keep them):",
            ]
            lines += [f"    {n}={names[n]}" for n in made_up]
            lines += [
                "",
                f"  try: curl -H 'Authorization: Bearer {names['QUOTA_SERVICE_TOKEN']}' "
                f"{b}/v1/users/{self.user}/token-stats",
            ]
        if not self.settings.development:
            lines += [
                "",
                "  for production, run several workers under gunicorn:",
                "    gunicorn -c gunicorn.conf.py 'quota_server:create_app()' -w 4 -b 0.0.0.0:8000",
            ]
        lines += ["", "Press Ctrl+C to stop."]
        return lines


def build(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dev: bool | None = None,
    user: str = "demo",
    ttl: str = "12h",
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> Service:
    """Start the local Redis if needed, build the app and bind the port (not yet serving).

    The local Redis keeps its data in ``data_dir`` (its append-only file; the history, unless
    QUOTA_HISTORY_URL says otherwise, in ``data_dir/history.db``), so the next start with the same
    directory finds it; ``data_dir`` None: a new temporary directory, for a throwaway run."""
    env = dict(os.environ if env is None else env)
    ttl_s = parse_ttl(ttl)
    local = None
    if not env.get("REDIS_URL"):
        local = local_server(data_dir)
        env["REDIS_URL"] = local.url
        if data_dir is not None and not env.get("QUOTA_HISTORY_URL"):
            env["QUOTA_HISTORY_URL"] = f"sqlite:///{local.dir / 'history.db'}"
    try:
        if dev or (dev is None and (local is not None or env.get("QUOTA_ENV") == "development")):
            env["QUOTA_ENV"] = "development"
        elif dev is False:
            env["QUOTA_ENV"] = "production"
        settings = ApiSettings.from_env(env)
        app = create_app(settings)
        server = make_server(host, port, app, threaded=True)
        # Production output goes to logs (systemd, docker): a token printed there is a token anyone
        # who reads the logs can use. It is minted with `quota token USER` instead.
        token = mint_user_token(settings.secret_key, user, ttl_s) if settings.development else None
    except BaseException:
        if local:
            local.stop()
        raise
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return Service(server, settings, local, f"http://{shown_host}:{server.server_port}", user, token, ttl_s)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through run()'s finally, which stops the local server


def run(service: Service, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl+C or SIGTERM; then stop the local server, if one was started."""
    if threading.current_thread() is threading.main_thread():
        # before the banner: a SIGTERM sent as soon as "Press Ctrl+C" shows must stop the local
        # server too (it killed the process outright, leaving the server and its lock behind)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for line in service.banner():
            say(line)
        service.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.server.server_close()
        if service.local:
            service.local.stop()
