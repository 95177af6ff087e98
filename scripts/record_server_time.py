"""Server time of record.lua, another checkout's against this one's, in ONE redis-server (issue 12).

    python scripts/record_server_time.py OLD_CHECKOUT [--pairs 40] [--batch 1000]

Both scripts are loaded into one private redis-server and run in interleaved batches (old, new,
old, new, ...) of pipelined EVALSHAs, so that both meet the same load on a shared machine; each batch
reads INFO commandstats (``usec_per_call`` of evalsha: the scripts' own time, wall clock inside
Redis), the server's CPU time (``/proc/<pid>/task/*/schedstat``: time waiting for a core is not
counted) and the commands the scripts ran per record. Scenarios: ``under`` (a user under the default
credit, no plan: the common record) and ``over`` (past a month credit of 0, no grants). The old
script gets the old layout (the first 4 KEYS and 10 ARGV the core builds: the layout before grants).
Prints medians, the mean of the quietest tenth of the batches, and the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import glob
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

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


def cpu_ns(pid: int) -> int:
    return sum(int(Path(f).read_text().split()[0]) for f in glob.glob(f"/proc/{pid}/task/*/schedstat"))


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
        core = MeterCore(Settings.from_env({"QUOTA_MONTHLY_CREDIT": "900000"}))  # "under" never reaches it
        new_sha = client.script_load(core.record("u", "system_deepseek", 1, 1).script.source)
        old_sha = client.script_load(expand((lua / "record.lua").read_text(), lua, set()))
        ids = iter(range(10**12))

        def batch(version: str, user: str) -> tuple[float, float, float]:
            commands = []
            for _ in range(opts.batch):
                call = core.record(user, "system_deepseek", 1200, 300, request_id=f"r{next(ids)}")
                if version == "old":
                    commands.append((old_sha, 4, *call.keys[:4], *call.args[:10]))
                else:
                    commands.append((new_sha, len(call.keys), *call.keys, *call.args))
            client.config_resetstat()
            before = cpu_ns(server.proc.pid)  # type: ignore[union-attr]
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.evalsha(*command)
                if len(pipe) >= 500:
                    pipe.execute()
            pipe.execute()
            cpu_us = (cpu_ns(server.proc.pid) - before) / opts.batch / 1000  # type: ignore[union-attr]
            stats = client.info("commandstats")
            evalsha = stats.pop("cmdstat_evalsha")
            if evalsha["calls"] != opts.batch or client.info("errorstats"):
                raise SystemExit(f"the {version} script failed: {client.info('errorstats')}")
            inner = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config|resetstat") / opts.batch
            return evalsha["usec_per_call"], cpu_us, inner

        for scenario in ("under", "over"):
            users = {v: f"{v}-{scenario}" for v in ("old", "new")}
            if scenario == "over":
                for user in users.values():
                    client.hset(core.keys.month_key(user, core.current_month()), "credit_nano", "0")
            for version, user in users.items():
                batch(version, user)  # warm up (and cross the alerts once)
            got: dict[str, list[tuple[float, float, float]]] = {"old": [], "new": []}
            for _ in range(opts.pairs):
                for version, user in users.items():
                    got[version].append(batch(version, user))
            for metric, i in (("usec_per_call", 0), ("server CPU us/record", 1)):
                old, new = [g[i] for g in got["old"]], [g[i] for g in got["new"]]
                tenth = max(1, len(old) // 10)
                ratio = statistics.median(n / o for o, n in zip(old, new))
                print(
                    f"{scenario:5} {metric:20}  old: median {statistics.median(old):6.2f} quietest tenth "
                    f"{statistics.mean(sorted(old)[:tenth]):6.2f}  new: median {statistics.median(new):6.2f} "
                    f"quietest tenth {statistics.mean(sorted(new)[:tenth]):6.2f}  new/old per pair {ratio:.3f}"
                )
            print(f"{scenario:5} commands per record   old {got['old'][-1][2]:.0f}  new {got['new'][-1][2]:.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
