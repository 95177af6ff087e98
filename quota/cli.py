"""The ``quota`` command line (click, like Flask's own CLI).

The library's commands are here: ``demo``, ``stats``, ``credit``, ``adjust``, ``spool replay``, ``dump``,
``scheduler``, ``notify``. Other packages add theirs through the ``quota.commands`` entry point group
(the app's ``serve`` and ``token``, in ``quota_server.cli``: the repository's ``api/cli.py``); they are
loaded only when asked for, so ``import quota`` never imports the app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence, Set
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ._audit import CLI
from ._errors import QuotaError

if TYPE_CHECKING:
    from datetime import datetime

    from ._prices import ModelPrice, PriceTable
    from ._replay import ReplayReport
    from ._report import MonthReport
    from ._stats import MonthUsage
    from ._sync.meter import Meter
    from .history import DumpReport

COMMAND_GROUP = "quota.commands"
# The group as pyproject.toml declares it, for when the installed metadata does not list it:
# entry points are written when the distribution is installed, so an editable install made
# before the group existed (or a checkout run without installing) has none until the next
# `pip install -e .`, and `quota serve` would vanish. These names are imported only on use.
BUILTIN_COMMANDS = {"serve": "quota_server.cli:serve", "token": "quota_server.cli:token"}


def fail(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def command_entry_points() -> dict[str, metadata.EntryPoint]:
    """The commands other packages add (``quota.commands``), by name; see BUILTIN_COMMANDS."""
    found = {ep.name: ep for ep in metadata.entry_points(group=COMMAND_GROUP)}
    if not found:
        found = {name: metadata.EntryPoint(name, value, COMMAND_GROUP) for name, value in BUILTIN_COMMANDS.items()}
    return found


def load_command(entry: metadata.EntryPoint) -> click.Command:
    """The command ``entry`` names; when its package cannot be imported (a missing dependency),
    a stand-in that says so and exits with status 2."""
    try:
        command = entry.load()
    except ImportError as exc:
        reason = f"`quota {entry.name}` is unavailable: {entry.value} cannot be imported ({exc})"

        @click.command(entry.name, help=reason, context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            fail(reason, 2)

        return unavailable
    if not isinstance(command, click.Command):
        raise TypeError(f"entry point {entry.name} = {entry.value} is not a click command")
    return command


class QuotaGroup(click.Group):
    """A click group that adds the ``quota.commands`` entry points, each loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *command_entry_points()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            entry = command_entry_points().get(name)
            if entry is not None:
                command = load_command(entry)
                self.add_command(command, name)
        return command


