"""Server time of record.lua, another checkout's against this one's, in ONE redis-server (issue 12).

    python scripts/record_server_time.py OLD_CHECKOUT [--pairs 40] [--batch 1000]

Both scripts are loaded into one private redis-server and run in interleaved batches of pipelined
EVALSHAs (old, new, new, old, ...: the order alternates; bench/record_script.py measures), so that both
meet the same load on a shared machine; each batch reads INFO commandstats (``usec_per_call`` of
evalsha: the scripts' own time, wall clock inside Redis), the server's CPU time
(``/proc/<pid>/task/*/schedstat``: time waiting for a core is not counted) and the commands the
scripts ran per record. Scenarios: ``under`` (a user under the default credit, no plan: the common
record) and ``over`` (past a month credit of 0, no grants). The old script gets the KEYS and ARGV the
core builds, cut to the layout its header documents (4 KEYS and 10 ARGV before grants).
Prints medians, the mean of the quietest tenth of the batches, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.record_script import Command, compare, interleaved, print_comparison  # noqa: E402
from quota._config import Settings  # noqa: E402
from quota._core import MeterCore  # noqa: E402
from quota.testing import RedisServer  # noqa: E402

INCLUDE = re.compile(r"^-- @include ([a-z_]+)$", re.MULTILINE)


def expand(text: str, lua: Path, seen: set[str]) -> str:
    """The script with its includes, as quota/_scripts.py builds it (for the old checkout's files)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return f"-- ({name} is included above)"
        seen.add(name)
        return expand((lua / "lib" / f"{name}.lua").read_text(), lua, seen).rstrip("\n")

    return INCLUDE.sub(one, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the other checkout (e.g. the main branch's)")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1000)
    opts = parser.parse_args()
    lua = opts.old / "quota" / "lua"
    server = RedisServer().start()
    try:
        client = redis.Redis(port=server.port)
        pid = server.proc.pid  # type: ignore[union-attr]
        core = MeterCore(Settings.from_env({"QUOTA_MONTHLY_CREDIT": "900000"}))  # "under" never reaches it
        new_sha = client.script_load(core.record("u", "system_deepseek", 1, 1).script.source)
        old_source = expand((lua / "record.lua").read_text(), lua, set())
        old_sha = client.script_load(old_source)
        old_keys, old_args = (7, 11) if "-- KEYS[7]" in old_source else (4, 10)  # grants came with KEYS[5..7]
        ids = iter(range(10**12))

        def maker(version: str, user: str):  # type: ignore[no-untyped-def]
            def commands() -> list[Command]:
                out: list[Command] = []
                for _ in range(opts.batch):
                    call = core.record(user, "system_deepseek", 1200, 300, request_id=f"r{next(ids)}")
                    if version == "old":
                        out.append((old_sha, old_keys, *call.keys[:old_keys], *call.args[:old_args]))
                    else:
                        out.append((new_sha, len(call.keys), *call.keys, *call.args))
                return out

            return commands

        for scenario in ("under", "over"):
            users = {v: f"{v}-{scenario}" for v in ("old", "new")}
            if scenario == "over":
                for user in users.values():
                    client.hset(core.keys.month_key(user, core.current_month()), "credit_nano", "0")
            got = interleaved(client, pid, {v: maker(v, u) for v, u in users.items()}, opts.pairs)
            print_comparison(scenario, ("old", "new"), compare(got["old"], got["new"]))
            old, new = got["old"][-1].commands, got["new"][-1].commands
            print(f"{scenario:5} commands per record   old {old:.0f}  new {new:.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
