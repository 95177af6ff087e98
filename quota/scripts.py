"""The Lua scripts in ``quota/lua/``, loaded once, each with its SHA1 for EVALSHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> "LuaScript":
        source = resources.files("quota").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


RECORD = LuaScript.load("record")
CHECK = LuaScript.load("check")
SET_CREDIT = LuaScript.load("set_credit")
STATS = LuaScript.load("stats")

ALL = (RECORD, CHECK, SET_CREDIT, STATS)
