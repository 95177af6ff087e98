"""Requests per second of GET /v1/users/<u>/token-stats under gunicorn, beside cheaper routes.

One gunicorn (``-w 4`` sync workers by default) on a loopback port, against a private
redis-server started by quota.testing (never the machine's 6379), loaded by ``wrk`` (Debian's
package: a C load generator, so the client costs far less CPU than the server it measures; a
Python client would be the bottleneck on a small machine). In the same run, on the same server:

* ``/panel``           - no Redis, no auth: a rendered template; the ceiling of Flask+gunicorn here
* ``/healthz``         - one Redis round trip (PING), no auth
* ``token-stats`` with the service token - auth by constant-time compare, one EVALSHA reading
  13 month hashes (this month + 12 of history), JSON of the seed's structure
* ``token-stats`` with a user token - the same plus an HMAC-SHA256 signature check (itsdangerous)

Run:  .venv/bin/python -m bench api [--workers 4] [--duration 10] [--rounds 3] [--connections 16]
Needs: apt-get install -y wrk, and the test extra (gunicorn).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from quota import Meter
from quota._tokens import mint_user_token
from quota.testing import RedisServer, free_ports

ROOT = Path(__file__).resolve().parents[1]

ADMIN, SERVICE, SECRET = (
    "bench-admin-token-0123456789",
    "bench-service-token-0123456789",
    "bench-secret-key-0123456789abcdef",
)
USER = "bench-user"


def seed(url: str) -> None:
    """This month and 12 months of history, three models each: what a busy user's stats read."""
    now = datetime.now(UTC)
    for back in range(13):
        year, month = divmod(now.year * 12 + now.month - 1 - back, 12)
        moment = datetime(year, month + 1, 10, tzinfo=UTC)
        with Meter.from_url(url, clock=lambda m=moment: m) as meter:
            for model, tokens in (("system_deepseek", 40_000), ("custom_llama", 9_000), ("custom_gpt", 3_000)):
                meter.update_token_usage(USER, model, tokens, tokens // 4)


def wrk(url: str, *, seconds: int, connections: int, threads: int, token: str | None) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{url}: {bad.group(1)} error responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
    }


def wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited at start")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer")


@contextlib.contextmanager
def gunicorn_api(
    redis_url: str, *, workers: int, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """``gunicorn 'quota_server:create_app()' -w workers`` on a free loopback port, with the bench secrets,
    Redis at ``redis_url`` and a fresh PROMETHEUS_MULTIPROC_DIR; yields its base URL once
    /healthz answers, stops it (and removes the metrics directory) on exit.
    Shared by bench/load.py."""
    port = free_ports(1, start=28500)[0]
    metrics_dir = tempfile.mkdtemp(prefix="quota-bench-prom-")
    full_env = (
        {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
        | {
            "REDIS_URL": redis_url,
            "QUOTA_ADMIN_TOKEN": ADMIN,
            "QUOTA_SERVICE_TOKEN": SERVICE,
            "QUOTA_SECRET_KEY": SECRET,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        | (env or {})
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "quota_server:create_app()",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra_args,
        ],
        env=full_env,
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench api", description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=int, default=10, help="seconds per route")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--rounds", type=int, default=3, help="routes are run in turn, this many times; median kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    redis = RedisServer(free_ports(1, start=18500)[0]).start()
    try:
        seed(redis.url)
        with gunicorn_api(redis.url, workers=args.workers) as base:
            results = _measure(base, args)
    finally:
        redis.cleanup()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    ceiling = results["/panel (template, no Redis)"]["rps"]
    health = results["/healthz (one Redis PING)"]["rps"]
    print(
        f"gunicorn -w {args.workers} (sync), wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"median of {args.rounds} interleaved rounds, "
        f"{os.cpu_count()} CPUs shared by wrk, gunicorn and redis-server\n"
    )
    print("| route | requests/s | p50 ms | p99 ms | vs /panel | vs /healthz |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['rps'] / ceiling:.2f} | {r['rps'] / health:.2f} |"
        )
    return 0


def _measure(base: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each route under wrk, interleaved over the rounds; the median round per route."""
    user_token = mint_user_token(SECRET, USER, 3600)
    routes = [
        ("/panel (template, no Redis)", "/panel", None),
        ("/healthz (one Redis PING)", "/healthz", None),
        ("token-stats, service token", f"/v1/users/{USER}/token-stats", SERVICE),
        ("token-stats, user token", f"/v1/users/{USER}/token-stats", user_token),
    ]
    wrk(base + "/healthz", seconds=2, connections=args.connections, threads=args.threads, token=None)  # warm up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in routes}
    for _ in range(args.rounds):  # interleaved, so drift of the machine hits every route alike
        for name, path, token in routes:
            runs[name].append(
                wrk(base + path, seconds=args.duration, connections=args.connections, threads=args.threads, token=token)
            )
    return {name: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for name, r in runs.items()}
