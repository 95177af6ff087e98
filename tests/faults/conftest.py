"""Fixtures of the fault scenarios: private servers on their own loopback ports (quota.testing),
started afresh for each scenario, since each one breaks its server on purpose."""

from __future__ import annotations

import pytest

from quota.testing import RedisClusterProc, RedisServer, free_ports

AOF_ALWAYS = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def server():
    """A standalone server, persistence off."""
    srv = RedisServer(free_ports(1, start=31000)[0]).start()
    yield srv
    srv.cleanup()


@pytest.fixture
def aof_server():
    """A standalone server whose every acknowledged write is on disk (AOF, appendfsync always):
    what survives a stop is exactly what was acknowledged."""
    srv = RedisServer(free_ports(1, start=30000)[0], AOF_ALWAYS).start()
    yield srv
    srv.cleanup()


@pytest.fixture
def cluster():
    """3 masters, each with a replica (for a failover)."""
    c = RedisClusterProc(masters=3, replicas=1).start()
    yield c
    c.cleanup()


@pytest.fixture
def small_cluster():
    """3 masters, no replicas."""
    c = RedisClusterProc(masters=3).start()
    yield c
    c.cleanup()