@click.group(cls=QuotaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quota")
def main() -> None:
    """quota: per-user, per-model LLM token and cost metering on Redis.

    Redis is found from REDIS_URL, the history database from QUOTA_HISTORY_URL.
    """


def open_meter(url: str | None) -> Meter:
    from ._sync.meter import Meter

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
    from ._demo import run_demo, stats_table
    from ._sync.meter import Meter
    from .testing import redis_url_or_local

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
        click.echo(
            f"\n{report.messages} messages, {report.calls} LLM calls recorded, {len(report.refused)} user(s) refused\n"
        )
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
@click.option(
    "--add",
    is_flag=True,
    help="Add CREDIT to the month's credit (to the default credit while none is set) instead of setting it; "
    "atomic, so two top-ups at once both count.",
)
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def credit(user: str, credit: str, month: str | None, add: bool, url: str | None) -> None:
    """SET USER's credit for one month to CREDIT CNY (replacing what it was), or with --add add to it.

    Only that month: the next one starts again from the default (QUOTA_MONTHLY_CREDIT). Prints
    what was done on stderr and the month's credit and use as JSON on stdout.
    `quota credit alice 20` makes alice's credit 20 CNY; `quota credit alice 20 --add` makes it 5 + 20 = 25
    (with the default of 5 and no credit set before).
    """
    meter = open_meter(url)
    try:
        result = meter.set_monthly_credit(user, credit, month, add=add, actor=CLI)
    except QuotaError as exc:
        fail(str(exc))
    from ._money import nano_to_decimal

    done = f"added {credit} CNY to" if add else "set"
    credit_now, used = result.monthly_credit_nano, result.monthly_used_nano
    click.echo(
        f"{done} {user}'s credit for {result.month}: now {nano_to_decimal(credit_now)} CNY, "
        f"{nano_to_decimal(used)} used, {nano_to_decimal(max(credit_now - used, 0))} remaining",
        err=True,
    )
    click.echo(json.dumps(result.as_dict()))


# --- grants, plans and the audit trail (issue 12; docs/PRICING.md) ---------------------------------


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--expires-at must be an ISO 8601 instant like 2026-03-01T00:00:00Z, got {text!r}", 2)
    if moment.tzinfo is None:
        fail("--expires-at must carry its UTC offset (Z or +08:00)", 2)
    return moment


@main.command()
@click.argument("user")
@click.argument("amount")
@click.option("--expires-at", help="ISO 8601 instant with its offset (default: never; the grant lasts until spent).")
@click.option("--id", "grant_id", help="Idempotency key: the same id and content again changes nothing.")
@click.option("--reason", help="Why (kept in the grant and the audit trail).")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def grant(
    user: str, amount: str, expires_at: str | None, grant_id: str | None, reason: str | None, url: str | None
) -> None:
    """Give USER AMOUNT CNY beyond the monthly credit, until it expires or is spent.

    System spend beyond the month's credit draws on it (earliest expiry first). Audited to
    QUOTA_HISTORY_URL as actor `cli`; prints the grant as JSON.
    """
    meter = open_meter(url)
    try:
        made = meter.grant_credit(
            user, amount, expires_at=_instant(expires_at), grant_id=grant_id, reason=reason, actor=CLI
        )
    except QuotaError as exc:
        fail(str(exc))
    click.echo(f"{'granted' if made.created else 'already granted'}: {made.grant_id} to {user}", err=True)
    click.echo(json.dumps({"user": user, "created": made.created, **made.as_dict()}))


@main.command("revoke-grant")
@click.argument("user")
@click.argument("grant_id")
@click.option("--reason", help="Why (kept in the audit trail).")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def revoke_grant(user: str, grant_id: str, reason: str | None, url: str | None) -> None:
    """Take back what is left of USER's grant GRANT_ID (what was spent stays spent). Audited."""
    meter = open_meter(url)
    try:
        revoked = meter.revoke_grant(user, grant_id, reason=reason, actor=CLI)
    except QuotaError as exc:
        fail(str(exc))
    click.echo(json.dumps({"user": user, **revoked.as_dict()}))


@main.command()
@click.argument("user")
@click.argument("credit", required=False)
@click.option("--clear", is_flag=True, help="Remove the plan: months without their own credit use the default.")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def plan(user: str, credit: str | None, clear: bool, url: str | None) -> None:
    """Set USER's plan: CREDIT CNY for every month that has no credit of its own. Audited.

    `quota plan alice 20` gives alice 20 CNY this month and every following one (a month set with
    `quota credit` keeps its own); `quota plan alice --clear` returns her to the default.
    """
    if (credit is None) == (not clear):
        fail("give either CREDIT or --clear", 2)
    meter = open_meter(url)
    try:
        result = meter.set_plan_credit(user, None if clear else credit, actor=CLI)
    except QuotaError as exc:
        fail(str(exc))
    click.echo(json.dumps(result.as_dict()))


@main.command()
@click.argument("user")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Newest N entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def audit(user: str, limit: int, as_json: bool, url: str | None) -> None:
    """Print USER's credit changes (monthly credit, plan, grants) and corrections (adjust: the
    model's cost before and after), newest first, from QUOTA_HISTORY_URL."""
    meter = open_meter(url)
    try:
        entries = meter.get_audit(user, limit=limit)
    except QuotaError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(entries, ensure_ascii=False))
        return

    def amount(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    rows = [["at", "actor", "action", "month/grant", "before", "after", "status", "reason"]]
    for e in entries:
        rows.append(
            [
                e["at"],
                e["actor"],
                e["action"],
                _audit_subject(e),
                amount(e["before"]),
                amount(e["after"] if e["status"] != "pending" else e["requested"]),
                e["status"],
                e["reason"] or "",
            ]
        )
    click.echo(_table(rows, right={4, 5}))


def _audit_subject(entry: dict[str, Any]) -> str:
    """What an audit row changed: the month, the grant, or (adjust) the month, model and adjustment id."""
    if entry.get("adjustment_id"):
        return f"{entry['month']} {entry['model_id']} {entry['adjustment_id']}"
    return entry["month"] or entry["grant_id"] or "-"


@main.command()
@click.argument("user")
@click.argument("model_id")
@click.option("--id", "adjustment_id", help="The adjustment's own id (required): sent again, it counts once.")
@click.option("--reason", help="Why (required; kept with the adjustment and logged).")
@click.option("--cost", default="0", show_default=True, help="Signed CNY to add to the cost (-0.12 takes 0.12 away).")
@click.option("--input", "input_tokens", default=0, show_default=True, help="Signed input tokens to add.")
@click.option("--output", "output_tokens", default=0, show_default=True, help="Signed output tokens to add.")
@click.option("--calls", default=0, show_default=True, help="Signed calls to add (-1 to reverse one record).")
@click.option("--month", help="YYYY-MM (default: the current UTC month); the month must still be in Redis.")
@click.option("--actor", help="Who makes it (default: cli:$USER).")
@click.option("--list", "list_only", is_flag=True, help="Only list USER's adjustments of the month (MODEL_ID: -).")
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
def adjust(
    user: str,
    model_id: str,
    adjustment_id: str | None,
    reason: str | None,
    cost: str,
    input_tokens: int,
    output_tokens: int,
    calls: int,
    month: str | None,
    actor: str | None,
    list_only: bool,
    url: str | None,
) -> None:
    """Correct USER's month for MODEL_ID by signed amounts: an audited adjustment.

    To reverse a wrong record, negate it: `quota adjust alice system_deepseek --id fix-42
    --reason "billed twice" --cost -0.012 --input -1000 --output -2000 --calls -1`. On a system
    model the cost also moves the month's use of the credit. Nothing changes when a counter would go
    below zero (exit 1) or when the id was used for another adjustment (exit 1); the same adjustment
    again changes nothing. Prints what was done on stderr and the adjustment as JSON on stdout.
    """
    import getpass

    from ._money import nano_to_decimal

    meter = open_meter(url)
    try:
        if list_only:
            click.echo(json.dumps([a.as_dict() for a in meter.adjustments(user, month)], indent=2))
            return
        if adjustment_id is None or reason is None:
            fail("--id and --reason are required (or --list)", 2)
        result = meter.adjust(
            user,
            model_id,
            adjustment_id=adjustment_id,
            reason=reason,
            cost=cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            calls=calls,
            month=month,
            actor=actor or f"cli:{getpass.getuser()}",
        )
    except QuotaError as exc:
        fail(str(exc))
    finally:
        meter.close()
    done = "already made (nothing changed)" if result.duplicate else "made"
    click.echo(
        f"adjustment {result.adjustment_id} {done}: {user} {result.month} {result.model_id} cost "
        f"{nano_to_decimal(result.cost_nano):+} CNY; "
        f"system-model use now {nano_to_decimal(result.monthly_used_nano)} CNY",
        err=True,
    )
    click.echo(json.dumps(result.as_dict()))


# --- prices (issue 12) ---------------------------------------------------------------------------


def prices_text(table: PriceTable, at: datetime) -> str:
    """The price table in force at ``at``, then the changes to come: what `quota prices` prints."""
    from ._keys import iso_z
    from ._prices import PRICE_KEYS

    head = ["model", "kind", "input", "output", "cached input", "cache write", "since"]

    def row(price: ModelPrice) -> list[str]:
        config = price.as_config()
        kind = "system" if price.is_system else "custom"
        return [price.model_id, kind, *(str(config[k]) for k in PRICE_KEYS), config["effective_from"] or "-"]

    system, custom = table.in_force(at)
    now = [row(p) for p in (*sorted(system.values(), key=_model_of), *sorted(custom.values(), key=_model_of))]
    right = {2, 3, 4, 5}
    lines = [f"Prices in force at {iso_z(at)} (CNY per 1k tokens)", _table([head, *now], right)]
    upcoming = table.upcoming(at)
    if upcoming:
        lines += ["", "Upcoming changes", _table([head, *(row(p) for p in upcoming)], right)]
    else:
        lines += ["", "No upcoming changes."]
    return "\n".join(lines)


def _model_of(price: ModelPrice) -> str:
    return price.model_id


@main.command()
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A price file to check and show (default: QUOTA_PRICES_FILE, else the built-in table).",
)
@click.option(
    "--at", "at_text", help="Show the table in force at this UTC instant (ISO 8601, e.g. 2026-12-16T00:00:00Z)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /v1/models) instead of a table.")
