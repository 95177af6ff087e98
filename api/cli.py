"""``quota serve`` and ``quota token``: the app's commands on the ``quota`` command line.

They live with the app, not in ``quota.cli``, because they need it (Flask, the views): the library
never imports the app. ``quota.cli`` finds them through the ``quota.commands`` entry point group
(pyproject.toml) and loads this module only when one of them is asked for.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from quota import ConfigError, InvalidInput, Meter, QuotaError
from quota._keys import validate_user
from quota._tokens import iso_ms, mint_user_token, parse_ttl, revoke_user_tokens
from quota.cli import fail


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--dev/--no-dev",
    default=None,
    help="Development mode: made-up secrets, demo on. Default: on when REDIS_URL is unset "
    "(a local server is started) or QUOTA_ENV=development.",
)
@click.option(
    "--user",
    default="demo",
    show_default=True,
    help="Whose user token to print, with its panel link (development mode only).",
)
@click.option("--ttl", default="12h", show_default=True, help="Life of the printed user token (90s, 15m, 1h, 7d).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With REDIS_URL unset: where the local Redis keeps its data (append-only file) and the history "
    "(history.db), kept from one start to the next. Default: QUOTA_DATA_DIR, else $XDG_DATA_HOME/quota "
    "(~/.local/share/quota).",
)
@click.option(
    "--ephemeral", is_flag=True, help="With REDIS_URL unset: a new temporary directory, kept by no later start."
)
def serve(host: str, port: int, dev: bool | None, user: str, ttl: str, data_dir: Path | None, ephemeral: bool) -> None:
    """Serve the HTTP API, the token statistics panel and the demo chat.

    Prints their URLs, and in development mode a ready-to-use user token (never in production,
    where the output goes to logs: mint one with `quota token USER`). Outside development mode it
    refuses to start without QUOTA_ADMIN_TOKEN, QUOTA_SERVICE_TOKEN and QUOTA_SECRET_KEY. For
    production, run several workers under gunicorn instead:
    gunicorn -c gunicorn.conf.py 'quota_server:create_app()' -w 4 -b 0.0.0.0:8000
    """
    from .logs import configure_logging
    from .metrics import prepare_multiproc_dir
    from .serve import build, run

    try:
        configure_logging()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            prepare_multiproc_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        if ephemeral and data_dir is not None:
            fail("--data-dir and --ephemeral contradict each other: choose one", 2)
        keep = None if ephemeral else (data_dir or default_data_dir())
        service = build(host, port, dev=dev, user=user, ttl=ttl, data_dir=keep)
    except QuotaError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc} (try --port 0 for any free port)", 2)
    run(service, say=click.echo)


def default_data_dir() -> Path:
    """QUOTA_DATA_DIR, else $XDG_DATA_HOME/quota, else ~/.local/share/quota."""
    if os.environ.get("QUOTA_DATA_DIR"):
        return Path(os.environ["QUOTA_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "quota"


@click.command()
@click.argument("user")
@click.option("--ttl", default="1h", show_default=True, help="How long the token is valid: 90s, 15m, 1h, 7d.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print {user, token, expires_at} (with --revoke: {user, tokens_valid_after}) as JSON.",
)
@click.option(
    "--revoke",
    is_flag=True,
    help="Revoke every token of USER issued until now instead (in Redis: REDIS_URL, QUOTA_PREFIX); "
    "tokens minted afterwards work, the key is not rotated.",
)
@click.option("--url", envvar="REDIS_URL", help="Redis URL for --revoke (default: REDIS_URL).")
def token(user: str, ttl: str, as_json: bool, revoke: bool, url: str | None) -> None:
    """Mint a token that lets USER read their own stats and quota (and nothing else).

    Signed with QUOTA_SECRET_KEY (read from the environment only, never from the command line,
    where other users could see it); the server must run with the same key. With --revoke,
    USER's tokens issued so far stop working (exit status 1 when Redis does not answer).
    """
    if revoke:
        _revoke_tokens(user, url, as_json)
        return

    secret = os.environ.get("QUOTA_SECRET_KEY")
    if not secret:
        fail("QUOTA_SECRET_KEY is not set: the token must be signed with the server's key", 2)
    try:
        ttl_s = parse_ttl(ttl)
        now = time.time()  # to the millisecond: the issue time a revocation is compared with
        minted = mint_user_token(secret, user, ttl_s, now_s=now)
    except QuotaError as exc:
        fail(str(exc), 2)
    if as_json:
        expires = datetime.fromtimestamp(int(now) + ttl_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(json.dumps({"user": user, "token": minted, "expires_at": expires}))
    else:
        click.echo(minted)


def _revoke_tokens(user: str, url: str | None, as_json: bool) -> None:
    try:
        user = validate_user(user)
        meter = Meter.from_url(url, history=None)
    except QuotaError as exc:
        fail(str(exc), 2)
    try:
        at_ms = revoke_user_tokens(meter.client, meter.settings.prefix, user)
    except (ConfigError, InvalidInput) as exc:
        fail(str(exc), 2)
    except QuotaError as exc:
        fail(str(exc), 1)
    finally:
        meter.close()
    at = iso_ms(at_ms)
    if as_json:
        click.echo(json.dumps({"user": user, "tokens_valid_after": at}))
    else:
        click.echo(f"revoked every token of {user!r} issued until {at}; tokens minted from now on work")
