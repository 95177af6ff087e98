"""The ``quota`` command line (click, like Flask's own CLI)."""

from __future__ import annotations

import json
import sys

import click

from .errors import QuotaError


def fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quota")
def main() -> None:
    """quota: per-user, per-model LLM token and cost metering on Redis.

    Redis is found from REDIS_URL, the history database from QUOTA_HISTORY_URL.
    """


def open_meter(url: str | None):  # noqa: ANN201 - Meter
    from .meter import Meter

    try:
        return Meter.from_url(url)
    except QuotaError as exc:
        fail(str(exc), 2)


@main.command()
@click.option("--users", default=5, show_default=True, help="Simulated users (the last one uses a custom model).")
@click.option("--seed", default=7, show_default=True, help="Seed of the fake token counts.")
def demo(users: int, seed: int) -> None:
    """Simulate agent workers recording LLM calls until one user is refused.

    Starts a local Redis-compatible server when REDIS_URL is unset.
    """
    from .demo import run_demo, stats_table
    from .localserver import redis_url_or_local
    from .meter import Meter

    if users < 2:
        fail("--users must be at least 2", 2)
    try:
        url, server = redis_url_or_local()
    except QuotaError as exc:
        fail(str(exc), 2)
    where = f"a local {server.kind} at {url}" if server else url
    click.echo(f"quota demo: {users} simulated users on {where}, credit 5 CNY per user per month")
    meter = Meter.from_url(url, prefix=f"quota-demo-{seed}")
    try:
        for user in [f"user{i}" for i in range(users)]:
            for key in meter.client.scan_iter(match=f"{meter.settings.prefix}:{{{user}}}:*"):
                meter.client.delete(key)
        report = run_demo(meter, users=users, seed=seed, say=click.echo)
        click.echo(f"\n{report.messages} messages, {report.calls} LLM calls recorded, "
                   f"{len(report.refused)} user(s) refused\n")
        click.echo(stats_table(meter, [f"user{i}" for i in range(users)]))
        if report.refused:
            user, message = next(iter(sorted(report.refused.items())))
            click.echo(f"\nquota_exceeded notice shown to {user}:\n  {message}")
    except QuotaError as exc:
        fail(str(exc))
    finally:
        meter.close()
        if server:
            server.stop()


@main.command()
@click.argument("user")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def stats(user: str, url: str | None) -> None:
    """Print USER's token statistics as JSON (the seed's structure)."""
    meter = open_meter(url)
    try:
        click.echo(json.dumps(meter.get_token_stats(user), ensure_ascii=False, indent=2))
    except QuotaError as exc:
        fail(str(exc))


@main.command()
@click.argument("user")
@click.argument("credit")
@click.option("--month", help="YYYY-MM (default: the current UTC month).")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def credit(user: str, credit: str, month: str | None, url: str | None) -> None:
    """Set USER's monthly CREDIT in CNY (a top-up) for one month."""
    meter = open_meter(url)
    try:
        click.echo(json.dumps(meter.set_monthly_credit(user, credit, month).as_dict()))
    except QuotaError as exc:
        fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