def prices(path: Path | None, at_text: str | None, as_json: bool) -> None:
    """Print the price table in force now (or --at an instant) and the changes to come.

    The file is validated as a meter loads it: an error (two prices of a model at one instant, a
    system model without a price before its first effective_from, a bad amount) exits with 2.
    """
    from datetime import UTC
    from datetime import datetime as dt

    from ._config import Settings
    from ._errors import ConfigError, InvalidInput
    from ._prices import PriceTable, parse_instant

    try:
        table = PriceTable.from_toml(path) if path is not None else Settings.from_env().prices
        at = dt.now(UTC) if at_text is None else parse_instant(at_text, what="--at")
    except (ConfigError, InvalidInput) as exc:
        fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps(table.as_json(at), ensure_ascii=False, indent=2))
    else:
        click.echo(prices_text(table, at))


# --- the operator's view (issue 13): report -------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], right: Set[int] = frozenset()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    lines = ["  ".join(cell(c, i) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_text(report: MonthReport) -> str:
    """The report as the terminal shows it: the month's totals, per model, then the users."""
    from ._money import nano_to_decimal

    s = report.summary

    def cny(nano: int) -> str:
        return f"{nano_to_decimal(nano):,}"

    where = "live, from Redis" if s.current else f"from {' and '.join(s.sources)}"
    lines = [
        f"{s.month} ({where}): {s.users:,} users, {s.calls:,} calls, {cny(s.cost_nano)} CNY "
        f"(system {cny(s.system_cost_nano)}, custom {cny(s.custom_cost_nano)}), "
        f"{s.input_tokens:,} input and {s.output_tokens:,} output tokens",
        f"users at 80 % of their credit or more: {s.users_over_80:,}; at 100 % or more (refused): {s.users_over_100:,}",
    ]
    if s.unreadable:
        lines.append(f"left out: {s.unreadable} hash(es) with a field that is not an integer (see the log)")
    if s.models:
        models = [("model", "kind", "users", "calls", "input", "cached", "cache write", "output", "cost CNY")]
        for model_id, t in sorted(s.models.items(), key=lambda i: (-i[1].cost_nano, i[0])):
            kind = "system" if t.is_system else "custom"
            models.append(
                (model_id, kind, f"{t.users:,}", f"{t.calls:,}", f"{t.input_tokens:,}")
                + (f"{t.cached_input_tokens:,}", f"{t.cache_write_tokens:,}", f"{t.output_tokens:,}", cny(t.cost_nano))
            )
        lines += ["", _table(models, {2, 3, 4, 5, 6, 7, 8})]
    users = [
        ("user", "cost CNY", "system", "custom", "calls", "input", "cached", "cache write", "output", "used / credit")
    ]
    for r in report:
        used = f"{cny(r.system_used_nano)} / {cny(r.credit_nano)}{'*' if r.credit_set else ''} ({r.percent_used}%)"
        users.append(
            (r.user, cny(r.cost_nano), cny(r.system_cost_nano), cny(r.custom_cost_nano), f"{r.calls:,}")
            + (f"{r.input_tokens:,}", f"{r.cached_input_tokens:,}", f"{r.cache_write_tokens:,}")
            + (f"{r.output_tokens:,}", used)
        )
    if len(users) > 1:
        lines += ["", f"users by {report.sort}:", _table(users, {1, 2, 3, 4, 5, 6, 7, 8})]
        if any(r[-1].split(" (")[0].endswith("*") for r in users[1:]):
            lines.append("* a credit set for this month (a top-up)")
    return "\n".join(lines)


