"""``AsyncMeter``: the asyncio client. The same methods as ``Meter``; only the I/O differs."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Iterable, Mapping

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from .batch import SendOne, Step, eval_args, evalsha_args, plan_batch
from .config import Settings
from .connect import (
    HISTORY_FROM_ENV,
    describe_client,
    error_of,
    history_from_settings,
    node_client,
    open_client,
    REDIS_ERRORS,
    settings_with,
    slot_busy_pause,
    storage_errors,
)
from .core import Clock, MeterCore, ScriptCall
from .errors import BatchError
from .results import CreditResult, QuotaCheck, UsageResult
from .turn import AsyncTurn, ReplayReport, TurnOptions, areplay


class AsyncMeter:
    """The asyncio twin of :class:`quota.Meter` on ``redis.asyncio`` (standalone or cluster).

    History reads (``get_token_stats`` with an archive) run the blocking SQL store in a thread.
    """

    def __init__(self, client: Any, *, settings: Settings | None = None, clock: Clock | None = None,
                 history: Any = None, spool: Any = None, on_unavailable: str = "allow", **overrides: Any):
        self.core = MeterCore(settings_with(settings, overrides), clock)
        self.turn_options = TurnOptions(spool, on_unavailable)  # see quota.turn
        self.client = client
        self.history = history
        self.where = describe_client(client)
        self._node_clients: dict[str, aredis.Redis] = {}
        # redis-py's asyncio cluster client, used first by many tasks at once, initializes once per
        # task and closes connections other tasks are writing on ('NoneType' object has no
        # attribute 'writelines': 10 of 30 tasks failed in a test). One initialization, up front.
        self._ready = not isinstance(client, AsyncRedisCluster)
        self._ready_lock: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str | None = None, *, cluster: bool | None = None, **options: Any) -> "AsyncMeter":
        """See :meth:`quota.Meter.from_url`; the same options, the same queueing for connections."""
        history = options.pop("history", HISTORY_FROM_ENV)
        client, settings, own = open_client(url, cluster, options, use_asyncio=True)
        meter = cls(client, settings=settings, **own)
        meter.history = history_from_settings(meter.settings) if history is HISTORY_FROM_ENV else history
        return meter

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def prices(self):  # noqa: ANN201 - PriceTable
        return self.core.prices

    async def aclose(self) -> None:
        await self.turn_options.wait_background()   # a spool replay a turn started in the background
        for node_client in self._node_clients.values():
            await node_client.aclose()
        await self.client.aclose()

    async def __aenter__(self) -> "AsyncMeter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- operations ------------------------------------------------------------------------------

    async def update_token_usage(self, user: str, model_id: str, input_tokens: int, output_tokens: int, *,
                                 request_id: str | None = None, price: Mapping[str, Any] | None = None,
                                 estimated: bool = False) -> UsageResult:
        return await self.run(self.core.record(user, model_id, input_tokens, output_tokens,
                                                request_id=request_id, price=price, estimated=estimated))

    async def update_token_usage_many(self, records: Iterable[Mapping[str, Any]]) -> list[UsageResult]:
        calls = self.core.record_many(records)
        replies = await self.run_many(calls)
        results = [error_of(r, self.where) or c.parse(r) for c, r in zip(calls, replies)]
        if any(isinstance(r, Exception) for r in results):
            raise BatchError(results)
        return results

    async def check_quota_available(self, user: str, model_id: str) -> QuotaCheck:
        return await self.run(self.core.check(user, model_id))

    async def set_monthly_credit(self, user: str, credit: Any, month: str | None = None) -> CreditResult:
        return await self.run(self.core.set_credit(user, credit, month))

    async def get_token_stats(self, user: str, *, months: int | None = None) -> dict[str, Any]:
        live = await self.run(self.core.stats(user, months))
        archived = None
        if self.history is not None:
            archived = await asyncio.to_thread(self.history.load_months, user, [m.month for m in live.months[1:]])
        return self.core.token_stats(user, live, archived)

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless Redis answers."""
        with storage_errors(self.where):
            if not self._ready:
                await self._initialize()
            await self.client.ping()

    def get_model_cost_config(self, model_id: str) -> dict[str, Any]:
        return self.core.prices.get_model_cost_config(model_id)

    # --- agent-worker integration (quota.turn) --------------------------------------------------

    def turn(self, user: str, model_id: str, *, hold: Any = None,
             on_unavailable: str | None = None) -> AsyncTurn:
        """``async with ameter.turn(user, model_id) as turn:`` — see :meth:`quota.Meter.turn`."""
        return AsyncTurn(self, user, model_id, on_unavailable=on_unavailable, hold=hold)

    async def replay_spool(self) -> ReplayReport:
        return await areplay(self)

    # --- I/O -------------------------------------------------------------------------------------

    async def run(self, call: ScriptCall) -> Any:
        with storage_errors(self.where):
            if not self._ready:
                await self._initialize()
            return call.parse(await self._evalsha(self.client, call))

    async def _initialize(self) -> None:
        """Initialize the cluster client once, whoever comes first; the others wait for it."""
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    @staticmethod
    async def _evalsha(client: Any, call: ScriptCall) -> Any:
        """Run ``call``; on a cluster, resend it while its slot is busy (see slot_busy_pause)."""
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return await AsyncMeter._evalsha_once(client, call)
            except REDIS_ERRORS as exc:
                pause = slot_busy_pause(exc, attempt, time.monotonic() - started)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    @staticmethod
    async def _evalsha_once(client: Any, call: ScriptCall) -> Any:
        try:
            try:
                return await client.evalsha(*evalsha_args(call))
            except NoScriptError:  # restart, failover or SCRIPT FLUSH emptied the script cache
                # EVAL carries the source: a flush can not come between loading and running it.
                return await client.eval(*eval_args(call))
        except AttributeError as exc:
            raise lost_connection(exc) from exc

    async def run_many(self, calls: list[ScriptCall]) -> list[Any]:
        if not calls:
            return []
        node_of = None
        if isinstance(self.client, AsyncRedisCluster):
            with storage_errors(self.where):
                await self._initialize()
                await self.client.initialize()   # cheap once done; after a failover, refreshes the slots
            node_of = lambda key: self.client.get_node_from_key(key).name  # noqa: E731
        plan = plan_batch(calls, node_of)
        with storage_errors(self.where):
            try:
                step = next(plan)
                while True:
                    step = plan.send(await self._perform(step))
            except StopIteration as done:
                return done.value

    async def _perform(self, step: Step) -> Any:
        """Do one I/O step of a batch plan (see quota.batch); errors are outcomes, not raised."""
        if isinstance(step, SendOne):
            try:
                return await self._evalsha(self.client, step.call)
            except REDIS_ERRORS as exc:
                return exc
        client = self._node_client(step.node)
        pipe = client.pipeline(transaction=False)
        for call in step.calls:
            if step.with_source:
                pipe.eval(*eval_args(call))
            else:
                pipe.evalsha(*evalsha_args(call))
        try:
            return await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            return exc
        except AttributeError as exc:
            return lost_connection(exc)

    def _node_client(self, node_name: Any) -> Any:
        """The standalone client, or a plain client on one cluster node: the async cluster
        pipeline refuses EVALSHA too."""
        if node_name is None:
            return self.client
        found = self._node_clients.get(node_name)
        if found is None:
            node = self.client.get_node(node_name=node_name)
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k in _NODE_KWARGS}
            found = self._node_clients[node_name] = node_client(node.host, node.port, self.settings, **kwargs)
        return found


def lost_connection(exc: AttributeError) -> RedisConnectionError:
    """redis-py's asyncio client can fail with AttributeError ("'NoneType' object has no attribute
    'writelines'") when a connection is closed under a command, as the cluster client does to
    every connection while a failover refreshes its topology (tests/faults, scenario 4; see also
    redis/redis-py#3835). It is a lost connection: say so, so that it is retried or reported as
    StorageUnavailable like any other, never leaked to the caller as an AttributeError."""
    return RedisConnectionError(f"connection lost mid-command ({exc})")


_NODE_KWARGS = {
    "username", "password", "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive",
    "ssl", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname",
    "decode_responses", "encoding", "encoding_errors", "client_name", "protocol", "retry",
}
