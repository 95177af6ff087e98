"""The Lua scripts in ``quota/lua/``, all loaded here, once, each with its SHA1 for EVALSHA.

A line ``-- @include NAME`` in a script is replaced by ``lua/lib/NAME.lua`` when it is loaded, so a
rule that several scripts need (how a turn hold is read, say) is written once. A lib may include
another; each is included once per script, where it is first named. The SHA is taken of the text
sent, includes and all.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_INCLUDE = re.compile(r"^-- @include ([a-z_]+)$", re.MULTILINE)


def _read(*parts: str) -> str:
    return resources.files("quota").joinpath("lua", *parts).read_text(encoding="utf-8")


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        source = _expand(_read(f"{name}.lua"), set())
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


def _expand(text: str, included: set[str]) -> str:
    """``text`` with its includes (and theirs) in place; a lib already in ``included`` is left out."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in included:
            return f"-- ({name} is included above)"
        included.add(name)
        return _expand(_read("lib", f"{name}.lua"), included).rstrip("\n")

    return _INCLUDE.sub(one, text)


RECORD = LuaScript.load("record")
CHECK = LuaScript.load("check")
SET_CREDIT = LuaScript.load("set_credit")
STATS = LuaScript.load("stats")
ARCHIVE_EPOCH = LuaScript.load("archive_epoch")  # get_token_stats with a history store
TURN_BEGIN = LuaScript.load("turn_begin")
TURN_END = LuaScript.load("turn_end")
SNAPSHOT_MONTH = LuaScript.load("snapshot_month")  # the dump (quota.dump)
DELETE_IF_UNCHANGED = LuaScript.load("delete_if_unchanged")  # the dump (quota.dump)
OUTBOX_CLAIM = LuaScript.load("outbox_claim")  # the notifier (quota._notify)
OUTBOX_SETTLE = LuaScript.load("outbox_settle")  # the notifier
OUTBOX_REDELIVER = LuaScript.load("outbox_redeliver")  # the API and `quota notify --redeliver`
ADJUST = LuaScript.load("adjust")  # corrections (quota._adjust)
GRANT = LuaScript.load("grant")  # grants and plans (issue 12; lua/lib/grants.lua)
REVOKE_GRANT = LuaScript.load("revoke_grant")
SET_PLAN = LuaScript.load("set_plan")

ALL = (
    RECORD,
    CHECK,
    SET_CREDIT,
    STATS,
    ARCHIVE_EPOCH,
    TURN_BEGIN,
    TURN_END,
    SNAPSHOT_MONTH,
    DELETE_IF_UNCHANGED,
    OUTBOX_CLAIM,
    OUTBOX_SETTLE,
    OUTBOX_REDELIVER,
    ADJUST,
    GRANT,
    REVOKE_GRANT,
    SET_PLAN,
)