class _ReadProgress:
    """``reading 2026-01: 123,456 user-months`` on stderr, at most ten times a second."""

    def __init__(self, month: str | None) -> None:
        self.month = month or "the current month"
        self.shown = 0.0

    def __call__(self, read: int) -> None:
        import time

        now = time.monotonic()
        if now - self.shown >= 0.1:
            self.shown = now
            click.echo(f"\rreading {self.month}: {read:,} user-months from Redis ", nl=False, err=True)

    def done(self) -> None:
        if self.shown:
            click.echo("", err=True)


@main.command()
@click.option(
    "--month", metavar="YYYY-MM", help="The month (default: the current UTC month); past months come from the history."
)
@click.option("--top", type=click.IntRange(0), default=None, help="Only the first N users (table: 20 by default).")
@click.option(
    "--sort",
    type=click.Choice(["cost", "system_cost", "custom_cost", "share", "tokens", "calls", "user"]),
    default="cost",
    show_default=True,
    help="Order of the users: highest first (share: of the credit used), or by user id.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: totals, models, users; json: the summary and one object per user; "
    "csv: one row per user and model (streamed: every user unless --top).",
)
@click.option("--url", envvar="REDIS_URL", help="Redis URL, redis+cluster:// for a cluster (default: REDIS_URL).")
@click.option(
    "--history-url",
    envvar="QUOTA_HISTORY_URL",
    help="History database for past months (default: QUOTA_HISTORY_URL, else sqlite:///quota-history.db).",
)
@click.option("--progress/--no-progress", default=None, help="Progress on stderr (default: on a terminal).")
def report(
    month: str | None,
    top: int | None,
    sort: str,
    fmt: str,
    url: str | None,
    history_url: str | None,
    progress: bool | None,
) -> None:
    """Who spent what in one month: every user's system and custom cost, tokens, calls and share
    of the credit, the totals per model and how many users are at 80 % and 100 % of their credit.

    The live month is read from Redis without blocking it (SCAN with a small COUNT on every
    master, pipelined HGETALL, never KEYS); a past month from the SQL history, merged with
    whatever of it Redis still holds. Exit status: 0 done, 1 Redis or the database unavailable,
    2 bad usage.
    """
    from ._config import Settings
    from ._errors import ConfigError, InvalidInput
    from ._report import csv_chunks
    from ._sync.meter import Meter
    from .history import HistoryStore

    show = sys.stderr.isatty() if progress is None else progress
    bar = _ReadProgress(month) if show else None
    try:
        settings = Settings.from_env()
        store = HistoryStore(history_url or settings.history_url, prefix=settings.prefix)
        meter = Meter.from_url(url, settings=settings, history=store)
    except QuotaError as exc:
        fail(str(exc), 2)
    try:
        if fmt == "csv" and top is None:
            month = month or meter.core.current_month()
            for chunk in csv_chunks(month, meter.month_usage(month), meter.prices, settings.credit_nano):
                click.echo(chunk, nl=False)
            return
        result = meter.month_report(month, top=20 if top is None and fmt == "table" else top, sort=sort, progress=bar)
        if bar:
            bar.done()
            bar = None
        if fmt == "json":
            click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        elif fmt == "table":
            click.echo(report_text(result))
        else:  # the top users' rows, in the report's order
            wanted = [r.user for r in result]
            keep = set(wanted)
            found: dict[str, MonthUsage] = {}
            for page in meter.month_usage(result.summary.month):
                found.update((user, usage) for user, usage in page if user in keep)
            pages = [[(user, found[user]) for user in wanted if user in found]]
            for chunk in csv_chunks(result.summary.month, pages, meter.prices, settings.credit_nano):
                click.echo(chunk, nl=False)
    except (ConfigError, InvalidInput) as exc:
        fail(str(exc), 2)
    except QuotaError as exc:
        fail(str(exc), 1)
    finally:
        if bar:
            bar.done()
        meter.close()
        store.close()


