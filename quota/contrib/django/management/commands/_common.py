"""What the quota_* commands share: finding a user, and turning quota errors into exit codes."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from quota import ConfigError, InvalidInput, QuotaError

from ...hooks import quota_user_id


def add_user_arguments(parser: CommandParser) -> None:
    parser.add_argument("user", help="the user: their username (USERNAME_FIELD), or with --id their quota id")
    parser.add_argument(
        "--id",
        action="store_true",
        dest="raw_id",
        help="USER is the quota user id (what QUOTA['USER_ID'] makes of a user; default its pk)",
    )


def user_id_of(text: str, raw_id: bool) -> str:
    if raw_id:
        return text
    user_model = get_user_model()
    try:
        user = user_model._default_manager.get_by_natural_key(text)
    except user_model.DoesNotExist:
        raise CommandError(
            f"no user with {user_model.USERNAME_FIELD} {text!r} (pass --id for a quota user id)", returncode=2
        ) from None
    return quota_user_id(user)


def quota_failure(exc: QuotaError) -> CommandError:
    """Exit status 2 for bad input or configuration, 1 when Redis or the database is away."""
    return CommandError(str(exc), returncode=2 if isinstance(exc, (InvalidInput, ConfigError)) else 1)


def as_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, cls=DjangoJSONEncoder)
