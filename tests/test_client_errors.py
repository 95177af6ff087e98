"""How the clients treat redis-py's odd failures: busy cluster slots, errors outside RedisError."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    ConnectionError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from quota import AsyncMeter, Meter
from quota._connect import SLOT_BUSY_BUDGET_S, slot_busy_pause
from quota._errors import StorageUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        TryAgainError("TRYAGAIN"),
        ClusterDownError("CLUSTERDOWN"),
        ClusterError("TTL exhausted."),
        SlotNotCoveredError("slot 1 not covered"),
    ],
)
def test_busy_slot_errors_are_resent_with_growing_pauses_within_the_budget(exc):
    pauses = [slot_busy_pause(exc, attempt, 0.0) for attempt in range(8)]
    assert pauses == sorted(pauses) and 0 < pauses[0] <= pauses[-1] <= 0.25
    assert slot_busy_pause(exc, 3, SLOT_BUSY_BUDGET_S) is None  # the budget is spent


@pytest.mark.parametrize("exc", [ConnectionError("down"), ResponseError("ERR"), ClusterError("other")])
def test_other_errors_are_not_resent_here(exc):
    assert slot_busy_pause(exc, 0, 0.0) is None


class FlakyClient:
    """Fails ``failures`` times with ``exc``, then answers like record.lua."""

    def __init__(self, exc: BaseException, failures: int):
        self.exc, self.left, self.calls = exc, failures, 0

    def evalsha(self, *args):
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.exc
        return [1, "0", "5000000000", "", ""]  # counted; the spend before this call (see record.lua)

    def close(self):
        pass


class AsyncFlakyClient(FlakyClient):
    async def evalsha(self, *args):
        return FlakyClient.evalsha(self, *args)

    async def aclose(self):
        pass


def test_a_busy_slot_is_waited_out():
    client = FlakyClient(TryAgainError("TRYAGAIN"), 3)
    result = Meter(client).update_token_usage("alice", "system_deepseek", 1, 0)
    assert client.calls == 4 and result.monthly_used_nano == 1000


def test_a_cluster_error_outside_redis_error_becomes_storage_unavailable():
    client = FlakyClient(RedisClusterException("Redis Cluster cannot be connected"), 1)  # not a RedisError
    with pytest.raises(StorageUnavailable):
        Meter(client).update_token_usage("alice", "system_deepseek", 1, 0)


async def test_an_async_connection_closed_under_a_command_becomes_storage_unavailable():
    # redis-py asyncio: AttributeError("'NoneType' object has no attribute 'writelines'")
    client = AsyncFlakyClient(AttributeError("'NoneType' object has no attribute 'writelines'"), 1)
    with pytest.raises(StorageUnavailable, match="connection lost"):
        await AsyncMeter(client).update_token_usage("alice", "system_deepseek", 1, 0)