# --- the spool: records made while Redis was away ----------------------------------------------------

# Exit statuses of a replay (`quota spool replay`, Django's `quota_replay_spool`): 2 is bad usage.
REPLAY_DONE = 0  # every record is in Redis
REPLAY_PENDING = 1  # Redis failed, or another process is replaying: records wait, run it again later
REPLAY_DEAD = 3  # every record is done, but some were refused for good: see the .dead file


def replay_exit_status(report: ReplayReport) -> int:
    """The exit status a replay's report means (see REPLAY_DONE and the others)."""
    if report.error or report.pending:
        return REPLAY_PENDING
    return REPLAY_DEAD if report.dead else REPLAY_DONE


@main.group()
def spool() -> None:
    """The spool: records a worker made while Redis was away (spool=PATH, QUOTA['SPOOL'])."""


@spool.command("replay")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", envvar="REDIS_URL", help="Redis URL, redis+cluster:// for a cluster (default: REDIS_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print {sent, dead, pending, error} as JSON.")
def spool_replay(path: Path, url: str | None, as_json: bool) -> None:
    """Send the records spooled at PATH to Redis now, oldest first.

    Each record counts in the month it was made in, under its request id, so a record Redis
    already has counts once. Workers replay on their own once Redis is back; run this after an
    outage, or for the spool of a worker that is gone. Run it with the workers' settings
    (QUOTA_PREFIX, QUOTA_PRICES_FILE): a record whose model is no longer priced is refused for
    good and kept in PATH.dead. Prints: sent N, dead N, pending N.

    Exit status: 0 every record sent; 1 Redis unavailable, or records still pending (another
    process replaying); 2 bad usage (no spool at PATH, a bad URL or setting); 3 every record done,
    but some refused for good (in PATH.dead).
    """
    from ._errors import ConfigError, InvalidInput
    from ._spool import Spool
    from ._sync.meter import Meter

    names = (path, path.with_name(path.name + ".replaying"), path.with_name(path.name + ".lock"))
    if not any(name.exists() for name in names):
        fail(
            f"no spool at {path} (nor {path.name}.replaying): give the path the workers write (spool=, QUOTA['SPOOL'])",
            2,
        )
    try:
        spooled = Spool(path)
        meter = Meter.from_url(url, spool=spooled, history=None)
    except (ConfigError, InvalidInput, OSError) as exc:
        fail(str(exc), 2)
    try:
        report = meter.replay_spool()
        pending = spooled.pending_count()
    except QuotaError as exc:
        fail(str(exc), REPLAY_PENDING)
    finally:
        meter.close()
    if as_json:
        click.echo(json.dumps({"sent": report.sent, "dead": report.dead, "pending": pending, "error": report.error}))
    else:
        click.echo(f"sent {report.sent}, dead {report.dead}, pending {pending}")
        if report.dead:
            click.echo(f"{report.dead} record(s) refused for good are kept in {spooled.dead_path}", err=True)
        if report.error:
            click.echo(f"the replay stopped: {report.error}", err=True)
        elif report.pending:
            click.echo("records are still pending: another process may be replaying this spool", err=True)
    sys.exit(replay_exit_status(report))


