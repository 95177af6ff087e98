"""One error hierarchy for the whole library.

Every error a caller can meet derives from :class:`QuotaError`, so ``except QuotaError`` is
enough to handle the library as a whole, and each subclass says what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import UsageResult


class QuotaError(Exception):
    """Base class of every error raised by quota."""


class InvalidInput(QuotaError, ValueError):
    """An argument is malformed (bad user id, negative tokens, ...). Nothing was changed."""


class UnknownModel(InvalidInput, LookupError):
    """A ``system_`` model id that is not in the system price table. Nothing was changed.

    It is never treated as a custom model: that would let a typo bypass the monthly credit.
    """


class RequestConflict(InvalidInput):
    """A ``request_id`` was reused with different content. Nothing was changed."""


class UnknownGrant(InvalidInput, LookupError):
    """``revoke_grant`` named a grant the user does not have. Nothing was changed."""


class ConfigError(QuotaError):
    """The configuration (price file, environment) is invalid."""


class StorageUnavailable(QuotaError, ConnectionError):
    """Redis (or the history database) could not be reached or answered with an error."""


class AuditUnavailable(StorageUnavailable):
    """A credit change was refused because its audit row could not be written to the history
    store (quota._audit): nothing was changed."""


class QuotaExceeded(QuotaError):
    """Raised when a new turn starts on a system model whose monthly credit is used up.

    ``event`` is the ``quota_exceeded`` dict, ready to send to a chat front end.
    """

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(event.get("message", "monthly credit exceeded"))
        self.event = event


class BatchError(QuotaError):
    """Some records of ``update_token_usage_many`` failed; the others were counted.

    ``results`` holds, per record in order, its ``UsageResult`` or the ``QuotaError`` it met.
    Records carry request ids, so sending the failed ones again (with the same ids) is safe.
    """

    def __init__(self, results: list[UsageResult | QuotaError]) -> None:
        self.results = results
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]
        self.errors = dict(failed)
        first = f"record {failed[0][0]}: {failed[0][1]}" if failed else ""
        super().__init__(f"{len(failed)} of {len(results)} records failed; first: {first}")
