from typing import Any

from django.core.management.base import BaseCommand, CommandError

from quota import QuotaError
from quota.cli import REPLAY_DEAD, REPLAY_PENDING, replay_exit_status

from ...conf import quota_settings
from ...meters import build_meter
from ._common import quota_failure


class Command(BaseCommand):
    help = (
        "Send the records spooled while Redis was away (QUOTA['SPOOL']) to Redis now. Turns also do "
        "it on their own once Redis is back; run this at deploy time or after an outage. "
        "Exit status: 0 all sent, 1 Redis away or records still pending, 2 no SPOOL configured, 3 all done "
        "but some refused for good (kept in the .dead file). Outside Django: quota spool replay PATH."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not quota_settings().meter_options.get("spool"):
            raise CommandError(
                "QUOTA['SPOOL'] is not set: records made while Redis was away are kept in the "
                "memory of the worker that made them, and only it can replay them",
                returncode=2,
            )
        try:
            meter = build_meter(history=None)
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        try:
            report = meter.replay_spool()
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        finally:
            meter.close()
        self.stdout.write(
            f"replayed {report.sent} record(s), {report.dead} refused for good (in the .dead file)"
            + (", more pending" if report.pending else "")
        )
        status = replay_exit_status(report)
        if status == REPLAY_PENDING:
            raise CommandError(f"the replay stopped: {report.error or 'records are still pending'}", returncode=status)
        if status == REPLAY_DEAD:
            raise CommandError(
                f"{report.dead} record(s) refused for good: see the spool's .dead file", returncode=status
            )