# --- the history (issue 3): dump, scheduler --------------------------------------------------------


def _dump_job(
    url: str | None,
    history_url: str | None,
    *,
    before: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    progress: Callable[[DumpReport], None] | None = None,
) -> DumpReport:
    """One dump with fresh connections: Redis from ``url``/REDIS_URL, SQL from ``history_url``."""
    from ._config import Settings
    from ._sync.meter import Meter
    from .history import DEFAULT_BATCH, HistoryStore, dump_expired_months

    settings = Settings.from_env()
    meter = Meter.from_url(url, history=None, settings=settings)
    store = HistoryStore(history_url or settings.history_url, prefix=settings.prefix)
    try:
        return dump_expired_months(
            meter, store, before=before, dry_run=dry_run, batch_size=batch_size or DEFAULT_BATCH, on_progress=progress
        )
    finally:
        meter.close()
        store.close()


class _Progress:
    """A one-line counter on a terminal (stderr): the number of keys is unknown up front, so it
    shows the user-months read against the keys Redis holds (DBSIZE), an upper bound."""

    def __init__(self) -> None:
        self.shown = 0.0

    def __call__(self, report: DumpReport) -> None:
        import time

        now = time.monotonic()
        if now - self.shown < 0.1:
            return
        self.shown = now
        rate = report.seen / report.seconds if report.seconds else 0.0
        click.echo(
            f"\rquota dump: {report.seen:,} user-months read of at most {report.estimate:,} keys, "
            f"{report.archived:,} archived, {rate:,.0f}/s ",
            nl=False,
            err=True,
        )

    def done(self) -> None:
        if self.shown:
            click.echo("", err=True)


