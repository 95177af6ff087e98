from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from quota import Meter, QuotaError

from ...meters import build_meter
from ._common import quota_failure


def dump(meter: Meter, *, before: str | None, dry_run: bool) -> Any:
    """The library's dump, on the meter's Redis and history store (QUOTA's REDIS_URL, HISTORY_URL).
    The one call into quota.history's dump: if its signature changes, only this function follows."""
    from quota.history import dump_expired_months

    return dump_expired_months(meter, meter.history, before=before, dry_run=dry_run)


class Command(BaseCommand):
    help = (
        "Move expired months from Redis to the SQL history (QUOTA['HISTORY_URL']), then delete them from "
        "Redis. Safe to run twice or to kill and rerun. Run it daily (cron: CRON_TZ=UTC, 10 0 * * *)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before",
            metavar="YYYY-MM",
            default=None,
            help="archive the months before this one (default: the current UTC month)",
        )
        parser.add_argument("--dry-run", action="store_true", help="report what would move; change nothing")

    def handle(self, *args: Any, before: str | None, dry_run: bool, **options: Any) -> None:
        try:
            meter = build_meter()
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        try:
            report = dump(meter, before=before, dry_run=dry_run)
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        finally:
            meter.close()
            if meter.history is not None:
                meter.history.close()
        self.stdout.write(report.summary())
