from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from quota import QuotaError

from ...meters import get_meter
from ._common import add_user_arguments, as_json, quota_failure, user_id_of


class Command(BaseCommand):
    help = (
        "Print a user's token statistics as JSON (this month, per model, and the history by month), "
        "from the Redis and history database in settings.QUOTA."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_user_arguments(parser)
        parser.add_argument("--months", type=int, default=None, help="months of history (default QUOTA HISTORY_MONTHS)")

    def handle(self, *args: Any, user: str, raw_id: bool, months: int | None, **options: Any) -> None:
        user_id = user_id_of(user, raw_id)
        try:
            stats = get_meter().get_token_stats(user_id, months=months)
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        self.stdout.write(as_json(stats))
