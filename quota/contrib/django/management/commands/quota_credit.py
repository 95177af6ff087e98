from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from quota import QuotaError

from ...meters import get_meter
from ._common import add_user_arguments, as_json, quota_failure, user_id_of


class Command(BaseCommand):
    help = "Set a user's monthly credit in CNY (a top-up) for one month (default: the current UTC month)."

    def add_arguments(self, parser: CommandParser) -> None:
        add_user_arguments(parser)
        parser.add_argument("amount", help="the month's credit in CNY, e.g. 20 or 7.5")
        parser.add_argument("--month", default=None, help="YYYY-MM (default: the current UTC month)")

    def handle(self, *args: Any, user: str, raw_id: bool, amount: str, month: str | None, **options: Any) -> None:
        user_id = user_id_of(user, raw_id)
        try:
            result = get_meter().set_monthly_credit(user_id, amount, month)
        except QuotaError as exc:
            raise quota_failure(exc) from exc
        self.stdout.write(as_json(result.as_dict()))
