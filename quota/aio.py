"""``AsyncMeter``: the asyncio client. The same methods as ``Meter``; only the I/O differs."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError, RedisError

from .batch import MAX_RELOADS, evalsha_args, group_by, missing_scripts, needs_reroute
from .config import Settings
from .connect import describe_client, error_of, settings_with, split_options, split_url, storage_errors
from .core import Clock, MeterCore, ScriptCall
from .errors import BatchError
from .results import CreditResult, QuotaCheck, UsageResult


class AsyncMeter:
    """The asyncio twin of :class:`quota.Meter` on ``redis.asyncio`` (standalone or cluster).

    History reads (``get_token_stats`` with an archive) run the blocking SQL store in a thread.
    """

    def __init__(self, client: Any, *, settings: Settings | None = None, clock: Clock | None = None,
                 history: Any = None, **overrides: Any):
        self.core = MeterCore(settings_with(settings, overrides), clock)
        self.client = client
        self.history = history
        self._where = describe_client(client)
        self._node_clients: dict[str, aredis.Redis] = {}

    @classmethod
    def from_url(cls, url: str | None = None, *, cluster: bool | None = None, **options: Any) -> "AsyncMeter":
        own, client_options = split_options(options)
        url, is_cluster = split_url(url, cluster)
        if is_cluster:
            client_options.pop("retry_on_error", None)
            client = AsyncRedisCluster.from_url(url, **client_options)
        else:
            client = aredis.Redis.from_url(url, **client_options)
        return cls(client, **own)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def prices(self):  # noqa: ANN201 - PriceTable
        return self.core.prices

    async def aclose(self) -> None:
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
        return await self._run(self.core.record(user, model_id, input_tokens, output_tokens,
                                                request_id=request_id, price=price, estimated=estimated))

    async def update_token_usage_many(self, records: Iterable[Mapping[str, Any]]) -> list[UsageResult]:
        calls = self.core.record_many(records)
        replies = await self._run_many(calls)
        results = [error_of(r, self._where) or c.parse(r) for c, r in zip(calls, replies)]
        if any(isinstance(r, Exception) for r in results):
            raise BatchError(results)
        return results

    async def check_quota_available(self, user: str, model_id: str) -> QuotaCheck:
        return await self._run(self.core.check(user, model_id))

    async def set_monthly_credit(self, user: str, credit: Any, month: str | None = None) -> CreditResult:
        return await self._run(self.core.set_credit(user, credit, month))

    async def get_token_stats(self, user: str, *, months: int | None = None) -> dict[str, Any]:
        live = await self._run(self.core.stats(user, months))
        archived = None
        if self.history is not None:
            archived = await asyncio.to_thread(self.history.load_months, user, [m.month for m in live[1:]])
        return self.core.token_stats(user, live, archived)

    def get_model_cost_config(self, model_id: str) -> dict[str, Any]:
        return self.core.prices.get_model_cost_config(model_id)

    # --- I/O -------------------------------------------------------------------------------------

    async def _run(self, call: ScriptCall) -> Any:
        with storage_errors(self._where):
            return call.parse(await self._evalsha(self.client, call))

    @staticmethod
    async def _evalsha(client: Any, call: ScriptCall) -> Any:
        try:
            return await client.evalsha(*evalsha_args(call))
        except NoScriptError:
            await client.script_load(call.script.source)
            return await client.evalsha(*evalsha_args(call))

    async def _run_many(self, calls: list[ScriptCall]) -> list[Any]:
        if not calls:
            return []
        with storage_errors(self._where):
            if not isinstance(self.client, AsyncRedisCluster):
                return await self._pipeline(self.client, calls)
            await self.client.initialize()
            nodes = {}

            def node_of(key: str) -> str:
                node = self.client.get_node_from_key(key)
                nodes[node.name] = node
                return node.name

            replies: list[Any] = [None] * len(calls)
            groups = group_by(calls, node_of)

            async def run_node(name: str, indexes: list[int]) -> None:
                try:
                    sub = await self._pipeline(self._node_client(nodes[name]), [calls[i] for i in indexes])
                except RedisError as exc:
                    sub = [exc] * len(indexes)
                for index, reply in zip(indexes, sub):
                    replies[index] = reply

            await asyncio.gather(*(run_node(n, ix) for n, ix in groups.items()))
            for index, reply in enumerate(replies):
                if needs_reroute(reply):
                    try:
                        replies[index] = await self._evalsha(self.client, calls[index])
                    except RedisError as exc:
                        replies[index] = exc
            return replies

    def _node_client(self, node: Any) -> aredis.Redis:
        """A plain client on one cluster node: the async cluster pipeline refuses EVALSHA."""
        found = self._node_clients.get(node.name)
        if found is None:
            kwargs = {k: v for k, v in node.connection_kwargs.items()
                      if k in _NODE_KWARGS}
            found = self._node_clients[node.name] = aredis.Redis(host=node.host, port=node.port, **kwargs)
        return found

    @staticmethod
    async def _pipeline(client: Any, calls: list[ScriptCall]) -> list[Any]:
        pending = list(range(len(calls)))
        replies: list[Any] = [None] * len(calls)
        for attempt in range(MAX_RELOADS + 1):
            pipe = client.pipeline(transaction=False)
            for index in pending:
                pipe.evalsha(*evalsha_args(calls[index]))
            for index, reply in zip(pending, await pipe.execute(raise_on_error=False)):
                replies[index] = reply
            missing = missing_scripts([replies[i] for i in pending])
            if not missing or attempt == MAX_RELOADS:
                break
            pending = [pending[i] for i in missing]
            for script in {calls[i].script for i in pending}:
                await client.script_load(script.source)
        return replies


_NODE_KWARGS = {
    "username", "password", "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive",
    "ssl", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname",
    "decode_responses", "encoding", "encoding_errors", "client_name", "protocol", "retry",
}
