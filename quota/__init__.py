"""quota: a Redis-native, atomic token and cost meter for LLM agent platforms."""

from .aio import AsyncMeter
from .config import Settings
from .errors import (
    BatchError,
    ConfigError,
    InvalidInput,
    QuotaError,
    QuotaExceeded,
    RequestConflict,
    StorageUnavailable,
    UnknownModel,
)
from .meter import Meter
from .prices import ModelPrice, PriceTable
from .results import CreditResult, QuotaCheck, UsageResult

__all__ = [
    "AsyncMeter", "BatchError", "ConfigError", "CreditResult", "InvalidInput", "Meter", "ModelPrice",
    "PriceTable", "QuotaCheck", "QuotaError", "QuotaExceeded", "RequestConflict", "Settings",
    "StorageUnavailable", "UnknownModel", "UsageResult",
]
__version__ = "0.1.0"
