"""Keyword options: quota's own, redis-py's (through ``from_url`` only), and the rest a
``ConfigError`` at construction that names the option (issue 15: ``credit='5.5'`` reached
redis-py and failed at the first call with TypeError)."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aredis

from quota import AsyncMeter, ConfigError, Meter
from quota.testing import free_ports

from .conftest import Backend

CLOSED = f"redis://127.0.0.1:{free_ports(1, start=19750)[0]}/0"  # nothing listens: nothing may connect


@pytest.mark.parametrize("cls", [Meter, AsyncMeter])
def test_an_unknown_from_url_option_is_a_config_error_naming_it_and_the_known_ones(cls):
    with pytest.raises(ConfigError) as caught:
        cls.from_url(CLOSED, history=None, credit="5.5")
    message = str(caught.value)
    assert message.startswith(
        f"{cls.__name__}.from_url got unknown option(s) 'credit' (did you mean 'monthly_credit'?)"
    )
    for known in ("monthly_credit", "prefix", "spool", "on_unavailable", "max_connections", "pool_timeout_s"):
        assert known in message
    assert "credit_nano" not in message  # takes nano-CNY: monthly_credit is the one to name
    assert "socket_timeout" in message  # where redis-py's options go


@pytest.mark.parametrize("cls", [Meter, AsyncMeter])
def test_a_misspelt_redis_py_option_gets_its_right_name(cls):
    with pytest.raises(ConfigError, match=r"'sokcet_timeout' \(did you mean 'socket_timeout'\?\)"):
        cls.from_url(CLOSED, history=None, sokcet_timeout=1)


def test_a_cluster_option_on_a_standalone_url_says_so():
    with pytest.raises(ConfigError, match=r"read_from_replicas: for a cluster \(a redis\+cluster:// URL\) only"):
        Meter.from_url(CLOSED, history=None, read_from_replicas=True)


def test_meter_on_a_client_takes_only_quotas_options():
    client = redis.Redis.from_url(CLOSED)
    with pytest.raises(
        ConfigError, match=r"^Meter\(client\) got unknown option\(s\) 'credit' \(did you mean 'monthly_credit'\?\)"
    ):
        Meter(client, credit="5.5")
    with pytest.raises(
        ConfigError, match=r"'socket_timeout'; .*socket_timeout: redis-py's, set on the client you pass"
    ):
        Meter(client, socket_timeout=1)
    with pytest.raises(
        ConfigError, match=r"^AsyncMeter\(client\) got unknown option\(s\) 'prefx' \(did you mean 'prefix'\?\)"
    ):
        AsyncMeter(aredis.Redis.from_url(CLOSED), prefx="x")
    assert Meter(client, monthly_credit="5.5", prefix="ok").settings.credit_nano == 5_500_000_000


def test_redis_py_options_still_pass_through_from_url(real_backend: Backend):
    """socket_timeout, client_name, health_check_interval reach redis-py (the name is on the
    server's connections); a cluster's own option passes for a cluster URL."""
    extra = {"require_full_coverage": True} if real_backend.is_cluster else {"health_check_interval": 30}
    options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "client_name": "opt-sync", **extra}
    meter = Meter.from_url(real_backend.url, history=None, prefix="opts", **options)
    meter.update_token_usage("alice", "system_deepseek", 10, 10)
    names = {c.get("name") for c in real_backend.sync_client().client_list()}
    meter.close()

    async def the_async_one() -> None:
        ameter = AsyncMeter.from_url(
            real_backend.url, history=None, prefix="opts", **{**options, "client_name": "opt-async"}
        )
        await ameter.update_token_usage("alice", "system_deepseek", 10, 10)
        names.update(c.get("name") for c in real_backend.sync_client().client_list())
        await ameter.aclose()

    asyncio.run(the_async_one())
    assert {"opt-sync", "opt-async"} <= names
