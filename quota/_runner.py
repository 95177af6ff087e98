"""The seam between the meters and what drives them: turns, the spool replay, the dump.

They need one thing of a meter: run script calls the sans-I/O core prepared, and say where it
points (for error messages). :class:`quota.Meter` and :class:`quota.AsyncMeter` implement these
protocols; nothing outside them reaches into a meter's private members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from ._core import MeterCore, ScriptCall
    from ._turn_rules import TurnOptions

R = TypeVar("R")


class ScriptRunner(Protocol):
    """A synchronous meter, as the turn, the replay and the dump use it."""

    core: MeterCore
    where: str
    turn_options: TurnOptions

    def run(self, call: ScriptCall[R]) -> R:
        """Send one call and return its parsed result; errors are ``QuotaError``."""

    def run_many(self, calls: list[ScriptCall[Any]]) -> list[Any]:
        """Send calls pipelined (one pipeline per node); one raw reply or exception per call."""


class AsyncScriptRunner(Protocol):
    """The asyncio twin of :class:`ScriptRunner`."""

    core: MeterCore
    where: str
    turn_options: TurnOptions

    async def run(self, call: ScriptCall[R]) -> R:
        """Send one call and return its parsed result; errors are ``QuotaError``."""

    async def run_many(self, calls: list[ScriptCall[Any]]) -> list[Any]:
        """Send calls pipelined (one pipeline per node); one raw reply or exception per call."""
