"""quota: a Redis-native, atomic token and cost meter for LLM agent platforms.

This module is the whole public surface. Modules whose names start with an underscore are internal:
their names may change in any release. ``quota.testing`` (real servers for tests), ``quota.history``
(the SQL archive and ``quota dump``) and ``quota.contrib.django`` are public packages of their own.
"""

from ._adjust import Adjustment
from ._async.meter import AsyncMeter
from ._async.turn import AsyncMeteredStream, AsyncTurn
from ._config import Settings
from ._errors import (
    AuditUnavailable,
    BatchError,
    ConfigError,
    InvalidInput,
    QuotaError,
    QuotaExceeded,
    RequestConflict,
    StorageUnavailable,
    UnknownGrant,
    UnknownModel,
)
from ._prices import ModelPrice, PriceTable
from ._replay import ReplayReport
from ._report import ModelTotals, MonthData, MonthReport, MonthSummary, UserRow
from ._results import CreditResult, Grant, PlanResult, QuotaCheck, UsageResult
from ._runner import AsyncScriptRunner, ScriptRunner
from ._sync.meter import Meter
from ._sync.turn import MeteredStream, Turn
from ._tokens import InvalidToken, mint_user_token, panel_link, revoke_user_tokens, verify_user_token
from ._turn_rules import Recorded, TurnMetrics
from ._usage import Usage

__all__ = [
    "Adjustment",
    "AsyncMeter",
    "AsyncMeteredStream",
    "AsyncScriptRunner",
    "AsyncTurn",
    "AuditUnavailable",
    "BatchError",
    "ConfigError",
    "CreditResult",
    "Grant",
    "InvalidInput",
    "InvalidToken",
    "Meter",
    "MeteredStream",
    "ModelPrice",
    "ModelTotals",
    "MonthData",
    "MonthReport",
    "MonthSummary",
    "PlanResult",
    "PriceTable",
    "QuotaCheck",
    "QuotaError",
    "QuotaExceeded",
    "Recorded",
    "ReplayReport",
    "RequestConflict",
    "ScriptRunner",
    "Settings",
    "StorageUnavailable",
    "Turn",
    "TurnMetrics",
    "UnknownGrant",
    "UnknownModel",
    "Usage",
    "UsageResult",
    "UserRow",
    "mint_user_token",
    "panel_link",
    "revoke_user_tokens",
    "verify_user_token",
]
__version__ = "0.1.0"