@main.command()
@click.option(
    "--before",
    metavar="YYYY-MM",
    help="Archive the months before this one (default: the current UTC month, never archived).",
)
@click.option("--dry-run", is_flag=True, help="Read and report what would be archived; write and delete nothing.")
@click.option("--url", envvar="REDIS_URL", help="Redis URL, redis+cluster:// for a cluster (default: REDIS_URL).")
@click.option(
    "--history-url",
    envvar="QUOTA_HISTORY_URL",
    help="History database: sqlite:///file.db or postgresql://... "
    "(default: QUOTA_HISTORY_URL, else sqlite:///quota-history.db).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="User-months per SQL transaction (default 5000).",
)
@click.option("--progress/--no-progress", default=None, help="Progress line on stderr (default: on a terminal).")
def dump(
    before: str | None,
    dry_run: bool,
    url: str | None,
    history_url: str | None,
    batch_size: int | None,
    progress: bool | None,
) -> None:
    """Move expired months from Redis to the SQL history, then delete them from Redis.

    Safe to run twice, and to kill at any moment and run again: the history stays exact.
    Prints one summary line: archived N user-months (M models), skipped K, in S s. "Skipped"
    months changed while the dump ran (they stay in Redis for the next run) or could not be
    read (logged). Exit status: 0 done, 1 Redis or the database unavailable, 2 bad usage.
    """
    import logging

    from ._errors import ConfigError, InvalidInput

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress() if show else None
    try:
        report = _dump_job(url, history_url, before=before, dry_run=dry_run, batch_size=batch_size, progress=bar)
    except (ConfigError, InvalidInput) as exc:
        fail(str(exc), 2)
    except QuotaError as exc:
        if bar:
            bar.done()
        fail(str(exc), 1)
    if bar:
        bar.done()
    click.echo(report.summary())


@main.command()
@click.option("--at", "at_text", default="00:10", show_default=True, help="UTC time of the daily dump, HH:MM.")
@click.option("--now", "run_now", is_flag=True, help="Also dump once right away (e.g. after downtime).")
@click.option(
    "--retry",
    "retry_s",
    default=600,
    show_default=True,
    type=click.IntRange(1, 86_400),
    help="Seconds between retries of a failed dump (until the next daily run).",
)
@click.option("--url", envvar="REDIS_URL", help="Redis URL (default: REDIS_URL).")
@click.option("--history-url", envvar="QUOTA_HISTORY_URL", help="History database (default: QUOTA_HISTORY_URL).")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the dump's Prometheus metrics on this port (quota_dump_last_success_timestamp_seconds, ...).",
)
def scheduler(
    at_text: str, run_now: bool, retry_s: int, url: str | None, history_url: str | None, metrics_port: int | None
) -> None:
    """Run `quota dump` every day at a fixed UTC time and log each run (stderr).

    Equivalent cron line: CRON_TZ=UTC, then 10 0 * * * quota dump. Stops cleanly on SIGTERM or
    Ctrl-C; a dump cut short is finished by the next run.
    """
    import logging
    import signal
    import time

    from .history import Scheduler, parse_at

    try:
        at = parse_at(at_text)
    except QuotaError as exc:
        fail(str(exc), 2)
    handler = logging.StreamHandler()
    formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from .history.metrics import DumpMetrics

    metrics = DumpMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
        logging.getLogger("quota.scheduler").info("quota scheduler: metrics on port %d", metrics_port)
    job = Scheduler(metrics.observe(lambda: _dump_job(url, history_url)), at=at, retry_s=retry_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: job.stop())
    job.run(run_now=run_now)


# --- threshold alerts (issue 11): notify --------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="Deliver what is due, wait for retries up to --max-wait, then exit.")
@click.option(
    "--max-wait",
    "max_wait_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86_400),
    help="--once: how long to wait for retries that come due.",
)
@click.option(
    "--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Users delivered at once."
)
@click.option(
    "--poll", "poll_s", default=1.0, show_default=True, type=click.FloatRange(0.05, 60), help="Seconds between sweeps."
)
@click.option("--status", is_flag=True, help="Print the counters, the pending events and the dead letters; exit.")
@click.option("--redeliver", "event_id", metavar="EVENT_ID", help="Put one dead letter back in its outbox; exit.")
@click.option("--enable", is_flag=True, help="Turn the webhook on again after it answered 410 Gone; exit.")
@click.option("--new-secret", is_flag=True, help="Print a new QUOTA_WEBHOOK_SECRET (whsec_...); exit.")
@click.option("--url", envvar="REDIS_URL", help="Redis URL, redis+cluster:// for a cluster (default: REDIS_URL).")
def notify(
    once: bool,
    max_wait_s: float,
    concurrency: int,
    poll_s: float,
    status: bool,
    event_id: str | None,
    enable: bool,
    new_secret: bool,
    url: str | None,
) -> None:
    """Deliver threshold alerts (quota.threshold_crossed / _cleared) to QUOTA_WEBHOOK_URL.

    Each event is POSTed as JSON and signed as Standard Webhooks says (webhook-id, webhook-timestamp,
    webhook-signature with QUOTA_WEBHOOK_SECRET); 2xx is delivered, 410 Gone disables the endpoint, any
    other answer is retried with exponential backoff for 24 hours, then kept as a dead letter. Run one or
    several (they share the work); stop with SIGTERM or Ctrl-C. Exit status: 0 done (--once: nothing left
    pending), 1 Redis unavailable, 2 bad usage or settings, 3 (--once) events still pending.
    """
    import logging
    import signal

    from ._alerts import WebhookSettings
    from ._alerts import new_secret as make_secret
    from ._errors import ConfigError, InvalidInput
    from ._notify import Notifier, disabled_key, parse_event_id, read_events, read_stats, redeliver, status_lines

    if new_secret:
        click.echo(make_secret())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    meter = open_meter(url)
    try:
        if status:
            stats = read_stats(meter)
            click.echo(json.dumps(stats, sort_keys=True))
            for title, dead in (("pending", False), ("dead", True)):
                lines = status_lines(read_events(meter, dead=dead, limit=100))
                click.echo(f"{title}: {len(lines)}{' (first 100)' if len(lines) == 100 else ''}")
                for line in lines:
                    click.echo(f"  {line}")
            return
        if event_id is not None:
            try:
                user, field = parse_event_id(meter.settings.prefix, event_id)
            except ValueError as exc:
                fail(str(exc), 2)
            found = redeliver(meter, user, field)
            if found is None:
                fail(f"no dead letter {event_id}", 1)
            click.echo(json.dumps(found.as_dict()))
            return
        try:
            webhook = WebhookSettings.from_env()
        except ConfigError as exc:
            fail(str(exc), 2)
        if enable:
            meter.client.delete(disabled_key(meter.core.keys, webhook))
            click.echo(f"webhooks to {webhook.endpoint} are enabled")
            return
        notifier = Notifier(meter, webhook, concurrency=concurrency, poll_s=poll_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: notifier.stop_event.set())
        if once:
            report = notifier.run_once(max_wait_s)
            click.echo(report.summary())
            if report.pending:
                sys.exit(3)
            return
        click.echo(f"quota notify: delivering to {webhook.endpoint} (stop with Ctrl-C)", err=True)
        click.echo(notifier.run().summary(), err=True)
    except (ConfigError, InvalidInput) as exc:
        fail(str(exc), 2)
    except QuotaError as exc:
        fail(str(exc), 1)
    finally:
        meter.close()


if __name__ == "__main__":  # pragma: no cover
    main()
